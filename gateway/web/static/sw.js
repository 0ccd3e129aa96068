// parcelbox service worker.
//
// The app shell (HTML, CSS, JS, icons) is kept so the dashboard opens from the home screen even when
// the gateway cannot be reached (the phone away from home). The last answers the app got (deliveries,
// boxes, alerts) and the photos it showed (thumbnails and alert copies only) are kept too, at most
// DATA_MAX of them, oldest dropped first, so the app can show what it saw last instead of an empty page.
// They are private: every answer still comes from the gateway (which checks the login) while it is
// reachable; the saved copies are used only when it is not, are marked with the time they were saved
// (x-pb-saved-at) so the app can say how old they are, and are deleted on logout and on any 401.
"use strict";
// The dashboard's words (gateway/web/i18n/*.json), for the offline page below. Imported scripts are
// kept with the worker, so they are there when the gateway is not.
try { importScripts("/i18n.js"); } catch { /* logged out while updating: the page below falls back to English */ }
const CACHE = "parcelbox-shell-v3";
const DATA = "parcelbox-data-v1";
const DATA_MAX = 150;
const SHELL = ["/", "/i18n.js", "/static/app.css", "/static/lang.js", "/static/app.js", "/static/icon.svg", "/static/icon-192.png", "/manifest.webmanifest"];
const PAGES = ["/", "/boxes", "/whatsapp", "/alerts"];
const DATA_PATHS = ["/api/events", "/api/devices", "/api/health", "/api/outbox"];
const PHOTO = /^\/api\/photos\/[^/]+\/[^/]+\/(thumb|alert)$/;

self.addEventListener("install", (ev) => {
  ev.waitUntil(
    caches.open(CACHE)
      .then((c) => c.addAll(SHELL.map((u) => new Request(u, { credentials: "same-origin", redirect: "error" }))))
      .catch(() => {}) // not logged in yet: the shell is cached on the next visits instead
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (ev) => {
  ev.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE && k !== DATA).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

function isShell(url) {
  return PAGES.includes(url.pathname) || SHELL.includes(url.pathname) || url.pathname.startsWith("/static/");
}

function isData(url) {
  return DATA_PATHS.includes(url.pathname) || PHOTO.test(url.pathname);
}

// Keep one answer, stamped with when it was saved; drop the oldest beyond DATA_MAX. Re-inserting a key
// moves it to the end: the cache's key order is its insertion order.
async function keep(req, resp) {
  const body = await resp.blob();
  const headers = new Headers(resp.headers);
  headers.set("x-pb-saved-at", String(Date.now() / 1000));
  const c = await caches.open(DATA);
  await c.delete(req);
  await c.put(req, new Response(body, { status: resp.status, statusText: resp.statusText, headers }));
  const keys = await c.keys();
  for (const k of keys.slice(0, Math.max(0, keys.length - DATA_MAX))) await c.delete(k);
}

function unreachable() {
  // Nothing saved for this request: a clear answer the app can show, not the browser's "Failed to fetch".
  return new Response(JSON.stringify({ error: "offline", detail: "Can't reach your gateway" }), {
    status: 503,
    headers: { "content-type": "application/json", "x-pb-offline": "1" },
  });
}

self.addEventListener("fetch", (ev) => {
  const req = ev.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== self.location.origin) return;
  if (isData(url)) {
    ev.respondWith(
      fetch(req).then((resp) => {
        if (resp.status === 401) ev.waitUntil(caches.delete(DATA)); // logged out: forget what was seen
        else if (resp.ok && resp.type === "basic") ev.waitUntil(keep(req, resp.clone()));
        return resp;
      }).catch(() => caches.open(DATA).then((c) => c.match(req)).then((hit) => hit || unreachable())),
    );
    return;
  }
  // The live stream, login and everything else: straight to the network, never kept.
  if (!isShell(url)) return;
  ev.respondWith(
    // Network first, so a new version and the login check always win while the gateway is reachable.
    fetch(req).then((resp) => {
      if (resp.ok && !resp.redirected && resp.type === "basic") {
        const copy = resp.clone();
        const key = PAGES.includes(url.pathname) ? "/" : req;
        caches.open(CACHE).then((c) => c.put(key, copy));
      }
      return resp;
    }).catch(() =>
      caches.match(PAGES.includes(url.pathname) ? "/" : req)
        .then((hit) => hit || (req.mode === "navigate" ? offlinePage() : Response.error())),
    ),
  );
});

// No copy of the dashboard yet and no gateway: a page that says so, in the phone's language if the
// dashboard speaks it (a worker cannot read the page's cookie), else the gateway's default.
function offlinePage() {
  const i18n = self.PB_I18N || { languages: ["en"], default: "en", catalogues: { en: {} } };
  const asked = (navigator.languages || [navigator.language || ""]).map((l) => l.toLowerCase().split("-")[0]);
  const lang = asked.find((l) => i18n.languages.includes(l)) || i18n.default;
  const cat = i18n.catalogues[lang] || {};
  const en = i18n.catalogues.en || {};
  const word = (k, fallback) => esc(cat[k] || en[k] || fallback);
  const body = `<!doctype html><html lang="${esc(lang)}"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>${word("offline.title", "Offline")} · parcelbox</title>
<style>body{margin:0;font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2330}
.offline{max-width:520px;margin:0 auto;padding:15vh 20px;text-align:center}h1{font-size:22px}a{color:#2f6fed}
@media (prefers-color-scheme:dark){body{background:#12151b;color:#e6e9ef}}</style><main class="offline"><h1>${word("offline.title", "Can't reach your gateway")}</h1>
<p>${word("offline.body", "")}</p><p><a href="" class="retry">${word("offline.retry", "Try again")}</a></p></main>`;
  return new Response(body, { status: 503, headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" } });
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
