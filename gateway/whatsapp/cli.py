"""`parcelbox whatsapp pair|status|groups|unlink`.

`pair` and `unlink` run the same WhatsApp child process the gateway runs (so
the same session lock applies): while a gateway owns the session they refuse,
naming its pid. `pair` keeps the rotating QR code current in the terminal, or
with `--phone +62...` prints a pairing code to type on the phone instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from gateway.ports import WhatsAppState
from gateway.whatsapp.addresses import jid_user, phone_digits
from gateway.whatsapp.lock import LOCK_NAME, holder_of
from gateway.whatsapp.session_db import paired_jid_from_db
from gateway.whatsapp.settings import TRANSPORTS, WhatsAppSettings, settings_from_config

GATEWAY_LOCK = "gateway.lock"


def _settings(args: argparse.Namespace) -> tuple[WhatsAppSettings, Path]:
    if args.data_dir:
        data_dir = Path(args.data_dir).expanduser().resolve()
        settings = WhatsAppSettings(session_dir=data_dir / "whatsapp")
    else:
        from gateway.config import load_config

        cfg = load_config(getattr(args, "config", None))
        data_dir = Path(cfg.data_dir).expanduser().resolve()
        settings = settings_from_config(cfg.whatsapp, data_dir)
    if args.transport:
        settings.transport = args.transport
    if args.fake_dir:
        settings.fake_dir = Path(args.fake_dir)
    return settings, data_dir


def _gateway_pid(data_dir: Path) -> int | None:
    """pid of a running `parcelbox run` on this data folder (0 if unknown), None if none runs."""
    return holder_of(data_dir / GATEWAY_LOCK)


def _refuse_if_busy(settings: WhatsAppSettings, data_dir: Path, what: str) -> str | None:
    gw = _gateway_pid(data_dir)
    if gw is not None:
        who = f"pid {gw}" if gw else "another process"
        return (
            f"cannot {what}: the gateway ({who}) is running on {data_dir} and owns the WhatsApp session. "
            + (
                "Pair from the dashboard's WhatsApp page, or stop the gateway first."
                if what == "pair"
                else "Stop it first."
            )
        )
    holder = holder_of(settings.session_dir / LOCK_NAME)
    if holder is not None:
        who = f"pid {holder}" if holder else "another process"
        return f"cannot {what}: the WhatsApp session in {settings.session_dir} is in use by {who}. Stop it first."
    return None


def _print_qr(code: str, n: int) -> None:
    print(
        f"\nQR code #{n} - open WhatsApp on your phone > Settings > Linked devices > Link a device, and scan:"
    )
    try:
        import segno

        segno.make_qr(code).terminal(out=sys.stdout, compact=True)
    except ImportError:
        print(f"(install `segno` to draw it here) QR payload: {code}")
    print("It changes every 20-60 s; this screen follows. Ctrl-C to give up.", flush=True)


def do_pair(args: argparse.Namespace) -> int:
    from gateway.whatsapp.supervisor import WhatsAppSupervisor

    settings, data_dir = _settings(args)
    why = _refuse_if_busy(settings, data_dir, "pair")
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    phone = phone_digits(args.phone) if args.phone else None
    if args.phone and not (phone and 7 <= len(phone) <= 15):
        print(
            f"error: --phone {args.phone!r} is not a number in international format (+62...)", file=sys.stderr
        )
        return 2
    shown: dict[str, Any] = {"qr": None, "code": None, "n": 0, "detail": None}

    def show(st: WhatsAppState) -> None:
        qr = st.get("qr")
        if qr and qr != shown["qr"]:
            shown["qr"] = qr
            shown["n"] += 1
            _print_qr(qr, shown["n"])
        elif st.get("pair_code") and st["pair_code"] != shown["code"]:
            shown["code"] = st["pair_code"]
            print(f"\nPairing code: {st['pair_code']}\n{st.get('detail', '')}", flush=True)
        elif st.get("state") not in ("pairing",) and st.get("detail") != shown["detail"]:
            shown["detail"] = st.get("detail")
            print(f"[{st.get('state')}] {st.get('detail', '')}", flush=True)

    sup = WhatsAppSupervisor(settings, mode="pair", phone=phone, on_state=show)
    sup.start()
    try:
        deadline = time.monotonic() + args.timeout
        while not sup.finished.wait(0.5):
            if time.monotonic() > deadline:
                print(f"\nGave up after {args.timeout:.0f} s without pairing.", file=sys.stderr)
                break
    except KeyboardInterrupt:
        print("\nStopped.", file=sys.stderr)
    finally:
        sup.stop()
    st = sup.state()
    return 0 if st.get("state") == "connected" else 1


def do_unlink(args: argparse.Namespace) -> int:
    from gateway.whatsapp.supervisor import WhatsAppSupervisor

    settings, data_dir = _settings(args)
    why = _refuse_if_busy(settings, data_dir, "unlink")
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    sup = WhatsAppSupervisor(settings, mode="unlink")
    sup.start()
    sup.finished.wait(60)
    sup.stop()
    st = sup.state()
    print(f"[{st.get('state')}] {st.get('detail', '')}")
    return 0 if st.get("state") == "not_paired" else 1


def do_groups(args: argparse.Namespace) -> int:
    from gateway.whatsapp.supervisor import WhatsAppSupervisor

    settings, data_dir = _settings(args)
    why = _refuse_if_busy(settings, data_dir, "list groups")
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    sup = WhatsAppSupervisor(settings, mode="groups")
    sup.start()
    sup.finished.wait(90)
    sup.stop()
    if sup.groups is None:
        st = sup.state()
        print(f"error: [{st.get('state')}] {st.get('detail', '')}", file=sys.stderr)
        return 1
    if not sup.groups:
        print("This WhatsApp account is in no groups.")
        return 0
    print("Groups this account is in (put an id in [whatsapp] recipients to send alerts there):")
    for jid, name in sup.groups:
        print(f"  {jid:<40} {name}")
    return 0


def _paired_as(settings: WhatsAppSettings) -> str | None:
    """The linked number read from the session store itself (not from the file's existence)."""
    try:
        fake = settings.session_dir / "fake-session.json"
        if fake.exists():
            return jid_user(json.loads(fake.read_text())["jid"])
        jid = paired_jid_from_db(settings.session_db)
    except (OSError, ValueError, KeyError, sqlite3.Error):
        return None
    return jid_user(jid) if jid else None


def status_data(settings: WhatsAppSettings, data_dir: Path) -> dict[str, Any]:
    """What `status` prints: who owns the session and the last state the gateway reported."""
    out: dict[str, Any] = {
        "session_dir": str(settings.session_dir),
        "gateway_pid": _gateway_pid(data_dir),
        "session_owner_pid": holder_of(settings.session_dir / LOCK_NAME),
        "session_exists": settings.session_db.exists()
        or (settings.session_dir / "fake-session.json").exists(),
        "paired_as": _paired_as(settings),
        "last_state": None,
    }
    out["paired"] = bool(out["paired_as"])
    try:
        out["last_state"] = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        pass
    return out


def do_status(args: argparse.Namespace) -> int:
    settings, data_dir = _settings(args)
    data = status_data(settings, data_dir)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    st = data["last_state"] or {}
    running = data["gateway_pid"] is not None
    print(f"gateway        {'running, pid ' + str(data['gateway_pid']) if running else 'not running'}")
    owner = data["session_owner_pid"]
    missing = settings.transport == "neonize" and importlib.util.find_spec("neonize") is None
    if data["paired"]:
        present = f"linked to +{data['paired_as']}"
    elif missing:  # the state line says what to do first: install it
        present = "session database present" if data["session_exists"] else "no session yet"
    elif data["session_exists"]:
        present = "no linked device in it: not paired"  # a connect that never paired creates the file
    else:
        present = "no session yet: not paired"
    print(f"session        {settings.session_dir} ({present})")
    if owner is not None:
        print(f"session owner  pid {owner}")
    if st:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(st.get("updated_at") or 0)))
        stale = "" if running else " (last known; the gateway is not running)"
        print(f"state          {st.get('state')}{stale}, as of {when}")
        if st.get("paired_as"):
            print(f"linked number  +{st['paired_as']}")
        print(f"               {st.get('detail', '')}")
    elif not data["paired"]:
        if missing:
            print("state          not installed: .venv/bin/pip install -e '.[whatsapp]', then pair")
        else:
            print("state          not paired: run `parcelbox whatsapp pair`")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="TOML config (default: $PARCELBOX_CONFIG, then the user config dir)"
    )
    p.add_argument("--data-dir", metavar="DIR", help="data folder (overrides the config)")
    # For tests and demos: run against the file-driven fake instead of WhatsApp.
    p.add_argument("--transport", choices=TRANSPORTS, help=argparse.SUPPRESS)
    p.add_argument("--fake-dir", help=argparse.SUPPRESS)


def register(subparsers: Any) -> None:
    """Add `whatsapp pair|status|unlink` to the `parcelbox` command line."""
    p = subparsers.add_parser("whatsapp", help="link, check or unlink the WhatsApp account that sends alerts")
    sub = p.add_subparsers(dest="whatsapp_command", required=True)
    pair = sub.add_parser("pair", help="link this gateway to a WhatsApp account (QR code, or --phone)")
    _common(pair)
    pair.add_argument(
        "--phone", metavar="+62...", help="get a pairing code for this number instead of a QR code"
    )
    pair.add_argument(
        "--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)"
    )
    pair.set_defaults(func=do_pair)
    status = sub.add_parser("status", help="is WhatsApp linked and connected, and who owns the session")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=do_status)
    groups = sub.add_parser("groups", help="list the account's groups and their ids (for recipients)")
    _common(groups)
    groups.set_defaults(func=do_groups)
    unlink = sub.add_parser("unlink", help="log out and delete the local WhatsApp session")
    _common(unlink)
    unlink.set_defaults(func=do_unlink)


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.whatsapp.cli ...` (the same as `parcelbox whatsapp ...`)."""
    parser = argparse.ArgumentParser(prog="parcelbox")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["whatsapp", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
