// stepbox dashboard: a run's page. Its timeline is a canvas that draws only
// the lanes in view, and its attempts a list that builds only the rows in
// view, so a 10,000-item fan-out costs what 30 rows cost. Live news comes
// over Server-Sent Events; a burst of events is applied once per frame.
'use strict';

(function () {
  const SB = window.SB;
  const h = SB.h;

  // As the SVG timeline (report/svg.rs) colours them.
  const COLOURS = {
    completed: '#43a047', retryable: '#fdd835', failed: '#e53935', 'invalid-input': '#c62828',
    timeout: '#fb8c00', 'out-of-fuel': '#8e24aa', 'memory-limit': '#6d4c41', 'scratch-limit': '#5d4037',
    trap: '#d81b60', cancelled: '#9e9e9e', interrupted: '#ffb300', started: '#1e88e5',
  };
  const colour = (o) => COLOURS[o] || '#757575';
  const ENDED = ['succeeded', 'failed', 'cancelled'];
  const ROW = 30;

  const outcomeOf = (a) => a.outcome || a.status;
  const keyOf = (a) => a.step + '\u0000' + (a.item === null || a.item === undefined ? '' : a.item);
  const unitName = (a) => (a.item === null || a.item === undefined ? a.step : a.step + ' [' + a.item + ']');

  // The compact attempt table (GET /v1/runs/{id}?attempts=table) as the
  // objects the full views are: no output or log, read on demand.
  function fromTable(t) {
    const col = Object.fromEntries(t.columns.map((c, i) => [c, i]));
    const str = (v) => (v === null ? null : t.strings[v]);
    return t.rows.map((r) => ({
      step: str(r[col.step]), item: r[col.item], attempt: r[col.attempt], status: str(r[col.status]),
      outcome: str(r[col.outcome]), started_at: r[col.started_at], started_us: r[col.started_us],
      usage: { queue_wait: r[col.queue_wait_us], wall_time: r[col.wall_time_us], fuel_consumed: r[col.fuel_consumed],
        peak_memory: r[col.peak_memory], peak_scratch: r[col.peak_scratch] },
      limits: { fuel: r[col.fuel_limit], memory: r[col.memory_limit], time: r[col.time_limit_ms],
        scratch: r[col.scratch_limit] },
      message: str(r[col.message]), last: r[col.last], component: str(r[col.component]),
      timeout_level: str(r[col.timeout_level]), partial: true,
    }));
  }

  // The run's attempts, by unit (lane), updated in place as news comes.
  class Model {
    constructor(run) {
      this.run = run;
      this.attempts = [];
      this.byKey = new Map();
      this.lanes = [];
      this.laneOf = new Map();
      this.critical = new Set();
      for (const a of run.attempts || fromTable(run.attempt_table)) this.upsert(a);
      delete run.attempt_table;
    }
    upsert(a) {
      const k = keyOf(a) + '\u0000' + a.attempt;
      const at = this.byKey.get(k);
      if (at !== undefined) {
        // An attempt event carries no output when it was not kept; keep what we had.
        this.attempts[at] = a;
      } else {
        this.byKey.set(k, this.attempts.length);
        this.attempts.push(a);
      }
      const lk = keyOf(a);
      let lane = this.laneOf.get(lk);
      if (!lane) {
        lane = { step: a.step, item: a.item, bars: [] };
        this.laneOf.set(lk, lane);
        this.lanes.push(lane);
      }
      const i = lane.bars.findIndex((b) => b.attempt === a.attempt);
      if (i >= 0) lane.bars[i] = a;
      else lane.bars.push(a);
    }
    // The first start and the span to the last end, in µs.
    extent() {
      let min = Infinity;
      let max = 0;
      const now = Date.now() * 1000;
      for (const a of this.attempts) {
        if (a.started_us < min) min = a.started_us;
        const end = a.status === 'started' ? now : a.started_us + a.usage.queue_wait + a.usage.wall_time;
        if (end > max) max = end;
      }
      return min === Infinity ? [0, 1] : [min, Math.max(1, max - min)];
    }
    // The end of an attempt in µs since the epoch; a running one ends now.
    static end(a) {
      if (a.status === 'started') return Date.now() * 1000;
      return a.started_us + a.usage.queue_wait + a.usage.wall_time;
    }
    // Per step: units, attempts, outcomes, time, peak use against limits.
    // Runs over every attempt often while a big run is live: no allocation
    // per attempt.
    steps() {
      const steps = new Map();
      const kinds = ['fuel', 'memory', 'time', 'scratch'];
      for (const a of this.attempts) {
        let s = steps.get(a.step);
        if (!s) {
          s = { step: a.step, units: new Set(), attempts: 0, outcomes: {}, queue: 0, exec: 0,
            use: { fuel: [0, 0], memory: [0, 0], time: [0, 0], scratch: [0, 0] } };
          steps.set(a.step, s);
        }
        s.units.add(a.item);
        s.attempts++;
        const o = outcomeOf(a);
        s.outcomes[o] = (s.outcomes[o] || 0) + 1;
        s.queue += a.usage.queue_wait;
        s.exec += a.usage.wall_time;
        if (a.status === 'started') continue;
        const u = a.usage;
        const l = a.limits;
        for (let k = 0; k < 4; k++) {
          const used = k === 0 ? u.fuel_consumed : k === 1 ? u.peak_memory : k === 2
            ? (u.queue_wait + u.wall_time) / 1000 : u.peak_scratch;
          const limit = k === 0 ? l.fuel : k === 1 ? l.memory : k === 2 ? l.time : l.scratch;
          const best = s.use[kinds[k]];
          if (limit > 0 && (best[1] === 0 || used / limit > best[0] / best[1])) {
            best[0] = used;
            best[1] = limit;
          }
        }
      }
      return [...steps.values()];
    }
  }

  // [kind, used, limit] of an ended attempt: time in ms.
  function usageOf(a) {
    return [
      ['fuel', a.usage.fuel_consumed, a.limits.fuel],
      ['memory', a.usage.peak_memory, a.limits.memory],
      ['time', (a.usage.queue_wait + a.usage.wall_time) / 1000, a.limits.time],
      ['scratch', a.usage.peak_scratch, a.limits.scratch],
    ];
  }
  const fmtUse = (kind, v) => (kind === 'fuel' ? SB.fmtNum(Math.round(v)) : kind === 'time' ? SB.fmtDur(v)
    : SB.fmtBytes(v));

  function usageBars(rows) {
    const box = h('div', { class: 'bars' });
    for (const [kind, used, limit] of rows) {
      const share = limit > 0 ? used / limit : 0;
      const pct = Math.min(100, share * 100);
      const fill = h('i');
      fill.style.width = pct.toFixed(1) + '%';
      box.append(
        h('span', {}, kind),
        h('div', {
          class: 'bar' + (share >= 1 ? ' over' : share >= 0.8 ? ' near' : ''), role: 'meter',
          'aria-label': kind + ' used', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct.toFixed(0),
        }, fill),
        h('span', { class: 'mono' }, limit > 0 ? fmtUse(kind, used) + ' of ' + fmtUse(kind, limit) + ' ('
          + (share * 100).toFixed(share < 0.1 ? 1 : 0) + '%)' : fmtUse(kind, used) + ' (no limit)'));
    }
    return box;
  }

  // ------------------------------------------------------------- timeline

  function timeline(model) {
    const label = 170;
    const axis = 22;
    const scroller = h('div', { class: 'scroller', tabindex: 0 });
    const canvas = h('canvas', { role: 'img' });
    const spacer = h('div');
    const tip = h('div', { class: 'tip', hidden: true });
    scroller.append(canvas, spacer);
    const box = h('div', { class: 'timeline' }, scroller, tip);
    let rowH = 20;
    let drawn = false;

    // The size is read from the layout only when it may have changed (a
    // resize), and attributes are written only when they change: forcing a
    // layout on every frame of a live run would be what stalls the page.
    let knownWidth = 0;
    let laidLanes = -1;
    function layout() {
      rowH = model.lanes.length > 60 ? 12 : 22;
      const total = axis + model.lanes.length * rowH;
      const height = Math.max(60, Math.min(420, total));
      if (!knownWidth) knownWidth = Math.max(300, scroller.clientWidth || 800);
      const width = knownWidth;
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
        canvas.width = Math.round(width * dpr);
        canvas.height = Math.round(height * dpr);
        canvas.style.width = width + 'px';
        canvas.style.height = height + 'px';
      }
      if (laidLanes !== model.lanes.length) {
        laidLanes = model.lanes.length;
        spacer.style.height = Math.max(0, total - height) + 'px';
        canvas.setAttribute('aria-label', 'Timeline of ' + SB.fmtNum(model.lanes.length)
          + ' units; the attempts list below has the same data as text');
        box.dataset.lanes = String(model.lanes.length);
      }
      return { width, height, dpr };
    }

    function draw() {
      drawn = true;
      const { width, height, dpr } = layout();
      const ctx = canvas.getContext('2d');
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, width, height);
      ctx.font = '12px system-ui, sans-serif';
      const [origin, span] = model.extent();
      const plot = width - label - 12;
      const x = (us) => label + ((us - origin) / span) * plot;
      // The axis: about 8 ticks of 1, 2 or 5 times a power of ten.
      const raw = span / 8;
      const p = Math.pow(10, Math.floor(Math.log10(raw)));
      const step = [1, 2, 5, 10].map((m) => m * p).find((t) => t >= raw) || 10 * p;
      ctx.fillStyle = '#5b6470';
      ctx.strokeStyle = '#eef0f3';
      for (let t = 0; t <= span; t += step) {
        const px = x(origin + t);
        ctx.fillText(t === 0 ? '0' : SB.fmtDur(t / 1000), px + 2, 14);
        ctx.beginPath();
        ctx.moveTo(px + 0.5, axis);
        ctx.lineTo(px + 0.5, height);
        ctx.stroke();
      }
      const top = scroller.scrollTop;
      const first = Math.floor(top / rowH);
      const count = Math.ceil((height - axis) / rowH) + 1;
      const barH = Math.max(4, rowH - 6);
      for (let i = first; i < Math.min(model.lanes.length, first + count); i++) {
        const lane = model.lanes[i];
        const y = axis + (i - first) * rowH - (top % rowH);
        if (y < axis - rowH) continue;
        const critical = model.critical.has(lane.step);
        if (critical) {
          ctx.fillStyle = '#fdecea';
          ctx.fillRect(0, y, label - 4, rowH);
        }
        if (rowH >= 12) {
          ctx.fillStyle = critical ? '#b71c1c' : '#1b1f24';
          ctx.font = (critical ? 'bold ' : '') + (rowH > 14 ? '12px' : '10px') + ' system-ui, sans-serif';
          const name = lane.item === null || lane.item === undefined ? lane.step : lane.step + ' [' + lane.item + ']';
          ctx.fillText(name.length > 24 ? name.slice(0, 23) + '…' : name, 4, y + rowH - (rowH > 14 ? 7 : 2));
        }
        for (const a of lane.bars) {
          const start = x(a.started_us);
          const queued = x(a.started_us + (a.status === 'started' ? 0 : a.usage.queue_wait));
          const end = Math.max(x(Model.end(a)), start + 1.5);
          ctx.fillStyle = '#cfd8dc';
          ctx.fillRect(start, y + 3, Math.max(0, queued - start), barH);
          ctx.fillStyle = colour(outcomeOf(a));
          ctx.fillRect(queued, y + 3, Math.max(1.5, end - queued), barH);
        }
      }
      ctx.fillStyle = '#fff';
      ctx.fillRect(0, 0, label - 4, axis);
      ctx.fillStyle = '#5b6470';
      ctx.font = '12px system-ui, sans-serif';
      ctx.fillText(SB.fmtNum(model.lanes.length) + ' units', 4, 14);
    }

    let frame = 0;
    const redraw = () => {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); });
    };
    scroller.addEventListener('scroll', redraw, { passive: true });
    new ResizeObserver(() => { knownWidth = 0; if (drawn) redraw(); }).observe(scroller);

    canvas.addEventListener('mousemove', (e) => {
      const r = canvas.getBoundingClientRect();
      const px = e.clientX - r.left;
      const py = e.clientY - r.top;
      const i = Math.floor((py - axis + scroller.scrollTop) / rowH);
      const lane = py > axis && model.lanes[i];
      if (!lane) { tip.hidden = true; return; }
      const [origin, span] = model.extent();
      const us = origin + ((px - label) / (r.width - label - 12)) * span;
      const a = lane.bars.find((b) => us >= b.started_us - span / 200 && us <= Model.end(b) + span / 200)
        || lane.bars[lane.bars.length - 1];
      tip.textContent = unitName(a) + ' · attempt ' + a.attempt + ' · ' + outcomeOf(a) + ' · queued '
        + SB.fmtDur(a.usage.queue_wait / 1000) + ', ran ' + SB.fmtDur(a.usage.wall_time / 1000)
        + (model.critical.has(a.step) ? ' · critical path' : '') + (a.message ? ' · ' + a.message : '');
      tip.hidden = false;
      tip.style.left = Math.min(window.innerWidth - 330, e.clientX + 12) + 'px';
      tip.style.top = e.clientY + 14 + 'px';
    });
    canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
    return { element: box, draw, redraw };
  }

  // ------------------------------------------------------- attempts list

  function attemptList(model, onSelect) {
    const filterBox = h('input', { type: 'search', id: 'a-filter', placeholder: 'step, item or outcome',
      'aria-label': 'Filter attempts' });
    const outcomeSel = h('select', { id: 'a-outcome', 'aria-label': 'Outcome' }, h('option', { value: '' }, 'any outcome'));
    const summary = h('p', { class: 'muted', 'aria-live': 'polite' });
    const spacer = h('div', { class: 'spacer' });
    const list = h('div', { class: 'vlist', role: 'listbox', tabindex: 0, 'aria-label': 'Attempts' }, spacer);
    const head = h('div', { class: 'vhead', 'aria-hidden': 'true' },
      h('span', {}, 'Unit'), h('span', {}, 'Attempt'), h('span', {}, 'Outcome'), h('span', {}, 'Took'),
      h('span', {}, 'Message'));
    let rows = [];
    let selected = -1;
    let outcomesShown = '';

    function refilter() {
      const text = filterBox.value.trim().toLowerCase();
      const want = outcomeSel.value;
      rows = model.attempts.filter((a) => (!want || outcomeOf(a) === want)
        && (!text || unitName(a).toLowerCase().includes(text) || outcomeOf(a).includes(text)));
      const counts = {};
      for (const a of model.attempts) counts[outcomeOf(a)] = (counts[outcomeOf(a)] || 0) + 1;
      const keys = Object.keys(counts).sort().join();
      if (keys !== outcomesShown) {
        outcomesShown = keys;
        const keep = outcomeSel.value;
        outcomeSel.replaceChildren(h('option', { value: '' }, 'any outcome'),
          ...Object.keys(counts).sort().map((o) => h('option', { value: o, selected: o === keep }, o)));
      }
      summary.textContent = SB.fmtNum(rows.length) + ' of ' + SB.fmtNum(model.attempts.length) + ' attempts: '
        + Object.entries(counts).map(([o, n]) => SB.fmtNum(n) + ' ' + o).join(', ');
      spacer.style.height = rows.length * ROW + 'px';
      paint();
    }

    function paint() {
      const top = list.scrollTop;
      const first = Math.max(0, Math.floor(top / ROW) - 5);
      const last = Math.min(rows.length, Math.ceil((top + (list.clientHeight || 420)) / ROW) + 5);
      const els = [];
      for (let i = first; i < last; i++) {
        const a = rows[i];
        const row = h('div', {
          class: 'vrow', role: 'option', id: 'attempt-' + i, 'aria-selected': i === selected ? 'true' : 'false',
          dataset: { index: i },
        },
        h('span', {}, unitName(a)), h('span', {}, '#' + a.attempt), h('span', {}, SB.status(outcomeOf(a))),
        h('span', {}, a.status === 'started' ? '…' : SB.fmtDur((a.usage.queue_wait + a.usage.wall_time) / 1000)),
        h('span', { class: 'muted' }, a.message || ''));
        row.style.top = i * ROW + 'px';
        els.push(row);
      }
      spacer.replaceChildren(...els);
      if (selected >= 0) list.setAttribute('aria-activedescendant', 'attempt-' + selected);
    }

    function select(i, scroll) {
      if (!rows.length) return;
      selected = Math.max(0, Math.min(rows.length - 1, i));
      if (scroll) {
        const y = selected * ROW;
        if (y < list.scrollTop) list.scrollTop = y;
        else if (y + ROW > list.scrollTop + list.clientHeight) list.scrollTop = y + ROW - list.clientHeight;
      }
      paint();
      onSelect(rows[selected]);
    }

    let framed = 0;
    list.addEventListener('scroll', () => {
      if (!framed) framed = requestAnimationFrame(() => { framed = 0; paint(); });
    }, { passive: true });
    list.addEventListener('click', (e) => {
      const row = e.target.closest('.vrow');
      if (row) select(Number(row.dataset.index), false);
    });
    list.addEventListener('keydown', (e) => {
      const page = Math.max(1, Math.floor(list.clientHeight / ROW) - 1);
      const moves = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: page, PageUp: -page };
      if (e.key in moves) select(selected + moves[e.key], true);
      else if (e.key === 'Home') select(0, true);
      else if (e.key === 'End') select(rows.length - 1, true);
      else if (e.key === 'Enter' && selected >= 0) onSelect(rows[selected], true);
      else return;
      e.preventDefault();
      e.stopPropagation();
    });
    let typing = 0;
    filterBox.addEventListener('input', () => {
      clearTimeout(typing);
      typing = setTimeout(() => { selected = -1; refilter(); }, 120);
    });
    outcomeSel.addEventListener('change', () => { selected = -1; refilter(); });
    const element = h('div', {}, h('div', { class: 'filters' }, h('div', {}, h('label', { for: 'a-filter' }, 'Filter'),
      filterBox), h('div', {}, h('label', { for: 'a-outcome' }, 'Outcome'), outcomeSel)), summary, head, list);
    return { element, refilter, list };
  }

  // ---------------------------------------------------------------- page

  SB.pages.run = async function runPage(main, id) {
    const run = await SB.api('/v1/runs/' + id + '?attempts=table');
    performance.mark('stepbox:run-read');
    const model = new Model(run);
    const statusSlot = h('span');
    const cancel = h('button', { type: 'button', class: 'danger', id: 'cancel' }, 'Cancel run');
    const rerun = h('button', { type: 'button', class: 'secondary', id: 'rerun' }, 'Re-run');
    const facts = h('dl', { class: 'facts' });
    const io = h('div', { class: 'grid' });
    const critical = h('p', { id: 'critical-path' }, h('span', { class: 'muted' }, 'Working out the critical path…'));
    const stepsBody = h('tbody');
    const usage = h('div', { class: 'panel', id: 'usage' });
    const detail = h('div', { class: 'panel', id: 'attempt', tabindex: -1 },
      h('p', { class: 'muted' }, 'Choose an attempt above (click, or arrow keys in the list) to see its outcome, use and log.'));
    const logBox = h('pre', { class: 'data', id: 'log' });
    const tl = timeline(model);
    const list = attemptList(model, (a, focus) => { showAttempt(id, detail, a); if (focus) detail.focus(); });

    const legend = h('ul', { class: 'legend', 'aria-label': 'Outcome colours' },
      ['completed', 'started', 'retryable', 'failed', 'timeout', 'out-of-fuel', 'memory-limit', 'cancelled']
        .map((o) => { const i = h('i'); i.style.background = colour(o); return h('li', {}, i, o); }),
      h('li', {}, (() => { const i = h('i'); i.style.background = '#cfd8dc'; return i; })(), 'waiting for a slot'),
      h('li', {}, (() => { const i = h('i'); i.style.background = '#fdecea'; return i; })(), 'critical path (bold)'));

    main.append(
      h('h1', {}, 'Run #' + run.id, statusSlot, h('span', { class: 'muted' }, 'of ',
        h('a', { href: '/ui/workflows/' + encodeURIComponent(run.workflow) }, run.workflow)),
      h('span', { class: 'actions' }, cancel, rerun)),
      h('div', { class: 'panel' }, facts),
      io,
      h('h2', {}, 'Timeline'), legend, tl.element, critical,
      h('h2', {}, 'Steps'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'steps' }, h('thead', {}, h('tr', {},
        h('th', {}, 'Step'), h('th', { class: 'num' }, 'Units'), h('th', { class: 'num' }, 'Attempts'),
        h('th', {}, 'Outcomes'), h('th', { class: 'num hide-narrow' }, 'Queued'),
        h('th', { class: 'num hide-narrow' }, 'Ran'), h('th', {}, 'Critical path'))), stepsBody)),
      h('h2', {}, 'Use against limits'),
      h('p', { class: 'muted' }, 'Per step, its attempt that came nearest each limit.'), usage,
      h('h2', {}, 'Attempts'), list.element, detail,
      h('h2', {}, 'Log'), logBox);

    function drawHead() {
      const r = model.run;
      statusSlot.replaceChildren(SB.status(r.status));
      statusSlot.id = 'run-status';
      statusSlot.dataset.status = r.status;
      const live = !ENDED.includes(r.status);
      cancel.hidden = !live;
      rerun.disabled = r.input === null || r.collected;
      facts.replaceChildren(
        h('dt', {}, 'Status'), h('dd', {}, SB.status(r.status), r.live && live ? ' (' + r.live + ' on this host)' : ''),
        h('dt', {}, 'Accepted'), h('dd', {}, SB.fmtTime(r.accepted_at)),
        h('dt', {}, 'Started'), h('dd', {}, SB.fmtTime(r.started_at)),
        h('dt', {}, 'Finished'), h('dd', {}, SB.fmtTime(r.finished_at)),
        h('dt', {}, 'Duration'), h('dd', {}, SB.fmtDur(SB.runDuration(r))),
        ...(r.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error' }, r.error)] : []),
        ...(r.collected ? [h('dt', {}, 'Payloads'), h('dd', {}, 'removed by retention')] : []));
    }
    function drawIo() {
      const r = model.run;
      const whole = (name) => async () => (await SB.api('/v1/runs/' + r.id + '?attempts=table&payloads=full'))[name];
      const state = Object.entries(r.state || {});
      io.replaceChildren(
        h('div', {}, h('h2', {}, 'Input'), payloadBox('input', r.input, '(none)', r.input_cut, whole('input'))),
        h('div', {}, h('h2', {}, 'Output'), payloadBox('output', r.output,
          ENDED.includes(r.status) ? '(none)' : '(not yet)', r.output_cut, whole('output'))),
        state.length ? h('div', { id: 'state' }, h('h2', {}, 'State'), h('div', { class: 'table-wrap' }, h('table', {},
          h('thead', {}, h('tr', {}, h('th', {}, 'Key'), h('th', {}, 'Value'))),
          h('tbody', {}, state.slice(0, 200).map(([k, v]) => h('tr', {}, h('td', { class: 'mono' }, k),
            h('td', { class: 'mono' }, v.length > 300 ? v.slice(0, 300) + '…' : v))))))) : '');
    }
    function drawSteps() {
      const steps = model.steps();
      stepsBody.replaceChildren(...steps.map((s) => h('tr', {},
        h('td', {}, s.step), h('td', { class: 'num' }, SB.fmtNum(s.units.size)),
        h('td', { class: 'num' }, SB.fmtNum(s.attempts)),
        h('td', {}, Object.entries(s.outcomes).map(([o, n]) => h('span', {}, SB.status(o), ' ', SB.fmtNum(n), ' '))),
        h('td', { class: 'num hide-narrow' }, SB.fmtDur(s.queue / 1000)),
        h('td', { class: 'num hide-narrow' }, SB.fmtDur(s.exec / 1000)),
        h('td', {}, model.critical.has(s.step) ? '★ on it' : ''))));
      usage.replaceChildren(...(steps.length ? steps.map((s) => h('div', { class: 'usage-step' },
        h('strong', {}, s.step), s.units.size > 1 ? h('span', { class: 'muted' }, ' (highest of '
          + SB.fmtNum(s.units.size) + ' units)') : '',
        usageBars(['fuel', 'memory', 'time', 'scratch'].map((k) => [k, s.use[k][0], s.use[k][1]]))))
        : [h('p', { class: 'muted' }, 'No attempt has ended yet.')]));
    }
    let logSeq = 0;
    async function drawLog() {
      const seq = ++logSeq;
      try {
        const res = await fetch('/v1/runs/' + id + '/log', { credentials: 'same-origin' });
        const text = await res.text();
        if (seq === logSeq) logBox.textContent = res.ok ? text || '(no attempt logged anything)' : text;
      } catch (e) {
        if (seq === logSeq) logBox.textContent = 'The log cannot be read: ' + e.message;
      }
    }
    function drawAll() {
      drawHead();
      drawIo();
      tl.draw();
      drawSteps();
      list.refilter();
      drawLog();
    }
    drawAll();
    // What the browser test and the budget measure: the page shows the run
    // and answers input.
    performance.mark('stepbox:interactive');
    document.documentElement.dataset.interactive = String(Math.round(performance.now()));

    const loadReport = async () => {
      try {
        const report = await SB.api('/v1/runs/' + id + '/report?lanes=none');
        model.critical = new Set(report.critical_path);
        critical.replaceChildren(report.critical_path.length
          ? h('span', {}, h('strong', {}, 'Critical path: '), report.critical_path.join(' → '),
            ' · wall ' + SB.fmtDur(report.wall) + ', waited ' + SB.fmtDur(report.admission_wait) + ' for admission')
          : h('span', { class: 'muted' }, 'No critical path (no step has run).'),
        ...report.insights.slice(0, 5).map((i) => h('span', { class: 'muted' }, h('br'), '• ' + i.message)));
        tl.redraw();
        drawSteps();
      } catch (e) {
        critical.replaceChildren(SB.errorBox(e));
      }
    };
    loadReport();

    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        await SB.api('/v1/runs/' + id + '/cancel', { method: 'POST' });
        SB.toast('Cancelling run #' + id + '…');
      } catch (e) {
        SB.toast('Not cancelled: ' + e.message);
        cancel.disabled = false;
      }
    });
    rerun.addEventListener('click', async () => {
      rerun.disabled = true;
      try {
        const again = await SB.api('/v1/workflows/' + encodeURIComponent(model.run.workflow) + '/runs',
          { method: 'POST', body: JSON.stringify(model.run.input), headers: { 'Content-Type': 'application/json' } });
        SB.go('/ui/runs/' + again.id);
      } catch (e) {
        SB.toast('Not re-run: ' + e.message);
        rerun.disabled = false;
      }
    });

    if (!ENDED.includes(run.status)) follow(id, model, { drawHead, drawAll, tl, list, drawSteps, drawLog, loadReport });
  };

  // Follows the run's events. Events are only queued as they come; each
  // frame applies at most a slice of them, and the costlier summaries (the
  // steps, the list) wait ten times as long as they took last, so however
  // fast news comes the page spends most of its time free for input.
  function follow(id, model, view) {
    // What was recorded when it connects comes as one table, not one event
    // per attempt; what changes after, attempt by attempt.
    const source = new EventSource('/v1/runs/' + id + '/events?history=table');
    let queue = [];
    let frame = 0;
    let summaryAt = 0;
    let summaryTimer = 0;
    let closed = false;
    const SLICE = 1500;
    const summaries = () => {
      summaryTimer = 0;
      const start = performance.now();
      view.drawSteps();
      view.list.refilter();
      summaryAt = performance.now() + Math.max(250, 10 * (performance.now() - start));
    };
    const flush = () => {
      frame = 0;
      const batch = queue.length > SLICE ? queue.splice(0, SLICE) : queue.splice(0);
      for (const data of batch) model.upsert(JSON.parse(data));
      view.tl.redraw();
      if (queue.length) frame = requestAnimationFrame(flush);
      if (!summaryTimer) summaryTimer = setTimeout(summaries, Math.max(0, summaryAt - performance.now()));
    };
    source.addEventListener('attempt', (e) => {
      queue.push(e.data);
      if (!frame) frame = requestAnimationFrame(flush);
    });
    source.addEventListener('table', (e) => {
      for (const a of fromTable(JSON.parse(e.data))) model.upsert(a);
      view.tl.redraw();
      if (!summaryTimer) summaryTimer = setTimeout(summaries, Math.max(0, summaryAt - performance.now()));
    });
    source.addEventListener('status', (e) => {
      model.run.status = JSON.parse(e.data).status;
      view.drawHead();
    });
    source.addEventListener('end', async () => {
      // No more events; those queued are still applied a slice per frame.
      source.close();
      const ended = SB.api('/v1/runs/' + id + '?attempts=none');
      await new Promise((resolve) => {
        const drained = () => (queue.length && !closed ? requestAnimationFrame(drained) : resolve());
        drained();
      });
      if (closed) return;
      close();
      try {
        // The events brought every attempt; only the run's end is news.
        model.run = await ended;
        view.drawAll();
        view.loadReport();
      } catch (_) { /* the page stays as it was */ }
    });
    source.addEventListener('error', (e) => {
      if (e.data) SB.toast('The run cannot be followed: ' + JSON.parse(e.data).detail);
    });
    // Running bars grow with time even without news.
    const tick = setInterval(() => view.tl.redraw(), 500);
    function close() {
      if (closed) return;
      closed = true;
      source.close();
      clearInterval(tick);
      clearTimeout(summaryTimer);
      if (frame) cancelAnimationFrame(frame);
    }
    SB.onLeave(close);
  }

  function show(v) {
    if (v === null || v === undefined) return '(none)';
    return typeof v === 'string' ? v : JSON.stringify(v, null, 2);
  }

  // A payload in a <pre>: a long one is cut, with a button for the rest,
  // since laying out a megabyte of text would stall the page.
  const CUT = 4000;
  function payloadBox(id, v, empty, cut, whole) {
    const pre = h('pre', { class: 'data', id });
    if (v === null || v === undefined) {
      pre.textContent = empty;
      return pre;
    }
    if (cut) {
      // The server sent the first few KiB only.
      pre.textContent = v + '\n…';
      const more = h('button', { type: 'button', class: 'secondary' }, 'Show all ' + SB.fmtBytes(cut));
      more.addEventListener('click', async () => {
        more.disabled = true;
        try {
          const text = await whole();
          pre.textContent = typeof text === 'string' ? text : JSON.stringify(text, null, 1);
          more.remove();
        } catch (e) {
          more.disabled = false;
          SB.toast('Cannot read it: ' + e.message);
        }
      });
      return h('div', {}, pre, more);
    }
    const text = typeof v === 'string' ? v : JSON.stringify(v, null, 1);
    if (text.length <= CUT) {
      pre.textContent = typeof v === 'string' ? v : JSON.stringify(v, null, 2);
      return pre;
    }
    pre.textContent = text.slice(0, CUT) + '\n…';
    const more = h('button', { type: 'button', class: 'secondary' }, 'Show all ' + SB.fmtBytes(text.length));
    more.addEventListener('click', () => { pre.textContent = text; more.remove(); });
    return h('div', {}, pre, more);
  }

  async function showAttempt(id, box, a) {
    if (a.partial) {
      box.replaceChildren(h('p', { class: 'muted' }, 'Reading ' + unitName(a) + ' · attempt ' + a.attempt + '…'));
      const q = new URLSearchParams({ step: a.step, attempt: a.attempt });
      if (a.item !== null && a.item !== undefined) q.set('item', a.item);
      try {
        const found = (await SB.api('/v1/runs/' + id + '/attempts?' + q)).attempts[0];
        if (found) a = found;
      } catch (e) {
        box.replaceChildren(SB.errorBox(e));
        return;
      }
    }
    const ended = a.status !== 'started';
    box.replaceChildren(
      h('h3', {}, unitName(a) + ' · attempt ' + a.attempt + ' ', SB.status(outcomeOf(a))),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Started'), h('dd', {}, SB.fmtTime(a.started_at)),
        h('dt', {}, 'Waited'), h('dd', {}, ended ? SB.fmtDur(a.usage.queue_wait / 1000) : '—'),
        h('dt', {}, 'Ran'), h('dd', {}, ended ? SB.fmtDur(a.usage.wall_time / 1000) : 'running'),
        h('dt', {}, 'Component'), h('dd', { class: 'mono' }, a.component || '—'),
        ...(a.message ? [h('dt', {}, 'Message'), h('dd', { class: 'error' }, a.message)] : []),
        ...(a.timeout_level ? [h('dt', {}, 'Timeout'), h('dd', {}, a.timeout_level)] : []),
        h('dt', {}, 'Last word'), h('dd', {}, a.last ? 'yes' : 'no: retried')),
      ended ? usageBars(usageOf(a)) : '',
      h('h4', {}, 'Output'), payloadBox(null, a.output, '(none)'),
      h('h4', {}, 'Log'), payloadBox(null, a.log || null, '(empty)'));
  }
})();
