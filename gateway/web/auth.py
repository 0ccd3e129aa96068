"""Password hashing, signed session cookies and login rate limiting for the dashboard.

No server-side session table: a session is a signed cookie (HMAC-SHA256 with a key
kept in the data folder), so a gateway restart keeps people logged in. The cookie
carries a fingerprint of the password hash, so setting a new password ends every
session; logout revokes the session id in memory until it would have expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# scrypt cost: 16 MiB and ~50 ms per check on a Raspberry Pi-class CPU; slow enough to hurt guessing.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MAX_PASSWORD_BYTES = 1024


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash`, all parameters stored so they can change later."""
    pw = password.encode("utf-8")
    if not pw or len(pw) > MAX_PASSWORD_BYTES:
        raise ValueError("password must be 1 to 1024 bytes")
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(pw, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64e(salt)}${_b64e(h)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string; False on any malformed input."""
    try:
        scheme, n, r, p, salt, want = stored.strip().split("$")
        if scheme != "scrypt":
            return False
        pw = password.encode("utf-8")
        if len(pw) > MAX_PASSWORD_BYTES:
            return False
        got = hashlib.scrypt(
            pw, salt=_b64d(salt), n=int(n), r=int(r), p=int(p), dklen=len(_b64d(want)), maxmem=2**26
        )
        return hmac.compare_digest(got, _b64d(want))
    except (ValueError, TypeError):
        return False


def _write_private(path: Path, text: str) -> None:
    """Write a file readable only by its owner, atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def set_password(path: Path, password: str) -> None:
    """Store the scrypt hash of `password` in `path` (mode 0600)."""
    _write_private(path, hash_password(password) + "\n")


def read_password_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def load_or_create_secret(path: Path | None) -> bytes:
    """The cookie-signing key from `path`, created (32 random bytes) on first use.

    Without a path the key lives only in memory: sessions then end with the process.
    """
    if path is None:
        return secrets.token_bytes(32)
    try:
        raw = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(raw)
        if len(key) >= 16:
            return key
    except (FileNotFoundError, ValueError):
        pass
    key = secrets.token_bytes(32)
    _write_private(path, key.hex() + "\n")
    return key


def password_fingerprint(stored_hash: str) -> str:
    return hashlib.sha256(stored_hash.encode("utf-8")).hexdigest()[:16]


class SessionSigner:
    """Signed, expiring JSON tokens for the session cookie."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"parcelbox-session\0" + key).digest()
        self._clock = clock
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, body: str) -> str:
        return _b64e(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def new_session(self, lifetime_s: float, pw_fp: str) -> dict[str, Any]:
        now = self._clock()
        return {
            "sid": secrets.token_urlsafe(12),
            "csrf": secrets.token_urlsafe(24),
            "iat": int(now),
            "exp": int(now + lifetime_s),
            "pw": pw_fp,
        }

    def dumps(self, session: dict[str, Any]) -> str:
        body = _b64e(json.dumps(session, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{body}.{self._mac(body)}"

    def loads(self, token: str | None, pw_fp: str | None) -> dict[str, Any] | None:
        """The session in `token` if its signature is good, it has not expired or been revoked,
        and it was made under the current password; else None."""
        if not token or len(token) > 4096 or pw_fp is None:
            return None
        body, _, mac = token.partition(".")
        if not body or not hmac.compare_digest(
            mac.encode("ascii", "replace"), self._mac(body).encode("ascii")
        ):
            return None
        try:
            s = json.loads(_b64d(body))
        except ValueError:
            return None
        if not isinstance(s, dict) or not isinstance(s.get("exp"), int) or not isinstance(s.get("sid"), str):
            return None
        if s["exp"] <= self._clock() or s.get("pw") != pw_fp or not isinstance(s.get("csrf"), str):
            return None
        with self._lock:
            if s["sid"] in self._revoked:
                return None
        return s

    def revoke(self, session: dict[str, Any]) -> None:
        now = self._clock()
        with self._lock:
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}
            self._revoked[session["sid"]] = float(session["exp"])


class LoginLimiter:
    """Failed logins per client address in a sliding window, plus a global cap against spraying
    from many addresses. `retry_after(addr)` > 0 means refuse without checking the password."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        global_max: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.global_max = global_max
        self._clock = clock
        self._fails: dict[str, list[float]] = {}
        self._global: list[float] = []
        self._lock = threading.Lock()
        self.refused = 0

    def _prune(self, now: float) -> None:
        cut = now - self.window_s
        self._global = [t for t in self._global if t > cut]
        for k in list(self._fails):
            kept = [t for t in self._fails[k] if t > cut]
            if kept:
                self._fails[k] = kept
            else:
                del self._fails[k]

    def retry_after(self, addr: str) -> float:
        now = self._clock()
        with self._lock:
            self._prune(now)
            ts = self._fails.get(addr, [])
            wait = 0.0
            if len(ts) >= self.max_failures:
                wait = ts[-self.max_failures] + self.window_s - now
            if len(self._global) >= self.global_max:
                wait = max(wait, self._global[-self.global_max] + self.window_s - now)
            if wait > 0:
                self.refused += 1
            return max(0.0, wait)

    def failed(self, addr: str) -> None:
        now = self._clock()
        with self._lock:
            self._fails.setdefault(addr, []).append(now)
            self._global.append(now)

    def succeeded(self, addr: str) -> None:
        with self._lock:
            self._fails.pop(addr, None)
