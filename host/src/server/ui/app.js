// stepbox dashboard: the core (API calls, DOM building, routing) and the
// runs page. Every page is drawn from the /v1 API with the session cookie;
// state-changing calls carry the session's CSRF token. Text from the server
// is only ever set as textContent, never parsed as HTML.
'use strict';

const SB = (window.SB = {});

SB.session = null;
SB.pages = {};

// Each page registers what to stop (timers, event streams) when it is left.
let cleanups = [];
SB.onLeave = (fn) => cleanups.push(fn);
function leave() {
  for (const fn of cleanups.splice(0)) {
    try { fn(); } catch (_) { /* a page's cleanup must not stop the next page */ }
  }
}

// h('a', {href: '/x', class: 'y'}, 'text', child...): a DOM element.
SB.h = function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
};
const h = SB.h;

// A problem answer as an Error with the server's one-line detail.
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}
SB.ApiError = ApiError;

SB.api = async function api(path, options = {}) {
  const method = options.method || 'GET';
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  if (method !== 'GET' && SB.session) headers['X-CSRF-Token'] = SB.session.csrf;
  let body = options.body;
  if (body !== undefined && typeof body !== 'string') {
    body = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, { method, headers, body, credentials: 'same-origin', signal: options.signal });
  if (res.status === 401 && !(SB.session && SB.session.open)) {
    location.assign('/ui/login');
    throw new ApiError(401, 'signed out');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!res.ok) throw new ApiError(res.status, (data && data.detail) || res.statusText);
  return data;
};

SB.toast = function toast(...content) {
  const box = h('div', {}, ...content);
  document.getElementById('toast').append(box);
  setTimeout(() => box.remove(), 6000);
};

SB.status = (s) => h('span', { class: 'status s-' + s }, s === 'accepted' ? 'queued' : s);

SB.fmtTime = function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
};

SB.fmtDur = function fmtDur(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return '—';
  if (ms < 1) return (ms * 1000).toFixed(0) + ' µs';
  if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 0) + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(2) + ' s';
  const m = Math.floor(ms / 60000);
  return m + ' m ' + Math.round((ms % 60000) / 1000) + ' s';
};

SB.fmtBytes = function fmtBytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
};

SB.fmtNum = (n) => Number(n || 0).toLocaleString('en');

SB.runDuration = function runDuration(run) {
  const start = run.started_at || run.accepted_at;
  const end = run.finished_at || (['succeeded', 'failed', 'cancelled'].includes(run.status) ? null : Date.now());
  return end && start ? end - start : null;
};

SB.errorBox = (e) => h('p', { class: 'error', role: 'alert' }, String(e.message || e));

// Polls fn every ms while the page is shown and the tab visible; a slow
// answer (a big journal, a busy server) spaces the polls out, so that open
// dashboards never keep the server busy.
SB.every = function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    let took = 0;
    if (!document.hidden) {
      const start = performance.now();
      try { await fn(); } catch (e) { if (!(e instanceof DOMException)) console.warn(e); }
      took = performance.now() - start;
    }
    if (!stopped) timer = setTimeout(tick, Math.max(ms, 10 * took));
  };
  timer = setTimeout(tick, ms);
  SB.onLeave(() => { stopped = true; clearTimeout(timer); });
};

// In-app navigation: pages are drawn by script, the URL kept shareable.
SB.go = function go(url, replace) {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  route();
};

document.addEventListener('click', (event) => {
  const a = event.target.closest('a');
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui/') || a.target) return;
  if (url.pathname.startsWith('/ui/assets/') || url.pathname === '/ui/login') return;
  event.preventDefault();
  SB.go(url.pathname + url.search + url.hash);
});
window.addEventListener('popstate', () => route());

// Keys: g then r/w/h goes to a page, / focuses the first filter, j/k move
// through the rows of a list, ? lists them.
let pendingG = false;
document.addEventListener('keydown', (event) => {
  const t = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (t.closest && t.closest('input, textarea, select, [contenteditable]')) {
    if (event.key === 'Escape') t.blur();
    return;
  }
  if (pendingG) {
    pendingG = false;
    const to = { r: '/ui/runs', w: '/ui/workflows', h: '/ui/host' }[event.key];
    if (to) { event.preventDefault(); SB.go(to); }
    return;
  }
  if (event.key === 'g') { pendingG = true; setTimeout(() => { pendingG = false; }, 1200); return; }
  if (event.key === '/') {
    const f = document.querySelector('main select, main input');
    if (f) { event.preventDefault(); f.focus(); }
    return;
  }
  if (event.key === '?') {
    SB.toast('Keys: ', h('kbd', {}, 'g r'), ' runs, ', h('kbd', {}, 'g w'), ' workflows, ', h('kbd', {}, 'g h'),
      ' host, ', h('kbd', {}, '/'), ' filter, ', h('kbd', {}, 'j'), '/', h('kbd', {}, 'k'), ' next/previous row, ',
      h('kbd', {}, 'Enter'), ' open');
    return;
  }
  if (event.key === 'j' || event.key === 'k') {
    const rows = [...document.querySelectorAll('main [data-row]')];
    if (!rows.length) return;
    const at = rows.indexOf(document.activeElement);
    const next = event.key === 'j' ? Math.min(rows.length - 1, at + 1) : Math.max(0, at - 1);
    rows[at < 0 ? 0 : next].focus();
    event.preventDefault();
  }
});

function markNav(section) {
  for (const a of document.querySelectorAll('.top nav a')) {
    if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

let routeSeq = 0;
async function route() {
  leave();
  const seq = ++routeSeq;
  const main = document.getElementById('main');
  const path = location.pathname.replace(/\/+$/, '') || '/ui';
  const params = new URLSearchParams(location.search);
  let m;
  let page;
  let section;
  if (path === '/ui' || path === '/ui/runs') { page = () => SB.pages.runs(main, params); section = 'runs'; }
  else if ((m = path.match(/^\/ui\/runs\/(\d+)$/))) { page = () => SB.pages.run(main, m[1]); section = 'runs'; }
  else if (path === '/ui/workflows') { page = () => SB.pages.workflows(main); section = 'workflows'; }
  else if ((m = path.match(/^\/ui\/workflows\/([^/]+)$/))) {
    page = () => SB.pages.workflow(main, decodeURIComponent(m[1])); section = 'workflows';
  } else if (path === '/ui/host') { page = () => SB.pages.host(main); section = 'host'; }
  markNav(section);
  main.replaceChildren();
  if (!page) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'No page at ', h('code', {}, location.pathname), '. ',
      h('a', { href: '/ui/runs' }, 'See the runs.')));
    return;
  }
  try {
    await page();
  } catch (e) {
    if (seq === routeSeq) main.append(SB.errorBox(e));
  }
  if (seq === routeSeq && document.activeElement === document.body) main.focus({ preventScroll: true });
}
SB.route = route;

// ---------------------------------------------------------------- runs page

const STATUSES = ['accepted', 'running', 'interrupted', 'succeeded', 'failed', 'cancelled'];
const WINDOWS = [['', 'any time'], ['15m', 'last 15 minutes'], ['1h', 'last hour'], ['24h', 'last 24 hours'],
  ['7d', 'last 7 days']];
const PAGE = 50;

SB.pages.runs = async function runsPage(main, params) {
  const filter = {
    status: params.get('status') || '',
    workflow: params.get('workflow') || '',
    since: params.get('since') || '',
    // No control sets it; a link may (epoch milliseconds or a duration ago).
    until: params.get('until') || '',
    cursor: params.get('cursor') || '',
  };
  const query = (extra) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries({ ...filter, ...extra })) if (v) q.set(k, v);
    const s = q.toString();
    return s ? '?' + s : '';
  };
  const setFilter = (change) => SB.go('/ui/runs' + query({ ...change, cursor: '' }), true);

  const workflows = SB.api('/v1/workflows').then((d) => d.workflows.map((w) => w.name)).catch(() => []);
  const select = (id, label, options, value, onchange) => h('div', {},
    h('label', { for: id }, label),
    h('select', { id, onchange: (e) => onchange(e.target.value) },
      options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))));

  const counts = h('ul', { class: 'counts', 'aria-label': 'Runs by status' });
  const tableBody = h('tbody');
  const pager = h('div', { class: 'pager' });
  const names = await workflows;
  if (filter.workflow && !names.includes(filter.workflow)) names.push(filter.workflow);

  main.append(
    h('h1', {}, 'Runs'),
    h('div', { class: 'filters', role: 'search' },
      select('f-status', 'Status', [['', 'any status'], ...STATUSES.map((s) => [s, s === 'accepted' ? 'queued' : s])],
        filter.status, (v) => setFilter({ status: v })),
      select('f-workflow', 'Workflow', [['', 'any workflow'], ...names.map((n) => [n, n])], filter.workflow,
        (v) => setFilter({ workflow: v })),
      select('f-since', 'Accepted', WINDOWS, filter.since, (v) => setFilter({ since: v })),
      submitForm(names)),
    counts,
    h('div', { class: 'table-wrap' }, h('table', { 'aria-label': 'Runs, newest first' },
      h('thead', {}, h('tr', {},
        h('th', { class: 'num' }, 'Run'), h('th', {}, 'Workflow'), h('th', {}, 'Status'),
        h('th', { class: 'hide-narrow' }, 'Accepted'), h('th', { class: 'num' }, 'Duration'),
        h('th', { class: 'hide-narrow' }, 'Error'))),
      tableBody)),
    pager);

  const drawCounts = (overview) => {
    counts.replaceChildren(
      h('li', {}, h('a', { href: '/ui/runs' + query({ status: '', cursor: '' }), 'aria-pressed': !filter.status },
        'all ', h('b', { dataset: { count: 'total' } }, SB.fmtNum(overview.total)))),
      ...STATUSES.map((s) => h('li', {}, h('a', {
        href: '/ui/runs' + query({ status: s, cursor: '' }), 'aria-pressed': filter.status === s,
      }, SB.status(s), h('b', { dataset: { count: s } }, SB.fmtNum(overview.counts[s]))))));
  };
  const drawRuns = (data) => {
    tableBody.replaceChildren(...data.runs.map((r) => h('tr', { dataset: { run: r.id } },
      h('td', { class: 'num' }, h('a', { href: '/ui/runs/' + r.id, 'data-row': '' }, '#' + r.id)),
      h('td', {}, h('a', { href: '/ui/workflows/' + encodeURIComponent(r.workflow) }, r.workflow)),
      h('td', {}, SB.status(r.status)),
      h('td', { class: 'hide-narrow' }, SB.fmtTime(r.accepted_at)),
      h('td', { class: 'num' }, SB.fmtDur(SB.runDuration(r))),
      h('td', { class: 'hide-narrow error' }, r.error || ''))));
    if (!data.runs.length) {
      tableBody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No runs match.')));
    }
    pager.replaceChildren(
      filter.cursor ? h('a', { href: '/ui/runs' + query({ cursor: '' }) }, '« Newest') : '',
      data.next_cursor ? h('a', { href: '/ui/runs' + query({ cursor: data.next_cursor }), rel: 'next' }, 'Older »')
        : '');
  };
  const listQuery = query({ limit: String(PAGE) });
  const countQuery = query({ status: '', cursor: '' });
  const refresh = async () => {
    const [data, overview] = await Promise.all([
      SB.api('/v1/runs' + listQuery),
      SB.api('/v1/overview' + countQuery),
    ]);
    drawRuns(data);
    drawCounts(overview);
  };
  await refresh();
  // Live: the newest page follows new runs; an older page keeps its rows
  // still (only the counts move) so it does not shift under the reader.
  SB.every(1500, filter.cursor ? async () => drawCounts(await SB.api('/v1/overview' + countQuery)) : refresh);
};

// Submitting a run: a workflow and its input (JSON).
function submitForm(names) {
  const form = h('form', { class: 'filters', 'aria-label': 'Submit a run' });
  const wf = h('select', { id: 's-workflow', required: true },
    names.map((n) => h('option', { value: n }, n)));
  const input = h('input', { id: 's-input', value: '{}', spellcheck: 'false', size: 18, 'aria-label': 'Input (JSON)' });
  const button = h('button', { type: 'submit', disabled: !names.length }, 'Submit run');
  form.append(
    h('div', {}, h('label', { for: 's-workflow' }, 'Run workflow'), wf),
    h('div', {}, h('label', { for: 's-input' }, 'Input (JSON)'), input),
    button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let body;
    try { body = JSON.parse(input.value || '{}'); } catch (e) {
      SB.toast('The input is not JSON: ' + e.message);
      return;
    }
    button.disabled = true;
    try {
      const run = await SB.api('/v1/workflows/' + encodeURIComponent(wf.value) + '/runs', { method: 'POST', body });
      SB.toast('Run ', h('a', { href: '/ui/runs/' + run.id }, '#' + run.id), ' accepted.');
    } catch (e) {
      SB.toast('Not submitted: ' + e.message);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// ------------------------------------------------------------------- start

async function start() {
  try {
    SB.session = await SB.api('/ui/session');
  } catch (e) {
    document.getElementById('main').replaceChildren(SB.errorBox(e));
    return;
  }
  const who = document.getElementById('who');
  who.textContent = SB.session.open ? 'open server (no sign-in)' : 'tenant ' + SB.session.tenant;
  const out = document.getElementById('signout');
  out.hidden = SB.session.open;
  out.addEventListener('click', async () => {
    try { await SB.api('/ui/logout', { method: 'POST' }); } catch (_) { /* signed out either way */ }
    location.assign('/ui/login');
  });
  route();
}

// The other scripts register their pages first: they are deferred too,
// and run in order after this one, before DOMContentLoaded.
document.addEventListener('DOMContentLoaded', start);
