"""The dashboard's words, in English (`en.json`) and Bahasa Indonesia (`id.json`), and the choice of one.

One catalogue per language, in this folder, is the only home of the dashboard's user-visible text:
the page's HTML marks its strings with `data-i18n` keys, `app.js` looks its strings up with `t(key)`,
the service worker's offline page and the server-rendered login page read the same files. Keys are
flat and dotted (`box.last_seen`); `{name}` placeholders are filled in by the caller; a key ending
in `_one` / `_other` is a count-dependent pair (English needs both, Indonesian says the same twice).

Pure functions over the two files, no other I/O. The JSON API never goes through here: it stays
English whatever the page shows.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

LANGUAGES: tuple[str, ...] = ("en", "id")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "pb_lang"  # the language picked in the page; remembered per browser (not a secret)
HERE = Path(__file__).parent
PLACEHOLDER_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# Accept-Language tags that mean one of ours: "in" is Indonesian's pre-1989 code, still sent by old Java.
_ALIASES = {"in": "id"}


@cache
def catalogue(language: str) -> dict[str, str]:
    """The strings of `language` (read once); unknown languages get English."""
    lang = language if language in LANGUAGES else DEFAULT_LANGUAGE
    data = json.loads((HERE / f"{lang}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{lang}.json must be a flat object of strings")
    return data


def t(language: str, key: str, **values: Any) -> str:
    """One string, placeholders filled; a key missing from `language` falls back to English."""
    text = catalogue(language).get(key) or catalogue(DEFAULT_LANGUAGE)[key]
    return PLACEHOLDER_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER_RE.findall(text))


def from_accept_language(header: str | None) -> str | None:
    """The first of our languages the browser asks for (RFC 9110 q-values), or None if it asks for none.

    Hostile or malformed headers yield None; the header is cut at 1000 characters and 50 entries.
    """
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((header or "")[:1000].split(",")[:50]):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        primary = _ALIASES.get(primary, primary)
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for p in params.split(";"):
            name, _, val = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if 0.0 < q <= 1.0:
            ranked.append((-q, i, primary))
    return min(ranked)[2] if ranked else None


def choose_language(cookie: str | None, accept_language: str | None, default: str) -> str:
    """The page's language: the browser's own pick (cookie), else what it asks for, else the config's."""
    if cookie in LANGUAGES:
        return str(cookie)
    return from_accept_language(accept_language) or (default if default in LANGUAGES else DEFAULT_LANGUAGE)


def host_timezone(env: dict[str, str] | None = None, localtime: Path = Path("/etc/localtime")) -> str:
    """The host's IANA zone name ("Asia/Jakarta"), or "" when it cannot be told (the browser's zone is
    used then). From $TZ, else the /etc/localtime symlink, else /etc/timezone (Debian)."""
    env = dict(os.environ) if env is None else env
    tz = env.get("TZ", "").lstrip(":")
    if tz and "/" in tz and not tz.startswith("/"):
        return tz
    try:
        target = os.readlink(localtime)
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    try:
        name = (localtime.parent / "timezone").read_text(encoding="utf-8").strip()
        return name if "/" in name or name == "UTC" else ""
    except OSError:
        return ""


def bootstrap_js(default: str, timezone: str) -> str:
    """`/i18n.js`: every catalogue plus the gateway's default language and time zone, for the page and
    the service worker (`importScripts`). A script, not JSON, so the worker can load it offline."""
    data = {
        "languages": list(LANGUAGES),
        "default": default if default in LANGUAGES else DEFAULT_LANGUAGE,
        "timezone": timezone,
        "catalogues": {lang: catalogue(lang) for lang in LANGUAGES},
    }
    # "<" escaped so no catalogue text can ever close a script element if this is inlined.
    body = json.dumps(data, ensure_ascii=False, sort_keys=True).replace("<", "\\u003c")
    return f"// parcelbox: the dashboard's words (gateway/web/i18n/*.json)\nself.PB_I18N = {body};\n"
