// parcelbox dashboard: plain JavaScript, no build step. Pages are rendered from the JSON API;
// live changes arrive over Server-Sent Events (/api/stream). Text from records is always set with
// textContent (never innerHTML), so nothing a box sends can run as script here.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function cookie(name) {
  const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(path, opts = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...opts };
  if (opts.method && opts.method !== "GET") {
    init.headers["X-CSRF-Token"] = cookie("pb_csrf");
    if (opts.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("login required");
  }
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (!r.ok) {
    const err = new Error((data && data.detail) || r.statusText || "request failed");
    err.status = r.status;
    throw err;
  }
  return data;
}

// --- formatting ----------------------------------------------------------------

// Event types and sensor readings come from the gateway (gateway/vocabulary.py, injected into
// index.html): the page never spells a type or a sensor key of its own.
const VOCAB = JSON.parse(document.getElementById("vocabulary").textContent);
const TYPE_LABEL = Object.fromEntries(VOCAB.event_types.map((t) => [t.type, t.label]));

function ago(ts) {
  if (ts == null) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 45) return "just now";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function when(ts) {
  if (ts == null) return "—";
  const d = new Date(ts * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === today.toDateString()) return "Today " + time;
  return d.toLocaleDateString([], { day: "numeric", month: "short", year: d.getFullYear() === today.getFullYear() ? undefined : "numeric" }) + " " + time;
}

function signal(rssi) {
  if (rssi == null) return "—";
  const q = rssi >= -60 ? "good" : rssi >= -72 ? "fair" : "weak";
  return `${rssi} dBm (${q})`;
}

function battery(mv) {
  if (mv == null) return "mains power";
  return (mv / 1000).toFixed(2) + " V";
}

function toast(msg, bad = false) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = "toast" + (bad ? " bad" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

// --- state ---------------------------------------------------------------------

const state = {
  page: null,
  devices: new Map(),
  events: [],
  next: null,
  filters: { device: "", type: "", from: "", to: "" },
  alertState: "",
  alerts: new Map(),
  wa: null,
  pendingCmds: new Map(), // command id -> {device, cmd}
  earlyResults: new Map(), // results that arrived on the live stream before the POST answered
  stored: new Set(), // "device/id" of events seen on the live stream (recent ones)
  snapWaiting: new Map(), // "device/id" of a snapshot whose photo is not stored yet -> command id
};

const PAGES = { "/": "deliveries", "/boxes": "boxes", "/whatsapp": "whatsapp", "/alerts": "alerts" };

function show(path, push) {
  const page = PAGES[path] || "deliveries";
  if (push) history.pushState({}, "", path);
  state.page = page;
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("[data-page]")) a.classList.toggle("on", a.dataset.page === page);
  document.title = ({ deliveries: "Deliveries", boxes: "Boxes", whatsapp: "WhatsApp", alerts: "Alerts" })[page] + " · parcelbox";
  load(page);
}

function load(page) {
  const jobs = { deliveries: loadEvents, boxes: loadDevices, whatsapp: loadWhatsApp, alerts: loadAlerts };
  loadDevices().catch(() => {});
  if (page !== "boxes") jobs[page]().catch((e) => toast(e.message, true));
}

// --- deliveries ------------------------------------------------------------------

function dateToTs(value, endOfDay) {
  if (!value) return null;
  const [y, m, d] = value.split("-").map(Number);
  const t = new Date(y, m - 1, d + (endOfDay ? 1 : 0));
  return t.getTime() / 1000;
}

function eventQuery(before) {
  const f = state.filters;
  const q = new URLSearchParams({ limit: "30" });
  if (f.device) q.set("device", f.device);
  if (f.type) q.set("type", f.type);
  const since = dateToTs(f.from, false), until = dateToTs(f.to, true);
  if (since != null) q.set("since", since);
  if (until != null) q.set("until", until);
  if (before) q.set("before", before);
  return q;
}

function matchesFilters(e) {
  const f = state.filters;
  if (f.device && e.device !== f.device) return false;
  if (f.type && e.type !== f.type) return false;
  const since = dateToTs(f.from, false), until = dateToTs(f.to, true);
  if (since != null && e.ts < since) return false;
  if (until != null && e.ts >= until) return false;
  return true;
}

async function loadEvents() {
  const data = await api("/api/events?" + eventQuery(null));
  state.events = data.events;
  state.next = data.next;
  renderEvents();
}

async function loadMore() {
  if (!state.next) return;
  const data = await api("/api/events?" + eventQuery(state.next));
  state.events.push(...data.events);
  state.next = data.next;
  renderEvents();
}

function boxName(id) {
  const d = state.devices.get(id);
  return d ? d.name || id : id;
}

function eventItem(e, fresh) {
  const thumb = e.photos
    ? h("img", { class: "thumb", src: e.photos.thumb, alt: TYPE_LABEL[e.type] || e.type, loading: "lazy", width: 160, height: 120 })
    : h("div", { class: "thumb none" }, "no photo");
  const sensors = e.sensors || {};
  const extra = [];
  for (const r of VOCAB.readings) {
    if (sensors[r.key] != null) extra.push(sensors[r.key] + " " + r.unit);
  }
  if (e.cmd) extra.push("requested");
  return h("li", {
    class: "event t-" + e.type + (fresh ? " fresh" : ""),
    "data-id": e.id, "data-device": e.device, tabindex: 0, role: "button",
    onclick: () => openEvent(e),
    onkeydown: (ev) => { if (ev.key === "Enter") openEvent(e); },
  },
    thumb,
    h("div", { class: "ev-body" },
      h("div", { class: "ev-top" }, h("span", { class: "tag t-" + e.type }, TYPE_LABEL[e.type] || e.type),
        h("time", { datetime: new Date(e.ts * 1000).toISOString(), title: new Date(e.ts * 1000).toLocaleString() }, when(e.ts))),
      h("div", { class: "ev-box" }, boxName(e.device)),
      extra.length ? h("div", { class: "muted small" }, extra.join(" · ")) : null,
    ),
  );
}

function renderEvents() {
  const list = $("#events");
  list.replaceChildren(...state.events.map((e) => eventItem(e, false)));
  $("#events-empty").hidden = state.events.length > 0;
  $("#more").hidden = !state.next;
}

function onEvent(e) {
  const key = e.device + "/" + e.id;
  state.stored.add(key);
  if (state.stored.size > 200) state.stored.delete(state.stored.values().next().value);
  if (state.snapWaiting.has(key)) {
    snapshotReady(e.device, e.id, state.snapWaiting.get(key));
    state.snapWaiting.delete(key);
  }
  if (state.events.some((x) => x.id === e.id && x.device === e.device)) return;
  if (!matchesFilters(e)) return;
  // Newest first: insert before the first older row (events from a spool can arrive late).
  let i = state.events.findIndex((x) => x.ts < e.ts || (x.ts === e.ts && x.id < e.id));
  if (i < 0) {
    if (state.next) return; // older than everything loaded: it belongs on a later page
    i = state.events.length;
  }
  state.events.splice(i, 0, e);
  if (state.page === "deliveries") {
    const list = $("#events");
    list.insertBefore(eventItem(e, true), list.children[i] || null);
    $("#events-empty").hidden = true;
  }
}

function openEvent(e) {
  const dlg = $("#viewer");
  $("#viewer-title").textContent = (TYPE_LABEL[e.type] || e.type) + " · " + boxName(e.device);
  $("#viewer-sub").textContent = new Date(e.ts * 1000).toLocaleString();
  const img = $("#viewer-img");
  const orig = $("#viewer-orig");
  if (e.photos) {
    img.src = e.photos.alert;
    img.alt = "Photo of the " + (TYPE_LABEL[e.type] || e.type).toLowerCase();
    img.hidden = false;
    orig.href = e.photos.original;
    orig.hidden = false;
    const p = e.photo || {};
    $("#viewer-meta").textContent = [p.width && p.height ? `${p.width}×${p.height}` : "", p.size ? Math.round(p.size / 1024) + " KB" : ""].filter(Boolean).join(" · ");
  } else {
    img.removeAttribute("src");
    img.hidden = true;
    orig.hidden = true;
    $("#viewer-meta").textContent = "This event has no photo.";
  }
  dlg.showModal();
}

// --- boxes -------------------------------------------------------------------------

async function loadDevices() {
  const data = await api("/api/devices");
  state.devices = new Map(data.devices.map((d) => [d.device, d]));
  fillBoxFilter();
  if (state.page === "boxes") {
    renderBoxes();
    loadHealth().catch(() => {});
  }
}

async function loadHealth() {
  // One line about the gateway itself; every key is optional (gateways report what they have).
  const hl = await api("/api/health");
  const parts = [];
  if (hl.broker && hl.broker.connected != null) parts.push(hl.broker.connected ? "broker connected" : "broker NOT connected");
  const total = hl.events_total != null ? hl.events_total : hl.stored;
  const n = (k, one, many) => `${k} ${k === 1 ? one : many}`;
  if (total != null) parts.push(n(total, "event stored", "events stored"));
  const a = hl.alerts || {};
  const bad = (a.failed || 0) + (a.dead || 0);
  if (a.pending) parts.push(n(a.pending, "alert pending", "alerts pending"));
  if (bad) parts.push(n(bad, "alert failed", "alerts failed"));
  if (hl.uptime_s != null) parts.push("up " + ago(Date.now() / 1000 - hl.uptime_s).replace(" ago", "").replace("just now", "< 1 min"));
  // Storage: free space always, and the first problem (disk almost full, refused writes, damage) in words.
  const st = hl.storage || {};
  const storageBad = st.ok === false;
  if (st.disk && st.disk.free_bytes != null) parts.push(`${Math.round(st.disk.free_bytes / 1048576)} MB free`);
  if (storageBad && st.problems && st.problems.length) parts.push("storage: " + st.problems[0]);
  const el = $("#gw-health");
  el.textContent = parts.join(" · ");
  el.title = (st.problems || []).join("\n");
  el.classList.toggle("bad", Boolean(bad) || storageBad || (hl.broker && hl.broker.connected === false));
}

function fillBoxFilter() {
  const sel = $("#filters [name=device]");
  const cur = sel.value;
  sel.replaceChildren(h("option", { value: "" }, "All boxes"),
    ...[...state.devices.values()].map((d) => h("option", { value: d.device }, d.name || d.device)));
  sel.value = cur;
}

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value));
}

function boxCard(d) {
  const waiting = d.waiting || 0;
  return h("article", { class: "card box" + (d.online ? "" : " off"), "data-device": d.device },
    h("div", { class: "box-head" },
      h("div", {}, h("h2", {}, d.name || d.device), h("div", { class: "muted small" }, d.device)),
      h("span", { class: "badge " + (d.online ? "ok" : "bad") }, d.online ? "online" : "offline"),
    ),
    h("div", { class: "waiting" + (waiting ? " has" : "") },
      h("b", {}, String(waiting)), waiting === 1 ? " package waiting" : " packages waiting",
      d.last_delivery_ts ? h("span", { class: "muted small" }, " · last delivery " + ago(d.last_delivery_ts)) : null),
    h("dl", { class: "facts" },
      fact("Last seen", ago(d.last_seen)),
      fact("Lid", d.lid_open == null ? "—" : d.lid_open ? "open" : "closed"),
      fact("Signal", signal(d.rssi)),
      fact("Battery", battery(d.battery_mv)),
      fact("Spooled", d.spooled == null ? "—" : String(d.spooled)),
      fact("Firmware", d.fw || "—"),
    ),
    h("div", { class: "actions" },
      h("button", { class: "cmd", "data-cmd": "snapshot", onclick: () => command(d, "snapshot") }, "Take snapshot"),
      h("button", { class: "ghost cmd", "data-cmd": "reboot", onclick: () => command(d, "reboot") }, "Reboot"),
    ),
    h("p", { class: "result", role: "status" }),
  );
}

function renderBoxes() {
  const list = [...state.devices.values()];
  // Keep each box's last command result across re-renders (relative times refresh every minute).
  const kept = new Map([...document.querySelectorAll(".box")].map((b) => [b.dataset.device, $(".result", b)]));
  const cards = list.map((d) => {
    const card = boxCard(d);
    const old = kept.get(d.device);
    if (old && old.textContent) $(".result", card).replaceWith(old);
    return card;
  });
  $("#boxes").replaceChildren(...cards);
  $("#boxes-empty").hidden = list.length > 0;
}

function showCmd(device, text, cls, cmdId, link) {
  const card = document.querySelector(`.box[data-device="${CSS.escape(device)}"]`);
  if (!card) return;
  const r = $(".result", card);
  r.className = "result " + (cls || "");
  r.replaceChildren(text, link || "");
  if (cmdId) r.dataset.cmd = cmdId;
}

async function command(d, cmd) {
  if (cmd === "reboot" && !confirm(`Reboot ${d.name || d.device}?`)) return;
  try {
    showCmd(d.device, cmd === "snapshot" ? "Asking the box for a photo…" : "Sending reboot…", "wait");
    const r = await api(`/api/devices/${encodeURIComponent(d.device)}/command`, { method: "POST", body: { cmd } });
    const text = cmd === "snapshot" ? "Snapshot requested; waiting for the box…" : "Reboot sent; waiting for the box…";
    state.pendingCmds.set(r.id, { device: d.device, cmd, text, cls: "wait" });
    showCmd(d.device, text, "wait", r.id);
    if (state.earlyResults.has(r.id)) { onCommand(state.earlyResults.get(r.id)); return; }
    // The result normally arrives on the live stream; ask too, in case it was missed.
    for (const ms of [3000, 10000, 30000]) setTimeout(() => pollCmd(r.id, ms === 30000), ms);
  } catch (e) {
    showCmd(d.device, "Could not send: " + e.message, "bad");
  }
}

async function pollCmd(id, last) {
  if (!state.pendingCmds.has(id)) return;
  try {
    const r = await api("/api/commands/" + encodeURIComponent(id));
    if (!r.pending) onCommand(r);
    else if (last) {
      const p = state.pendingCmds.get(id);
      showCmd(p.device, "No answer yet. A sleeping box answers when it next wakes.", "wait", id);
    }
  } catch { /* the live stream may still deliver it */ }
}

function onCommand(res) {
  const p = state.pendingCmds.get(res.id);
  if (!p) {
    state.earlyResults.set(res.id, res);
    if (state.earlyResults.size > 50) state.earlyResults.delete(state.earlyResults.keys().next().value);
    return;
  }
  state.pendingCmds.delete(res.id);
  if (!res.ok) {
    showCmd(p.device, `${p.cmd} failed: ${res.error || "unknown error"}`, "bad", res.id);
    return;
  }
  if (p.cmd === "snapshot" && res.event) {
    // The box answers as soon as it has sent the photo; the gateway stores it a moment later.
    if (state.stored.has(p.device + "/" + res.event)) snapshotReady(p.device, res.event, res.id);
    else {
      state.snapWaiting.set(p.device + "/" + res.event, res.id);
      showCmd(p.device, "Snapshot taken; receiving the photo…", "wait", res.id);
      // In case the live stream missed the stored event: look for it directly a little later.
      setTimeout(() => {
        const key = p.device + "/" + res.event;
        if (!state.snapWaiting.has(key)) return;
        api(`/api/events/${encodeURIComponent(p.device)}/${encodeURIComponent(res.event)}`).then(() => {
          if (state.snapWaiting.delete(key)) snapshotReady(p.device, res.event, res.id);
        }, () => {});
      }, 8000);
    }
  } else {
    showCmd(p.device, `${p.cmd} done ✓`, "ok", res.id);
  }
}

function snapshotReady(device, eventId, cmdId) {
  const link = h("a", { href: "#", class: "view-snap", onclick: async (ev) => {
    ev.preventDefault();
    try { openEvent(await api(`/api/events/${encodeURIComponent(device)}/${encodeURIComponent(eventId)}`)); }
    catch (e) { toast(e.message, true); }
  } }, "View photo");
  showCmd(device, "Snapshot taken ✓ ", "ok", cmdId, link);
}

function onDevice(d) {
  state.devices.set(d.device, d);
  if (state.page === "boxes") {
    const old = document.querySelector(`.box[data-device="${CSS.escape(d.device)}"]`);
    const keep = old ? $(".result", old) : null;
    const card = boxCard(d);
    if (keep) $(".result", card).replaceWith(keep);
    if (old) old.replaceWith(card);
    else renderBoxes();
  }
  if (![...$("#filters [name=device]").options].some((o) => o.value === d.device)) fillBoxFilter();
}

// --- WhatsApp ----------------------------------------------------------------------

const WA_LABEL = {
  connected: ["Connected", "ok"], pairing: ["Waiting for pairing", "warn"], not_paired: ["Not linked", "warn"],
  starting: ["Starting", "warn"], disconnected: ["Disconnected", "bad"], stream_replaced: ["Replaced by another session", "bad"],
  logged_out: ["Logged out", "bad"], banned: ["Banned", "bad"], outdated: ["Client outdated", "bad"],
  locked: ["Session locked", "bad"], error: ["Error", "bad"], disabled: ["Disabled", "muted"],
  not_installed: ["Not installed", "muted"], unknown: ["Unknown", "muted"],
};

async function loadWhatsApp() {
  renderWhatsApp(await api("/api/whatsapp"));
}

// On every page: WhatsApp alerts have stopped (down longer than the server's notice delay).
function renderBanner() {
  const wa = state.wa || {};
  const after = wa.down_notice_after_s || 0;
  const down = wa.down_since && after > 0 && !["connected", "disabled", "not_installed"].includes(wa.state)
    && Date.now() / 1000 - wa.down_since >= after;
  const b = $("#wa-banner");
  b.hidden = !down;
  if (down) {
    b.replaceChildren("WhatsApp alerts have stopped since " + new Date(wa.down_since * 1000).toLocaleString()
      + ". ", Object.assign(document.createElement("a"), { href: "/whatsapp", textContent: "Open the WhatsApp page" }),
      " (the phone offline for ~14 days unlinks the gateway: pair again).");
    b.querySelector("a").setAttribute("data-nav", "");
  }
}

function renderWhatsApp(wa) {
  const prev = state.wa || {};
  state.wa = { ...prev, ...wa, actions: wa.actions || prev.actions };
  wa = state.wa;
  renderBanner();
  const [label, cls] = WA_LABEL[wa.state] || [wa.state, "muted"];
  const badge = $("#wa-badge");
  badge.textContent = label;
  badge.className = "badge " + cls;
  $("#wa-as").textContent = wa.paired_as ? "as +" + String(wa.paired_as).replace(/^\+/, "") : "";
  $("#wa-detail").textContent = wa.detail || "";
  const unknown = wa.unknown_numbers || [];
  $("#wa-unknown").hidden = !unknown.length;
  $("#wa-unknown").textContent = unknown.length
    ? "Not on WhatsApp (alerts to them fail at once; fix [whatsapp] recipients): " + unknown.map((n) => "+" + n).join(", ")
    : "";
  const pairing = ["pairing", "not_paired", "logged_out"].includes(wa.state);
  $("#wa-pair").hidden = !pairing;
  $("#wa-linked").hidden = wa.state !== "connected";
  const qr = $("#wa-qr");
  if (pairing && wa.qr_url) {
    if (qr.dataset.v !== wa.qr_version) { qr.src = wa.qr_url; qr.dataset.v = wa.qr_version; }
    qr.hidden = false;
    $("#wa-noqr").hidden = true;
  } else {
    qr.hidden = true;
    qr.removeAttribute("src");
    qr.dataset.v = "";
    $("#wa-noqr").hidden = false;
    $("#wa-noqr").textContent = wa.pair_code ? "Use the pairing code below." : "Waiting for a QR code from WhatsApp…";
  }
  const code = $("#wa-code");
  code.hidden = !wa.pair_code;
  code.textContent = wa.pair_code ? "Code: " + wa.pair_code : "";
  const acts = wa.actions || {};
  $("#wa-code-form").hidden = acts.pair_code === false;
  $("#wa-test-form").hidden = acts.test_message === false;
  $("#wa-unlink").hidden = acts.unlink === false;
}

async function waAction(path, body, okText) {
  const out = $("#wa-result");
  out.className = "result wait";
  out.textContent = "Working…";
  waAction.lastStatus = 0;
  try {
    const r = await api(path, { method: "POST", body });
    out.className = "result ok";
    out.textContent = okText(r);
    return r;
  } catch (e) {
    out.className = "result bad";
    out.textContent = e.message;
    waAction.lastStatus = e.status;
    return null;
  }
}

// --- alerts ------------------------------------------------------------------------

async function loadAlerts() {
  const q = state.alertState ? "?state=" + state.alertState : "";
  const data = await api("/api/outbox" + q);
  state.alerts = new Map(data.alerts.map((a) => [a.id, a]));
  renderAlerts();
  loadChannels();
}

// Apprise URLs, one row each: shown by id (scheme + hash; the URL holds secrets and never leaves the gateway).
async function loadChannels() {
  let data;
  try { data = await api("/api/channels"); } catch { return; }
  const rows = (data.channels || []).map(channelRow);
  $("#channels").replaceChildren(...rows);
  $("#channels").hidden = rows.length === 0;
}

function channelRow(c) {
  const last = c.last_alert;
  const st = last ? last.state : "unused";
  return h("article", { class: "channel card s-" + st, "data-channel": c.id },
    h("div", { class: "al-top" },
      h("span", { class: "badge " + (({ sent: "ok", pending: "warn", failed: "bad", dead: "bad" })[st] || "") }, st),
      h("b", {}, c.scheme + " · " + c.id),
      h("span", { class: "muted small grow" }, c.boxes.length ? "boxes: " + c.boxes.join(", ") : "all boxes"),
      h("button", { class: "small-btn channel-test", onclick: () => testChannel(c) }, "Send test")),
    h("div", { class: "muted small" },
      `${c.recent.sent} sent · ${c.recent.pending + c.recent.failed} waiting · ${c.recent.dead} dead`,
      last && last.sent_at ? " · last sent " + when(last.sent_at) : ""),
    last && last.last_error ? h("div", { class: "err" }, last.last_error) : null,
  );
}

async function testChannel(c) {
  try {
    await api(`/api/channels/${encodeURIComponent(c.sink)}/${encodeURIComponent(c.id)}/test`, { method: "POST" });
    toast("Test message queued to " + c.id);
    loadChannels();
  } catch (e) {
    toast(e.message, true);
  }
}

function alertRow(a) {
  const retry = a.state === "failed" || a.state === "dead"
    ? h("button", { class: "small-btn retry", onclick: () => retryAlert(a) }, "Retry now") : null;
  return h("article", { class: "alert card s-" + a.state, "data-id": a.id },
    h("div", { class: "al-top" },
      h("span", { class: "badge " + ({ sent: "ok", pending: "warn", failed: "bad", dead: "bad" })[a.state] }, a.state),
      h("b", {}, (TYPE_LABEL[a.kind] || a.kind) + " · " + boxName(a.device)),
      h("span", { class: "muted small grow" }, when(a.created_at)),
      a.event_ids && a.event_ids.length ? h("a", { href: "#", class: "small view-event", onclick: (ev) => {
        ev.preventDefault();
        api(`/api/events/${encodeURIComponent(a.device)}/${encodeURIComponent(a.event_ids[0])}`)
          .then(openEvent, (e) => toast(e.message, true));
      } }, "View event") : null,
      retry),
    h("div", { class: "muted small" },
      (a.recipient ? `${a.notifier} → ${a.recipient}` : a.notifier) + ` · ${a.attempts} attempt${a.attempts === 1 ? "" : "s"}`,
      a.state === "sent" && a.sent_at ? " · sent " + when(a.sent_at) : "",
      // WhatsApp receipts: sent (server accepted) → delivered (on the phone) → read.
      a.receipt ? " · " + ["sent", "delivered", "read"].map((r) => r === a.receipt ? r.toUpperCase() : r).join(" → ")
        + (a.receipt_at && a.receipt !== "sent" ? " " + when(a.receipt_at) : "") : "",
      (a.state === "pending" || a.state === "failed") && a.next_attempt_at ? " · next try " + when(a.next_attempt_at) : ""),
    a.last_error ? h("div", { class: "err" }, a.last_error) : null,
  );
}

function renderAlerts() {
  const rows = [...state.alerts.values()].sort((x, y) => y.created_at - x.created_at);
  $("#alerts").replaceChildren(...rows.map(alertRow));
  $("#alerts-empty").hidden = rows.length > 0;
}

async function retryAlert(a) {
  try {
    await api(`/api/outbox/${encodeURIComponent(a.id)}/retry`, { method: "POST" });
    toast("Alert queued to send again");
  } catch (e) {
    toast(e.message, true);
  }
}

function onOutbox(a) {
  if (state.alertState && a.state !== state.alertState) state.alerts.delete(a.id);
  else state.alerts.set(a.id, a);
  if (state.page === "alerts") {
    renderAlerts();
    if (a.notifier === "apprise" && !state.channelsDue) {  // coalesce a burst of changes into one reload
      state.channelsDue = setTimeout(() => { state.channelsDue = null; loadChannels(); }, 1000);
    }
  }
}

// --- live --------------------------------------------------------------------------

function setLive(on, text) {
  const el = $("#live");
  el.classList.toggle("on", on);
  $("span", el).textContent = text;
}

function connectLive() {
  const es = new EventSource("/api/stream");
  let opened = false;
  es.addEventListener("hello", (m) => {
    const hello = JSON.parse(m.data);
    $("#logout").hidden = !hello.login_required;
    // After a reconnect, reload what is on screen: anything missed while away is picked up.
    if (opened) load(state.page);
    opened = true;
    setLive(true, "live");
  });
  es.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
  es.addEventListener("device", (m) => onDevice(JSON.parse(m.data)));
  es.addEventListener("outbox", (m) => onOutbox(JSON.parse(m.data)));
  es.addEventListener("command", (m) => onCommand(JSON.parse(m.data)));
  es.addEventListener("whatsapp", (m) => { if (state.wa || state.page === "whatsapp") renderWhatsApp(JSON.parse(m.data)); });
  es.addEventListener("resync", () => load(state.page));
  es.onerror = async () => {
    setLive(false, "reconnecting");
    if (es.readyState === EventSource.CLOSED) {
      // Closed for good (e.g. 401 after the session ended): check the login, then retry.
      try { await api("/api/health"); } catch { return; }
      setTimeout(connectLive, 3000);
    }
  };
}

// --- wiring ------------------------------------------------------------------------

function init() {
  $("#filters select[name=type]").append(...VOCAB.event_types.map((t) => h("option", { value: t.type }, t.label)));
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-nav]");
    if (!a || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    show(new URL(a.href).pathname, true);
  });
  window.addEventListener("popstate", () => show(location.pathname, false));

  const filters = $("#filters");
  filters.addEventListener("change", () => {
    const f = new FormData(filters);
    state.filters = { device: f.get("device"), type: f.get("type"), from: f.get("from"), to: f.get("to") };
    loadEvents().catch((e) => toast(e.message, true));
  });
  filters.addEventListener("reset", () => setTimeout(() => filters.dispatchEvent(new Event("change")), 0));
  $("#more").addEventListener("click", () => loadMore().catch((e) => toast(e.message, true)));
  $("#viewer").addEventListener("click", (ev) => { if (ev.target.id === "viewer") ev.target.close(); });

  for (const b of document.querySelectorAll("#alert-states button")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll("#alert-states button")) o.classList.toggle("on", o === b);
      state.alertState = b.dataset.state;
      loadAlerts().catch((e) => toast(e.message, true));
    });
  }

  $("#wa-code-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await waAction("/api/whatsapp/pair-code", { phone: $("#wa-phone").value },
      (r) => r.pair_code ? "Enter this code in WhatsApp → Linked devices → Link with phone number." : "Code requested.");
    if (r && r.pair_code) renderWhatsApp({ pair_code: r.pair_code });
  });
  $("#wa-test-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const recipient = $("#wa-recipient").value.trim() || null;
    const sent = () => "Test message sent.";
    const r = await waAction("/api/whatsapp/test", { recipient }, sent);
    // 409: not one of the alert recipients; the owner's account should not message a stranger by accident.
    if (!r && waAction.lastStatus === 409 &&
        confirm(`${recipient} is not one of your alert recipients. Send it a test message anyway?`)) {
      await waAction("/api/whatsapp/test", { recipient, confirm: true }, sent);
    }
  });
  $("#wa-unlink").addEventListener("click", async () => {
    if (!confirm("Unlink this gateway from WhatsApp? Alerts stop until you pair again.")) return;
    await waAction("/api/whatsapp/unlink", undefined, () => "Unlinked.");
    loadWhatsApp().catch(() => {});
  });

  // The banner shows on every page: load the WhatsApp state once, then live updates keep it current.
  loadWhatsApp().catch(() => {});
  setInterval(renderBanner, 30000);

  $("#logout").addEventListener("click", async () => {
    try { await api("/logout", { method: "POST" }); } catch { /* going to the login page anyway */ }
    if ("caches" in window) for (const k of await caches.keys()) await caches.delete(k);
    location.href = "/login";
  });

  // Relative times ("3 min ago") age while the page stays open.
  setInterval(() => { if (state.page === "boxes") renderBoxes(); }, 60000);

  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(() => {});
  show(location.pathname, false);
  connectLive();
}

document.addEventListener("DOMContentLoaded", init);
