// Takes a screenshot of each dashboard page for the README:
//   node screenshots.mjs URL TOKEN OUT_DIR RUN_ID BIG_RUN_ID WORKFLOW
import { launch } from './lib.mjs';

const [url, token, out, run, big, workflow] = process.argv.slice(2);
if (!out) {
  console.error('usage: node screenshots.mjs URL TOKEN OUT_DIR RUN_ID BIG_RUN_ID WORKFLOW');
  process.exit(2);
}
const { context, close } = await launch();
try {
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(`${url}/ui/login${token ? '?token=' + encodeURIComponent(token) : ''}`);
  const shots = [
    ['runs', '/ui/runs', 'tbody tr[data-run]'],
    ['run', `/ui/runs/${run}`, '#critical-path strong'],
    ['run-10000-items', `/ui/runs/${big}`, '#critical-path strong'],
    ['workflow', `/ui/workflows/${workflow}`, '#dag svg'],
    ['host', '/ui/host', '#host-cards .panel'],
  ];
  for (const [name, path, ready] of shots) {
    await page.goto(url + path);
    await page.waitForSelector(ready, { timeout: 15000 });
    await page.waitForTimeout(300);
    await page.screenshot({ path: `${out}/${name}.png` });
    console.log(`${out}/${name}.png`);
  }
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${url}/ui/runs/${run}`);
  await page.waitForSelector('#critical-path strong', { timeout: 15000 });
  await page.screenshot({ path: `${out}/run-phone.png` });
  console.log(`${out}/run-phone.png`);
} finally {
  await close();
}
