// The dashboard in a real browser, against a real `stepbox serve` that the
// Rust test (tests/all/dashboard.rs) started and filled:
//   node dashboard.mjs URL TOKEN_A TOKEN_B BIG_RUN_ID
// Tenant A owns workflows `quick` (a short step, then one that writes
// state), `sleepy` (one step
// sleeping a minute) and `fan` (a for_each over its input); BIG_RUN_ID is
// its finished 10,000-item run of `fan`. Prints one JSON line per figure
// measured and `ok` at the end; any failure exits non-zero with its reason.
import { launch, check } from './lib.mjs';

const [url, tokenA, tokenB, bigRun] = process.argv.slice(2);
if (!bigRun) {
  console.error('usage: node dashboard.mjs URL TOKEN_A TOKEN_B BIG_RUN_ID');
  process.exit(2);
}
const T = 30000;
const figure = (name, value) => console.log(JSON.stringify({ figure: name, value }));

// Submits `workflow` from the runs page's form; returns the new run's id.
async function submit(page, workflow, input = '{}') {
  await page.selectOption('#s-workflow', workflow);
  await page.fill('#s-input', input);
  await page.click('button[type=submit]');
  const link = page.locator('#toast a').last();
  await link.waitFor({ timeout: T });
  return Number((await link.textContent()).replace('#', ''));
}

const a = await launch();
const b = await launch();
try {
  // Sign in with the form; the cookie is HttpOnly and SameSite=Strict.
  const page = a.context.pages()[0] || (await a.context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // Console errors besides the refusals the scenarios provoke on purpose
  // (a Content-Security-Policy violation would show here).
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) errors.push(m.text());
  });
  await page.goto(url + '/ui/');
  check(page.url().endsWith('/ui/login'), 'an unsigned visit is sent to the sign-in page, not ' + page.url());
  await page.fill('#token', 'not-a-token');
  await page.click('button[type=submit]');
  await page.locator('#error').waitFor({ state: 'visible', timeout: T });
  check((await page.textContent('#error')).includes('not a tenant'), 'a bad token is refused on the page');
  await page.fill('#token', tokenA);
  await page.click('button[type=submit]');
  await page.waitForURL(url + '/ui/', { timeout: T });
  await page.locator('#who', { hasText: 'tenant acme' }).waitFor({ timeout: T });
  const cookie = (await a.context.cookies()).find((c) => c.name === 'stepbox_session');
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', 'the session cookie: ' + JSON.stringify(cookie));
  check(await page.evaluate(() => !document.cookie.includes('stepbox_session')), 'scripts cannot read the cookie');

  // A run submitted from the page appears and finishes without a reload.
  await page.locator('#s-workflow option[value=quick]').waitFor({ state: 'attached', timeout: T });
  const quick = await submit(page, 'quick');
  await page.locator(`tr[data-run="${quick}"]`).waitFor({ timeout: T });
  await page.locator(`tr[data-run="${quick}"] .s-succeeded`).waitFor({ timeout: T });
  const succeeded = Number((await page.textContent('[data-count=succeeded]')).replace(/,/g, ''));
  check(succeeded >= 1, 'the live count of succeeded runs');
  figure('submitted_run_finished_live', quick);

  // Its page shows its timeline, critical path and output.
  await page.click(`tr[data-run="${quick}"] a[href="/ui/runs/${quick}"]`);
  await page.waitForURL(`${url}/ui/runs/${quick}`);
  await page.locator('.timeline[data-lanes="2"]').waitFor({ timeout: T });
  await page.locator('#critical-path', { hasText: 'Critical path: nap → tally' }).waitFor({ timeout: T });
  check((await page.textContent('#run-status')).includes('succeeded'), 'the run page says succeeded');
  check((await page.textContent('#state')).includes('visits'), 'the run page shows its state');
  check(await page.evaluate(() => {
    const c = document.querySelector('.timeline canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 120 && d[i] < 100 && d[i + 2] < 100) return true;
    return false;
  }), 'the timeline draws a green (completed) bar');

  // A running run's page follows it live, and cancels it.
  await page.goto(url + '/ui/runs');
  await page.locator('#s-workflow option[value=sleepy]').waitFor({ state: 'attached', timeout: T });
  const sleepy = await submit(page, 'sleepy');
  await page.goto(`${url}/ui/runs/${sleepy}`);
  await page.locator('.timeline[data-lanes="1"]').waitFor({ timeout: T });
  await page.locator('#run-status[data-status=running]').waitFor({ timeout: T });
  await page.click('#cancel');
  await page.locator('#run-status[data-status=cancelled]').waitFor({ timeout: T });
  check(await page.locator('#cancel').isHidden(), 'no cancel button once it ended');
  figure('cancelled_live', sleepy);

  // The other tenant sees none of it.
  const other = b.context.pages()[0] || (await b.context.newPage());
  await other.goto(`${url}/ui/login?token=${encodeURIComponent(tokenB)}`);
  await other.locator('#who', { hasText: 'tenant zeta' }).waitFor({ timeout: T });
  await other.locator('[data-count=total]').waitFor({ timeout: T });
  check((await other.textContent('[data-count=total]')) === '0', 'tenant zeta counts none of acme\'s runs');
  check(await other.locator(`tr[data-run="${sleepy}"]`).count() === 0, 'tenant zeta does not list acme\'s run');
  await other.goto(`${url}/ui/runs/${sleepy}`);
  await other.locator('main .error', { hasText: `no run ${sleepy}` }).waitFor({ timeout: T });
  const status = await other.evaluate(async (id) => (await fetch('/v1/runs/' + id)).status, sleepy);
  check(status === 404, 'another tenant\'s run is 404 to the API with the session, not ' + status);
  const forged = await other.evaluate(async (id) => (await fetch(`/v1/runs/${id}/cancel`, { method: 'POST' })).status,
    quick);
  check(forged === 403, 'a POST without the CSRF token is refused, not ' + forged);

  // The 10,000-item run's page: interactive within a second, and stays so.
  await page.goto(`${url}/ui/runs/${bigRun}`);
  await page.waitForFunction(() => document.documentElement.dataset.interactive, null, { timeout: T });
  const interactive = await page.evaluate(() => performance.getEntriesByName('stepbox:interactive')[0].startTime);
  figure('big_run_interactive_ms', Math.round(interactive));
  check(interactive < 1000, `the 10,000-item run page was interactive after ${Math.round(interactive)} ms`);
  check(await page.getAttribute('.timeline', 'data-lanes') === '10000', 'all 10,000 lanes are on the timeline');
  const rows = await page.locator('.vrow').count();
  check(rows > 0 && rows < 100, `only the attempts in view are built (${rows} rows)`);
  // Keys move through the list; the 10,000th attempt is a keypress away.
  await page.focus('.vlist');
  const keys = await page.evaluate(() => performance.now());
  await page.keyboard.press('End');
  await page.locator('.vrow[aria-selected=true]', { hasText: 'items [' }).waitFor({ timeout: T });
  await page.locator('#attempt h3', { hasText: 'attempt 1' }).waitFor({ timeout: T });
  figure('big_run_end_key_ms', Math.round((await page.evaluate(() => performance.now())) - keys));
  await page.fill('#a-filter', 'items [9999]');
  await page.locator('p', { hasText: /^1 of 10,000 attempts/ }).waitFor({ timeout: T });
  check(await page.locator('.vrow').count() === 1, 'the filter finds the one attempt');
  check((await page.textContent('.vrow')).includes('items [9999]'), 'the filter finds that attempt');

  // A 10,000-item run followed live: the page keeps painting frames.
  await page.goto(url + '/ui/runs');
  await page.locator('#s-workflow option[value=fan]').waitFor({ state: 'attached', timeout: T });
  const live = await submit(page, 'fan', JSON.stringify([...Array(10000).keys()]));
  // Main-thread tasks over 50 ms, from the navigation on.
  await page.addInitScript(() => {
    window.stepboxLongTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.stepboxLongTasks.push([e.startTime, e.duration]);
    }).observe({ type: 'longtask', buffered: true });
  });
  await page.goto(`${url}/ui/runs/${live}`);
  await page.waitForFunction(() => document.documentElement.dataset.interactive, null, { timeout: T });
  const gaps = await page.evaluate(() => new Promise((resolve) => {
    let last = performance.now();
    let worst = 0;
    const end = last + 3000;
    const frame = (now) => {
      worst = Math.max(worst, now - last);
      last = now;
      if (now < end) requestAnimationFrame(frame);
      else resolve(worst);
    };
    requestAnimationFrame(frame);
  }));
  // A frame can also come late because the machine is busy (the server
  // runs the 10,000 items on the same cores): what the page controls is
  // how long it holds the main thread.
  figure('live_big_run_worst_frame_gap_ms', Math.round(gaps));
  await page.locator('#run-status[data-status=succeeded]').waitFor({ timeout: 120000 });
  await page.locator('p', { hasText: /^10,000 of 10,000 attempts: 10,000 completed/ }).waitFor({ timeout: T });
  check(await page.getAttribute('.timeline', 'data-lanes') === '10000', 'every lane of the live run is drawn');
  const longest = await page.evaluate(() => {
    const start = Number(document.documentElement.dataset.interactive);
    return Math.max(0, ...window.stepboxLongTasks.filter(([at]) => at >= start).map(([, d]) => d));
  });
  figure('live_big_run_longest_task_ms', Math.round(longest));
  // Alone this is under 100 ms; the bound is the frame gap's, since with
  // every other test on the same two cores a task's wall time stretches
  // tenfold (1,150 ms was seen). A page that redrew every lane per event
  // would hold the thread for seconds on end.
  check(longest < 3000, `the page held its main thread ${Math.round(longest)} ms while following a 10,000-item run`);
  check(gaps < 3000, `no frame for ${Math.round(gaps)} ms while following a 10,000-item run`);

  // The workflow and host pages, reached by keys alone.
  await page.goto(url + '/ui/workflows/fan');
  await page.locator('#dag svg').waitFor({ timeout: T });
  check(await page.locator('table', { hasText: 'p95' }).count() >= 1, 'the workflow page lists percentiles');
  await page.keyboard.press('g');
  await page.keyboard.press('h');
  await page.waitForURL(url + '/ui/host', { timeout: T });
  await page.locator('[data-metric="Queue depth"]').waitFor({ timeout: T });
  await page.keyboard.press('g');
  await page.keyboard.press('r');
  await page.waitForURL(url + '/ui/runs', { timeout: T });
  await page.locator('tbody tr[data-run]').first().waitFor({ timeout: T });
  await page.keyboard.press('j');
  check(await page.evaluate(() => document.activeElement.matches('a[data-row]')), 'j focuses the first run');

  // At phone width nothing runs off the side.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const path of ['/ui/runs', `/ui/runs/${quick}`, '/ui/host']) {
    await page.goto(url + path);
    await page.locator('main h1').waitFor({ timeout: T });
    await page.waitForTimeout(200);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(wide <= 0, `${path} is ${wide} px wider than a phone`);
  }
  await page.setViewportSize({ width: 1280, height: 800 });

  // Sign out ends the session.
  await page.click('#signout');
  await page.waitForURL(url + '/ui/login', { timeout: T });
  const after = await page.evaluate(async () => (await fetch('/v1/runs')).status);
  check(after === 401, 'signed out, the API refuses the browser: ' + after);
  check(errors.length === 0, 'no script errors: ' + errors.join('; '));
  console.log('ok');
} finally {
  await a.close();
  await b.close();
}
