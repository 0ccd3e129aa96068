#!/usr/bin/env python3
"""Check a real WhatsApp account end to end, once, and print what worked.

    python tools/whatsapp_check.py --to +62812... [--data-dir DIR] [--timeout 300]

For a user with a spare number (the one the gateway will use). It runs the
gateway's own WhatsApp child process (the same code `parcelbox run` uses) on a
session folder of its own (default: a new temporary folder, so it never touches
a running gateway's session), and walks through:

1. pair    - shows a QR code in the terminal; scan it with the spare number's phone
             (Settings > Linked devices > Link a device). Skipped when already paired.
2. lookup  - asks WhatsApp whether `--to` is a WhatsApp user (once).
3. photo   - sends a test photo with a caption to `--to` (your own, main number).
4. receipt - waits for that phone's delivery receipt (and a read receipt if you open it).
5. command - asks you to send `status` from the `--to` phone to the spare number, and answers it.

Exit code 0 when every step worked. Nothing here runs in the test suite against
WhatsApp; `tests/test_whatsapp_check_tool.py` runs it against the fake transport.
"""

from __future__ import annotations

import argparse
import io
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.bus import WHATSAPP_RECEIPT, Bus  # noqa: E402
from gateway.ports import WhatsAppState  # noqa: E402
from gateway.whatsapp.addresses import BadRecipient, jid_user, to_jid  # noqa: E402
from gateway.whatsapp.settings import TRANSPORTS, WhatsAppSettings  # noqa: E402
from gateway.whatsapp.supervisor import WhatsAppSupervisor  # noqa: E402
from gateway.whatsapp.transport import IncomingMessage  # noqa: E402


def test_photo() -> bytes:
    """A small JPEG made here (no file needed): Pillow, which the gateway already depends on."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (480, 320), (47, 111, 237))
    ImageDraw.Draw(im).text((20, 140), "parcelbox WhatsApp check", fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: list[tuple[str, bool | None, str]] = []  # (step, ok / None = skipped, detail)
        self.bus = Bus()
        self.receipts: queue.Queue[dict[str, Any]] = queue.Queue()
        self.messages: queue.Queue[IncomingMessage] = queue.Queue()
        self.bus.subscribe(lambda _t, d: self.receipts.put(d), WHATSAPP_RECEIPT)
        self._shown_qr: str | None = None

    def step(self, name: str, ok: bool | None, detail: str) -> None:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[ok]
        print(f"[{mark}] {name:<8} {detail}", flush=True)
        self.results.append((name, ok, detail))

    def on_state(self, st: WhatsAppState) -> None:
        qr = st.get("qr")
        if qr and qr != self._shown_qr:
            self._shown_qr = qr
            print(
                "\nScan with the spare number's phone: WhatsApp > Settings > Linked devices > Link a device"
            )
            try:
                import segno

                segno.make_qr(qr).terminal(out=sys.stdout, compact=True)
            except ImportError:
                print(f"(install segno to draw it) QR payload: {qr}")
            sys.stdout.flush()

    def run(self) -> int:
        a = self.args
        try:
            to = to_jid(a.to)
        except BadRecipient as e:
            print(f"error: --to: {e}", file=sys.stderr)
            return 2
        session = Path(a.data_dir) / "whatsapp" if a.data_dir else Path(tempfile.mkdtemp()) / "whatsapp"
        settings = WhatsAppSettings(
            session_dir=session,
            transport=a.transport,
            fake_dir=Path(a.fake_dir) if a.fake_dir else None,
        )
        print(f"session folder: {session}")
        sup = WhatsAppSupervisor(
            settings,
            bus=self.bus,
            on_state=self.on_state,
            on_message=self.messages.put,
        )
        sup.start()
        try:
            return self._steps(sup, to)
        finally:
            sup.stop()
            self._summary()

    def _steps(self, sup: WhatsAppSupervisor, to: str) -> int:
        a = self.args
        st = sup.wait_for(lambda s: s.get("state") == "connected", a.timeout)
        if st is None:
            last = sup.state()
            self.step(
                "pair",
                False,
                f"not connected within {a.timeout:.0f} s: [{last.get('state')}] {last.get('detail')}",
            )
            return 1
        me = st.get("paired_as") or "?"
        self.step("pair", True, f"linked and connected as +{me}")
        found = sup.check_numbers([jid_user(to)], timeout=30)
        if isinstance(found, str):
            self.step("lookup", False, found)
        else:
            ok = found.get(jid_user(to), False)
            self.step("lookup", ok, f"+{jid_user(to)} {'is' if ok else 'is NOT'} on WhatsApp")
            if not ok:
                return 1
        out = sup.send(to, "parcelbox WhatsApp check: this is a test photo.", test_photo())
        if not out.ok:
            self.step("photo", False, out.error or "send failed")
            return 1
        self.step("photo", True, f"WhatsApp accepted it (message id {out.message_id})")
        got = self._wait_receipt(str(out.message_id), a.receipt_timeout)
        self.step(
            "receipt",
            got is not None,
            f"the phone confirmed: {got}"
            if got
            else f"no delivery receipt within {a.receipt_timeout:.0f} s (is the phone online?)",
        )
        print(
            f"\nNow send  status  from +{jid_user(to)} to +{me} (within {a.command_timeout:.0f} s).",
            flush=True,
        )
        msg = self._wait_message(jid_user(to), a.command_timeout)
        if msg is None:
            self.step("command", False, f"no message from +{jid_user(to)} within {a.command_timeout:.0f} s")
            return 1
        reply = sup.send(msg.chat, f"parcelbox WhatsApp check: got your {msg.text!r}; commands work.")
        self.step("command", reply.ok, f"received {msg.text!r}; reply {'sent' if reply.ok else reply.error}")
        return 0 if all(ok is not False for _, ok, _ in self.results) else 1

    def _wait_receipt(self, message_id: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        best: str | None = None
        while (left := deadline - time.monotonic()) > 0:
            try:
                r = self.receipts.get(timeout=min(left, 1.0))
            except queue.Empty:
                if best:
                    return best
                continue
            if message_id in (r.get("ids") or []):
                best = str(r.get("status"))
                if best == "read":
                    return best
        return best

    def _wait_message(self, phone: str, timeout: float) -> IncomingMessage | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = self.messages.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if m.sender_phone == phone:
                return m
            print(f"(ignored a message from {m.sender_phone or m.sender})", flush=True)
        return None

    def _summary(self) -> None:
        print("\nSummary:")
        for name, ok, detail in self.results:
            print(f"  {name:<8} {'worked' if ok else 'skipped' if ok is None else 'FAILED'}: {detail}")
        if not self.results:
            print("  nothing ran")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--to", required=True, help="your main number (+62...): gets the photo, sends `status`")
    p.add_argument(
        "--data-dir", help="keep the session here (<dir>/whatsapp); default: a new temporary folder"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to pair and connect")
    p.add_argument("--receipt-timeout", type=float, default=60.0)
    p.add_argument("--command-timeout", type=float, default=180.0)
    p.add_argument("--transport", choices=TRANSPORTS, default="neonize", help=argparse.SUPPRESS)
    p.add_argument("--fake-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    threading.current_thread().name = "whatsapp-check"
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
