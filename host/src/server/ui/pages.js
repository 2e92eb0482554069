// stepbox dashboard: the workflows, a workflow (its DAG and statistics) and
// the host's health.
'use strict';

(function () {
  const SB = window.SB;
  const h = SB.h;
  const SVG = 'http://www.w3.org/2000/svg';
  const s = (tag, attrs, ...children) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  };
  const pct = (x) => (x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 1) + '%';

  SB.pages.workflows = async function workflowsPage(main) {
    const data = await SB.api('/v1/workflows');
    main.append(h('h1', {}, 'Workflows'));
    if (!data.workflows.length) {
      main.append(h('p', { class: 'muted' }, 'No workflow uploaded yet: ', h('code', {}, 'PUT /v1/workflows/NAME'),
        ', or ', h('code', {}, 'stepbox run --server URL workflow.yaml'), '.'));
      return;
    }
    main.append(h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Workflow'), h('th', {}, 'Runs'))),
      h('tbody', {}, data.workflows.map((w) => h('tr', {},
        h('td', {}, h('a', { href: '/ui/workflows/' + encodeURIComponent(w.name), 'data-row': '' }, w.name)),
        h('td', {}, h('a', { href: '/ui/runs?workflow=' + encodeURIComponent(w.name) }, 'its runs'))))))));
  };

  // Layers by longest path from a root; within a layer, in file order.
  function dag(steps, stats) {
    const index = new Map(steps.map((st, i) => [st.id, i]));
    const depth = new Array(steps.length).fill(-1);
    const visit = (i, seen) => {
      if (depth[i] >= 0) return depth[i];
      if (seen.has(i)) return 0;
      seen.add(i);
      let d = 0;
      for (const n of steps[i].needs) if (index.has(n)) d = Math.max(d, visit(index.get(n), seen) + 1);
      depth[i] = d;
      return d;
    };
    steps.forEach((_, i) => visit(i, new Set()));
    const layers = [];
    steps.forEach((st, i) => (layers[depth[i]] = layers[depth[i]] || []).push(i));
    const W = 190;
    const H = 62;
    const GX = 60;
    const GY = 18;
    const pos = [];
    layers.forEach((layer, x) => layer.forEach((i, y) => { pos[i] = { x: 10 + x * (W + GX), y: 10 + y * (H + GY) }; }));
    const width = 20 + layers.length * (W + GX) - GX;
    const height = 20 + Math.max(...layers.map((l) => l.length)) * (H + GY) - GY;
    const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img',
      'aria-label': 'The workflow as a graph: ' + steps.map((st) => st.id + (st.needs.length ? ' needs '
        + st.needs.join(', ') : '')).join('; ') });
    svg.append(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: 'auto-start-reverse' }, s('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#5b6470' }))));
    steps.forEach((st, i) => {
      for (const n of st.needs) {
        if (!index.has(n)) continue;
        const a = pos[index.get(n)];
        const b = pos[i];
        const x1 = a.x + W;
        const y1 = a.y + H / 2;
        const x2 = b.x;
        const y2 = b.y + H / 2;
        svg.append(s('path', { d: `M ${x1} ${y1} C ${x1 + GX / 2} ${y1}, ${x2 - GX / 2} ${y2}, ${x2} ${y2}`,
          fill: 'none', stroke: '#5b6470', 'stroke-width': 1.5, 'marker-end': 'url(#arrow)' }));
      }
    });
    steps.forEach((st, i) => {
      const p = pos[i];
      const stat = stats.get(st.id);
      const bad = stat && stat.error_rate > 0;
      const g = s('g', {});
      g.append(s('rect', { x: p.x, y: p.y, width: W, height: H, rx: 8, fill: '#fff',
        stroke: bad ? '#c62828' : '#1f4e79', 'stroke-width': bad ? 2 : 1.5 }));
      g.append(s('text', { x: p.x + 10, y: p.y + 20, 'font-weight': 600 }, st.id + (st.for_each ? ' (for_each)' : '')));
      g.append(s('text', { x: p.x + 10, y: p.y + 38, fill: '#5b6470' },
        stat ? 'p50 ' + SB.fmtDur(stat.p50) + ' · p95 ' + SB.fmtDur(stat.p95) : 'no attempts yet'));
      g.append(s('text', { x: p.x + 10, y: p.y + 54, fill: bad ? '#c62828' : '#5b6470' },
        stat ? (bad ? '✗ ' : '✓ ') + pct(stat.error_rate) + ' errors · ' + SB.fmtNum(stat.attempts) : ''));
      g.append(s('title', {}, st.id + (st.for_each ? ' (for_each)' : '') + (st.needs.length ? ', needs '
        + st.needs.join(', ') : '')));
      svg.append(g);
    });
    return svg;
  }

  const statsTable = (rows, what) => h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, what), h('th', { class: 'num' }, 'Attempts'),
      h('th', { class: 'num' }, 'Errors'), h('th', { class: 'num' }, 'p50'), h('th', { class: 'num' }, 'p95'),
      h('th', { class: 'num' }, 'p99'), h('th', { class: 'num hide-narrow' }, 'Mean fuel'),
      h('th', { class: 'num hide-narrow' }, 'Max memory'))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', {},
      h('td', { class: 'mono' }, r.component), h('td', { class: 'num' }, SB.fmtNum(r.attempts)),
      h('td', { class: 'num' }, pct(r.error_rate)), h('td', { class: 'num' }, SB.fmtDur(r.p50)),
      h('td', { class: 'num' }, SB.fmtDur(r.p95)), h('td', { class: 'num' }, SB.fmtDur(r.p99)),
      h('td', { class: 'num hide-narrow' }, SB.fmtNum(r.mean_fuel)),
      h('td', { class: 'num hide-narrow' }, SB.fmtBytes(r.max_memory))))
      : h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No attempts yet.')))));

  SB.pages.workflow = async function workflowPage(main, name) {
    const enc = encodeURIComponent(name);
    const [wf, report] = await Promise.all([
      SB.api('/v1/workflows/' + enc).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
      SB.api('/v1/workflows/' + enc + '/report?last=100'),
    ]);
    const stats = new Map(report.steps.map((r) => [r.component, r]));
    main.append(h('h1', {}, 'Workflow ', h('code', {}, name),
      h('span', { class: 'actions' }, h('a', { href: '/ui/runs?workflow=' + enc }, 'All its runs'))));
    if (wf && wf.description) main.append(h('p', {}, wf.description));
    main.append(h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('dl', { class: 'facts' },
        h('dt', {}, 'Runs looked at'), h('dd', {}, SB.fmtNum(report.runs) + ' (the last 100 at most)'),
        h('dt', {}, 'Ended'), h('dd', {}, SB.fmtNum(report.ended)),
        h('dt', {}, 'Failed'), h('dd', {}, SB.fmtNum(report.failed) + ' (' + pct(report.error_rate) + ')'),
        h('dt', {}, 'Duration p50'), h('dd', {}, SB.fmtDur(report.duration_ms.p50)),
        h('dt', {}, 'p95 / p99'), h('dd', {}, SB.fmtDur(report.duration_ms.p95) + ' / '
          + SB.fmtDur(report.duration_ms.p99))))));
    main.append(h('h2', {}, 'Steps'));
    if (wf) main.append(h('div', { class: 'panel dag', id: 'dag' }, dag(wf.steps, stats)));
    else main.append(h('p', { class: 'muted' }, 'The workflow is no longer uploaded; its runs remain.'));
    main.append(h('h2', {}, 'Per step'), statsTable(report.steps, 'Step'),
      h('h2', {}, 'Per component'), statsTable(report.components, 'Component'),
      h('h2', {}, 'Recent runs'), h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Run'), h('th', {}, 'Status'),
          h('th', {}, 'Accepted'), h('th', { class: 'num' }, 'Duration'), h('th', { class: 'hide-narrow' }, 'Error'))),
        h('tbody', {}, report.recent.slice(0, 20).map((r) => h('tr', {},
          h('td', { class: 'num' }, h('a', { href: '/ui/runs/' + r.id, 'data-row': '' }, '#' + r.id)),
          h('td', {}, SB.status(r.status)), h('td', {}, SB.fmtTime(r.accepted_at)),
          h('td', { class: 'num' }, SB.fmtDur(SB.runDuration(r))),
          h('td', { class: 'hide-narrow error' }, r.error || '')))))));
    if (wf) {
      main.append(h('h2', {}, 'Definition'), h('pre', { class: 'data' }, wf.source));
    }
  };

  SB.pages.host = async function hostPage(main) {
    const cards = h('div', { class: 'grid', id: 'host-cards' });
    const breakers = h('div', {});
    const hosts = h('div', {});
    main.append(h('h1', {}, 'Host'), cards, h('h2', {}, 'Circuit breakers'), breakers,
      h('h2', {}, 'Hosts sharing the journal'), hosts);
    const card = (label, value, note) => h('div', { class: 'panel' }, h('div', { class: 'muted' }, label),
      h('div', { class: 'big', dataset: { metric: label } }, h('strong', {}, value)), note ? h('small', { class: 'muted' }, note) : '');
    const draw = async () => {
      const [o, hs] = await Promise.all([SB.api('/v1/overview'), SB.api('/v1/hosts')]);
      const t = o.host.throughput;
      cards.replaceChildren(
        card('Throughput', t.attempts_per_second.toFixed(1) + ' attempts/s',
          'over the last ' + t.window_seconds + ' s; ' + SB.fmtNum(t.failed) + ' did not complete'),
        card('Queue depth', SB.fmtNum(o.host.queued_runs) + ' runs', 'waiting for admission'),
        card('Running', SB.fmtNum(o.host.running_runs) + ' runs', o.host.stopping ? 'stopping: new runs refused' : ''),
        card('Instances in use', SB.fmtNum(o.host.instances_in_use), SB.fmtBytes(o.host.memory_in_use) + ' reserved'),
        card('Journal', o.host.store, o.open ? 'open server' : 'tenant ' + o.tenant));
      const open = o.host.breakers.filter((b) => b.state !== 'closed');
      breakers.replaceChildren(o.host.breakers.length ? h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Component'), h('th', {}, 'State'))),
        h('tbody', {}, o.host.breakers.map((b) => h('tr', {}, h('td', { class: 'mono' }, b.component),
          h('td', {}, h('span', { class: 'status s-' + (b.state === 'open' ? 'failed' : b.state === 'closed'
            ? 'succeeded' : 'retryable') }, b.state)))))))
        : h('p', { class: 'muted' }, 'No component has run yet.'),
      h('p', { class: 'muted' }, open.length ? SB.fmtNum(open.length) + ' not closed.' : 'All closed.'));
      hosts.replaceChildren(hs.hosts.length ? h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Owner'), h('th', {}, 'Heartbeat'), h('th', {}, 'Lease until'),
          h('th', { class: 'num' }, 'Runs it owns'))),
        h('tbody', {}, hs.hosts.map((x) => h('tr', {}, h('td', { class: 'mono' }, x.owner),
          h('td', {}, SB.fmtTime(x.heartbeat_at)), h('td', {}, SB.fmtTime(x.lease_until)),
          h('td', { class: 'num' }, SB.fmtNum(x.runs)))))))
        : h('p', { class: 'muted' }, o.host.store === 'postgres' ? 'No host holds a lease now.'
          : 'One host (SQLite): no run is in flight.'));
    };
    await draw();
    SB.every(2000, draw);
  };
})();
