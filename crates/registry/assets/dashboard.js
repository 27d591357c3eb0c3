// The registry dashboard: polls /v1/dashboard (every node's stats, gathered by the
// registry), charts the last five minutes per node, and relays admin calls.
// Text only (textContent): node values come from etcd and are not trusted as HTML.
'use strict';

const POLL_MS = 1000;
const WINDOW_S = 300;
const KEY_ITEM = 'pushcenter.dashboard.api_key';
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22'];

const $ = id => document.getElementById(id);
const whole = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });
const one = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });
const two = new Intl.NumberFormat('en', { maximumFractionDigits: 2 });
const compact = new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 1 });
const fmt = v => {
  if (v == null) return '–';
  const a = Math.abs(v);
  return (a < 10 ? two : a < 100 ? one : whole).format(v);
};
const clock = t => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

// Counter rates and the latency quantile come from two successive samples of a node.
function rate(name) {
  return (cur, prev) => {
    if (!prev || prev.started_at !== cur.started_at) return null;
    const dt = (cur.at_ms - prev.at_ms) / 1000;
    const d = cur.stats[name] - prev.stats[name];
    return dt > 0 && d >= 0 ? d / dt : null;
  };
}

// p99 of the deliveries between the two samples, in ms: the difference of the
// cumulative buckets, interpolated inside the bucket that holds it.
function p99(cur, prev) {
  const a = prev && prev.started_at === cur.started_at ? prev.latency : null;
  const b = cur.latency;
  if (!a || !b || a.le.length !== b.le.length) return null;
  const total = b.count - a.count;
  if (total <= 0) return null;
  const want = 0.99 * total;
  let below = 0;
  let lower = 0;
  for (let i = 0; i < b.le.length; i++) {
    const upto = b.buckets[i] - a.buckets[i];
    if (upto >= want) {
      const inside = upto - below;
      return (lower + (b.le[i] - lower) * (inside > 0 ? (want - below) / inside : 1)) * 1000;
    }
    below = upto;
    lower = b.le[i];
  }
  // Past the last bound (10 s): shown as that bound.
  return lower * 1000;
}

const CHARTS = [
  { id: 'connections', title: 'connections', note: 'open client connections', value: c => c.stats.connections },
  { id: 'deliveries', title: 'deliveries/s', note: 'MESSAGE frames queued to subscribers', value: rate('messages_delivered_total') },
  { id: 'publishes', title: 'publishes/s', note: 'accepted over HTTP and STOMP SEND', value: rate('messages_published_total') },
  { id: 'latency', title: 'p99 delivery latency (ms)', note: 'publish to socket write, per interval', value: p99 },
  { id: 'lag', title: 'Kafka consumer lag (records)', note: 'all partitions, not yet read', value: c => c.stats.kafka_consumer_lag_total ?? null },
  { id: 'queued', title: 'queued messages', note: 'waiting in outbound queues', value: c => c.stats.queued_messages },
];

// What the test and a curious operator can read from the console.
const dashboard = (window.dashboard = { charts: {}, history: [], last: null, polls: 0 });
const previous = new Map(); // node id -> its last sample with stats
let seriesKey = '';

function sample(n) {
  const prev = previous.get(n.node_id);
  const values = {};
  for (const c of CHARTS) values[c.id] = n.stats ? c.value(n, prev) : null;
  if (n.stats) previous.set(n.node_id, n);
  return values;
}

function draining(n) {
  return n.draining || (n.stats && n.stats.draining === true);
}

function record(g) {
  const point = { t: g.at_ms / 1000, nodes: {} };
  for (const n of g.nodes) point.nodes[n.node_id] = sample(n);
  const h = dashboard.history;
  h.push(point);
  while (h.length && h[0].t < point.t - WINDOW_S) h.shift();
  return point;
}

// Every node seen in the window keeps its series (and its color) until it leaves it.
function nodeIds() {
  const ids = new Set();
  for (const p of dashboard.history) for (const id of Object.keys(p.nodes)) ids.add(id);
  return [...ids].sort();
}

function chartWidth(fig) {
  return Math.max(280, fig.clientWidth - 10);
}

function buildCharts(ids, states) {
  const box = $('charts');
  for (const c of Object.values(dashboard.charts)) c.destroy();
  dashboard.charts = {};
  box.replaceChildren();
  if (typeof uPlot !== 'function') {
    box.textContent = 'charts unavailable: /assets/uPlot.iife.min.js did not load';
    return;
  }
  for (const c of CHARTS) {
    const fig = document.createElement('figure');
    fig.className = 'chart';
    fig.id = 'chart-' + c.id;
    const cap = document.createElement('figcaption');
    cap.textContent = c.title + ' ';
    const note = document.createElement('small');
    note.textContent = c.note;
    cap.appendChild(note);
    fig.appendChild(cap);
    box.appendChild(fig);
    const opts = {
      width: chartWidth(fig),
      height: 150,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      series: [
        { label: '', value: (u, t) => (t == null ? '' : clock(t)) },
        ...ids.map((id, i) => ({
          label: states.get(id) ? id + ' (draining)' : id,
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          dash: states.get(id) ? [6, 4] : undefined,
          value: (u, v) => fmt(v),
        })),
      ],
      axes: [{ space: 60 }, { size: 48, values: (u, vals) => vals.map(v => (v == null ? '' : compact.format(v))) }],
      legend: { live: true },
    };
    dashboard.charts[c.id] = windowed(new uPlot(opts, data(c, ids), fig));
  }
}

// A fixed five minutes, the newest sample on the right (also with a single sample);
// the legend shows the newest values unless the cursor points at others.
function windowed(u) {
  const xs = u.data[0];
  if (!xs.length) return u;
  u.setScale('x', { min: xs[xs.length - 1] - WINDOW_S, max: xs[xs.length - 1] });
  if (!(u.cursor.left >= 0)) u.setLegend({ idx: xs.length - 1 });
  return u;
}

function data(c, ids) {
  const h = dashboard.history;
  return [h.map(p => p.t), ...ids.map(id => h.map(p => (p.nodes[id] ? p.nodes[id][c.id] : null)))];
}

function drawCharts(g) {
  const ids = nodeIds();
  const states = new Map(g.nodes.map(n => [n.node_id, draining(n)]));
  const key = ids.map(id => id + (states.get(id) ? '!' : '')).join(',');
  if (key !== seriesKey) {
    seriesKey = key;
    buildCharts(ids, states);
  } else {
    for (const c of CHARTS) {
      const u = dashboard.charts[c.id];
      if (u) {
        u.setData(data(c, ids));
        windowed(u);
      }
    }
  }
}

window.addEventListener('resize', () => {
  for (const [id, u] of Object.entries(dashboard.charts)) {
    const fig = $('chart-' + id);
    if (fig) u.setSize({ width: chartWidth(fig), height: 150 });
  }
});

function cell(row, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function drawTable(g, point) {
  const ids = nodeIds();
  const body = $('nodes');
  body.replaceChildren();
  let conns = 0;
  let subs = 0;
  let deliveries = 0;
  let publishes = 0;
  let lag = 0;
  for (const n of g.nodes) {
    const v = point.nodes[n.node_id];
    const s = n.stats;
    const tr = document.createElement('tr');
    tr.dataset.node = n.node_id;
    const id = cell(tr, n.node_id);
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = COLORS[ids.indexOf(n.node_id) % COLORS.length];
    id.prepend(sw);
    cell(tr, n.ws_url);
    // Live from the node when it answered, else as it last told the registry.
    const c = s ? s.connections : n.connections;
    const sb = s ? s.subscriptions : n.subscriptions;
    conns += c;
    subs += sb;
    deliveries += v.deliveries || 0;
    publishes += v.publishes || 0;
    lag += (s && s.kafka_consumer_lag_total) || 0;
    cell(tr, String(c), 'n connections');
    cell(tr, String(sb), 'n subscriptions');
    cell(tr, draining(n) ? 'draining' : 'live', draining(n) ? 'draining state' : 'state');
    cell(tr, fmt(v.deliveries), 'n deliveries');
    cell(tr, fmt(v.publishes), 'n publishes');
    cell(tr, v.latency == null ? '–' : fmt(v.latency) + ' ms', 'n latency');
    cell(tr, s && s.kafka_consumer_lag_total != null ? String(s.kafka_consumer_lag_total) : '–', 'n lag');
    cell(tr, n.version);
    if (n.error) cell(tr, 'unreachable: ' + n.error, 'bad fetch');
    else cell(tr, 'ok, ' + n.fetch_ms + ' ms', 'fetch');
    body.appendChild(tr);
  }
  $('total-nodes').textContent = g.nodes.length + ' nodes';
  $('total-connections').textContent = conns;
  $('total-subscriptions').textContent = subs;
  $('total-deliveries').textContent = fmt(deliveries);
  $('total-publishes').textContent = fmt(publishes);
  $('total-lag').textContent = lag;
  const via = $('via');
  const chosen = via.value;
  const keep = via.options[0];
  via.replaceChildren(keep);
  for (const n of g.nodes) {
    const o = document.createElement('option');
    o.value = n.node_id;
    o.textContent = n.node_id + (draining(n) ? ' (draining)' : '');
    via.appendChild(o);
  }
  via.value = g.nodes.some(n => n.node_id === chosen) ? chosen : '';
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  const status = $('status');
  try {
    const res = await fetch('/v1/dashboard', { cache: 'no-store' });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    const g = await res.json();
    dashboard.polls++;
    // Callers within a second share one gather: the same sample is charted once.
    if (!dashboard.last || g.at_ms !== dashboard.last.at_ms) {
      dashboard.last = g;
      const point = record(g);
      drawTable(g, point);
      drawCharts(g);
    }
    const down = g.nodes.filter(n => n.error).length;
    status.textContent = g.stale
      ? 'etcd unreachable: showing the last known view'
      : 'live view, updated ' + new Date(g.at_ms).toLocaleTimeString() + (down ? ', ' + down + ' node(s) not answering' : '');
    status.className = g.stale || down ? 'stale' : '';
  } catch (e) {
    status.textContent = 'registry unreachable: ' + e;
    status.className = 'stale';
  } finally {
    polling = false;
  }
}

// Admin: the key stays in this tab (sessionStorage), goes only in the Authorization
// header of calls to this registry, which passes it on to a node of its view.
const keyInput = $('api-key');
keyInput.value = sessionStorage.getItem(KEY_ITEM) || '';
keyInput.addEventListener('input', () => {
  if (keyInput.value) sessionStorage.setItem(KEY_ITEM, keyInput.value);
  else sessionStorage.removeItem(KEY_ITEM);
});
$('key-form').addEventListener('submit', e => e.preventDefault());
$('forget-key').addEventListener('click', () => {
  keyInput.value = '';
  sessionStorage.removeItem(KEY_ITEM);
});

function adminStatus(text, bad) {
  const s = $('admin-status');
  s.textContent = text;
  s.className = bad ? 'bad' : '';
}

async function adminCall(method, path, params, body) {
  const key = keyInput.value.trim();
  if (!key) {
    adminStatus('enter an API key first', true);
    return null;
  }
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  if ($('via').value) url.searchParams.set('node', $('via').value);
  const init = { method, cache: 'no-store', headers: { authorization: 'Bearer ' + key } };
  if (body) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  adminStatus(method + ' ' + path + ' …');
  $('admin-result').textContent = '';
  $('presence').classList.remove('shown');
  try {
    const res = await fetch(url, init);
    const answer = await res.json().catch(() => null);
    const node = res.headers.get('x-pushcenter-node');
    adminStatus(path + ': ' + res.status + (node ? ' from ' + node : ''), !res.ok);
    $('admin-result').textContent = JSON.stringify(answer, null, 2);
    return res.ok ? answer : null;
  } catch (e) {
    adminStatus(path + ': registry unreachable: ' + e, true);
    return null;
  }
}

function target(form) {
  const t = form.elements.target.value.trim();
  return form.elements.kind.value === 'session' ? { session: t } : { user: t };
}

$('presence-form').addEventListener('submit', async e => {
  e.preventDefault();
  const user = e.target.elements.user.value.trim();
  const a = await adminCall('GET', '/v1/admin/presence', { user });
  if (!a) return;
  adminStatus(user + (a.online ? ' is online: ' + a.sessions.length + ' session(s)' : ' is offline'));
  const body = $('presence-sessions');
  body.replaceChildren();
  for (const s of a.sessions || []) {
    const tr = document.createElement('tr');
    tr.dataset.session = s.session;
    cell(tr, s.node, 'node');
    cell(tr, s.session, 'session');
    cell(tr, new Date(s.connected_since_ms).toLocaleString());
    cell(tr, (s.subscriptions || []).join(' '), 'subscriptions');
    body.appendChild(tr);
  }
  $('presence').classList.toggle('shown', body.children.length > 0);
});

$('disconnect-form').addEventListener('submit', async e => {
  e.preventDefault();
  const f = e.target.elements;
  const body = { ...target(e.target), reconnect: f.reconnect.checked };
  if (f.reason.value.trim()) body.reason = f.reason.value.trim();
  if (f.ban_for.value) body.ban_for = Number(f.ban_for.value);
  await adminCall('POST', '/v1/admin/disconnect', {}, body);
});

$('unsubscribe-form').addEventListener('submit', async e => {
  e.preventDefault();
  const body = { ...target(e.target), destination: e.target.elements.destination.value.trim() };
  await adminCall('POST', '/v1/admin/unsubscribe', {}, body);
});

poll();
setInterval(poll, POLL_MS);
