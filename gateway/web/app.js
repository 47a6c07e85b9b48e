// SPDX-License-Identifier: MIT
// Kuimen's command post view: renders /api/* pushed on /api/events (docs/web.md). No
// library, no build step, nothing from outside: the map is a plain lat/lon projection.
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const M_PER_DEG = 111320;
const STALE_S = 120; // a fix older than this is drawn faded
const state = { config: null, status: null, units: null, bases: null, history: null, calls: null,
  incidents: null, callDetail: {} };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

function span(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  s = Math.max(0, Math.round(s));
  if (s < 100) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h' + String(Math.floor(s % 3600 / 60)).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd' + String(Math.floor(s % 86400 / 3600)).padStart(2, '0') + 'h';
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1048576) return (n / 1024).toFixed(1) + ' KiB';
  return (n / 1048576).toFixed(1) + ' MiB';
}

function badge(text, cls) { return el('span', { class: 'state ' + (cls || text) }, text); }

// ---- links and spool ----------------------------------------------------------------

function historyOf(name) {
  const h = state.history;
  if (!h) return null;
  return h.links.find((l) => l.link === name) || null;
}

// State as coloured bars, acknowledged messages per interval as a line.
function sparkline(points, w, h) {
  const s = svg('svg', { class: 'spark', viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none' });
  if (!points || !points.length) return s;
  const n = points.length, bw = w / n;
  const colours = ['#c62828', '#b7791f', '#1a7f37'];
  // An interval with a state change in it shows amber even if it ended up: a flap
  // shorter than the 10 s sample would otherwise leave no trace.
  points.forEach((p, i) => s.appendChild(svg('rect', { x: (i * bw).toFixed(2), y: h - 4, width: Math.max(bw, 0.5).toFixed(2),
    height: 4, fill: p[4] > 0 && p[1] === 2 ? colours[1] : colours[p[1]] || '#667085' })));
  const max = Math.max(1, ...points.map((p) => p[2]));
  const line = points.map((p, i) => `${(i * bw + bw / 2).toFixed(1)},${(h - 6 - (p[2] / max) * (h - 8)).toFixed(1)}`);
  s.appendChild(svg('polyline', { points: line.join(' '), fill: 'none', stroke: '#1f5fbf', 'stroke-width': 1 }));
  return s;
}

function renderLinks() {
  const st = state.status;
  const tb = $('links').tBodies[0];
  clear(tb);
  for (const l of st.links) {
    const tr = el('tr', { 'data-link': l.name, 'data-state': l.state });
    tr.appendChild(el('td', {}, `${l.name} (${l.direction})`));
    const td = el('td', { class: 'link-state' });
    td.appendChild(badge(l.state));
    tr.appendChild(td);
    tr.appendChild(el('td', { class: 'reason' }, l.reason));
    tr.appendChild(el('td', {}, span(l.since_s)));
    const hist = historyOf(l.name);
    const last = hist && hist.points.length ? hist.points[hist.points.length - 1] : null;
    tr.appendChild(el('td', {}, last ? `${last[2]} msg, ${bytes(last[3])}` : '–'));
    tr.appendChild(el('td', { class: 'backlog' }, l.backlog));
    const sp = el('td');
    sp.appendChild(sparkline(hist ? hist.points : [], 96, 22));
    tr.appendChild(sp);
    tb.appendChild(tr);
  }
  $('storage').textContent = st.storage === 'ok' ? '' : 'storage: ' + st.storage;
}

function renderSpool() {
  const sp = state.status.spool;
  $('spool-depth').textContent = `${sp.depth} msg, ${bytes(sp.bytes)}`;
  $('spool-oldest').textContent = sp.depth ? span(sp.oldest_age_s) : '–';
  $('drain-rate').textContent = sp.draining ? `${sp.drain_rate.toFixed(sp.drain_rate < 10 ? 1 : 0)} msg/s` : '–';
  $('drain-eta').textContent = sp.draining ? (sp.drain_eta_s !== null ? '~' + span(sp.drain_eta_s)
    : sp.backlog_rate > 0 ? 'growing' : 'steady') : '–';
  const tb = $('classes').tBodies[0];
  clear(tb);
  for (const k of sp.classes) {
    const tr = el('tr', { 'data-class': k.name });
    tr.append(el('td', {}, k.name), el('td', {}, k.priority), el('td', {}, k.depth),
      el('td', {}, k.depth ? span(k.oldest_age_s) : '–'));
    tb.appendChild(tr);
  }
  const s = $('spool-spark');
  clear(s);
  const pts = state.history ? state.history.spool : [];
  if (pts.length > 1) {
    const max = Math.max(1, ...pts.map((p) => p[1] + p[2]));
    const line = pts.map((p, i) => `${(i * 300 / (pts.length - 1)).toFixed(1)},${(38 - (p[1] + p[2]) / max * 34).toFixed(1)}`);
    s.appendChild(svg('polyline', { points: line.join(' '), fill: 'none', stroke: '#1f5fbf', 'stroke-width': 1.5 }));
  }
}

// ---- the map ------------------------------------------------------------------------

// Every unit to draw: this node's (base "") and, on a center, each base's.
function allUnits() {
  const out = [];
  if (state.units) {
    for (const u of state.units.units) {
      out.push({ unit: u.unit, base: '', age_s: u.age_s, pos: u.position, track: u.track });
    }
    const g = state.units.gnss;
    if (g && g.fix && typeof g.fix.lat === 'number') {
      out.push({ unit: '(this box)', base: '', age_s: g.fix_age_s, pos: g.fix, track: [], own: true });
    }
  }
  if (state.bases) {
    for (const b of state.bases.bases) {
      for (const u of b.units) out.push({ unit: u.unit, base: b.base, age_s: u.age_s, pos: u.position, track: [] });
    }
  }
  return out.filter((u) => u.pos && typeof u.pos.lat === 'number' && typeof u.pos.lon === 'number');
}

function niceDistance(m) {
  const p = Math.pow(10, Math.floor(Math.log10(m)));
  for (const f of [5, 2, 1]) if (f * p <= m) return f * p;
  return p;
}

function colourOf(name) {
  let h = 2166136261;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  h = Math.imul(h ^ (h >>> 15), 2246822507) >>> 0; // names differing in one letter far apart
  return `hsl(${h % 360},65%,40%)`;
}

// Plain lat/lon ("equirectangular") around the centre, x shrunk by cos(lat0) so that
// a metre is as long east as north; the SVG keeps the projection in data-* for tools.
function project(view, lat, lon) {
  return [view.cx + (lon - view.lon0) * view.k * view.kx, view.cy - (lat - view.lat0) * view.k];
}

function drawTiles(g, view, W, H) {
  const tmpl = state.config && state.config.tiles;
  if (!tmpl) return;
  const pxPerDegLon = view.k * view.kx;
  const z = Math.max(0, Math.min(19, Math.round(Math.log2(pxPerDegLon * 360 / 256))));
  const n = Math.pow(2, z);
  const lonW = view.lon0 - view.cx / pxPerDegLon, lonE = view.lon0 + (W - view.cx) / pxPerDegLon;
  const latN = view.lat0 + view.cy / view.k, latS = view.lat0 - (H - view.cy) / view.k;
  const tx = (lon) => Math.floor((lon + 180) / 360 * n);
  const ty = (lat) => Math.floor((1 - Math.log(Math.tan(lat * Math.PI / 180) + 1 / Math.cos(lat * Math.PI / 180)) / Math.PI) / 2 * n);
  const lonOf = (x) => x / n * 360 - 180;
  const latOf = (y) => Math.atan(Math.sinh(Math.PI * (1 - 2 * y / n))) * 180 / Math.PI;
  const x0 = tx(lonW), x1 = tx(lonE), y0 = ty(latN), y1 = ty(latS);
  if ((x1 - x0 + 1) * (y1 - y0 + 1) > 64) return;
  for (let x = x0; x <= x1; x++) {
    for (let y = y0; y <= y1; y++) {
      if (y < 0 || y >= n) continue;
      const [ax, ay] = project(view, latOf(y), lonOf(x));
      const [bx, by] = project(view, latOf(y + 1), lonOf(x + 1));
      const href = tmpl.replace('{z}', z).replace('{x}', ((x % n) + n) % n).replace('{y}', y);
      g.appendChild(svg('image', { href, x: ax.toFixed(1), y: ay.toFixed(1), width: (bx - ax).toFixed(1),
        height: (by - ay).toFixed(1), preserveAspectRatio: 'none' }));
    }
  }
}

function renderMap() {
  const map = $('map');
  // The drawing is in CSS pixels of the map as laid out: no letterbox, labels stay legible.
  const W = Math.round(map.clientWidth) || 800, H = Math.round(map.clientHeight) || 450;
  map.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const units = allUnits();
  const incidents = (state.incidents && state.incidents.incidents) || [];
  const pts = [];
  for (const u of units) {
    pts.push([u.pos.lat, u.pos.lon]);
    for (const t of u.track || []) pts.push([t[0], t[1]]);
  }
  for (const x of incidents) if (typeof x.lat === 'number') pts.push([x.lat, x.lon]);
  $('units-count').textContent = units.filter((u) => !u.own).length + ' heard';
  const groups = ['map-tiles', 'map-grid', 'map-incidents', 'map-tracks', 'map-units', 'map-scale'].map($);
  groups.forEach(clear);
  if (!pts.length) {
    map.removeAttribute('data-k');
    groups[1].appendChild(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'gridlabel' }, 'no positions yet'));
    renderUnitTable(units);
    return;
  }
  let latMin = Math.min(...pts.map((p) => p[0])), latMax = Math.max(...pts.map((p) => p[0]));
  let lonMin = Math.min(...pts.map((p) => p[1])), lonMax = Math.max(...pts.map((p) => p[1]));
  const lat0 = (latMin + latMax) / 2, lon0 = (lonMin + lonMax) / 2;
  const kx = Math.cos(lat0 * Math.PI / 180);
  // At least ~300 m across, so one unit is not a whole-screen zoom.
  const spanLat = Math.max(latMax - latMin, 0.003), spanLon = Math.max((lonMax - lonMin) * kx, 0.003);
  const k = Math.min(W * 0.85 / spanLon, H * 0.85 / spanLat);
  const view = { lat0, lon0, k, kx, cx: W / 2, cy: H / 2 };
  map.setAttribute('data-lat0', lat0);
  map.setAttribute('data-lon0', lon0);
  map.setAttribute('data-k', k);
  map.setAttribute('data-kx', kx);
  map.setAttribute('data-cx', view.cx);
  map.setAttribute('data-cy', view.cy);
  drawTiles(groups[0], view, W, H);
  // A grid line every nice step of degrees.
  const degPerPx = 1 / k;
  const step = niceDistance(degPerPx * 120);
  const dec = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lat = Math.ceil((lat0 - H / 2 * degPerPx) / step) * step; lat < lat0 + H / 2 * degPerPx; lat += step) {
    const y = project(view, lat, lon0)[1];
    groups[1].appendChild(svg('line', { x1: 0, x2: W, y1: y.toFixed(1), y2: y.toFixed(1), class: 'grid' }));
    groups[1].appendChild(svg('text', { x: 2, y: (y - 2).toFixed(1), class: 'gridlabel' }, lat.toFixed(dec) + '°'));
  }
  const lonStep = niceDistance(degPerPx / kx * 120);
  const lonDec = Math.max(0, -Math.floor(Math.log10(lonStep)));
  for (let lon = Math.ceil((lon0 - W / 2 * degPerPx / kx) / lonStep) * lonStep; lon < lon0 + W / 2 * degPerPx / kx; lon += lonStep) {
    const x = project(view, lat0, lon)[0];
    groups[1].appendChild(svg('line', { x1: x.toFixed(1), x2: x.toFixed(1), y1: 0, y2: H, class: 'grid' }));
    groups[1].appendChild(svg('text', { x: (x + 2).toFixed(1), y: H - 4, class: 'gridlabel' }, lon.toFixed(lonDec) + '°'));
  }
  for (const x of incidents) {
    if (typeof x.lat !== 'number') continue;
    const [ix, iy] = project(view, x.lat, x.lon);
    const r = (x.radius || 0) / M_PER_DEG * k;
    groups[2].appendChild(svg('circle', { cx: ix.toFixed(1), cy: iy.toFixed(1), r: Math.max(r, 3).toFixed(1), class: 'incident',
      'data-incident': x.id }));
  }
  for (const u of units) {
    const colour = u.own ? '#1d2330' : colourOf((u.base ? u.base + '/' : '') + u.unit);
    if (u.track && u.track.length > 1) {
      const line = u.track.map((t) => project(view, t[0], t[1]).map((v) => v.toFixed(1)).join(','));
      groups[3].appendChild(svg('polyline', { points: line.join(' '), class: 'track', stroke: colour, 'data-unit': u.unit }));
    }
    const [x, y] = project(view, u.pos.lat, u.pos.lon);
    const attrs = { 'data-unit': u.unit, 'data-base': u.base, 'data-lat': u.pos.lat, 'data-lon': u.pos.lon,
      class: 'unit' + (u.age_s > STALE_S ? ' stale' : ''), fill: colour };
    const mark = u.own ? svg('rect', Object.assign(attrs, { x: (x - 6).toFixed(2), y: (y - 6).toFixed(2), width: 12, height: 12,
      'data-cx': x.toFixed(2), 'data-cy': y.toFixed(2) }))
      : svg('circle', Object.assign(attrs, { cx: x.toFixed(2), cy: y.toFixed(2), r: 6 }));
    mark.appendChild(svg('title', {}, `${u.base ? u.base + '/' : ''}${u.unit}: ${u.pos.lat.toFixed(6)}, ${u.pos.lon.toFixed(6)}, ${span(u.age_s)} ago`));
    groups[4].appendChild(mark);
    groups[4].appendChild(svg('text', { x: (x + 8).toFixed(1), y: (y + 4).toFixed(1), class: 'label' },
      (u.base ? u.base + '/' : '') + u.unit));
  }
  // The scale bar: a round distance about a fifth of the width.
  const mPerPx = M_PER_DEG / k;
  const dist = niceDistance(mPerPx * W / 5);
  const len = dist / mPerPx;
  const sg = groups[5];
  sg.appendChild(svg('rect', { x: W - len - 24, y: H - 30, width: len + 16, height: 24, fill: '#ffffff', 'fill-opacity': 0.8 }));
  sg.appendChild(svg('line', { x1: (W - len - 16).toFixed(1), x2: W - 16, y1: H - 12, y2: H - 12, class: 'scalebar',
    id: 'scalebar', 'data-metres': dist, 'data-px': len.toFixed(2) }));
  sg.appendChild(svg('text', { x: W - 16, y: H - 16, 'text-anchor': 'end', class: 'scaletext' },
    dist >= 1000 ? dist / 1000 + ' km' : dist + ' m'));
  renderUnitTable(units);
}

function renderUnitTable(units) {
  const tb = $('units').tBodies[0];
  clear(tb);
  // By base, then unit (u2 before u10); the box's own fix last.
  const sorted = units.slice().sort((a, b) => (a.own ? 1 : 0) - (b.own ? 1 : 0) || a.base.localeCompare(b.base) ||
    a.unit.localeCompare(b.unit, undefined, { numeric: true }));
  for (const u of sorted) {
    const p = u.pos;
    const tr = el('tr', { 'data-unit': u.unit, 'data-base': u.base });
    const sats = p.sats_used !== undefined ? `${p.sats_used}/${p.sats_seen}` + (p.sats_beidou !== undefined ? ` (BDS ${p.sats_beidou})` : '') : '–';
    const mode = p.mode === 3 ? '3D' : p.mode === 2 ? '2D' : p.mode === 1 ? 'none' : p.fix !== undefined ? String(p.fix) : '–';
    tr.append(el('td', {}, u.unit), el('td', {}, u.base || '–'), el('td', {}, p.kind || (u.own ? 'GNSS' : '–')),
      el('td', { class: 'age' }, span(u.age_s) + ' ago'), el('td', {}, mode), el('td', {}, sats),
      el('td', {}, `${p.lat.toFixed(6)}, ${p.lon.toFixed(6)}`));
    tb.appendChild(tr);
  }
}

// ---- a center's bases ----------------------------------------------------------------

function renderBases() {
  const sec = $('bases-section');
  const bases = state.bases ? state.bases.bases : [];
  sec.hidden = !state.bases;
  const box = $('bases');
  clear(box);
  for (const b of bases) {
    const card = el('div', { class: 'base', 'data-base': b.base });
    const h = el('h3', {}, b.base + ' ');
    const online = b.status ? b.status.state : null;
    h.appendChild(badge(online || 'unknown', online === 'online' ? 'up' : online === 'offline' ? 'down' : 'unknown'));
    if (b.mqtt) h.appendChild(el('span', { class: 'tag' }, ' mqtt ' + b.mqtt));
    card.appendChild(h);
    if (b.status) {
      card.appendChild(el('div', { class: 'tag' }, `heard ${span(b.status_age_s)} ago over ${b.status_via}; spooled ${b.status.spooled ?? '–'}, oldest ${span(b.status.oldest_age_s)}`));
    }
    const t = el('table');
    for (const l of b.links) {
      const tr = el('tr', { 'data-link': l.link });
      const td = el('td');
      td.appendChild(badge(l.status.state || 'unknown'));
      tr.append(el('td', {}, l.link), td, el('td', { class: 'reason' }, l.status.reason || ''),
        el('td', {}, `backlog ${l.status.backlog ?? '–'}`));
      t.appendChild(tr);
    }
    const wrap = el('div', { class: 'scroll' });
    wrap.appendChild(t);
    card.appendChild(wrap);
    card.appendChild(el('div', { class: 'tag' }, `${b.units.length} unit(s)`));
    box.appendChild(card);
  }
}

// ---- calls and incidents -------------------------------------------------------------

function renderCalls() {
  const c = state.calls;
  $('calls-section').hidden = !c || !!c.error;
  if (!c || c.error) return;
  const box = $('calls');
  clear(box);
  if (!c.calls.length) box.appendChild(el('p', { class: 'tag' }, 'no calls'));
  for (const call of c.calls) {
    const d = el('div', { class: 'call ' + call.level, 'data-call': call.id });
    d.appendChild(el('div', {}, `${call.id} · ${call.level} · ${call.state} · ${call.answered_n}/${call.recipients_n} answered`));
    const bar = el('div', { class: 'bar' });
    const fill = el('span');
    fill.style.width = (call.recipients_n ? 100 * call.answered_n / call.recipients_n : 0) + '%';
    bar.appendChild(fill);
    d.appendChild(bar);
    d.appendChild(el('div', {}, call.text));
    const det = state.callDetail[call.id];
    if (det && det.recipients) {
      const pending = det.recipients.filter((r) => !r.answered).map((r) => r.unit);
      if (pending.length) d.appendChild(el('div', { class: 'pending' }, 'not answered: ' + pending.join(', ')));
    }
    box.appendChild(d);
    // The list has counts only: who has not answered comes from the call itself.
    const key = `${call.state}/${call.answered_n}`;
    if (call.unanswered_n && (!det || det.key !== key)) {
      state.callDetail[call.id] = Object.assign(det || {}, { key });
      fetch('api/calls/' + encodeURIComponent(call.id)).then((r) => r.ok ? r.json() : null).then((j) => {
        if (j && j.call) {
          state.callDetail[call.id] = { key, recipients: j.call.recipients };
          renderCalls();
        }
      }).catch(() => {});
    }
  }
}

function time(t) { return t ? String(t).replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '–'; }

function renderIncidents() {
  const x = state.incidents;
  $('incidents-section').hidden = !x || !!x.error || !x.incidents.length;
  if (!x || x.error) return;
  const box = $('incidents');
  clear(box);
  for (const i of x.incidents) {
    const d = el('div', { class: 'incident-card', 'data-incident': i.id });
    d.appendChild(el('div', {}, `${i.id} · ${i.state} · opened ${time(i.opened)}${i.call ? ' · call ' + i.call : ''}`));
    const t = el('table');
    const head = el('tr');
    for (const h of ['unit', 'reacted', 'turned out', 'arrived', 'withdrew']) head.appendChild(el('th', {}, h));
    t.appendChild(head);
    for (const u of i.units || []) {
      const tr = el('tr');
      tr.append(el('td', {}, u.unit), el('td', {}, time(u.reacted)), el('td', {}, time(u.turned_out)),
        el('td', {}, time(u.arrived)), el('td', {}, time(u.withdrew)));
      t.appendChild(tr);
    }
    const wrap = el('div', { class: 'scroll' });
    wrap.appendChild(t);
    d.appendChild(wrap);
    box.appendChild(d);
  }
}

// ---- live updates --------------------------------------------------------------------

function render(what) {
  try {
    if (what === 'status' && state.status) { renderLinks(); renderSpool(); }
    if (what === 'units' || what === 'bases' || what === 'incidents') renderMap();
    if (what === 'bases') renderBases();
    if (what === 'calls') renderCalls();
    if (what === 'incidents') renderIncidents();
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    console.warn('render ' + what + ': ' + e);
  }
}

function loadHistory() {
  fetch('api/history').then((r) => r.json()).then((h) => {
    state.history = h;
    render('status');
  }).catch(() => {});
}

function connect() {
  const es = new EventSource('api/events');
  for (const ev of ['status', 'units', 'bases', 'calls', 'incidents']) {
    es.addEventListener(ev, (m) => {
      state[ev] = JSON.parse(m.data);
      render(ev);
    });
  }
  es.onopen = () => { $('live').textContent = 'live'; $('live').className = 'live on'; };
  es.onerror = () => { $('live').textContent = 'reconnecting'; $('live').className = 'live off'; };
}

let resizeTimer = null;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => render('units'), 100);
});

fetch('api/config').then((r) => r.json()).then((c) => {
  state.config = c;
  $('node').textContent = c.node;
  $('role').textContent = c.role + ' · ' + c.version;
  document.title = 'Kuimen ' + c.node;
  document.body.classList.add(c.role === 'center' ? 'center' : 'base');
  loadHistory();
  setInterval(loadHistory, Math.max(5, c.history_interval_s) * 1000);
  connect();
});
