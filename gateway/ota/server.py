"""The gateway's side of an over-the-air update: offer, serve chunks, confirm, record the outcome.

Runs in the gateway service on its ingest worker (one thread: no locking here). The box pulls
(docs/protocol.md, "Over-the-air update"): this only answers. Each `need` is checked against the
offer on disk before a byte is read; anything else a box sends on its `ota/reply` is refused with a
reason and a counter, like every other message. State lives in `<data>/ota/<device>/progress.json`
(gateway/ota/pending.py), so `parcelbox device update` can show progress and a gateway restart
resumes: the box asks again for what it still needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.ota import pending
from gateway.protocol import Status, topic, valid_device_id, valid_msg_id

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)
Reject = Callable[[str, str, str], None]  # (reason, detail, where)
MAX_REPLY_BYTES = 1024
_OPS = ("need", "nack", "staged", "current", "updated", "update_failed")


class OtaServer:
    def __init__(
        self,
        root: Path,
        prefix: str,
        publish: Publish,
        reject: Reject,
        clock: Callable[[], float],
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.prefix = prefix
        self._publish = publish
        self._reject = reject
        self.clock = clock
        self._on_change = on_change
        self.boxes: dict[str, dict[str, Any]] = {}  # what each box last said about its firmware
        self._files: dict[str, dict[str, bytes]] = {}  # device -> sha -> bytes of the current offer

    # --- offers ------------------------------------------------------------------------

    def tick(self) -> None:
        """Publish offers `parcelbox device update` queued since the last tick (retained: a sleeping
        box finds it at its next wake)."""
        for device in pending.devices(self.root):
            offer = pending.read_offer(self.root, device)
            if offer is None:
                continue
            prog = pending.read_progress(self.root, device)
            if prog is not None and prog.get("id") == offer.get("id"):
                continue
            keys = ("v", "op", "id", "version", "set", "chunk", "trial_s", "trial_boots", "files", "partial")
            wire = {k: offer[k] for k in keys if k in offer}
            self._publish(topic(self.prefix, device, "ota"), json.dumps(wire).encode(), True)
            self._files.pop(device, None)
            prog = {
                "id": offer["id"],
                "state": "offered",
                "version": offer.get("version"),
                "from": (self.boxes.get(device) or {}).get("fw") or offer.get("from"),
                "set": offer.get("set"),
                "offered_at": self.clock(),
                "finished_at": None,
                "total": {f[0]: f[1] for f in offer["files"]},
                "sent": {},
                "bytes": 0,
                "chunks": 0,
                "bad_chunks": 0,
                "reason": None,
            }
            pending.write_progress(self.root, device, prog)
            log.info("ota: offered %s to %s (%d files)", offer.get("version"), device, len(offer["files"]))
            self._changed(device)

    def _clear_offer(self, device: str) -> None:
        self._publish(topic(self.prefix, device, "ota"), b"", True)

    def _changed(self, device: str) -> None:
        if self._on_change is not None:
            self._on_change(device)

    # --- from the box ------------------------------------------------------------------

    def on_reply(self, device: str, payload: bytes) -> None:
        where = f"ota reply from {device}"
        if len(payload) > MAX_REPLY_BYTES:
            self._reject("oversize", f"{len(payload)} bytes", where)
            return
        try:
            d = json.loads(payload)
        except ValueError:
            self._reject("bad_json", "not JSON", where)
            return
        if not isinstance(d, dict) or d.get("v") != 1 or d.get("op") not in _OPS:
            self._reject("bad_schema", "not an ota reply", where)
            return
        op = d["op"]
        uid = d.get("id")
        offer = pending.read_offer(self.root, device)
        prog = pending.read_progress(self.root, device)
        ours = offer is not None and prog is not None and uid == offer.get("id") == prog.get("id")
        if op in ("updated", "update_failed"):
            if ours and prog is not None and prog.get("state") not in pending.FINAL_STATES:
                self._finish(device, prog, "done" if op == "updated" else "failed", d.get("reason"))
            return
        if not ours or prog is None or offer is None:
            if uid is None and op == "nack":
                log.warning("ota: %s refused a message: %s", device, str(d.get("error"))[:200])
                return
            self._reject("unknown_update", f"{op} for {str(uid)[:40]}", where)
            return
        if op == "need":
            self._serve(device, offer, prog, d, where)
        elif op == "nack":
            err = str(d.get("error") or "")[:300]
            if err.startswith("bad_chunk"):
                prog["bad_chunks"] = prog.get("bad_chunks", 0) + 1
                log.warning("ota: %s asked again for a chunk (%s)", device, err)
                pending.write_progress(self.root, device, prog)
            else:
                self._clear_offer(device)
                self._finish(device, prog, "refused", err)
        elif op == "staged":
            self._clear_offer(device)
            prog["state"] = "staged"
            pending.write_progress(self.root, device, prog)
            log.info("ota: %s staged %s; it switches at its next reboot", device, prog.get("version"))
            self._changed(device)
        elif op == "current":
            self._clear_offer(device)
            self._finish(device, prog, "current", None)

    def _serve(self, device: str, offer: dict, prog: dict, d: dict, where: str) -> None:
        f, o, n = d.get("f"), d.get("o"), d.get("n")
        files = offer["files"]
        if not (_is_int(f) and _is_int(o) and _is_int(n)):
            self._reject("bad_schema", "need without f/o/n", where)
            return
        assert isinstance(f, int) and isinstance(o, int) and isinstance(n, int)  # for the type checker
        if not (0 <= f < len(files)) or o < 0 or not 0 < n <= offer["chunk"] or o + n > files[f][1]:
            self._reject("bad_schema", f"need out of range: f={f} o={o} n={n}", where)
            return
        name, _size, sha = files[f]
        cache = self._files.setdefault(device, {})
        data = cache.get(sha)
        if data is None:
            data = pending.file_bytes(self.root, device, sha)
            if data is None:
                log.error("ota: %s of the offer to %s is missing from %s", name, device, self.root / device)
                return
            cache[sha] = data
        part = data[o : o + n]
        header = {"v": 1, "id": offer["id"], "f": f, "o": o, "sha": hashlib.sha256(part).hexdigest()}
        # Progress is written before the chunk goes out: a gateway killed between the two would
        # otherwise never count a file's last chunk, since the box, having it, never asks again.
        sent = prog.setdefault("sent", {})
        if o + n > sent.get(name, 0):
            prog["bytes"] = prog.get("bytes", 0) + (o + n - sent.get(name, 0))
            sent[name] = o + n
        prog["chunks"] = prog.get("chunks", 0) + 1
        prog["state"] = "receiving"
        try:
            pending.write_progress(self.root, device, prog)
        finally:
            # Even when that write fails (full disk; the worker counts and warns about the error):
            # progress is only what `device update` shows, the chunk is what the box needs to go on.
            self._publish(
                topic(self.prefix, device, "ota_data"), json.dumps(header).encode() + b"\n" + part, False
            )
        self._changed(device)  # progress for the dashboard and Home Assistant (the listener dedups)

    def _finish(self, device: str, prog: dict, state: str, reason: str | None) -> None:
        prog["state"] = state
        prog["reason"] = reason
        prog["finished_at"] = self.clock()
        pending.write_progress(self.root, device, prog)
        self._files.pop(device, None)
        log.info(
            "ota: %s update %s: %s%s", device, prog.get("version"), state, f" ({reason})" if reason else ""
        )
        self._changed(device)

    def on_status(self, device: str, st: Status) -> None:
        """Remember the box's firmware; confirm a set on trial (its status reached us: it is
        connected and we acknowledge it); take an outcome the box reported in its status."""
        if not st.online:
            if device in self.boxes:
                self.boxes[device]["online"] = False
                self._changed(device)
            return
        self.boxes[device] = {"online": True, "fw": st.fw, "set": st.set, "flash_free": st.flash_free,
                              "trial": st.trial, "update": st.update, "updating": st.updating}  # fmt: skip
        trial_set = st.trial_set or st.set  # a config update's set is not the app's
        if st.trial and trial_set:
            self._publish(
                topic(self.prefix, device, "ota"),
                json.dumps({"v": 1, "op": "confirm", "set": trial_set}).encode(),
                False,
            )
        u = st.update
        if u is not None and valid_msg_id(u.get("id")):
            prog = pending.read_progress(self.root, device)
            if (
                prog is not None
                and prog.get("id") == u["id"]
                and prog.get("state") not in pending.FINAL_STATES
            ):
                self._finish(device, prog, "done" if u["ok"] else "failed", u.get("reason"))
        self._changed(device)

    def remember(self, boxes: dict[str, Any]) -> None:
        """What boxes said about their firmware before a restart (the last status.json), until they
        speak again: a sleeping box can be offered an update without waiting for its next wake."""
        if not isinstance(boxes, dict):
            return
        for device, rec in boxes.items():
            if device in self.boxes or not isinstance(rec, dict) or not valid_device_id(device):
                continue
            fw, sha, free = rec.get("fw"), rec.get("set"), rec.get("flash_free")
            self.boxes[device] = {
                "online": False,
                "fw": fw if isinstance(fw, str) else None,
                "set": sha if isinstance(sha, str) else None,
                "flash_free": free if isinstance(free, int) and not isinstance(free, bool) else None,
            }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per box: its firmware as it last reported it and the update on its way (for status.json)."""
        out: dict[str, dict[str, Any]] = {}
        for device in sorted(set(self.boxes) | set(pending.devices(self.root))):
            rec = dict(self.boxes.get(device) or {})
            rec["pending"] = pending.pending(self.root, device)
            rec["last"] = pending.read_progress(self.root, device)
            out[device] = rec
        return out


def _is_int(x: object) -> bool:
    """A JSON integer (bool is an int in Python, not in the protocol)."""
    return isinstance(x, int) and not isinstance(x, bool)
