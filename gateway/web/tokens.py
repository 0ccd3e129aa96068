"""API tokens: `parcelbox web token create NAME [--scope send|read]`, `list`, `revoke NAME`.

A token is 32 random bytes (`pbx_` + URL-safe base64), shown once when created. The file keeps
only its SHA-256 (a random 256-bit token needs no slow hash: there is nothing to guess), the
name, the scope and the times, in `<data_dir>/web/tokens.json`, mode 0600. The running gateway
re-reads the file when it changes, so a `revoke` takes effect on the next request.

Scopes: `send` may queue messages (`POST /api/notify`) and read their state
(`GET /api/alerts/{id}` of those messages); `read` may use every GET of the API and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.web.auth import _write_private

log = logging.getLogger(__name__)

SCOPES = ("send", "read")
TOKEN_PREFIX = "pbx_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
MAX_TOKENS = 100


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def scope_allows(scope: str, method: str, path: str) -> bool:
    """Whether a token of `scope` may make this request (pure)."""
    if scope == "send":
        # Only the state of messages sent through the API (ids "msg..."), not of box alerts and their
        # recipients.
        return (method == "POST" and path == "/api/notify") or (
            method in ("GET", "HEAD") and path.startswith("/api/alerts/msg")
        )
    if scope == "read":
        return method in ("GET", "HEAD") and path.startswith("/api/") and path != "/api/stream"
    return False


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    created_at: float
    revoked_at: float | None = None


class TokenError(ValueError):
    pass


class TokenStore:
    """The token file, read on change. Thread-safe; the CLI and the web server both use it."""

    def __init__(self, path: Path | None, clock: Any = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._mtime: tuple[int, int] | None = None
        self._entries: list[dict[str, Any]] = []

    def _load(self) -> list[dict[str, Any]]:
        """The entries, re-read when the file changed (caller holds the lock)."""
        if self.path is None:
            return self._entries
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._mtime, self._entries = None, []
            return self._entries
        key = (st.st_mtime_ns, st.st_size)
        if key != self._mtime:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                entries = data.get("tokens") if isinstance(data, dict) else None
                if not isinstance(entries, list):
                    raise ValueError("no token list")
                self._entries = [
                    e for e in entries if isinstance(e, dict) and isinstance(e.get("sha256"), str)
                ]
            except (OSError, ValueError) as e:
                # Fail closed: an unreadable file authorises nobody (and says so).
                log.error("web: token file %s unreadable (%s): no token is accepted", self.path, e)
                self._entries = []
            self._mtime = key
        return self._entries

    def _save(self, entries: list[dict[str, Any]]) -> None:
        self._entries = entries
        if self.path is not None:
            _write_private(self.path, json.dumps({"v": 1, "tokens": entries}, indent=1) + "\n")
            st = self.path.stat()
            self._mtime = (st.st_mtime_ns, st.st_size)

    def create(self, name: str, scope: str = "send") -> str:
        """A new token (returned once, never stored); TokenError for a bad or taken name."""
        if not NAME_RE.fullmatch(name):
            raise TokenError("name must be 1-40 of A-Z a-z 0-9 _ . - (starting with a letter or digit)")
        if scope not in SCOPES:
            raise TokenError(f"scope must be one of {', '.join(SCOPES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            entries = list(self._load())
            active = [e for e in entries if not e.get("revoked_at")]
            if any(e.get("name") == name for e in active):
                raise TokenError(f"a token named {name!r} exists; revoke it first")
            if len(active) >= MAX_TOKENS:
                raise TokenError(f"at most {MAX_TOKENS} tokens; revoke some first")
            entries.append(
                {"name": name, "scope": scope, "sha256": _digest(token), "created_at": self.clock()}
            )
            self._save(entries)
        return token

    def revoke(self, name: str) -> bool:
        with self._lock:
            entries = [dict(e) for e in self._load()]
            hit = False
            for e in entries:
                if e.get("name") == name and not e.get("revoked_at"):
                    e["revoked_at"] = self.clock()
                    hit = True
            if hit:
                self._save(entries)
            return hit

    def list(self) -> list[TokenInfo]:
        with self._lock:
            return [
                TokenInfo(
                    str(e.get("name")),
                    str(e.get("scope")),
                    float(e.get("created_at") or 0),
                    e.get("revoked_at"),
                )
                for e in self._load()
            ]

    def check(self, token: str | None) -> TokenInfo | None:
        """The active token this is, or None (unknown, malformed or revoked)."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = _digest(token)
        with self._lock:
            found = None
            for e in self._load():  # compare every entry: the time taken says nothing about which matched
                if hmac.compare_digest(e["sha256"], digest):
                    found = e
        if found is None or found.get("revoked_at") or found.get("scope") not in SCOPES:
            return None
        return TokenInfo(str(found["name"]), str(found["scope"]), float(found.get("created_at") or 0))


def bearer(headers: Any) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    raw = headers.get("authorization")
    if not raw:
        return None
    kind, _, value = raw.strip().partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip() else None
