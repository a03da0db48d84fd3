// The cnspr dashboard. Everything comes from this origin: the JSON API under /api/ and
// the live feed /api/events (server-sent events). State-changing requests are POSTs
// that carry the page's CSRF value in X-CNSPR-CSRF.
"use strict";

const CSRF = document.querySelector('meta[name="cnspr-csrf"]').content;
const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";

// What the browser test reads: how late each feed item arrived (ms, page clock minus the
// daemon's stamp) and how many arrived.
window.cnsprFeed = { count: 0, lateMs: [] };

let self = null;
let peers = [];

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  const v = await r.json().catch(() => null);
  if (!r.ok) throw new Error(v && v.error ? v.error.message : r.status + " " + r.statusText);
  return v;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CNSPR-CSRF": CSRF },
    body: JSON.stringify(body || {}),
  });
  const v = await r.json().catch(() => null);
  if (!r.ok) throw new Error(v && v.error ? v.error.message : r.status + " " + r.statusText);
  return v;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function ago(unix) {
  if (unix == null) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function pathText(p) {
  if (p.state === "indirect" && p.via && p.via.length) return "via " + p.via.join(", ");
  if (!p.path) return "-";
  if (p.path.kind === "direct") return "direct";
  return p.path.kind + " " + (p.path.via || "");
}

function rtt(p) {
  return p.rtt_ms == null ? "-" : p.rtt_ms.toFixed(1) + " ms";
}

// ---- devices ----

function renderDevices() {
  const body = $("devices").tBodies[0];
  body.replaceChildren();
  for (const p of peers) {
    const remove = el("button", { class: "danger small", textContent: "Remove" });
    remove.dataset.action = "remove";
    remove.disabled = p.state === "removed";
    remove.addEventListener("click", () => confirmRemove(p));
    const row = el("tr", { "data-id": p.id, "data-name": p.name, class: "peer" },
      el("td", { class: "name", title: p.id }, p.name),
      el("td", { class: "state " + p.state }, p.state),
      el("td", { class: "path" }, pathText(p)),
      el("td", { class: "rtt" }, rtt(p)),
      el("td", { class: "addrs" }, (p.addresses || []).join(" ")),
      el("td", { class: "seen" }, ago(p.last_seen)),
      el("td", {}, remove));
    body.append(row);
  }
  $("devices-empty").hidden = peers.length > 0;
}

async function loadPeers() {
  try {
    peers = await api("/api/peers");
    renderDevices();
    renderMesh();
  } catch (e) {
    console.warn("peers:", e);
  }
}

async function loadStatus() {
  self = await api("/api/status");
  $("self").textContent = self.name + " · " + self.id.slice(0, 9) + " · " + self.listen.join(", ");
}

// A peer event changes its row at once; the full list follows.
function applyPeerEvent(ev) {
  const p = peers.find((x) => x.id === ev.peer.id);
  if (p) {
    p.state = ev.state;
    renderDevices();
    renderMesh();
  }
  loadPeers();
}

// ---- mesh picture ----

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

function renderMesh() {
  const m = $("mesh");
  m.replaceChildren();
  if (!self) return;
  const shown = peers.filter((p) => p.state !== "removed");
  const cx = 300, cy = 180, r = 130;
  const pos = new Map();
  pos.set(self.name, [cx, cy]);
  shown.forEach((p, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, shown.length) - Math.PI / 2;
    pos.set(p.name, [cx + r * Math.cos(a) * 1.6, cy + r * Math.sin(a)]);
  });
  const links = svg("g", { class: "links" });
  const nodes = svg("g", { class: "nodes" });
  for (const p of shown) {
    const up = ["active", "suspect", "indirect"].includes(p.state);
    if (!up) continue;
    const from = p.state === "indirect" && p.via && p.via.length && pos.has(p.via[0])
      ? pos.get(p.via[0]) : pos.get(self.name);
    const to = pos.get(p.name);
    links.append(svg("line", {
      x1: from[0], y1: from[1], x2: to[0], y2: to[1],
      class: "link " + p.state, "data-peer": p.name,
    }));
    if (p.rtt_ms != null) {
      links.append(svg("text", {
        x: (from[0] + to[0]) / 2, y: (from[1] + to[1]) / 2 - 4, class: "rtt",
      }, p.rtt_ms.toFixed(1) + " ms"));
    }
  }
  const node = (name, x, y, cls) => {
    const g = svg("g", { class: "node " + cls, "data-name": name });
    g.append(svg("circle", { cx: x, cy: y, r: 22 }));
    g.append(svg("text", { x: x, y: y + 38 }, name));
    nodes.append(g);
  };
  node(self.name, cx, cy, "self");
  for (const p of shown) node(p.name, pos.get(p.name)[0], pos.get(p.name)[1], p.state);
  m.append(links, nodes);
}

// ---- removal ----

function confirmRemove(p) {
  const d = $("confirm");
  $("confirm-text").textContent = "Remove " + p.name + " (" + p.id + ") from the mesh?";
  d.returnValue = "";
  d.onclose = async () => {
    if (d.returnValue !== "ok") return;
    try {
      await post("/api/remove", { peer: p.id });
    } catch (e) {
      alert("Remove failed: " + e.message);
    }
    loadPeers();
  };
  d.showModal();
}

// ---- pairing ----

function renderPair(w) {
  const open = w && w.state === "open";
  $("pair-open").hidden = open;
  $("pair-cancel").hidden = !open;
  if (!w) return;
  $("pair-window").hidden = false;
  $("pair-code").textContent = w.code || "";
  let state = w.state;
  if (w.state === "paired" && w.paired) state = "paired with " + w.paired.name;
  if (w.error) state += ": " + w.error.message;
  $("pair-state").textContent = "(" + state + ")";
  $("pair-window").dataset.state = w.state;
  const qr = $("pair-qr");
  qr.hidden = !open;
  if (open) qr.src = "/api/pair/qr.svg?code=" + encodeURIComponent(w.code);
  $("pair-addrs").textContent = w.addresses && w.addresses.length
    ? "Listening on " + w.addresses.join(", ") : "";
  $("pair-attempts").replaceChildren(...(w.attempts || []).map((a) =>
    el("li", {}, a.name + " (" + a.address + "): " + a.result + (a.reason ? " " + a.reason : ""))));
}

async function openPair() {
  try {
    renderPair(await post("/api/pair/open", {}));
  } catch (e) {
    alert("Cannot open a pairing window: " + e.message);
  }
}

async function joinMesh(ev) {
  ev.preventDefault();
  const out = $("join-result");
  out.textContent = "joining…";
  const addr = $("join-addr").value.trim();
  try {
    const r = await post("/api/pair/join", {
      code: $("join-code").value.trim(),
      addrs: addr ? [addr] : [],
    });
    out.textContent = "Paired with " + r.paired.name;
    out.dataset.state = "paired";
    loadStatus().then(loadPeers);
  } catch (e) {
    out.textContent = "Failed: " + e.message;
    out.dataset.state = "failed";
  }
}

// ---- store ----

let kvAfter = null;

async function listKeys(more) {
  const prefix = $("kv-prefix").value;
  if (!more) {
    kvAfter = null;
    $("kv-keys").replaceChildren();
  }
  let q = "/api/kv?prefix=" + encodeURIComponent(prefix);
  if (kvAfter) q += "&after=" + encodeURIComponent(kvAfter);
  try {
    const page = await api(q);
    const entries = page.entries || [];
    for (const e of entries) {
      const li = el("li", { class: "key" }, e.key);
      li.addEventListener("click", () => showKey(e.key));
      $("kv-keys").append(li);
    }
    kvAfter = entries.length ? entries[entries.length - 1].key : null;
    $("kv-more").hidden = !page.more;
  } catch (e) {
    $("kv-keys").append(el("li", { class: "error" }, e.message));
  }
}

// A value as text when it is UTF-8 (cut at 500 characters), else its base64.
function text(b64) {
  if (b64 == null) return "";
  try {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes).slice(0, 500);
  } catch (e) {
    return "(base64) " + b64.slice(0, 500);
  }
}

function writer(id) {
  if (!id) return "";
  const norm = (s) => s.replace(/-/g, "").toUpperCase();
  if (self && norm(self.id) === norm(id)) return self.name + " (this device)";
  const p = peers.find((x) => norm(x.id) === norm(id));
  return p ? p.name : id.slice(0, 9);
}

async function showKey(key) {
  const box = $("kv-versions");
  box.hidden = false;
  box.replaceChildren(el("h3", {}, key));
  try {
    const v = await api("/api/kv/get?key=" + encodeURIComponent(key));
    const versions = [v, ...(v.siblings || [])];
    const table = el("table", {},
      el("tr", {}, el("th", {}, "Value"), el("th", {}, "Writer"), el("th", {}, "Version"), el("th", {}, "Deleted")));
    versions.forEach((x, i) => {
      table.append(el("tr", { class: i === 0 ? "winner" : "sibling" },
        el("td", { class: "value" }, x.deleted ? "(deleted)" : text(x.value_b64)),
        el("td", {}, writer(x.origin)),
        el("td", { class: "version" }, x.version || ""),
        el("td", {}, String(!!x.deleted))));
    });
    box.append(table);
  } catch (e) {
    box.append(el("p", { class: "error" }, e.message));
  }
}

// ---- events ----

function describe(item) {
  if (item.kind === "lagged") return "missed " + item.missed + " events";
  if (item.kind === "run") {
    const r = item.run;
    const how = r.timed_out ? "timed out" : r.error ? r.error
      : r.exit_code === null ? "killed" : "exit " + r.exit_code;
    return "handler " + r.handler + " (" + r.tag + "): " + how + ", " + r.elapsed_ms + " ms";
  }
  const ev = item.event;
  if (!ev) return JSON.stringify(item);
  if (ev.event === "peer") return ev.tag + " " + ev.peer.name + " → " + ev.state;
  if (ev.event === "message") return ev.tag + " from " + ev.from.name + " (" + ev.body_len + " bytes)";
  return ev.tag;
}

function addEvent(item) {
  const t = item.at_ms ? new Date(item.at_ms).toLocaleTimeString() : "";
  const list = $("events");
  const failed = item.kind === "run" && (item.run.exit_code !== 0 || item.run.timed_out);
  const cls = item.kind === "run" ? (failed ? "event run failed" : "event run") : "event";
  list.prepend(el("li", { class: cls }, el("span", { class: "muted" }, t + " "), describe(item)));
  while (list.children.length > 200) list.lastChild.remove();
}

function connectFeed() {
  const src = new EventSource("/api/events");
  src.onopen = () => {
    $("live").textContent = "live";
    $("live").className = "badge on";
    loadPeers();
  };
  src.onerror = () => {
    $("live").textContent = "offline";
    $("live").className = "badge off";
  };
  src.onmessage = (m) => {
    const item = JSON.parse(m.data);
    const f = window.cnsprFeed;
    f.count++;
    if (item.at_ms) {
      f.lateMs.push(Date.now() - item.at_ms);
      if (f.lateMs.length > 1000) f.lateMs.shift();
    }
    if (item.kind === "pair") {
      renderPair(item.pair);
      return;
    }
    addEvent(item);
    if (item.kind === "lagged") loadPeers();
    else if (item.event && item.event.event === "peer") applyPeerEvent(item.event);
  };
}

async function start() {
  $("pair-open").addEventListener("click", openPair);
  $("pair-cancel").addEventListener("click", () => post("/api/pair/cancel", {}).catch(() => {}));
  $("join-form").addEventListener("submit", joinMesh);
  $("kv-form").addEventListener("submit", (e) => { e.preventDefault(); listKeys(false); });
  $("kv-more").addEventListener("click", () => listKeys(true));
  await loadStatus();
  await loadPeers();
  for (const item of await api("/api/recent")) addEvent(item);
  renderPair(await api("/api/pair"));
  connectFeed();
  // Round trips and "last seen" change without events.
  setInterval(loadPeers, 2000);
  document.body.dataset.ready = "1";
}

start().catch((e) => {
  document.body.dataset.error = e.message;
  console.error(e);
});
