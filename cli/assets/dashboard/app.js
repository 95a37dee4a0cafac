// The proxybus dashboard: one EventSource on `events` (a `snapshot`, then `proxy`, `removed`,
// `timeline`, `feedback` and `feeds` events; see cli/src/dashboard/mod.rs), rendered with the DOM
// (text only, never HTML from the server) and uPlot charts.
'use strict';
(() => {
  const token = new URLSearchParams(location.search).get('token');
  const query = token ? '?token=' + encodeURIComponent(token) : '';
  const HOUR = 3600;
  const MAX_RECENT = 25;
  const STATES = ['healthy', 'degraded', 'ejected'];
  const COLORS = { healthy: '#1f9d6b', degraded: '#d08a00', ejected: '#d2334a', bar: '#7a4fd1' };
  const PALETTE = ['#3b6fd1', '#1f9d6b', '#d2334a', '#d08a00', '#7a4fd1', '#14a3b8', '#8a5a2b', '#c2409a'];

  const model = { proxies: new Map(), timeline: [], feedback: [], minutes: new Map(), feeds: null, feedSamples: [], skew: 0 };
  const rows = new Map();
  const sparks = new Map();
  const charts = {};
  // The uPlot instances by name, for the browser test and the console (read only).
  window.proxybusCharts = charts;

  const nowMs = () => Date.now() + model.skew;
  const nowS = () => Math.floor(nowMs() / 1000);
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v; else if (k.startsWith('data-')) node.setAttribute(k, v); else node[k] = v;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function left(until) {
    if (!until) return '';
    let s = Math.round((Date.parse(until) - nowMs()) / 1000);
    if (s <= 0) return 'ending';
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const pad = (n) => String(n).padStart(2, '0');
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}:${pad(m)}:${pad(s)}`;
    return `${m}:${pad(s)}`;
  }

  const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour12: false });
  const ms = (v) => (v === null || v === undefined ? '' : Math.round(v).toString());

  function sortKey(p) { return `${p.region || '~'}\u0000${p.proxy_id}`; }

  // ---- proxies table ----
  function renderProxy(p) {
    let row = rows.get(p.proxy_id);
    if (!row) {
      row = el('tr', { class: 'proxy', 'data-proxy-id': p.proxy_id });
      row.cells_ = {};
      for (const name of ['proxy', 'region', 'state', 'success', 'trend', 'p50', 'p99', 'events', 'ejections', 'bars', 'operator', 'error']) {
        const td = el('td', { class: ['success', 'p50', 'p99', 'events', 'ejections'].includes(name) ? 'num' : '' });
        td.dataset.col = name;
        row.cells_[name] = td;
        row.append(td);
      }
      row.cells_.trend.append(el('div', { class: 'spark' }));
      const body = $('proxies').tBodies[0];
      const after = [...body.rows].find((r) => sortKey(model.proxies.get(r.dataset.proxyId) || {}) > sortKey(p));
      body.insertBefore(row, after || null);
      rows.set(p.proxy_id, row);
    }
    const c = row.cells_;
    row.dataset.state = p.state;
    row.dataset.region = p.region || '';
    c.proxy.replaceChildren(el('span', { class: 'url' }, p.proxy_url), el('span', { class: 'id' }, p.proxy_id));
    c.region.textContent = p.region || '';
    c.state.replaceChildren(el('span', { class: `badge ${p.state}` }, p.state));
    if (p.state === 'ejected') c.state.append(' ', el('span', { class: 'left', 'data-until': p.ejected_until || '' }, left(p.ejected_until)));
    c.success.textContent = p.total ? `${(p.success_rate * 100).toFixed(1)}%` : '';
    c.p50.textContent = ms(p.latency_p50_ms);
    c.p99.textContent = ms(p.latency_p99_ms);
    c.events.textContent = p.total;
    c.ejections.textContent = p.ejections;
    c.bars.replaceChildren(...p.bars.map((b) =>
      el('span', { class: `chip ${b.state}`, title: b.last_error_kind || '' }, `${b.exchange} ${b.state} `,
        el('span', { class: 'left', 'data-until': b.until || '' }, left(b.until)))));
    c.operator.replaceChildren(...(p.operator_controls || []).map((o) =>
      el('span', { class: `chip operator ${o.action}`, title: `${o.operator} at ${clock(o.at)}: ${o.reason} (stream seq ${o.seq})` },
        `${o.action}${o.exchange ? ` ${o.exchange}` : ''} by ${o.operator} `,
        el('span', { class: 'left', 'data-until': o.until || '' }, left(o.until)))));
    c.error.textContent = p.last_error_kind || '';
    renderSpark(p, c.trend.firstChild);
  }

  function renderSpark(p, box) {
    if (!window.uPlot) return;
    const xs = p.history.map((h) => h[0]);
    const ys = p.history.map((h) => h[1]);
    xs.push(Math.max(nowS(), xs.length ? xs[xs.length - 1] : 0));
    ys.push(p.success_rate);
    const data = [xs, ys];
    const color = p.state === 'ejected' ? COLORS.ejected : p.state === 'degraded' ? COLORS.degraded : COLORS.healthy;
    let chart = sparks.get(p.proxy_id);
    if (chart && chart.color_ !== color) {
      chart.destroy();
      box.replaceChildren();
      chart = null;
    }
    if (!chart) {
      chart = new uPlot({
        width: 110, height: 26, cursor: { show: false }, legend: { show: false }, select: { show: false },
        axes: [{ show: false }, { show: false }],
        scales: { x: { time: true }, y: { range: [0, 1.05] } },
        series: [{}, { stroke: color, width: 1.5, fill: color + '26', points: { show: false } }],
      }, data, box);
      chart.color_ = color;
      sparks.set(p.proxy_id, chart);
    } else {
      chart.setData(data);
    }
  }

  function removeProxy(id) {
    const row = rows.get(id);
    if (row) row.remove();
    rows.delete(id);
    const chart = sparks.get(id);
    if (chart) chart.destroy();
    sparks.delete(id);
    model.proxies.delete(id);
  }

  // ---- regions and totals ----
  function renderRegions() {
    const regions = new Map();
    const totals = { healthy: 0, degraded: 0, ejected: 0 };
    for (const p of model.proxies.values()) {
      const r = p.region || '(no region)';
      if (!regions.has(r)) regions.set(r, { healthy: 0, degraded: 0, ejected: 0 });
      regions.get(r)[p.state] += 1;
      totals[p.state] += 1;
    }
    const cards = [...regions.keys()].sort().map((name) => {
      const n = regions.get(name);
      const all = n.healthy + n.degraded + n.ejected;
      return el('div', { class: 'region', 'data-region': name },
        el('h3', {}, name),
        ...STATES.map((s) => el('span', { class: `n ${s}`, 'data-state': s }, `${n[s]} ${s}`)),
        el('div', { class: 'stack' }, ...STATES.map((s) => {
          const part = el('span', { class: s });
          part.style.width = `${(100 * n[s]) / all}%`;
          return part;
        })));
    });
    $('regions').replaceChildren(...(cards.length ? cards : [el('p', { class: 'empty' }, 'no proxy has reported yet')]));
    const count = model.proxies.size;
    $('proxy-count').textContent = `(${count})`;
    $('totals').textContent = `${count} proxies · ${totals.healthy} healthy · ${totals.degraded} degraded · ${totals.ejected} ejected`;
  }

  // ---- charts over the last hour, one point per minute ----
  function minutesOfTheHour() {
    const end = Math.floor(nowS() / 60) * 60;
    const xs = [];
    for (let t = end - HOUR + 60; t <= end; t += 60) xs.push(t);
    return xs;
  }

  function chart(name, box, series, data, perMinute = true) {
    if (!window.uPlot) return;
    const width = Math.max(300, box.clientWidth || 500);
    if (!charts[name]) {
      charts[name] = new uPlot({
        width, height: 170, legend: { show: true }, cursor: { drag: { x: false, y: false } },
        // Each minute's bars stand beside its start; the scale leaves room for the last minute's.
        scales: {
          x: perMinute ? { time: true, range: (u, min, max) => [min - 30, max + 60] } : { time: true },
          y: { range: (u, min, max) => [0, Math.max(1, Math.ceil(max * 1.15))] },
        },
        axes: [{}, { size: 40 }],
        series: [{}, ...series],
      }, data, box);
    } else {
      charts[name].setData(data);
      if (Math.abs(charts[name].width - width) > 4) charts[name].setSize({ width, height: 170 });
    }
  }

  function bars(align) {
    return window.uPlot && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.4, 12], align }) : undefined;
  }

  function renderTimeline() {
    const start = nowS() - HOUR;
    model.timeline = model.timeline.filter((e) => Date.parse(e.at) / 1000 >= start);
    const xs = minutesOfTheHour();
    const count = (kinds) => xs.map((x) => model.timeline.filter((e) => {
      const t = Date.parse(e.at) / 1000;
      return kinds.includes(e.kind) && t >= x && t < x + 60;
    }).length);
    chart('timeline', $('timeline-chart'), [
      { label: 'ejections', stroke: COLORS.ejected, fill: COLORS.ejected, paths: bars(-1), points: { show: false } },
      { label: 'exchange bars', stroke: COLORS.bar, fill: COLORS.bar, paths: bars(1), points: { show: false } },
      { label: 'recoveries', stroke: COLORS.healthy, width: 2, points: { show: true, size: 5 } },
    ], [xs, count(['ejected']), count(['barred']), count(['recovered', 'unbarred'])]);
    const items = model.timeline.slice(-60).reverse().map((e) => el('li', { 'data-kind': e.kind },
      el('time', {}, clock(e.at)),
      el('span', { class: e.kind }, e.kind.replace('unbarred', 'bar ended')), ' ',
      e.operator ? `${e.operator.action}${e.exchange ? ` for ${e.exchange}` : ''} of ` : (e.exchange ? `by ${e.exchange} ` : ''),
      `${e.proxy_id}`, e.region ? ` (${e.region})` : '',
      e.until ? ` until ${clock(e.until)}` : '',
      e.operator ? ` by ${e.operator.operator}: ${e.operator.reason}` : ''));
    $('timeline').replaceChildren(...(items.length ? items : [el('li', { class: 'empty' }, 'nothing happened in the last hour')]));
  }

  function renderFeedback() {
    const xs = minutesOfTheHour();
    chart('feedback', $('feedback-chart'), [
      { label: 'ok', stroke: COLORS.healthy, fill: COLORS.healthy, paths: bars(-1), points: { show: false } },
      { label: 'failed', stroke: COLORS.ejected, fill: COLORS.ejected, paths: bars(1), points: { show: false } },
    ], [xs, xs.map((x) => (model.minutes.get(x) || {}).ok || 0), xs.map((x) => (model.minutes.get(x) || {}).failed || 0)]);
    const items = model.feedback.slice().reverse().map((f) => el('li', {},
      el('time', {}, clock(f.at)),
      el('span', { class: f.success ? 'ok' : 'failed' }, f.success ? 'ok' : (f.error_kind || 'failed')), ' ',
      `${f.exchange} ${f.connection} via ${f.proxy_id}`, f.latency_ms !== null && f.latency_ms !== undefined ? ` ${f.latency_ms} ms` : ''));
    $('feedback').replaceChildren(...(items.length ? items : [el('li', { class: 'empty' }, 'no feedback in the last hour')]));
  }

  // ---- lab feeds ----
  function setFeeds(feeds) {
    model.feeds = feeds;
    model.feedSamples.push([nowS(), feeds.map((f) => f.messages_per_second || 0)]);
    if (model.feedSamples.length > 600) model.feedSamples.shift();
    renderFeeds();
  }

  function renderFeeds() {
    const feeds = model.feeds;
    if (!feeds || !feeds.length) return;
    $('feeds-section').hidden = false;
    $('feeds').tBodies[0].replaceChildren(...feeds.map((f) => {
      const errors = Object.entries(f.errors || {}).map(([k, n]) => `${k}=${n}`).join(' ');
      return el('tr', { class: 'feed', 'data-feed': f.name },
        el('td', {}, f.name), el('td', {}, f.exchange), el('td', {}, f.connection),
        el('td', {}, f.connected ? 'yes' : 'no'), el('td', { class: 'num' }, (f.messages_per_second || 0).toFixed(1)),
        el('td', { class: 'num' }, f.messages), el('td', { class: 'num' }, f.reconnects),
        el('td', {}, errors), el('td', {}, f.proxy || ''));
    }));
    const names = feeds.map((f) => f.name).join('\u0000');
    if (charts.feeds && charts.feedsNames !== names) { charts.feeds.destroy(); delete charts.feeds; $('feeds-chart').replaceChildren(); }
    charts.feedsNames = names;
    const samples = model.feedSamples.filter((s) => s[1].length === feeds.length);
    // At least the last minute: uPlot gives a lone point a day of time axis (a page open
    // for seconds showed 2027 to 2029, each feed a dot at the left edge), so while the
    // samples span less than a minute an empty one a minute before the newest comes first.
    if (samples.length && samples[samples.length - 1][0] - samples[0][0] < 60) {
      samples.unshift([samples[samples.length - 1][0] - 60, feeds.map(() => null)]);
    }
    const data = [samples.map((s) => s[0]), ...feeds.map((_, i) => samples.map((s) => s[1][i]))];
    chart('feeds', $('feeds-chart'), feeds.map((f, i) => ({ label: `${f.name} msgs/s`, stroke: PALETTE[i % PALETTE.length], width: 1.5 })), data, false);
  }

  // ---- the event stream ----
  function renderAll() {
    for (const id of [...rows.keys()]) if (!model.proxies.has(id)) removeProxy(id);
    for (const p of model.proxies.values()) renderProxy(p);
    renderRegions();
    renderTimeline();
    renderFeedback();
    renderFeeds();
  }

  let pending = false;
  function soon(fn) {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; fn(); }, 250);
  }

  function connect() {
    const status = $('status');
    const source = new EventSource('events' + query);
    source.onopen = () => { status.dataset.status = 'live'; status.textContent = 'live'; };
    source.onerror = () => { status.dataset.status = 'reconnecting'; status.textContent = 'reconnecting…'; };
    source.addEventListener('snapshot', (e) => {
      const s = JSON.parse(e.data);
      model.skew = Date.parse(s.now) - Date.now();
      model.proxies = new Map(s.proxies.map((p) => [p.proxy_id, p]));
      model.timeline = s.timeline;
      model.feedback = s.feedback;
      model.minutes = new Map(s.minutes.map((m) => [m.minute, m]));
      if (s.feeds) setFeeds(s.feeds);
      renderAll();
    });
    source.addEventListener('proxy', (e) => {
      const p = JSON.parse(e.data);
      model.proxies.set(p.proxy_id, p);
      renderProxy(p);
      renderRegions();
    });
    source.addEventListener('removed', (e) => { removeProxy(JSON.parse(e.data).proxy_id); renderRegions(); });
    source.addEventListener('timeline', (e) => { model.timeline.push(JSON.parse(e.data)); soon(renderTimeline); });
    source.addEventListener('feedback', (e) => {
      const f = JSON.parse(e.data);
      model.feedback.push(f);
      if (model.feedback.length > MAX_RECENT) model.feedback.shift();
      const minute = Math.floor(Date.parse(f.at) / 60000) * 60;
      const m = model.minutes.get(minute) || { minute, ok: 0, failed: 0 };
      if (f.success) m.ok += 1; else m.failed += 1;
      model.minutes.set(minute, m);
      soon(renderFeedback);
    });
    source.addEventListener('feeds', (e) => setFeeds(JSON.parse(e.data)));
  }

  // Time left counts down between events; the hour's charts move on.
  setInterval(() => {
    for (const span of document.querySelectorAll('span.left[data-until]')) span.textContent = left(span.dataset.until);
  }, 1000);
  setInterval(() => { renderTimeline(); renderFeedback(); }, 15000);
  window.addEventListener('resize', () => { renderTimeline(); renderFeedback(); renderFeeds(); });

  connect();
})();
