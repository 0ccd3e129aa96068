// parcelbox service worker: keeps the app shell (HTML, CSS, JS, icons) so the dashboard opens
// from the home screen even when the gateway is briefly unreachable. It never stores API answers
// or photos: those are private and must come from the gateway (which checks the login) each time.
"use strict";
const CACHE = "parcelbox-shell-v1";
const SHELL = ["/", "/static/app.css", "/static/app.js", "/static/icon.svg", "/static/icon-192.png", "/manifest.webmanifest"];
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
      caches.match(PAGES.includes(url.pathname) ? "/" : req).then((hit) => hit || Response.error()),
    ),
  );
});
