// parcelbox dashboard: plain JavaScript, no build step. Pages are rendered from the JSON API;
// live changes arrive over Server-Sent Events (/api/stream). Text from records is always set with
// textContent (never innerHTML), so nothing a box sends can run as script here. Every word shown comes
// from the language catalogue through t() / tn() and the date helpers in lang.js (loaded first).
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
  let r;
  try {
    r = await fetch(path, init);
  } catch {
    offline(null); // no service worker (first visit) or not a GET: say it plainly
    const err = new TypeError(t("error.network")); // still a TypeError, as fetch's own
    err.code = "network";
    throw err;
  }
  // Answered by the service worker from what it saved, because the gateway is out of reach.
  const saved = r.headers.get("x-pb-saved-at");
  if (saved) offline(Number(saved));
  else if (r.headers.get("x-pb-offline")) offline(null);
  else online();
  if (r.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    const err = new Error(t("error.login_required"));
    err.code = "login_required"; // what callers test (the message is in the page's language)
    throw err;
  }
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (!r.ok) {
    // The API answers in English (for scripts and logs); the page says it in its own words.
    const err = new Error();
    err.status = r.status;
    err.code = data && data.error;
    err.detail = data && data.detail;
    err.retryAfter = r.headers.get("retry-after");
    err.message = errorText(err);
    throw err;
  }
  return data;
}

// --- away from home: the gateway out of reach ---------------------------------------
// While it cannot be reached the page shows what the service worker saved, says from when, and
// checks every few seconds; once the gateway answers it reloads what is on screen by itself.

const away = { since: null, shownTs: null, timer: null };

function offline(savedTs) {
  if (savedTs != null && (away.shownTs == null || savedTs < away.shownTs)) away.shownTs = savedTs;
  if (away.since == null) away.since = Date.now();
  const el = $("#offline");
  const at = away.shownTs != null ? clock(away.shownTs) : null;
  el.textContent = at ? t("offline.notice", { time: at }) : t("offline.nothing_saved");
  el.hidden = false;
  document.body.classList.add("is-offline");
  if (!away.timer) away.timer = setInterval(probe, 5000);
}

function online() {
  if (away.since == null) return;
  away.since = away.shownTs = null;
  clearInterval(away.timer);
  away.timer = null;
  $("#offline").hidden = true;
  document.body.classList.remove("is-offline");
}

async function probe() {
  try {
    const r = await fetch("/api/health", { credentials: "same-origin", cache: "no-store" });
    if (r.ok && !r.headers.get("x-pb-saved-at") && !r.headers.get("x-pb-offline")) {
      online();
      load(state.page);
    }
  } catch { /* still away */ }
}

// --- formatting ----------------------------------------------------------------

// Event types (and alert kinds that are not events: offline, online, low_battery), commands and alert
// states: the catalogue's words for the API's English names (an unknown name is shown as it is).
function label(prefix, name) {
  const key = prefix + name;
  return t(key) === key ? String(name) : t(key);
}
// Sensor readings (and the event types) come from the gateway (gateway/vocabulary.py, injected into
// index.html): the page never spells a sensor key of its own.
const VOCAB = JSON.parse(document.getElementById("vocabulary").textContent);
const typeLabel = (type) => label("type.", type);
const cmdLabel = (cmd) => label("cmd.", cmd);
const alertStateLabel = (st) => label("alerts.state.", st);
// The Deliveries page's default: what a user looks for; the rest is behind the type filter.
const DEFAULT_TYPES = ["delivery", "pickup"];
const FILTER_KEYS = ["device", "type", "from", "to"];

// ago(), when(), clock(), fullDate(), duration(), dayStart(): lang.js (the locale's format, the gateway's zone).

function signal(rssi) {
  if (rssi == null) return "—";
  const q = rssi >= -60 ? "good" : rssi >= -72 ? "fair" : "weak";
  return t("box.signal_value", { rssi, quality: t("box.signal_" + q) });
}

function battery(mv) {
  if (mv == null) return t("box.mains");
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
  firmware: new Map(), // device -> its firmware against this checkout's and its update (/api/firmware)
  firmwareTimer: null, // polling /api/firmware while an update is on its way
  firmwareSoon: null, // a live "firmware" message asked for /api/firmware again
};

const PAGES = { "/": "deliveries", "/boxes": "boxes", "/whatsapp": "whatsapp", "/alerts": "alerts" };

// The Deliveries filters live in the address (?device=&type=&from=&to=): a reload, a bookmark or a
// shared link shows the same list.
function filterUrl() {
  const q = new URLSearchParams();
  for (const k of FILTER_KEYS) if (state.filters[k]) q.set(k, state.filters[k]);
  const qs = q.toString();
  return "/" + (qs ? "?" + qs : "");
}

function filtersToUrl() {
  if (state.page === "deliveries") history.replaceState(history.state, "", filterUrl());
}

function filtersFromUrl() {
  const q = new URLSearchParams(location.search);
  const form = $("#filters");
  for (const k of FILTER_KEYS) {
    state.filters[k] = q.get(k) || "";
    const el = form.elements[k];
    if (k === "device" && state.filters[k] && ![...el.options].some((o) => o.value === state.filters[k])) {
      el.append(h("option", { value: state.filters[k] }, state.filters[k])); // the box list is not loaded yet
    }
    el.value = state.filters[k];
  }
}

function show(path, push) {
  const page = PAGES[path] || "deliveries";
  if (push) history.pushState({}, "", page === "deliveries" ? filterUrl() : path);
  state.page = page;
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("[data-page]")) a.classList.toggle("on", a.dataset.page === page);
  document.title = t("app.title", { page: t("nav." + page) });
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
  // Days as the gateway's zone has them, so the filter agrees with the times shown.
  if (!endOfDay) return dayStart(value);
  const [y, m, d] = value.split("-").map(Number);
  return dayStart(new Date(Date.UTC(y, m - 1, d + 1)).toISOString().slice(0, 10));
}

function eventQuery(before) {
  const f = state.filters;
  const q = new URLSearchParams({ limit: "30" });
  if (f.device) q.set("device", f.device);
  if (!f.type) q.set("type", DEFAULT_TYPES.join(","));
  else if (f.type !== "all") q.set("type", f.type);
  const since = dateToTs(f.from, false), until = dateToTs(f.to, true);
  if (since != null) q.set("since", since);
  if (until != null) q.set("until", until);
  if (before) q.set("before", before);
  return q;
}

function matchesFilters(e) {
  const f = state.filters;
  if (f.device && e.device !== f.device) return false;
  if (!f.type && !DEFAULT_TYPES.includes(e.type)) return false;
  if (f.type && f.type !== "all" && e.type !== f.type) return false;
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
    ? h("img", { class: "thumb", src: e.photos.thumb, alt: typeLabel(e.type), loading: "lazy", width: 160, height: 120 })
    : h("div", { class: "thumb none" }, t("events.no_photo"));
  const sensors = e.sensors || {};
  const extra = [];
  for (const r of VOCAB.readings) {
    if (sensors[r.key] != null) extra.push(sensors[r.key] + " " + r.unit);
  }
  if (e.cmd) extra.push(t("events.requested"));
  return h("li", {
    class: "event t-" + e.type + (fresh ? " fresh" : ""),
    "data-id": e.id, "data-device": e.device, tabindex: 0, role: "button",
    onclick: () => openEvent(e),
    onkeydown: (ev) => { if (ev.key === "Enter") openEvent(e); },
  },
    thumb,
    h("div", { class: "ev-body" },
      h("div", { class: "ev-top" }, h("span", { class: "tag t-" + e.type }, typeLabel(e.type)),
        h("time", { datetime: new Date(e.ts * 1000).toISOString(), title: fullDate(e.ts) }, when(e.ts))),
      h("div", { class: "ev-box", "data-verbatim": true }, boxName(e.device)),
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
  // Same order as the server: (ts, seq, id), so events of one second keep the box's own order.
  const older = (x) => x.ts < e.ts || (x.ts === e.ts && ((x.seq || 0) < (e.seq || 0) || ((x.seq || 0) === (e.seq || 0) && x.id < e.id)));
  let i = state.events.findIndex(older);
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
  $("#viewer-title").textContent = typeLabel(e.type) + " · " + boxName(e.device);
  $("#viewer-sub").textContent = fullDate(e.ts);
  const img = $("#viewer-img");
  const orig = $("#viewer-orig");
  if (e.photos) {
    img.src = e.photos.alert;
    img.alt = t("viewer.photo_of", { type: typeLabel(e.type) });
    img.hidden = false;
    orig.href = e.photos.original;
    orig.hidden = false;
    const p = e.photo || {};
    $("#viewer-meta").textContent = [p.width && p.height ? `${p.width}×${p.height}` : "", p.size ? Math.round(p.size / 1024) + " KB" : ""].filter(Boolean).join(" · ");
  } else {
    img.removeAttribute("src");
    img.hidden = true;
    orig.hidden = true;
    $("#viewer-meta").textContent = t("viewer.no_photo");
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
    loadFirmware().catch(() => {});
  }
}

// --- over-the-air updates ----------------------------------------------------------
// Which boxes run another firmware than this gateway's checkout (by the files' sha256, as
// `parcelbox device update --dry-run`), and the progress of an update, polled while one is on its way.

async function loadFirmware() {
  const data = await api("/api/firmware");
  state.firmware = new Map(data.devices.map((f) => [f.device, f]));
  for (const card of document.querySelectorAll(".box")) fillOta(card, state.devices.get(card.dataset.device));
  clearTimeout(state.firmwareTimer);
  state.firmwareTimer = null;
  if (state.page === "boxes" && data.devices.some((f) => f.update && f.update.active)) {
    state.firmwareTimer = setTimeout(() => loadFirmware().catch(() => {}), 2000);
  }
}

// An update started elsewhere (Home Assistant, `parcelbox device update`) or moving: ask again, at most
// twice a second however many chunks go by.
function firmwareChanged() {
  if (state.page !== "boxes" || state.firmwareSoon) return;
  state.firmwareSoon = setTimeout(() => { state.firmwareSoon = null; loadFirmware().catch(() => {}); }, 500);
}

function otaContent(d, f) {
  const u = f.update;
  if (u && u.active) {
    if (u.state === "staged") return [h("span", { class: "muted" }, t("ota.staged"))];
    if ((u.state === "queued" || u.state === "offered") && d && !d.online) return [h("span", { class: "muted" }, t("ota.waiting_wake"))];
    return [
      h("span", { class: "ota-progress" }, t("ota.updating", { percent: u.percent })),
      h("progress", { max: "100", value: String(u.percent) }),
    ];
  }
  const out = [];
  if (u && (u.state === "failed" || u.state === "refused")) {
    out.push(h("p", { class: "bad small" }, t("ota.failed") + " ", h("span", { "data-verbatim": true }, u.reason || "—")));
  } else if (u && u.state === "done" && !f.update_available) {
    out.push(h("p", { class: "ok small" }, t("ota.done", { version: u.version || "" })));
  }
  if (f.update_available) {
    out.push(h("span", { class: "badge warn ota-available" }, t("ota.available", { version: f.latest_version })));
    out.push(h("button", { class: "ghost ota-update", onclick: () => startUpdate(d, f) }, t("ota.update")));
  }
  return out;
}

function fillOta(card, d) {
  const el = $(".ota", card);
  const f = state.firmware.get(card.dataset.device);
  if (!el) return;
  el.replaceChildren(...(f ? otaContent(d, f) : []));
}

async function startUpdate(d, f) {
  if (!confirm(t("ota.confirm", { box: d.name || d.device, version: f.latest_version }))) return;
  try {
    await api(`/api/devices/${encodeURIComponent(d.device)}/update`, { method: "POST" });
  } catch (e) {
    // The gateway's reason (no room on the box, already on its way...) is its own words: shown as is.
    const why = e.status === 409 && e.detail ? e.detail : e.message;
    showCmd(d.device, t("ota.refused") + " ", "bad", null, h("span", { "data-verbatim": true }, why));
    return;
  }
  showCmd(d.device, "", "");
  await loadFirmware().catch(() => {});
}

async function loadHealth() {
  // One line about the gateway itself; every key is optional (gateways report what they have).
  const hl = await api("/api/health");
  const parts = [];
  if (hl.broker && hl.broker.connected != null) parts.push(t(hl.broker.connected ? "health.broker_ok" : "health.broker_down"));
  const total = hl.events_total != null ? hl.events_total : hl.stored;
  if (total != null) parts.push(tn("health.events", total));
  const a = hl.alerts || {};
  const bad = (a.failed || 0) + (a.dead || 0);
  if (a.pending) parts.push(tn("health.pending", a.pending));
  if (bad) parts.push(tn("health.failed", bad));
  if (hl.uptime_s != null) parts.push(t("health.uptime", { duration: duration(hl.uptime_s) }));
  // Storage: free space always, and the first problem (disk almost full, refused writes, damage) in words
  // (the gateway's own words: shown as they come).
  const st = hl.storage || {};
  const storageBad = st.ok === false;
  if (st.disk && st.disk.free_bytes != null) parts.push(t("health.disk_free", { mb: Math.round(st.disk.free_bytes / 1048576) }));
  if (storageBad && st.problems && st.problems.length) parts.push(t("health.storage_problem", { problem: st.problems[0] }));
  const el = $("#gw-health");
  el.textContent = parts.join(" · ");
  el.title = (st.problems || []).join("\n");
  el.classList.toggle("bad", Boolean(bad) || storageBad || (hl.broker && hl.broker.connected === false));
}

function fillBoxFilter() {
  const sel = $("#filters [name=device]");
  const cur = sel.value;
  sel.replaceChildren(h("option", { value: "", "data-i18n": "events.all_boxes" }, t("events.all_boxes")),
    ...[...state.devices.values()].map((d) => h("option", { value: d.device }, d.name || d.device)));
  if (cur && !state.devices.has(cur)) sel.append(h("option", { value: cur }, cur)); // from the address
  sel.value = cur;
}

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value));
}

function boxCard(d) {
  const waiting = d.waiting || 0;
  return h("article", { class: "card box" + (d.online ? "" : " off"), "data-device": d.device },
    h("div", { class: "box-head" },
      // The id under the name only when they differ (a box without a name would say it twice).
      h("div", { "data-verbatim": true }, h("h2", {}, d.name || d.device),
        d.name && d.name !== d.device ? h("div", { class: "muted small" }, d.device) : null),
      h("span", { class: "badge " + (d.online ? "ok" : "bad") }, t(d.online ? "box.online" : "box.offline")),
    ),
    h("div", { class: "waiting" + (waiting ? " has" : "") },
      h("b", {}, String(waiting)), " " + tn("box.waiting", waiting),
      d.last_delivery_ts ? h("span", { class: "muted small" }, " · " + t("box.last_delivery", { ago: ago(d.last_delivery_ts) })) : null),
    h("dl", { class: "facts" },
      fact(t("box.last_seen"), ago(d.last_seen)),
      fact(t("box.lid"), d.lid_open == null ? "—" : t(d.lid_open ? "box.lid_open" : "box.lid_closed")),
      fact(t("box.signal"), signal(d.rssi)),
      fact(t("box.battery"), battery(d.battery_mv)),
      fact(t("box.spooled"), d.spooled == null ? "—" : String(d.spooled)),
      fact(t("box.firmware"), d.fw || "—"),
    ),
    // Signal, battery, spool and firmware are the box's last report, which may be older than "last
    // seen" (events also count as seen): say when it was made.
    d.fw != null || d.spooled != null
      ? h("p", { class: "muted small reported" }, d.status_at
        ? t("box.reported", { when: when(d.status_at), ago: ago(d.status_at) }) : t("box.reported_unknown"))
      : null,
    h("div", { class: "actions" },
      h("button", { class: "cmd", "data-cmd": "snapshot", onclick: () => command(d, "snapshot") }, t("box.snapshot")),
      h("button", { class: "ghost cmd", "data-cmd": "reboot", onclick: () => command(d, "reboot") }, t("box.reboot")),
    ),
    h("div", { class: "ota", "aria-live": "polite" }),
    h("p", { class: "result", role: "status" }),
  );
}

function renderBoxes() {
  const list = [...state.devices.values()];
  // Keep each box's last command result across re-renders (relative times refresh every minute).
  const kept = new Map([...document.querySelectorAll(".box")].map((b) => [b.dataset.device, $(".result", b)]));
  const cards = list.map((d) => {
    const card = boxCard(d);
    fillOta(card, d);
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
  if (cmd === "reboot" && !confirm(t("cmd.confirm_reboot", { box: d.name || d.device }))) return;
  try {
    showCmd(d.device, t(cmd === "snapshot" ? "cmd.asking_photo" : "cmd.sending_reboot"), "wait");
    const r = await api(`/api/devices/${encodeURIComponent(d.device)}/command`, { method: "POST", body: { cmd } });
    const text = t(cmd === "snapshot" ? "cmd.snapshot_requested" : "cmd.reboot_sent");
    state.pendingCmds.set(r.id, { device: d.device, cmd, text, cls: "wait" });
    showCmd(d.device, text, "wait", r.id);
    if (state.earlyResults.has(r.id)) { onCommand(state.earlyResults.get(r.id)); return; }
    // The result normally arrives on the live stream; ask too, in case it was missed.
    for (const ms of [3000, 10000, 30000]) setTimeout(() => pollCmd(r.id, ms === 30000), ms);
  } catch (e) {
    showCmd(d.device, t("cmd.send_failed", { error: e.message }), "bad");
  }
}

async function pollCmd(id, last) {
  if (!state.pendingCmds.has(id)) return;
  try {
    const r = await api("/api/commands/" + encodeURIComponent(id));
    if (!r.pending) onCommand(r);
    else if (last) {
      const p = state.pendingCmds.get(id);
      showCmd(p.device, t("cmd.no_answer"), "wait", id);
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
    showCmd(p.device, t("cmd.failed", { cmd: cmdLabel(p.cmd), error: res.error || t("cmd.unknown_error") }), "bad", res.id);
    return;
  }
  if (p.cmd === "snapshot" && res.event) {
    // The box answers as soon as it has sent the photo; the gateway stores it a moment later.
    if (state.stored.has(p.device + "/" + res.event)) snapshotReady(p.device, res.event, res.id);
    else {
      state.snapWaiting.set(p.device + "/" + res.event, res.id);
      showCmd(p.device, t("cmd.receiving_photo"), "wait", res.id);
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
    showCmd(p.device, t("cmd.done", { cmd: cmdLabel(p.cmd) }), "ok", res.id);
  }
}

function snapshotReady(device, eventId, cmdId) {
  const link = h("a", { href: "#", class: "view-snap", onclick: async (ev) => {
    ev.preventDefault();
    try { openEvent(await api(`/api/events/${encodeURIComponent(device)}/${encodeURIComponent(eventId)}`)); }
    catch (e) { toast(e.message, true); }
  } }, t("cmd.view_photo"));
  showCmd(device, t("cmd.snapshot_done") + " ", "ok", cmdId, link);
}

function onDevice(d) {
  state.devices.set(d.device, d);
  if (state.page === "boxes") {
    const old = document.querySelector(`.box[data-device="${CSS.escape(d.device)}"]`);
    const keep = old ? $(".result", old) : null;
    const card = boxCard(d);
    fillOta(card, d);
    if (keep) $(".result", card).replaceWith(keep);
    if (old) old.replaceWith(card);
    else renderBoxes();
  }
  if (![...$("#filters [name=device]").options].some((o) => o.value === d.device)) fillBoxFilter();
}

// --- WhatsApp ----------------------------------------------------------------------

// WhatsApp state -> badge colour; its label is the catalogue's wa.state.<state>.
const WA_CLASS = {
  connected: "ok", pairing: "warn", not_paired: "warn", starting: "warn", disconnected: "bad",
  stream_replaced: "bad", logged_out: "bad", banned: "bad", outdated: "bad", locked: "bad", error: "bad",
  disabled: "muted", not_installed: "muted", unknown: "muted",
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
    b.replaceChildren(t("wa.banner", { time: when(wa.down_since) }) + " ",
      Object.assign(document.createElement("a"), { href: "/whatsapp", textContent: t("wa.banner_link") }),
      " " + t("wa.banner_hint"));
    b.querySelector("a").setAttribute("data-nav", "");
  }
}

function renderWhatsApp(wa) {
  const prev = state.wa || {};
  state.wa = { ...prev, ...wa, actions: wa.actions || prev.actions };
  wa = state.wa;
  renderBanner();
  const cls = WA_CLASS[wa.state] || "muted";
  const label = WA_CLASS[wa.state] ? t("wa.state." + wa.state) : wa.state;
  const badge = $("#wa-badge");
  badge.textContent = label;
  badge.className = "badge " + cls;
  $("#wa-as").textContent = wa.paired_as ? t("wa.paired_as", { number: String(wa.paired_as).replace(/^\+/, "") }) : "";
  // The page's own words for the state; the WhatsApp process's own line (English, with specifics such
  // as a pid or a number) under "Details", as it came.
  $("#wa-desc").textContent = WA_CLASS[wa.state] ? t("wa.desc." + wa.state) : "";
  $("#wa-detail").textContent = wa.detail || "";
  $("#wa-details").hidden = !wa.detail;
  const unknown = wa.unknown_numbers || [];
  $("#wa-unknown").hidden = !unknown.length;
  $("#wa-unknown").textContent = unknown.length
    ? t("wa.unknown_numbers", { numbers: unknown.map((n) => "+" + n).join(", ") })
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
    $("#wa-noqr").textContent = t(wa.pair_code ? "wa.use_code" : "wa.waiting_qr");
  }
  const code = $("#wa-code");
  code.hidden = !wa.pair_code;
  code.textContent = wa.pair_code ? t("wa.code", { code: wa.pair_code }) : "";
  const acts = wa.actions || {};
  $("#wa-code-form").hidden = acts.pair_code === false;
  $("#wa-test-form").hidden = acts.test_message === false;
  $("#wa-unlink").hidden = acts.unlink === false;
}

async function waAction(path, body, okText) {
  const out = $("#wa-result");
  out.className = "result wait";
  out.textContent = t("wa.working");
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
  const stLabel = last ? alertStateLabel(st) : t("channels.unused");
  return h("article", { class: "channel card s-" + st, "data-channel": c.id },
    h("div", { class: "al-top" },
      h("span", { class: "badge " + (({ sent: "ok", pending: "warn", failed: "bad", dead: "bad" })[st] || "") }, stLabel),
      h("b", { "data-verbatim": true }, c.scheme + " · " + c.id),
      h("span", { class: "muted small grow" }, c.boxes.length ? t("channels.boxes", { boxes: c.boxes.join(", ") }) : t("events.all_boxes")),
      h("button", { class: "small-btn channel-test", onclick: () => testChannel(c) }, t("channels.test"))),
    h("div", { class: "muted small" },
      t("channels.recent", { sent: c.recent.sent, waiting: c.recent.pending + c.recent.failed, dead: c.recent.dead }),
      last && last.sent_at ? " · " + t("channels.last_sent", { when: when(last.sent_at) }) : ""),
    // What the channel reported (its service's own words): shown as it came.
    last && last.last_error ? h("div", { class: "err", "data-verbatim": true }, last.last_error) : null,
  );
}

async function testChannel(c) {
  try {
    await api(`/api/channels/${encodeURIComponent(c.sink)}/${encodeURIComponent(c.id)}/test`, { method: "POST" });
    toast(t("channels.test_queued", { id: c.id }));
    loadChannels();
  } catch (e) {
    toast(e.message, true);
  }
}

function alertRow(a) {
  const retry = a.state === "failed" || a.state === "dead"
    ? h("button", { class: "small-btn retry", onclick: () => retryAlert(a) }, t("alerts.retry")) : null;
  return h("article", { class: "alert card s-" + a.state, "data-id": a.id },
    h("div", { class: "al-top" },
      h("span", { class: "badge " + ({ sent: "ok", pending: "warn", failed: "bad", dead: "bad" })[a.state] }, alertStateLabel(a.state)),
      h("b", {}, typeLabel(a.kind) + " · " + boxName(a.device)),
      h("span", { class: "muted small grow" }, when(a.created_at)),
      a.event_ids && a.event_ids.length ? h("a", { href: "#", class: "small view-event", onclick: (ev) => {
        ev.preventDefault();
        api(`/api/events/${encodeURIComponent(a.device)}/${encodeURIComponent(a.event_ids[0])}`)
          .then(openEvent, (e) => toast(e.message, true));
      } }, t("alerts.view_event")) : null,
      retry),
    h("div", { class: "muted small" },
      (a.recipient ? `${a.notifier} → ${a.recipient}` : a.notifier) + " · " + tn("alerts.attempts", a.attempts),
      a.state === "sent" && a.sent_at ? " · " + t("alerts.sent_at", { when: when(a.sent_at) }) : "",
      // WhatsApp receipts: sent (server accepted) → delivered (on the phone) → read.
      a.receipt ? " · " + ["sent", "delivered", "read"].map((r) => t("alerts.receipt." + r))
        .map((w, i) => ["sent", "delivered", "read"][i] === a.receipt ? w.toLocaleUpperCase() : w).join(" → ")
        + (a.receipt_at && a.receipt !== "sent" ? " " + when(a.receipt_at) : "") : "",
      (a.state === "pending" || a.state === "failed") && a.next_attempt_at ? " · " + t("alerts.next_try", { when: when(a.next_attempt_at) }) : ""),
    // What the notifier reported (WhatsApp's or a webhook's own words): shown as it came.
    a.last_error ? h("div", { class: "err", "data-verbatim": true }, a.last_error) : null,
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
    toast(t("alerts.queued"));
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

function setLive(on, key) {
  const el = $("#live");
  el.classList.toggle("on", on);
  const span = $("span", el);
  span.dataset.i18n = key; // so a language switch relabels it
  span.textContent = t(key);
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
    setLive(true, "live.on");
  });
  es.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
  es.addEventListener("device", (m) => onDevice(JSON.parse(m.data)));
  es.addEventListener("outbox", (m) => onOutbox(JSON.parse(m.data)));
  es.addEventListener("command", (m) => onCommand(JSON.parse(m.data)));
  es.addEventListener("firmware", () => firmwareChanged());
  es.addEventListener("whatsapp", (m) => { if (state.wa || state.page === "whatsapp") renderWhatsApp(JSON.parse(m.data)); });
  es.addEventListener("resync", () => load(state.page));
  es.onerror = async () => {
    setLive(false, "live.reconnecting");
    if (es.readyState === EventSource.CLOSED) {
      // Closed for good (e.g. 401 after the session ended): check the login, then retry.
      // Out of reach (the phone away from home): keep trying; the offline banner says so.
      try { await api("/api/health"); } catch (e) { if (e.code === "login_required") return; }
      setTimeout(connectLive, away.since != null ? 10000 : 3000);
    }
  };
}

// --- wiring ------------------------------------------------------------------------

// After a language switch: everything on screen again in the new words, from what is already loaded
// (no request: the API and the data do not depend on the language).
function rerender() {
  document.title = t("app.title", { page: t("nav." + state.page) });
  renderEvents();
  fillBoxFilter();
  if (state.page === "boxes") { renderBoxes(); loadHealth().catch(() => {}); }
  if (state.wa) renderWhatsApp({});
  renderAlerts();
}

function init() {
  // The type filter's choices: every event type the gateway knows (gateway/vocabulary.py), in the
  // catalogue's words (data-i18n, so a language switch relabels them).
  $("#filters select[name=type]").append(
    ...VOCAB.event_types.map((e) => h("option", { value: e.type, "data-i18n": "type." + e.type }, typeLabel(e.type))),
  );
  applyI18n(document);
  for (const b of document.querySelectorAll("[data-lang]")) b.addEventListener("click", () => setLang(b.dataset.lang));
  document.addEventListener("langchange", rerender);
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-nav]");
    if (!a || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    show(new URL(a.href).pathname, true);
  });
  window.addEventListener("popstate", () => {
    if (location.pathname === "/") filtersFromUrl();
    show(location.pathname, false);
  });

  const filters = $("#filters");
  filtersFromUrl();
  filters.addEventListener("change", () => {
    const f = new FormData(filters);
    state.filters = { device: f.get("device"), type: f.get("type"), from: f.get("from"), to: f.get("to") };
    filtersToUrl();
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
      (r) => t(r.pair_code ? "wa.code_hint" : "wa.code_requested"));
    if (r && r.pair_code) renderWhatsApp({ pair_code: r.pair_code });
  });
  $("#wa-test-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const recipient = $("#wa-recipient").value.trim() || null;
    const sent = () => t("wa.test_sent");
    const r = await waAction("/api/whatsapp/test", { recipient }, sent);
    // 409: not one of the alert recipients; the owner's account should not message a stranger by accident.
    if (!r && waAction.lastStatus === 409 &&
        confirm(t("wa.test_confirm", { recipient }))) {
      await waAction("/api/whatsapp/test", { recipient, confirm: true }, sent);
    }
  });
  $("#wa-unlink").addEventListener("click", async () => {
    if (!confirm(t("wa.unlink_confirm"))) return;
    await waAction("/api/whatsapp/unlink", undefined, () => t("wa.unlinked"));
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
