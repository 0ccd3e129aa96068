"""Two-way WhatsApp: parse what authorised people send and answer it.

Only numbers on the allowlist (`whatsapp.allow`) are answered; everyone else is
ignored and counted (`ignored_unauthorised`), so a stranger cannot make the
gateway talk (WhatsApp bans numbers that reply to spam). Where a message is
answered (`admit`):

- never in WhatsApp Status (`status@broadcast`), broadcast lists or channels: a
  reply to `status@broadcast` would post a Status to every contact (whatsmeow
  send.go / broadcast.go), with `foto` the box photo;
- in a group only when the group is in `whatsapp.command_groups` and the text starts
  with `whatsapp.group_prefix` (`!foto`), and an unknown word is never answered there;
- with `whatsapp.personal_number`, DMs need the prefix too and get no "unknown" reply;
- never when older than `whatsapp.command_max_age_s` (WhatsApp replays the backlog
  after a reconnect).

Commands:

- `photo` / `foto` [box]: ask the box for a snapshot, wait for it, reply with the photo
- `status`: every box's state
- `help` / `bantuan`: the list of commands

An Indonesian command word gets an Indonesian reply; otherwise the configured
language is used. Work happens on the handler's own thread: the supervisor's
reader thread only enqueues.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import bus as topics
from gateway.ports import GatewayPort
from gateway.ratelimit import SendLimiter
from gateway.whatsapp import texts
from gateway.whatsapp.addresses import GROUP_SERVER, is_broadcast_or_channel, phone_digits
from gateway.whatsapp.settings import WhatsAppSettings
from gateway.whatsapp.transport import IncomingMessage

log = logging.getLogger(__name__)

MAX_COMMAND_CHARS = 200
QUEUE_SIZE = 100

# word -> (command, language the word implies or None)
_WORDS: dict[str, tuple[str, str | None]] = {
    "photo": ("photo", "en"),
    "foto": ("photo", "id"),
    "snapshot": ("photo", "en"),
    "status": ("status", None),
    "help": ("help", "en"),
    "bantuan": ("help", "id"),
    "?": ("help", None),
}


@dataclass(frozen=True)
class Command:
    name: str  # photo | status | help | unknown
    arg: str = ""  # the box for `photo <box>`
    language: str | None = None  # the language the command word implies, if any
    word: str = ""


def parse_command(text: str) -> Command | None:
    """'Foto  Garage box' -> Command('photo', 'Garage box', 'id'). None for empty text."""
    t = " ".join(text.split())
    if not t:
        return None
    if len(t) > MAX_COMMAND_CHARS:
        return Command("unknown", word=t[:20])
    first, _, rest = t.partition(" ")
    word = first.lstrip("/!").lower()
    found = _WORDS.get(word)
    if found is None:
        return Command("unknown", word=word[:20])
    name, lang = found
    return Command(name, rest.strip(), lang, word)


def resolve_box(
    devices: Sequence[Mapping[str, Any]], arg: str
) -> tuple[Mapping[str, Any] | None, str | None]:
    """(device, None) or (None, reply key) for `photo [box]`: by id or name, case-insensitive, or a unique prefix."""
    if not devices:
        return None, "no_boxes"
    if not arg:
        return (devices[0], None) if len(devices) == 1 else (None, "which_box")
    a = arg.casefold()
    for d in devices:
        if a in (str(d.get("device", "")).casefold(), str(d.get("name") or "").casefold()):
            return d, None
    prefix = [d for d in devices if str(d.get("name") or d.get("device")).casefold().startswith(a)]
    if len(prefix) == 1:
        return prefix[0], None
    return None, "no_box"


Reply = Callable[[str, str, bytes | None], Any]  # (chat JID, text, image) -> SendOutcome


class CommandHandler:
    """Answers commands from allowlisted numbers. `submit` is cheap and thread-safe."""

    def __init__(
        self,
        port: GatewayPort,
        reply: Reply,
        settings: WhatsAppSettings,
        *,
        tz: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self.clock = clock
        self.command_groups = {g.strip() for g in settings.command_groups if g.strip()}
        self.reply_fn = reply
        self.settings = settings
        self.tz = tz
        self.allow = {phone_digits(a) for a in settings.allow if phone_digits(a)}
        self.counters: Counter[str] = Counter()
        self._limiter = SendLimiter((max(settings.commands_per_minute, 1), 60.0), None)
        self._queue: queue.Queue[IncomingMessage | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    # -- intake (supervisor's reader thread) --------------------------------------------------
    def is_allowed(self, msg: IncomingMessage) -> bool:
        return bool(msg.sender_phone) and phone_digits(msg.sender_phone) in self.allow

    def _needs_prefix(self, msg: IncomingMessage) -> bool:
        return _in_group(msg) or self.settings.personal_number

    def admit(self, msg: IncomingMessage) -> str | None:
        """None when `msg` may be answered, else the counter naming why not (pure, no side effects)."""
        if is_broadcast_or_channel(msg.chat):
            return "ignored_broadcast"
        if not self.is_allowed(msg):
            return "ignored_unauthorised"
        if _in_group(msg) and msg.chat not in self.command_groups:
            return "ignored_group"
        if self._needs_prefix(msg) and not msg.text.lstrip().startswith(self.settings.group_prefix):
            return "ignored_chat"  # ordinary conversation, not addressed to the gateway
        if msg.ts and self.clock() - msg.ts > self.settings.command_max_age_s:
            return "ignored_stale"
        return None

    def submit(self, msg: IncomingMessage) -> None:
        why = self.admit(msg)
        if why is not None:
            self.counters[why] += 1
            log.info(
                "ignored a WhatsApp message from %s in %s (%s)", msg.sender_phone or msg.sender, msg.chat, why
            )
            return
        if self._limiter.try_acquire(msg.sender_phone) > 0:
            self.counters["ignored_rate_limited"] += 1
            log.warning(
                "ignored a command from %s: more than %d a minute",
                msg.sender_phone,
                self.settings.commands_per_minute,
            )
            return
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            self.counters["dropped_queue_full"] += 1
            log.error("WhatsApp command queue full; dropped a command from %s", msg.sender_phone)

    # -- worker -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="whatsapp-commands", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            try:
                self.handle(msg)
            except Exception:
                self.counters["failed"] += 1
                log.exception("WhatsApp command %r failed", msg.text[:40])

    # -- one command --------------------------------------------------------------------------
    def handle(self, msg: IncomingMessage) -> None:
        """Answer one message (`submit` already admitted it; checked again here)."""
        why = self.admit(msg)
        if why is not None:
            self.counters[why] += 1
            return
        text = msg.text.lstrip()
        if self._needs_prefix(msg):
            text = text[len(self.settings.group_prefix) :]
        cmd = parse_command(text)
        if cmd is None:
            self.counters["ignored_empty"] += 1
            return
        lang = cmd.language or self.settings.language
        self.counters[f"command.{cmd.name}"] += 1
        if cmd.name == "help":
            prefix = self.settings.group_prefix if self._needs_prefix(msg) else ""
            self._reply(msg.chat, texts.help_text(lang, prefix))
        elif cmd.name == "status":
            self._reply(msg.chat, texts.status_text(self.port.list_devices(), lang, self.tz))
        elif cmd.name == "photo":
            self._photo(msg.chat, cmd.arg, lang)
        elif self._needs_prefix(msg):
            # A group or someone's own number: "!something" may be meant for another bot or a person.
            self.counters["ignored_unknown"] += 1
        else:
            self._reply(msg.chat, texts.text("unknown", lang, word=cmd.word))

    def _reply(self, chat: str, text: str, image: bytes | None = None) -> None:
        out = self.reply_fn(chat, text, image)
        if getattr(out, "ok", True):
            self.counters["replied"] += 1
        else:
            self.counters["reply_failed"] += 1
            log.warning("WhatsApp reply to %s failed: %s", chat, getattr(out, "error", out))

    def _photo(self, chat: str, arg: str, lang: str) -> None:
        devices = self.port.list_devices()
        boxes = ", ".join(texts.box_label(d) for d in devices)
        dev, problem = resolve_box(devices, arg)
        if dev is None:
            self._reply(chat, texts.text(problem or "no_boxes", lang, boxes=boxes, name=arg))
            return
        device, label = str(dev["device"]), texts.box_label(dev)
        seen: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

        def collect(topic: str, data: dict[str, Any]) -> None:
            seen.put((topic, data))

        # Subscribe before sending: the snapshot can arrive before send_command returns.
        unsubs = [
            self.port.bus.subscribe(collect, topics.EVENT_STORED),
            self.port.bus.subscribe(collect, topics.COMMAND_RESULT),
        ]
        try:
            try:
                cmd_id = self.port.send_command(device, "snapshot")
            except Exception as e:
                self._reply(chat, texts.text("gateway_busy", lang, error=str(e)))
                return
            event, error = self._wait_snapshot(seen, device, cmd_id)
        finally:
            for u in unsubs:
                u()
        if error is not None:
            self._reply(chat, texts.text("snapshot_failed", lang, box=label, error=error))
            return
        if event is None:
            online = texts.text("online_word" if dev.get("online") else "offline_word", lang)
            self.counters["snapshot_timeout"] += 1
            self._reply(
                chat,
                texts.text(
                    "snapshot_timeout",
                    lang,
                    box=label,
                    seconds=int(self.settings.snapshot_timeout_s),
                    online=online,
                ),
            )
            return
        image = self._photo_bytes(device, str(event["id"]))
        if image is None:
            self._reply(chat, texts.text("snapshot_no_photo", lang, box=label))
            return
        caption = texts.text(
            "snapshot_caption",
            lang,
            box=label,
            time=texts.local_time(float(event.get("ts") or time.time()), self.tz),
        )
        self._reply(chat, caption, image)

    def _wait_snapshot(
        self, seen: queue.Queue[tuple[str, dict[str, Any]]], device: str, cmd_id: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        deadline = time.monotonic() + self.settings.snapshot_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None
            try:
                topic, data = seen.get(timeout=left)
            except queue.Empty:
                return None, None
            if topic == topics.EVENT_STORED and data.get("cmd") == cmd_id and data.get("device") == device:
                return data, None
            if topic == topics.COMMAND_RESULT and data.get("id") == cmd_id and not data.get("ok", True):
                return None, str(data.get("error") or "unknown error")

    def _photo_bytes(self, device: str, event_id: str) -> bytes | None:
        for variant in ("alert", "original"):
            path: Path | None = self.port.photo_path(device, event_id, variant)
            if path is not None:
                try:
                    return Path(path).read_bytes()
                except OSError:
                    log.warning("cannot read %s", path, exc_info=True)
        return None


def _in_group(msg: IncomingMessage) -> bool:
    return msg.is_group or msg.chat.endswith("@" + GROUP_SERVER)
