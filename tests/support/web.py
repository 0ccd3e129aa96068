"""The in-memory `GatewayPort` (gateway/ports.py) every test that needs a gateway uses: the dashboard,
WhatsApp commands and Home Assistant tests (tests/support/ha_gateway.py sets it up as those play a box).
tests/test_port_contract.py checks it answers what the real gateway answers.

It behaves like the gateway as its readers see it: records in memory (sorted
newest first, keyset pagination), photos as real JPEG files under a folder,
every change published on a real `Bus`. `send_command` can answer like a box
would (a snapshot event with a photo, then the command result), from a thread,
the way results arrive in the real gateway.
"""

from __future__ import annotations

import bisect
import io
import itertools
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from gateway import bus as busmod
from gateway.ota import offers, pending
from gateway.ota.manifest import Manifest, from_board_files
from gateway.protocol import valid_device_id, valid_msg_id

_counter = itertools.count(1)
# "This checkout's firmware" for the dashboard's Update button: a small fixed set (no mpy-cross).
CHECKOUT = from_board_files("1.1.0", [("/main.py", b"print('main')\n" * 40), ("/app.py", b"x = 1\n" * 900)])
OLD_SET = "ab" * 32  # the set a box running 1.0.0 reports


def make_jpeg(
    path: Path, size: tuple[int, int], label: str, color: tuple[int, int, int] = (200, 120, 40)
) -> int:
    """Write a real JPEG with a 'parcel' drawn in it; returns its size in bytes."""
    im = Image.new("RGB", size, (60, 64, 72))
    d = ImageDraw.Draw(im)
    w, h = size
    d.rectangle(
        [w * 0.25, h * 0.35, w * 0.75, h * 0.85], fill=color, outline=(30, 30, 30), width=max(1, w // 100)
    )
    d.line([w * 0.5, h * 0.35, w * 0.5, h * 0.85], fill=(240, 220, 160), width=max(1, w // 60))
    d.text((8, 8), label, fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def new_id() -> str:
    return f"{uuid.uuid4().hex[:16]}-{next(_counter):06d}"


class MemoryPort:
    """A complete in-memory GatewayPort (see gateway/ports.py)."""

    def __init__(
        self,
        photo_dir: Path,
        *,
        box_answers: bool = True,
        answer_delay: float = 0.2,
        answer: str = "photo",
        photo_size: tuple[int, int] = (800, 600),
        device_defaults: dict[str, Any] | None = None,
        checkout: Manifest = CHECKOUT,
    ) -> None:
        self.bus = busmod.Bus()
        self.photo_dir = photo_dir
        # How the boxes answer a command: photo (a snapshot with its photo), nophoto (a snapshot event
        # without one), fail (ok false: "camera init failed"), silent (never; also box_answers=False).
        self.box_answers = box_answers and answer != "silent"
        self.answer = answer
        self.answer_delay = answer_delay
        # The original's size; the alert copy is 4/5 of it and the thumbnail 1/5 (800x600: 640x480, 160x120).
        self.photo_size = photo_size
        self.device_defaults = dict(device_defaults or {})  # over add_device's defaults (e.g. no battery)
        self.fail_list_devices = 0  # list_devices raises this many times (a busy store)
        self._lock = threading.RLock()
        self._keys: list[tuple[float, int, str]] = []  # ascending (ts, seq, id) as the store; newest last
        self._events: dict[tuple[float, str], dict[str, Any]] = {}
        self._by_id: dict[tuple[str, str], dict[str, Any]] = {}
        self._photos: dict[tuple[str, str, str], Path] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.outbox: dict[str, dict[str, Any]] = {}
        self.commands: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.wa: dict[str, Any] = {
            "state": "not_paired",
            "detail": "Scan the QR code with WhatsApp on your phone.",
        }
        self.wa_calls: list[tuple[str, Any]] = []
        self.counters: dict[str, Any] = {"received": 0, "stored": 0, "duplicates": 0}
        self.started = time.time()
        # Over-the-air updates, with the service's own functions and a real <data>/ota folder:
        # boxes[device] is what a box reported of its firmware (OtaServer.boxes).
        self.ota_root = pending.ota_root(photo_dir.parent / f"{photo_dir.name}-data")
        self.boxes: dict[str, dict[str, Any]] = {}
        self.firmware = offers.CheckoutFirmware(photo_dir / "no-firmware", build=lambda _p: checkout)
        # Like the real service: the WhatsApp supervisor's state arrives on the bus.
        self.bus.subscribe(self._on_whatsapp_state, busmod.WHATSAPP_STATE)

    def _on_whatsapp_state(self, _topic: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.wa = dict(data)

    # --- feeding it ----------------------------------------------------------

    def add_device(self, device: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
        rec = {
            "device": device,
            "name": name or device,
            "online": True,
            "last_seen": time.time(),
            "status_at": time.time(),
            "fw": "1.0.0",
            "rssi": -58,
            "battery_mv": 3950,
            "heap_free": 61000,
            "uptime_s": 3600,
            "spooled": 0,
            "waiting": 0,
            "lid_open": False,
            "last_delivery_ts": None,
            "last_event_id": None,
            **self.device_defaults,
        }
        ota_set = kw.pop("ota_set", None)  # the box's running set: it can be updated over the air
        flash_free = kw.pop("flash_free", 900_000)
        rec.update(kw)
        with self._lock:
            self.devices[device] = rec
            if ota_set:
                self.boxes[device] = {"online": rec["online"], "fw": rec["fw"], "set": ota_set,
                                      "flash_free": flash_free}  # fmt: skip
        self.bus.publish(busmod.DEVICE_CHANGED, dict(rec))
        return rec

    def update(self, device: str, **fields: Any) -> dict[str, Any]:
        """A status from the box: the record changes and DEVICE_CHANGED says so, as the service does."""
        with self._lock:
            self.devices[device].update(fields)
            rec = dict(self.devices[device])
        self.bus.publish(busmod.DEVICE_CHANGED, dict(rec))
        return rec

    def add_event(
        self,
        device: str,
        type: str = "delivery",
        *,
        ts: float | None = None,
        event_id: str | None = None,
        photo: bool = True,
        alert: bool = True,
        cmd: str | None = None,
        publish: bool = True,
        sensors: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        eid = event_id or new_id()
        ts = time.time() if ts is None else ts
        seq = next(_counter)
        info = None
        if photo:
            base = self.photo_dir / device / eid
            w, h = self.photo_size
            label = f"{device} {type} #{seq}"  # the number makes every event's photo its own bytes
            size = make_jpeg(base.with_suffix(".jpg"), (w, h), label)
            variants = [("original", ".jpg"), ("thumb", ".thumb.jpg")]
            make_jpeg(base.with_suffix(".thumb.jpg"), (w // 5, h // 5), type)
            if alert:  # without: the pipeline kept no alert copy (a reader falls back to the original)
                make_jpeg(base.with_suffix(".alert.jpg"), (w * 4 // 5, h * 4 // 5), label)
                variants.append(("alert", ".alert.jpg"))
            with self._lock:
                for variant, suffix in variants:
                    self._photos[(device, eid, variant)] = base.with_suffix(suffix)
            info = {"size": size, "sha256": "0" * 64, "width": w, "height": h}
        rec = {
            "device": device,
            "id": eid,
            "type": type,
            "ts": ts,
            "received_at": ts,
            "seq": seq,
            "sensors": sensors
            if sensors is not None
            else {"lid": "closed", "occupancy": 1 if type == "delivery" else 0},
            "photo": info,
            "cmd": cmd,
        }
        with self._lock:
            key = (ts, rec["seq"], eid)
            bisect.insort(self._keys, key)
            self._events[key] = rec
            self._by_id[(device, eid)] = rec
            self.counters["stored"] += 1
            self.counters["received"] += 1
            dev = self.devices.get(device)
            if dev is not None:
                if type == "delivery":
                    dev["waiting"] += 1
                    dev["last_delivery_ts"] = ts
                elif type == "pickup":
                    dev["waiting"] = 0
                dev["last_event_id"] = eid
        if publish:
            self.bus.publish(busmod.EVENT_STORED, dict(rec))
            if dev is not None:
                self.bus.publish(busmod.DEVICE_CHANGED, dict(dev))
        return rec

    def add_alert(self, device: str, state: str = "pending", last_error: str | None = None) -> dict[str, Any]:
        rec = {
            "id": new_id(),
            "kind": "delivery",
            "device": device,
            "event_ids": [new_id()],
            "notifier": "whatsapp",
            "recipient": "+628123456789",
            "state": state,
            "attempts": 0 if state == "pending" else 3,
            "created_at": time.time(),
            "next_attempt_at": time.time() + 60 if state == "failed" else None,
            "sent_at": time.time() if state == "sent" else None,
            "last_error": last_error,
        }
        with self._lock:
            self.outbox[rec["id"]] = rec
        self.bus.publish(busmod.OUTBOX_CHANGED, dict(rec))
        return rec

    def set_whatsapp(self, **state: Any) -> None:
        with self._lock:
            self.wa = {**state, "updated_at": time.time()}
        self.bus.publish(busmod.WHATSAPP_STATE, dict(self.wa))

    # --- GatewayPort -----------------------------------------------------------

    def list_events(
        self,
        *,
        device: str | None = None,
        type: str | tuple[str, ...] | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, int, str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        types = (type,) if isinstance(type, str) else type
        with self._lock:
            hi = len(self._keys) if before is None else bisect.bisect_left(self._keys, before)
            if until is not None:
                hi = min(hi, bisect.bisect_left(self._keys, (until,)))
            out: list[dict[str, Any]] = []
            i = hi - 1
            while i >= 0 and len(out) < limit:
                rec = self._events[self._keys[i]]
                if since is not None and rec["ts"] < since:
                    break
                if (device is None or rec["device"] == device) and (types is None or rec["type"] in types):
                    out.append(dict(rec))
                i -= 1
            return out

    def get_event(self, device: str, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._by_id.get((device, event_id))
            return dict(rec) if rec else None

    def photo_path(self, device: str, event_id: str, variant: str) -> Path | None:
        # The real store rejects bad ids too; keep that so tests see the same contract.
        if not (valid_device_id(device) and valid_msg_id(event_id)):
            return None
        with self._lock:
            return self._photos.get((device, event_id, variant))

    def list_devices(self) -> list[dict[str, Any]]:
        with self._lock:
            if self.fail_list_devices:
                self.fail_list_devices -= 1
                raise RuntimeError("store is busy (simulated)")
            return [dict(d) for d in sorted(self.devices.values(), key=lambda d: d["device"])]

    def health(self) -> dict[str, Any]:
        with self._lock:
            states = [a["state"] for a in self.outbox.values()]
            return {
                **self.counters,
                "alerts": {s: states.count(s) for s in ("pending", "sent", "failed", "dead")},
                "uptime_s": time.time() - self.started,
            }

    def list_outbox(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(a) for a in self.outbox.values() if state is None or a["state"] == state]
        rows.sort(key=lambda a: a["created_at"], reverse=True)
        return rows[:limit]

    def retry_alert(self, alert_id: str) -> bool:
        with self._lock:
            a = self.outbox.get(alert_id)
            if a is None or a["state"] not in ("failed", "dead"):
                return False
            a.update(state="pending", next_attempt_at=time.time())
            rec = dict(a)
        self.bus.publish(busmod.OUTBOX_CHANGED, rec)
        return True

    def send_command(self, device: str, cmd: str, args: dict[str, Any] | None = None) -> str:
        cmd_id = f"cmd-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self.commands.append((cmd_id, device, cmd, args))
        if self.box_answers:
            threading.Thread(target=self._answer, args=(cmd_id, device, cmd), daemon=True).start()
        return cmd_id

    def _answer(self, cmd_id: str, device: str, cmd: str) -> None:
        if self.answer_delay:
            time.sleep(self.answer_delay)
        result: dict[str, Any] = {"device": device, "id": cmd_id, "ok": True, "error": None}
        if self.answer == "fail":
            result.update(ok=False, error="camera init failed")
        elif cmd == "snapshot":
            ev = self.add_event(device, "snapshot", cmd=cmd_id, photo=self.answer == "photo")
            result["event"] = ev["id"]
        with self._lock:
            self.results[cmd_id] = result
        self.bus.publish(busmod.COMMAND_RESULT, dict(result))

    def command_result(self, cmd_id: str) -> dict[str, Any] | None:
        with self._lock:
            r = self.results.get(cmd_id)
            return dict(r) if r else None

    def firmware_status(self, device: str) -> dict[str, Any]:
        with self._lock:
            box = dict(self.boxes.get(device) or {})
        return offers.firmware_status(self.ota_root, device, box, self.firmware)

    def offer_update(self, device: str) -> dict[str, Any]:
        with self._lock:
            known = device in self.devices
            box = dict(self.boxes.get(device) or {})
        return offers.offer_checked(self.ota_root, device, box, known, self.firmware)

    def ota_progress(self, device: str, state: str, fraction: float = 0.0, reason: str | None = None) -> None:
        """Play the gateway serving the offer: progress.json as gateway/ota/server.py writes it."""
        offer = pending.read_offer(self.ota_root, device)
        assert offer is not None, "no offer for " + device
        total = {f[0]: f[1] for f in offer["files"]}
        prog = {"id": offer["id"], "state": state, "version": offer["version"], "total": total, "sent": {},
                "bytes": int(sum(total.values()) * fraction), "reason": reason}  # fmt: skip
        pending.write_progress(self.ota_root, device, prog)

    def whatsapp_state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.wa)

    # Optional WhatsApp actions (present on the real gateway when its WhatsApp link offers them).

    def whatsapp_pair_code(self, phone: str) -> dict[str, Any]:
        self.wa_calls.append(("pair_code", phone))
        self.set_whatsapp(
            state="pairing", detail="Enter the code in WhatsApp > Linked devices", pair_code="ABCD-EFGH"
        )
        return {"ok": True, "pair_code": "ABCD-EFGH"}

    def whatsapp_test_message(self, recipient: str | None) -> dict[str, Any]:
        self.wa_calls.append(("test", recipient))
        return {"ok": True}

    def whatsapp_unlink(self) -> dict[str, Any]:
        self.wa_calls.append(("unlink", None))
        self.set_whatsapp(state="not_paired", detail="Unlinked. Scan a new QR code to pair again.")
        return {"ok": True}


# --- test helpers ------------------------------------------------------------------

LOCAL_BASE = "http://127.0.0.1:8080"


def csrf_headers(client: Any) -> dict[str, str]:
    """The header a browser page would send: the pb_csrf cookie echoed back."""
    return {"x-csrf-token": client.cookies.get("pb_csrf") or ""}


def prime(client: Any) -> None:
    """Load a page once so the server sets the CSRF cookie, as a browser visit would."""
    r = client.get("/api/health")
    assert r.status_code == 200, r.text


class SSEReader:
    """Read Server-Sent Events from a streaming httpx response, with a bounded wait per event."""

    def __init__(self, response: Any) -> None:
        self._lines = response.iter_lines()

    def next_event(self, want: str | None = None, max_events: int = 200) -> tuple[str, Any]:
        import json

        name, data = "message", []
        seen = 0
        for line in self._lines:
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    seen += 1
                    ev = (name, json.loads("\n".join(data)))
                    if want is None or ev[0] == want:
                        return ev
                    if seen >= max_events:
                        break
                name, data = "message", []
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        raise AssertionError(f"stream ended before a {want or 'any'} event")


class BoxRunner:
    """Runs a `tools.simulate.SimulatedBox` on its own thread, like a powered-on box.

    The simulated box is driven by calling `step()` over and over and is not thread-safe,
    so scripted actions (`deliver`, `pickup`, ...) are queued with `call()` and run on the
    box's thread between steps.
    """

    def __init__(self, box: Any) -> None:
        import queue

        self.box = box
        self._calls: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sim-{box.device}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import queue

        try:
            while not self._stop.is_set():
                try:
                    while True:
                        self._calls.get_nowait()()
                except queue.Empty:
                    pass
                self.box.step()
                time.sleep(0.005)
        except BaseException as e:  # surfaced by close() so a test sees why the box died
            self.error = e

    def call(self, fn: Any) -> None:
        self._calls.put(fn)

    def events(self, type: str | None = None) -> list[str]:
        return [e for e, t in list(self.box.made) if type is None or t == type]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.box.close()
        if self.error is not None:
            raise self.error
