"""WhatsApp settings as the child, supervisor, notifier and command handler use them.

Built from the `[whatsapp]` section of the gateway config (`gateway.config.WhatsAppConfig`)
plus the data folder; a plain picklable dataclass because it crosses into the
`spawn`ed child process.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.whatsapp.addresses import unique_recipients

log = logging.getLogger(__name__)

TRANSPORTS = ("neonize", "fake")

# neonize 0.5.2 opens its session as `file:<path>?_foreign_keys=on` (goneonize main.go `getDB`)
# without escaping: a `#` ends the path (a URI fragment), a `?` starts the parameters, a `%` is
# decoded - the database would land outside the 0700 session folder, or elsewhere entirely.
_URI_UNSAFE = "#?%"


class BadSessionPath(ValueError):
    """The session folder's path cannot be handed to neonize safely."""


def check_session_path(path: Path | str) -> None:
    """Raise `BadSessionPath` for a path neonize would misread; names the character and the fix."""
    bad = sorted({c for c in str(path) if c in _URI_UNSAFE})
    if bad:
        raise BadSessionPath(
            f"the WhatsApp session path {str(path)!r} contains {' and '.join(repr(c) for c in bad)}: "
            "neonize puts it into a SQLite `file:` URI unescaped, so the session database (the "
            "account's keys) would be written somewhere else. Move the data folder (or set "
            "[whatsapp] session_dir) to a path without '#', '?' or '%'."
        )


@dataclass
class WhatsAppSettings:
    session_dir: Path  # <data>/whatsapp: neonize's SQLite session, the lock, state.json, the Go log
    enabled: bool = True
    language: str = "en"  # en | id: alerts, replies and help
    recipients: list[str] = field(default_factory=list)  # "+62...", "62...@s.whatsapp.net" or "...@g.us"
    recipients_by_box: dict[str, list[str]] = field(default_factory=dict)  # per-box override of `recipients`
    allow: list[str] = field(default_factory=list)  # numbers allowed to send commands; empty = nobody
    rate_per_minute: int = 10  # per recipient
    rate_per_minute_overall: int = 20
    commands_per_minute: int = 6  # per sender, so a chatty user cannot make the gateway burst
    transport: str = "neonize"  # "fake" = file-driven stand-in for WhatsApp (tests, demos)
    fake_dir: Path | None = None  # the fake transport's "WhatsApp server" folder
    send_timeout_s: float = 90.0  # upload + send; no confirmation by then = failed (the outbox retries)
    snapshot_timeout_s: float = 45.0  # `photo` command: how long to wait for the box's snapshot
    restart_backoff_s: tuple[float, float] = (1.0, 300.0)  # child crash restarts: first, max
    reconnect_backoff_s: tuple[float, float] = (2.0, 300.0)  # "cannot reach WhatsApp" retries: first, max
    stable_after_s: float = 60.0  # a child that ran this long resets the restart backoff
    qr_round_s: float = 75.0  # no new QR code for this long while pairing = start a new round
    qr_valid_s: tuple[float, float] = (60.0, 20.0)  # whatsmeow qrchan.go: first code of a round, the others
    # Groups where commands are answered (group ids, "...@g.us"); in them only `group_prefix`ed
    # words count (`!foto`), so family chatter never gets a reply. Empty: commands in DMs only.
    command_groups: list[str] = field(default_factory=list)
    group_prefix: str = "!"
    # The gateway runs on someone's personal number: DMs need the prefix too and ordinary chat
    # never gets an "unknown command" reply.
    personal_number: bool = False
    # Commands older than this are ignored: after a reconnect WhatsApp replays the backlog, and a
    # "foto" from yesterday must not take a photo now.
    command_max_age_s: float = 300.0
    # The name recipients see for the gateway's number; set on connect when it differs ("": leave
    # the account's own name alone, e.g. on a personal number).
    push_name: str = ""
    down_notice_after_s: float = 300.0  # not connected this long: the other sinks and the dashboard say so

    @property
    def session_db(self) -> Path:
        return self.session_dir / "neonize.sqlite3"

    @property
    def state_file(self) -> Path:
        return self.session_dir / "state.json"

    def recipients_for(self, device: str) -> list[str]:
        """Per-box override when configured, else the global list; each number once (its first
        spelling): every entry becomes an outbox entry, and WhatsApp sees one person behind
        '+62 812-3456-789' and '628123456789'."""
        override = self.recipients_by_box.get(device)
        return unique_recipients(override if override else self.recipients)[0]


def _address_list(value: Any) -> list[str]:
    """A TOML list, or one string with addresses separated by commas or semicolons (env vars, flat tables)."""
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = re.split(r"[,;]", str(value))
    return [i.strip().strip("[]'\" ") for i in items if i.strip().strip("[]'\" ")]


def _without_repeats(addresses: list[str], where: str) -> list[str]:
    """`addresses` with later spellings of one number left out, each named in a warning (once, at
    config load: the lists are stored without them)."""
    kept, dropped = unique_recipients(addresses)
    for spelling, first in dropped:
        log.warning(
            "[whatsapp] %s lists %r and %r: the same WhatsApp recipient; alerts go once, to %r",
            where,
            first,
            spelling,
            first,
        )
    return kept


def settings_from_config(wa: Any, data_dir: Path | str) -> WhatsAppSettings:
    """From `gateway.config.WhatsAppConfig` (or anything with the same attributes) and the data folder.

    Unknown or missing attributes fall back to the defaults above, so the config
    section can grow without breaking this.
    """
    defaults = WhatsAppSettings(session_dir=Path(data_dir) / "whatsapp")
    session_dir = getattr(wa, "session_dir", None) or defaults.session_dir
    fake_dir = getattr(wa, "fake_dir", None)
    return WhatsAppSettings(
        session_dir=Path(session_dir),
        enabled=bool(getattr(wa, "enabled", False)),
        language=getattr(wa, "language", defaults.language) or "en",
        recipients=_without_repeats(list(getattr(wa, "recipients", []) or []), "recipients"),
        recipients_by_box={
            k: _without_repeats(_address_list(v), f"recipients_by_box.{k}")
            for k, v in (getattr(wa, "recipients_by_box", {}) or {}).items()
        },
        allow=list(getattr(wa, "allow", []) or []),
        rate_per_minute=int(getattr(wa, "rate_per_minute", defaults.rate_per_minute)),
        rate_per_minute_overall=int(getattr(wa, "rate_per_minute_overall", defaults.rate_per_minute_overall)),
        commands_per_minute=int(getattr(wa, "commands_per_minute", defaults.commands_per_minute)),
        transport=getattr(wa, "transport", defaults.transport) or "neonize",
        fake_dir=Path(fake_dir) if fake_dir else None,
        send_timeout_s=float(getattr(wa, "send_timeout_s", defaults.send_timeout_s)),
        snapshot_timeout_s=float(getattr(wa, "snapshot_timeout_s", defaults.snapshot_timeout_s)),
        command_groups=_address_list(getattr(wa, "command_groups", []) or []),
        group_prefix=str(getattr(wa, "group_prefix", defaults.group_prefix) or defaults.group_prefix),
        personal_number=bool(getattr(wa, "personal_number", False)),
        command_max_age_s=float(getattr(wa, "command_max_age_s", defaults.command_max_age_s)),
        push_name=str(getattr(wa, "push_name", "") or ""),
        down_notice_after_s=float(getattr(wa, "down_notice_after_s", defaults.down_notice_after_s)),
    )
