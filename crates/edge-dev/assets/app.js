// The edge dashboard: loads /api/snapshot, then follows /api/events (server-sent events).
// No libraries: the charts are SVG drawn here. Text from devices is only ever set as textContent.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const state = { threshold: 38.0, devices: new Map(), alerts: new Map(), health: null };
  const $ = (id) => document.getElementById(id);
  const SHOWN_ALERTS = 8;

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
    if (p.alert) state.alerts.set(p.device + "@" + p.t, p);
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

  function deviceCard(device, points, index) {
    const latest = points[points.length - 1];
    const fever = latest.value >= state.threshold;
    const card = el("article", { class: fever ? "card fever" : "card", "data-device": device, "aria-labelledby": "dev-" + index });
    const head = el("div", { class: "card-head" });
    const h = el("h3", { id: "dev-" + index }, device === "all" ? "All sensors (average)" : device);
    const v = el("div", {});
    v.append(el("span", { class: fever ? "latest fever" : "latest", "data-latest": latest.value }, fmt(latest.value)));
    v.append(el("span", { class: "muted" }, ` at ${clock(latest.t, true)}${fever ? " — fever" : ""}`));
    head.append(h, v);
    card.append(head, drawChart(device, points));
    const det = el("details", {});
    det.append(el("summary", {}, `Values (${Math.min(points.length, 20)} newest)`));
    const table = el("table", {});
    const tr = el("tr", {});
    tr.append(el("th", { scope: "col" }, "Window end"), el("th", { scope: "col", class: "num" }, "Average"), el("th", { scope: "col" }, "Alert"));
    const thead = el("thead", {});
    thead.append(tr);
    table.append(thead);
    const body = el("tbody", {});
    for (const p of points.slice(-20).reverse()) {
      const r = el("tr", {});
      r.append(el("td", {}, new Date(p.t).toLocaleString()), el("td", { class: "num" }, fmt(p.value)), el("td", {}, p.alert ? "fever" : ""));
      body.append(r);
    }
    table.append(body);
    det.append(table);
    card.append(det);
    return card;
  }

  function renderDevices() {
    const box = $("devices");
    const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.closest("[data-device]").dataset.device));
    const cards = [];
    for (const device of [...state.devices.keys()].sort()) {
      const points = [...state.devices.get(device).values()].sort((a, b) => a.t - b.t);
      if (points.length === 0) continue;
      const card = deviceCard(device, points, cards.length);
      if (open.has(device)) card.querySelector("details").open = true;
      cards.push(card);
    }
    box.replaceChildren(...cards);
    $("no-devices").hidden = cards.length > 0;
  }

  function renderAlerts() {
    const list = $("alerts");
    const all = [...state.alerts.values()].sort((a, b) => b.t - a.t);
    const alerts = all.slice(0, SHOWN_ALERTS);
    const items = alerts.map((a) => {
      const li = el("li", { "data-device": a.device, "data-t": a.t });
      li.append(el("strong", {}, a.device), document.createTextNode(` averaged ${fmt(a.value)} in the window ending ${new Date(a.t).toLocaleString()}`));
      return li;
    });
    list.replaceChildren(...items);
    $("no-alerts").hidden = items.length > 0;
    const more = $("more-alerts");
    more.hidden = all.length <= SHOWN_ALERTS;
    more.textContent = `${all.length - SHOWN_ALERTS} older alerts are kept; the charts mark them in red.`;
  }

  function renderHealth(h) {
    state.health = h;
    const link = $("link");
    const online = h.link.state === "online";
    const why = h.link.state === "retrying" && h.link.error ? ` (${h.link.error})` : "";
    link.textContent = `Upstream: ${h.link.state}${why} · ${h.link.upstreamDepth} queued`;
    link.className = online ? "badge ok" : "badge bad";
    link.dataset.state = h.link.state;
    const rows = h.modules.map((m) => {
      const r = el("tr", { "data-module": m.name });
      r.append(el("th", { scope: "row" }, m.name));
      let proc, cls;
      if (!m.supervised) { proc = "not run by edge-dev"; cls = ""; }
      else if (m.running) { proc = `running (pid ${m.pid})`; cls = "state-ok"; }
      else { proc = m.givenUp ? `stopped: ${m.givenUp}` : `stopped${m.lastExit ? ": " + m.lastExit : ""}`; cls = "state-bad"; }
      r.append(el("td", { class: cls }, proc));
      r.append(el("td", { class: "num" }, m.restarts));
      // A module edge-dev does not run (stopped in the deployment, or --external) is not expected to connect.
      const connCls = m.connected ? "state-ok" : m.supervised ? "state-bad" : "";
      r.append(el("td", { class: connCls }, m.connected ? "connected" : "not connected"));
      r.append(el("td", { class: "num", "data-field": "messagesIn" }, m.messagesIn));
      r.append(el("td", { class: "num", "data-field": "messagesOut" }, m.messagesOut));
      r.append(el("td", { class: "num" }, m.queueDepth));
      const mt = el("td", {});
      if (m.metrics) mt.append(el("a", { href: m.metrics, "aria-label": `Prometheus metrics of ${m.name}` }, "metrics"));
      else mt.append(el("span", { class: "muted" }, "—"));
      r.append(mt);
      return r;
    });
    document.querySelector("#modules tbody").replaceChildren(...rows);
    $("hub-counters").textContent = `Unrouted messages: ${h.unrouted} · expired (time to live passed): ${h.expired}`;
  }

  async function loadSnapshot() {
    const r = await fetch("/api/snapshot", { cache: "no-store" });
    if (!r.ok) throw new Error("snapshot: HTTP " + r.status);
    const s = await r.json();
    state.threshold = s.threshold;
    $("device-id").textContent = s.deviceId ? "— " + s.deviceId : "";
    for (const d of s.devices) for (const p of d.points) addPoint(p);
    for (const a of s.alerts) addPoint(a);
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
      const p = JSON.parse(e.data);
      addPoint(p);
      renderDevices();
      if (p.alert) renderAlerts();
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
