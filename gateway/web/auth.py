"""Password hashing, signed session cookies and login rate limiting for the dashboard.

No server-side session table: a session is a signed cookie (HMAC-SHA256 with a key
kept in the data folder), so a gateway restart keeps people logged in. The cookie
carries a fingerprint of the password hash, so setting a new password ends every
session. Logout revokes the session id until it would have expired, and "log out
everywhere" moves the session generation on; both are kept in a file next to the key
(`sessions.json`, 0600), so a logged-out cookie stays dead across restarts.

A browser that once logged in also gets a device cookie (`pb_device`, signed, no
authority of its own): the login rate limits treat its attempts apart from the
address's and from the global slow-down, so no flood of wrong passwords from the LAN
can lock the owner out of their usual browser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.storage import atomic_write_bytes

# scrypt cost: 16 MiB and ~50 ms per check on a Raspberry Pi-class CPU; slow enough to hurt guessing.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MAX_PASSWORD_BYTES = 1024
DEVICE_LIFETIME_S = 400 * 86400  # browsers cap cookie lifetimes at about 400 days
# Revoked session ids kept at most; past this, the generation moves on instead (everyone logs in anew).
MAX_REVOKED = 10_000

log = logging.getLogger(__name__)


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
    """Write a file readable only by its owner, atomically (gateway/storage.py atomic_write_bytes)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=0o600, make_parent=True)


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
    """Signed, expiring JSON tokens for the session cookie, and the revocations that outlive restarts.

    `state_file` (None: memory only) holds `{"generation": n, "revoked": {sid: exp}}`. A session
    carries the generation it was made in; `revoke_all()` moves the generation on.
    """

    def __init__(
        self, key: bytes, clock: Callable[[], float] = time.time, state_file: Path | None = None
    ) -> None:
        self._key = hashlib.sha256(b"parcelbox-session\0" + key).digest()
        self._device_key = hashlib.sha256(b"parcelbox-device\0" + key).digest()
        self._clock = clock
        self._state_file = state_file
        self._revoked: dict[str, float] = {}
        self.generation = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if self._state_file is None:
            return
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # Unreadable revocations: fail closed, every session made before now ends.
            log.warning("web: %s unreadable (%s): every session is logged out", self._state_file, e)
            self.generation = secrets.randbelow(2**31) + 1
            return
        gen, revoked = data.get("generation"), data.get("revoked")
        if isinstance(gen, int) and isinstance(revoked, dict):
            self.generation = gen
            now = self._clock()
            self._revoked = {
                k: float(v)
                for k, v in revoked.items()
                if isinstance(k, str) and isinstance(v, int | float) and v > now
            }

    def _save(self) -> None:
        """Write the state (caller holds the lock); a failure is logged, the memory copy still holds."""
        if self._state_file is None:
            return
        doc = {"generation": self.generation, "revoked": self._revoked}
        try:
            _write_private(self._state_file, json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
        except OSError as e:
            log.error("web: cannot save session revocations to %s: %s", self._state_file, e)

    def _mac(self, body: str, key: bytes | None = None) -> str:
        return _b64e(hmac.new(key or self._key, body.encode("ascii"), hashlib.sha256).digest())

    def new_session(self, lifetime_s: float, pw_fp: str) -> dict[str, Any]:
        now = self._clock()
        return {
            "sid": secrets.token_urlsafe(12),
            "csrf": secrets.token_urlsafe(24),
            "iat": int(now),
            "exp": int(now + lifetime_s),
            "pw": pw_fp,
            "gen": self.generation,
        }

    def new_device_token(self) -> str:
        """A device cookie: a random id, signed with its own key (it is never a session)."""
        body = _b64e(
            json.dumps(
                {"dev": secrets.token_urlsafe(12), "exp": int(self._clock() + DEVICE_LIFETIME_S)}
            ).encode()
        )
        return f"{body}.{self._mac(body, self._device_key)}"

    def device_id(self, token: str | None) -> str | None:
        """The id in a good, unexpired device token; else None."""
        if not token or len(token) > 512:
            return None
        body, _, mac = token.partition(".")
        if not body or not hmac.compare_digest(
            mac.encode("ascii", "replace"), self._mac(body, self._device_key).encode("ascii")
        ):
            return None
        try:
            d = json.loads(_b64d(body))
        except ValueError:
            return None
        if not isinstance(d, dict) or not isinstance(d.get("dev"), str) or not isinstance(d.get("exp"), int):
            return None
        return d["dev"] if d["exp"] > self._clock() else None

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
            if s["sid"] in self._revoked or s.get("gen", 0) != self.generation:
                return None
        return s

    def revoke(self, session: dict[str, Any]) -> None:
        """End one session, for good (kept until it would have expired anyway)."""
        now = self._clock()
        with self._lock:
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}
            if len(self._revoked) >= MAX_REVOKED:
                self.generation += 1  # cheaper than an unbounded list: everyone logs in again
                self._revoked = {}
            else:
                self._revoked[session["sid"]] = float(session["exp"])
            self._save()

    def revoke_all(self) -> None:
        """End every session made so far ("log out everywhere")."""
        with self._lock:
            self.generation += 1
            self._revoked = {}
            self._save()


def client_key(addr: str) -> str:
    """What the per-address limit counts: the address, or its /64 for IPv6 (one host has millions)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """Who may try a password now, so that guessing is slow and the owner is never locked out.

    - Per address (an IPv6 /64 counts as one): `max_failures` wrong passwords within `window_s`
      and that address is refused until the oldest of them leaves the window.
    - Per device: a browser that logged in before carries a device cookie; its attempts are
      counted under the device, not the address, and never slowed by the global rule, so the
      owner's usual browser gets in whatever the LAN does (behind a proxy, or on a shared address).
    - Global: past `global_max` failures within the window, from any mix of addresses, other
      attempts are not refused (that was a lockout anyone could cause) but slowed: one password
      check at a time, `slow_s` apart, at most `max_waiting` in line (beyond that, 429 and try
      again). Guessing then costs at least `slow_s` per guess, and the right password still works.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        global_max: int = 50,
        clock: Callable[[], float] = time.monotonic,
        slow_s: float = 1.0,
        max_waiting: int = 8,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.global_max = global_max
        self.slow_s = slow_s
        self.max_waiting = max_waiting
        self._clock = clock
        self._fails: dict[str, list[float]] = {}
        self._global: list[float] = []
        self._lock = threading.Lock()
        self.refused = 0
        self.slowed = 0
        self._turn: asyncio.Lock | None = None
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        self._waiting = 0
        self._last_turn = -float("inf")

    @staticmethod
    def key(addr: str, device: str | None) -> str:
        return f"device:{device}" if device else f"addr:{client_key(addr)}"

    def _prune(self, now: float) -> None:
        cut = now - self.window_s
        self._global = [t for t in self._global if t > cut]
        for k in list(self._fails):
            kept = [t for t in self._fails[k] if t > cut]
            if kept:
                self._fails[k] = kept
            else:
                del self._fails[k]

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again (0: now). Only the per-address/device rule refuses."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            ts = self._fails.get(key, [])
            wait = ts[-self.max_failures] + self.window_s - now if len(ts) >= self.max_failures else 0.0
            if wait > 0:
                self.refused += 1
            return max(0.0, wait)

    def under_attack(self) -> bool:
        """Many failures overall: attempts without a device cookie take turns (`turn`)."""
        with self._lock:
            self._prune(self._clock())
            return len(self._global) >= self.global_max

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """Wait for this attempt's turn (yields True), or yield False when too many already wait."""
        if self._waiting >= self.max_waiting:
            self.refused += 1
            yield False
            return
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn_loop is not loop:
            self._turn, self._turn_loop = asyncio.Lock(), loop  # a lock belongs to one event loop
        lock = self._turn
        self._waiting += 1
        try:
            await lock.acquire()
        finally:
            self._waiting -= 1
        try:
            self.slowed += 1
            delay = self._last_turn + self.slow_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield True
        finally:
            self._last_turn = loop.time()
            lock.release()

    def failed(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            self._fails.setdefault(key, []).append(now)
            self._global.append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)
