import { launch } from './lib.mjs';
const [url, token] = process.argv.slice(2);
const { context, close } = await launch();
const page = context.pages()[0];
await page.addInitScript(() => {
  window.__long = [];
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push([Math.round(e.startTime), Math.round(e.duration)]); }).observe({ type: 'longtask', buffered: true });
});
await page.goto(`${url}/ui/login?token=${token}`);
const id = await page.evaluate(async () => {
  const s = await (await fetch('/ui/session')).json();
  const r = await fetch('/v1/workflows/fan/runs', { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': s.csrf }, body: JSON.stringify([...Array(10000).keys()]) });
  return (await r.json()).id;
});
const cdp = await context.newCDPSession(page);
await cdp.send('Profiler.enable');
await cdp.send('Profiler.setSamplingInterval', { interval: 200 });
await page.goto(`${url}/ui/runs/${id}`);
await cdp.send('Profiler.start');
await page.waitForFunction(() => document.documentElement.dataset.interactive);
const gaps = await page.evaluate(() => new Promise((resolve) => {
  let last = performance.now(); const worst = [];
  const end = last + 6000;
  const frame = (now) => { if (now - last > 100) worst.push([Math.round(last), Math.round(now - last)]); last = now; if (now < end) requestAnimationFrame(frame); else resolve(worst); };
  requestAnimationFrame(frame);
}));
const { profile } = await cdp.send('Profiler.stop');
const self = new Map();
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const dt = profile.timeDeltas; let i = 0;
const parent = new Map(); for (const n of profile.nodes) for (const c of n.children || []) parent.set(c, n);
const name = (n) => n ? n.callFrame.functionName + ' ' + n.callFrame.url.split('/').pop() + ':' + n.callFrame.lineNumber : '-';
for (const sid of profile.samples) { const n = byId.get(sid); let k = name(n); if (['append ', '(garbage', 'requestAnimationFrame', '(program)'].some((p) => k.startsWith(p))) { let p = parent.get(n.id); k += ' <- ' + name(p) + ' <- ' + name(p && parent.get(p.id)); } self.set(k, (self.get(k) || 0) + (dt[i++] || 0)); }
console.log([...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 14).map(([k, v]) => k + ' ' + Math.round(v / 1000) + 'ms').join('\n'));
console.log('gaps', JSON.stringify(gaps));
console.log('long', JSON.stringify(await page.evaluate(() => window.__long)));
console.log('marks', JSON.stringify(await page.evaluate(() => performance.getEntriesByType('mark').map(m => [m.name, Math.round(m.startTime)]))));
await close();
