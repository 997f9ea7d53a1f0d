// The edge dashboard: loads /api/snapshot, then follows /api/events (server-sent events).
// No libraries: the charts are SVG drawn here. Text from devices is only ever set as textContent.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const state = { threshold: 38.0, devices: new Map(), alerts: new Map(), health: null };
  const $ = (id) => document.getElementById(id);
  const SHOWN_ALERTS = 20;

  function el(tag, attrs, text) {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const two = (n) => String(n).padStart(2, "0");
  function clock(t, seconds) {
    const d = new Date(t);
    const s = two(d.getHours()) + ":" + two(d.getMinutes());
    return seconds ? s + ":" + two(d.getSeconds()) : s;
  }
  const fmt = (v) => v.toFixed(2) + " °C";

  function addPoint(p) {
    let series = state.devices.get(p.device);
    if (!series) { series = new Map(); state.devices.set(p.device, series); }
    series.set(p.t, p);
  }

  const alertKey = (a) => a.kind + "|" + a.device + "@" + a.t;
  function addAlert(a) { state.alerts.set(alertKey(a), a); }

  // The values that triggered an alert, as text: temperatures in °C, other numbers as they are.
  function describe(values) {
    return Object.entries(values || {}).map(([k, v]) => {
      if (typeof v === "number") return `${k} ${/temp|fever|avg|max|min/i.test(k) ? fmt(v) : String(Math.round(v * 1000) / 1000)}`;
      if (typeof v === "string") return `${k} ${v}`;
      return `${k} ${JSON.stringify(v)}`;
    }).join(", ");
  }

  function span() {
    const v = $("range").value;
    return v === "auto" ? null : Number(v) * 1000;
  }

  function drawChart(device, points) {
    const W = 480, H = 220, L = 44, R = 10, T = 12, B = 28;
    const now = Date.now();
    const s = span();
    let t0 = s === null ? Math.min(...points.map((p) => p.t)) : now - s;
    let t1 = Math.max(now, ...points.map((p) => p.t));
    if (t1 - t0 < 60000) t0 = t1 - 60000;
    const shown = points.filter((p) => p.t >= t0);
    const values = shown.map((p) => p.value).concat([state.threshold]);
    let lo = Math.floor(Math.min(...values, state.threshold - 2) * 2) / 2;
    let hi = Math.ceil(Math.max(...values, state.threshold + 1) * 2) / 2;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const latest = points[points.length - 1];
    const svg = el("svg:svg", {
      class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-device": device,
      "aria-label": `Window averages of ${device} from ${clock(t0)} to ${clock(t1)}: ${shown.length} shown, ` +
        `latest ${fmt(latest.value)} at ${clock(latest.t, true)}; fever threshold ${state.threshold.toFixed(1)} °C.`,
    });
    const ystep = hi - lo > 6 ? 2 : hi - lo > 3 ? 1 : 0.5;
    for (let v = Math.ceil(lo / ystep) * ystep; v <= hi + 1e-9; v += ystep) {
      svg.append(el("svg:line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(el("svg:text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(1)));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
      svg.append(el("svg:text", { class: "axis", x: x(t), y: H - 8, "text-anchor": anchor }, clock(t, t1 - t0 < 600000)));
    }
    const ty = y(state.threshold);
    svg.append(el("svg:line", { class: "threshold", x1: L, x2: W - R, y1: ty, y2: ty }));
    svg.append(el("svg:text", { class: "threshold-label", x: W - R - 2, y: ty - 5, "text-anchor": "end" },
      `fever ${state.threshold.toFixed(1)} °C`));
    if (shown.length > 1) {
      svg.append(el("svg:polyline", { class: "series", points: shown.map((p) => `${x(p.t).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ") }));
    }
    const dense = shown.length > 120; // hours of windows: the line carries them, dots would blot it
    for (const p of shown) {
      const c = el("svg:circle", { class: p.alert ? "pt alert" : "pt", cx: x(p.t).toFixed(1), cy: y(p.value).toFixed(1),
        r: p.alert ? (dense ? 3 : 5) : (dense ? 1.5 : 3.5), "data-t": p.t, "data-value": p.value });
      c.append(el("svg:title", {}, `${clock(p.t, true)}: ${fmt(p.value)}${p.alert ? " (fever alert)" : ""}`));
      svg.append(c);
    }
    return svg;
  }

  // Updates `parent`'s children in place, keyed by data-key: existing elements are kept (focus, open
  // <details>, and screen readers only hear what is new), new ones created, gone ones removed.
  function patch(parent, items, keyOf, create, update) {
    const old = new Map([...parent.children].map((c) => [c.dataset.key, c]));
    items.forEach((item, i) => {
      const key = String(keyOf(item));
      let node = old.get(key);
      old.delete(key);
      if (!node) { node = create(item); node.dataset.key = key; }
      update(node, item);
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
    });
    for (const gone of old.values()) gone.remove();
  }

  let cardIds = 0;
  function createCard(d) {
    const id = "dev-" + cardIds++;
    const card = el("article", { class: "card", "data-device": d.device, "aria-labelledby": id });
    const head = el("div", { class: "card-head" });
    const v = el("div", {});
    v.append(el("span", { class: "latest" }), el("span", { class: "muted when" }));
    head.append(el("h3", { id }, d.device === "all" ? "All sensors (average)" : d.device), v);
    const det = el("details", {});
    const table = el("table", {});
    const thead = el("thead", {});
    const tr = el("tr", {});
    tr.append(el("th", { scope: "col" }, "Window end"), el("th", { scope: "col", class: "num" }, "Average"), el("th", { scope: "col" }, "Alert"));
    thead.append(tr);
    table.append(thead, el("tbody", {}));
    det.append(el("summary", {}), table);
    card.append(head, el("div", { class: "chart-box" }), det);
    return card;
  }

  function updateCard(card, d) {
    const points = d.points;
    const latest = points[points.length - 1];
    const fever = latest.value >= state.threshold;
    card.className = fever ? "card fever" : "card";
    const big = card.querySelector(".latest");
    big.className = fever ? "latest fever" : "latest";
    big.textContent = fmt(latest.value);
    big.dataset.latest = latest.value;
    card.querySelector(".when").textContent = ` at ${clock(latest.t, true)}${fever ? " — fever" : ""}`;
    card.querySelector(".chart-box").replaceChildren(drawChart(d.device, points));
    card.querySelector("summary").textContent = `Values (${Math.min(points.length, 20)} newest)`;
    const rows = points.slice(-20).reverse().map((p) => {
      const r = el("tr", {});
      r.append(el("td", {}, new Date(p.t).toLocaleString()), el("td", { class: "num" }, fmt(p.value)), el("td", {}, p.alert ? "fever" : ""));
      return r;
    });
    card.querySelector("tbody").replaceChildren(...rows);
  }

  function renderDevices() {
    const devices = [...state.devices.keys()].sort()
      .map((device) => ({ device, points: [...state.devices.get(device).values()].sort((a, b) => a.t - b.t) }))
      .filter((d) => d.points.length > 0);
    patch($("devices"), devices, (d) => d.device, createCard, updateCard);
    $("no-devices").hidden = devices.length > 0;
  }

  function renderAlerts() {
    const all = [...state.alerts.values()].sort((a, b) => b.t - a.t);
    const alerts = all.slice(0, SHOWN_ALERTS);
    patch($("alerts"), alerts, alertKey, (a) => {
      const li = el("li", { "data-device": a.device, "data-t": a.t, "data-kind": a.kind });
      li.append(el("strong", {}, a.device), document.createTextNode(" "), el("span", { class: "kind" }, a.kind),
        document.createTextNode(` at ${new Date(a.t).toLocaleString()}: ${describe(a.values)}`));
      return li;
    }, () => {});
    $("no-alerts").hidden = alerts.length > 0;
    const more = $("more-alerts");
    more.hidden = all.length <= SHOWN_ALERTS;
    more.textContent = `${all.length - SHOWN_ALERTS} older alerts are kept (GET /api/alerts); the charts mark fever windows in red.`;
  }

  function createRow(m) {
    const r = el("tr", { "data-module": m.name });
    r.append(el("th", { scope: "row" }, m.name));
    for (const field of ["process", "restarts", "connection", "received", "sent", "queueDepth", "metrics"]) {
      const numeric = ["restarts", "received", "sent", "queueDepth"].includes(field);
      r.append(el("td", numeric ? { class: "num", "data-field": field } : { "data-field": field }));
    }
    return r;
  }

  function updateRow(r, m) {
    const cell = (f) => r.querySelector(`[data-field="${f}"]`);
    let proc, cls;
    if (!m.supervised) { proc = "not run by edge-dev"; cls = ""; }
    else if (m.running) { proc = `running (pid ${m.pid})`; cls = "state-ok"; }
    else { proc = m.givenUp ? `stopped: ${m.givenUp}` : `stopped${m.lastExit ? ": " + m.lastExit : ""}`; cls = "state-bad"; }
    cell("process").textContent = proc;
    cell("process").className = cls;
    cell("restarts").textContent = m.restarts;
    // A module edge-dev does not run (stopped in the deployment, or --external) is not expected to connect.
    cell("connection").textContent = m.connected ? "connected" : "not connected";
    cell("connection").className = m.connected ? "state-ok" : m.supervised ? "state-bad" : "";
    cell("received").textContent = m.received;
    cell("sent").textContent = m.sent;
    cell("queueDepth").textContent = m.queueDepth;
    const mt = cell("metrics");
    const a = mt.querySelector("a");
    if (m.metrics && (!a || a.getAttribute("href") !== m.metrics)) {
      mt.replaceChildren(el("a", { href: m.metrics, "aria-label": `Prometheus metrics of ${m.name}` }, "metrics"));
    } else if (!m.metrics && mt.textContent !== "—") {
      mt.replaceChildren(el("span", { class: "muted" }, "—"));
    }
  }

  function renderHealth(h) {
    state.health = h;
    const link = $("link");
    const online = h.link.state === "online";
    const why = h.link.state === "retrying" && h.link.error ? ` (${h.link.error})` : "";
    link.textContent = `Upstream: ${h.link.state}${why} · ${h.link.upstreamDepth} queued`;
    link.className = online ? "badge ok" : "badge bad";
    link.dataset.state = h.link.state;
    patch(document.querySelector("#modules tbody"), h.modules, (m) => m.name, createRow, updateRow);
    $("hub-counters").textContent = `Unrouted messages: ${h.unrouted} · expired (time to live passed): ${h.expired}`;
    document.body.dataset.healthUpdates = Number(document.body.dataset.healthUpdates || 0) + 1; // for tests
  }

  async function loadSnapshot() {
    const r = await fetch("/api/snapshot", { cache: "no-store" });
    if (!r.ok) throw new Error("snapshot: HTTP " + r.status);
    const s = await r.json();
    state.threshold = s.threshold;
    $("device-id").textContent = s.deviceId ? "— " + s.deviceId : "";
    for (const d of s.devices) for (const p of d.points) addPoint(p);
    for (const a of s.alerts) addAlert(a);
    renderHealth(s.health);
    renderDevices();
    renderAlerts();
  }

  function setLive(ok, text) {
    const live = $("live");
    live.textContent = text;
    live.className = ok ? "badge ok" : "badge bad";
    live.dataset.live = ok ? "1" : "0";
  }

  function follow() {
    const es = new EventSource("/api/events");
    es.addEventListener("open", () => {
      setLive(true, "Live");
      loadSnapshot().catch((e) => setLive(false, "Snapshot failed: " + e.message));
    });
    es.addEventListener("error", () => setLive(false, "Reconnecting…"));
    es.addEventListener("reading", (e) => {
      addPoint(JSON.parse(e.data));
      renderDevices();
    });
    es.addEventListener("alert", (e) => {
      addAlert(JSON.parse(e.data));
      renderAlerts();
    });
    es.addEventListener("health", (e) => renderHealth(JSON.parse(e.data)));
    es.addEventListener("resync", () => loadSnapshot().catch(() => {}));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("range").addEventListener("change", renderDevices);
    setInterval(renderDevices, 30000); // "now" moves on the time axis
    follow();
  });
})();
