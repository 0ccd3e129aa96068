// parcelbox dashboard: the page's language and the words, dates and times in it.
// The words live in gateway/web/i18n/<language>.json, served with the default language and the
// gateway's time zone as /i18n.js (self.PB_I18N), which loads before this file. Nothing here holds
// user-visible text of its own: t("key") looks it up, HTML marks its text with data-i18n="key" and
// its attributes with data-i18n-attr="placeholder:key;aria-label:key".
"use strict";

const I18N = self.PB_I18N || { languages: ["en"], default: "en", timezone: "", catalogues: { en: {} } };
const LANG_COOKIE = "pb_lang";

function langCookie() {
  const m = document.cookie.match(/(?:^|; )pb_lang=([a-z]+)/);
  return m && I18N.languages.includes(m[1]) ? m[1] : "";
}

// The browser's own pick (the switch, kept in a cookie) wins; else the language the server chose for
// this page from Accept-Language and the config (<html lang>); else the config's default.
function pageLang() {
  const served = document.documentElement.getAttribute("lang");
  return langCookie() || (I18N.languages.includes(served) ? served : I18N.default);
}

let LANG = pageLang();

function t(key, vars) {
  const cat = I18N.catalogues[LANG] || {};
  let s = cat[key];
  if (s == null) s = (I18N.catalogues.en || {})[key];
  if (s == null) return key; // a missing key shows itself (and the catalogue test catches it)
  return vars ? s.replace(/\{([a-z_][a-z0-9_]*)\}/g, (m, k) => (vars[k] != null ? String(vars[k]) : m)) : s;
}

// Count-dependent text: key_one / key_other (Indonesian gives the same text twice).
function tn(key, n, vars) {
  return t(key + (n === 1 ? "_one" : "_other"), { n, ...(vars || {}) });
}

function applyI18n(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
    }
  }
  for (const b of root.querySelectorAll("[data-lang]")) {
    b.setAttribute("aria-pressed", String(b.dataset.lang === LANG));
  }
}

function setLang(lang) {
  if (!I18N.languages.includes(lang)) return;
  LANG = lang;
  document.cookie = `${LANG_COOKIE}=${lang}; Path=/; Max-Age=31536000; SameSite=Strict`;
  document.documentElement.lang = lang;
  applyI18n(document);
  document.dispatchEvent(new CustomEvent("langchange", { detail: lang }));
}

// --- dates and times: the locale's format, in the gateway's time zone --------------------------------

function zone() {
  if (!I18N.timezone) return undefined; // the browser's own zone
  try {
    new Intl.DateTimeFormat("en", { timeZone: I18N.timezone });
    return I18N.timezone;
  } catch {
    return undefined; // a zone this browser does not know: its own zone rather than no times at all
  }
}

function locale() {
  // The browser's own variant of the page's language when it has one (en-GB, id-ID), for its habits
  // (24-hour clock, day before month); else the language itself.
  const langs = navigator.languages || [navigator.language || ""];
  return langs.find((l) => l.toLowerCase().split("-")[0] === LANG) || (LANG === "id" ? "id-ID" : LANG);
}

function fmt(ts, opts) {
  return new Intl.DateTimeFormat(locale(), { timeZone: zone(), ...opts }).format(new Date(ts * 1000));
}

function dayKey(ts) {
  return fmt(ts, { year: "numeric", month: "2-digit", day: "2-digit" });
}

// "Today 14:05" / "Hari ini 14.05"; another day: "3 Dec 14:05" (with the year when not this year).
function when(ts) {
  if (ts == null) return "—";
  const now = Date.now() / 1000;
  const time = fmt(ts, { hour: "2-digit", minute: "2-digit" });
  if (dayKey(ts) === dayKey(now)) return t("time.today", { time });
  const sameYear = fmt(ts, { year: "numeric" }) === fmt(now, { year: "numeric" });
  return fmt(ts, { day: "numeric", month: "short", year: sameYear ? undefined : "numeric" }) + " " + time;
}

// "14:05" / "14.05": the time of day only.
function clock(ts) {
  return fmt(ts, { hour: "2-digit", minute: "2-digit" });
}

function fullDate(ts) {
  return fmt(ts, { dateStyle: "full", timeStyle: "short" });
}

function ago(ts) {
  if (ts == null) return t("time.never");
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 45) return t("time.just_now");
  if (s < 3600) return t("time.minutes_ago", { n: Math.max(1, Math.round(s / 60)) });
  if (s < 86400) return t("time.hours_ago", { n: Math.round(s / 3600) });
  return t("time.days_ago", { n: Math.round(s / 86400) });
}

function duration(s) {
  if (s < 60) return t("time.under_a_minute");
  if (s < 3600) return t("time.minutes", { n: Math.round(s / 60) });
  if (s < 86400) return t("time.hours", { n: Math.round(s / 3600) });
  return t("time.days", { n: Math.round(s / 86400) });
}

// Seconds since 1970 at 00:00 of a "YYYY-MM-DD" day in the gateway's time zone (for the date filter).
function dayStart(value) {
  const [y, m, d] = value.split("-").map(Number);
  const tz = zone();
  if (!tz) return new Date(y, m - 1, d).getTime() / 1000;
  // The zone's offset at that moment, found from how the zone shows a UTC guess; twice, for DST edges.
  let guess = Date.UTC(y, m - 1, d);
  for (let i = 0; i < 2; i++) {
    const p = Object.fromEntries(
      new Intl.DateTimeFormat("en-US", { timeZone: tz, hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric" })
        .formatToParts(new Date(guess)).map((x) => [x.type, x.value]),
    );
    const shown = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
    guess += Date.UTC(y, m - 1, d) - shown;
  }
  return guess / 1000;
}

// An error from api(): the API's English `detail` is for logs and scripts; the page shows its own words
// for the codes it knows, else a generic line with the status.
function errorText(err) {
  if (!err) return t("error.generic", { status: "?" });
  if (err.code === "network") return t("error.network");
  if (err.code && (I18N.catalogues.en || {})["error." + err.code] != null) {
    return t("error." + err.code, { seconds: err.retryAfter || "?", detail: err.detail || "", status: err.status });
  }
  return t("error.generic", { status: err.status || "?" });
}
