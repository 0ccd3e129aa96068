"""Settings of the dashboard web server, read from the `[web]` section of the gateway config."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a name or "" (all interfaces): assume reachable from outside


@dataclass
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    enabled: bool = True
    # None: a login is required exactly when `host` is not a loopback address; True: always.
    # There is deliberately no way to turn the login off on an exposed address.
    require_login: bool | None = None
    password_file: Path | None = None  # scrypt hash written by `parcelbox web set-password`
    secret_file: Path | None = None  # key that signs session cookies; created on first start
    sessions_file: Path | None = None  # logged-out sessions and the session generation (0600)
    tokens_file: Path | None = None  # API tokens, hashed (gateway/web/tokens.py; 0600)
    api_rate_per_minute: int = 30  # requests per API token per minute (the send API's callers)
    cookie_secure: bool = False  # set when served behind https (a reverse proxy)
    session_hours: float = 24 * 7
    # Extra Host header names accepted (e.g. "parcelbox.lan"); loopback names are always accepted
    # on a loopback bind, which stops DNS-rebinding pages from reading the API.
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    login_max_failures: int = 5  # per client address within login_window_s
    login_window_s: float = 300.0
    # Open connections at most (never more than a quarter of the file-descriptor limit, see
    # gateway/fdlimit.py); over it, the longest-idle connection is closed to make room.
    max_connections: int = 100
    # A connection with no request in progress (never sent one, trickling headers, keep-alive) is
    # closed after this long; a request body must arrive within body_timeout_s.
    idle_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # The page's language when the browser has not picked one and asks for neither en nor id
    # (`[web] language`, else `whatsapp.language`; see `web_component`), and the IANA zone its dates are
    # shown in (`alerts.timezone`, else the host's; "" leaves it to the browser).
    language: str = "en"
    timezone: str = ""

    @property
    def login_required(self) -> bool:
        # A Host name other than a loopback one means a reverse proxy (or a LAN name) brings other
        # machines here, even on a loopback bind: then the login is on too.
        proxied = any(
            not is_loopback(h.rsplit(":", 1)[0] if h.count(":") == 1 else h) for h in self.allowed_hosts
        )
        return bool(self.require_login) or not is_loopback(self.host) or proxied

    @classmethod
    def from_config(cls, cfg: Any = None, data_dir: Path | str | None = None) -> WebSettings:
        """Build from a config object or mapping with any of these field names; unknown keys are ignored.

        File locations default to `<data_dir>/web/`.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if cfg is None:
                break
            v = cfg.get(f.name) if isinstance(cfg, dict) else getattr(cfg, f.name, None)
            if v is not None:
                values[f.name] = v
        if not values.get("language"):
            values.pop("language", None)  # the config's "" means "follow whatsapp.language"
        if values.get("require_login") is False:
            values["require_login"] = None  # the config's "no" means "only when exposed", never "off"
        for key in ("password_file", "secret_file", "sessions_file", "tokens_file"):
            if values.get(key) in ("", None):
                values.pop(key, None)
        s = cls(**values)
        if s.password_file is not None:
            s.password_file = Path(s.password_file)
        if s.secret_file is not None:
            s.secret_file = Path(s.secret_file)
        if s.sessions_file is not None:
            s.sessions_file = Path(s.sessions_file)
        if s.tokens_file is not None:
            s.tokens_file = Path(s.tokens_file)
        if data_dir is None and cfg is not None:
            data_dir = cfg.get("data_dir") if isinstance(cfg, dict) else getattr(cfg, "data_dir", None)
        if data_dir is not None:
            web_dir = Path(data_dir) / "web"
            s.password_file = s.password_file or web_dir / "password"
            s.secret_file = s.secret_file or web_dir / "secret"
            s.sessions_file = s.sessions_file or web_dir / "sessions.json"
            s.tokens_file = s.tokens_file or web_dir / "tokens.json"
        s.allowed_hosts = tuple(s.allowed_hosts)
        s.port = int(s.port)
        return s
