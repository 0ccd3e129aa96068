// parcelbox service worker: keeps the app shell (HTML, CSS, JS, icons) so the dashboard opens
// from the home screen even when the gateway is briefly unreachable. It never stores API answers
// or photos: those are private and must come from the gateway (which checks the login) each time.
"use strict";
// The dashboard's words (gateway/web/i18n/*.json), for the offline page below. Imported scripts are
// kept with the worker, so they are there when the gateway is not.
try { importScripts("/i18n.js"); } catch { /* logged out while updating: the page below falls back to English */ }
const CACHE = "parcelbox-shell-v2";
const SHELL = ["/", "/i18n.js", "/static/app.css", "/static/lang.js", "/static/app.js", "/static/icon.svg", "/static/icon-192.png", "/manifest.webmanifest"];
const PAGES = ["/", "/boxes", "/whatsapp", "/alerts"];

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
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

function isShell(url) {
  return PAGES.includes(url.pathname) || SHELL.includes(url.pathname) || url.pathname.startsWith("/static/");
}

self.addEventListener("fetch", (ev) => {
  const req = ev.request;
  const url = new URL(req.url);
  // API, photos, live stream, login and anything cross-origin: straight to the network, never cached.
  if (req.method !== "GET" || url.origin !== self.location.origin || !isShell(url)) return;
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
