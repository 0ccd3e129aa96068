"""`parcelbox` command line: a table of subcommands.

Core commands live here (`run`, `status`, `device`). Other parts plug theirs in
by adding a module name to `COMMAND_MODULES`; each such module exposes
`register(subparsers)`, adding parsers whose `func(args) -> int` runs the command.
A plug-in that fails to import is reported and skipped, so one broken extra
never takes the whole CLI down.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from gateway import __version__

EXIT_CONFIG = 2  # the config cannot be used (message names the key)
EXIT_LOCKED = 3  # another gateway owns the data folder (message names its pid)

# Modules exposing `register(subparsers)`; e.g. "gateway.web.cli" (web set-password), "gateway.whatsapp.cli".
COMMAND_MODULES: tuple[str, ...] = ("gateway.flash.cli", "gateway.web.cli", "gateway.whatsapp.cli")


_CONFIG_HELP = "TOML config (default: $PARCELBOX_CONFIG, then the user config dir)"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--demo",
        action="store_true",
        default=argparse.SUPPRESS,
        help="the trial install: defaults only, its own data folder (never a real install's)",
    )


def _config_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` works in every position: `parcelbox --config F device add x`,
    `parcelbox device --config F add x` and `parcelbox device add x --config F`.

    Every parser of the tree gets the option with a SUPPRESS default: argparse copies a sub-parser's
    defaults over what its parent parsed, so a `None` default at the leaf would undo an earlier
    `--config`. Plug-in commands that declare their own keep their help; only the default changes.
    """
    own = [a for a in parser._actions if "--config" in a.option_strings]
    if own:
        for a in own:
            a.default = argparse.SUPPRESS
    else:
        _add_config(parser)
    if not any("--demo" in a.option_strings for a in parser._actions):
        _add_demo(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _config_everywhere(sub)


def command(name: str) -> str:
    """How to type `parcelbox` or `python` in a plain shell so it runs this installation: the bare name
    only when PATH finds this very one (an activated venv, a system install), otherwise its path
    (`.venv/bin/parcelbox`, relative to the current folder when under it)."""
    exe = os.path.abspath(sys.executable)
    target = exe if name == "python" else os.path.join(os.path.dirname(exe), name)
    if name != "python" and not os.path.exists(target):
        return f"{command('python')} -m gateway"  # run as `python -m gateway` without the script
    found = shutil.which(name)
    if found and os.path.abspath(found) == target:
        return name
    rel = os.path.relpath(target)
    # Relative only from the folder it lives under (`make run` in a clone); a service runs from `/`.
    return rel if os.getcwd() != "/" and not rel.startswith("..") else target


def _load(args: argparse.Namespace):
    from gateway.config import ConfigError, demo_config, load_config

    if getattr(args, "demo", False):
        if getattr(args, "config", None):
            raise ConfigError("--demo runs on defaults in its own data folder; drop --config (or --demo)")
        return demo_config()
    return load_config(getattr(args, "config", None))


# --- run ----------------------------------------------------------------------------


def do_run(args: argparse.Namespace) -> int:
    from gateway.app import run
    from gateway.datalock import DataDirLocked

    config = _load(args)
    try:
        return run(config)
    except DataDirLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED


# --- status -------------------------------------------------------------------------


def _fresh_storage(config: Any, health: dict[str, Any], integrity: dict[str, int] | None = None) -> None:
    """Measure the disk here and now: at a full disk the gateway cannot rewrite status.json, and
    that is exactly when the warning matters."""
    from gateway.diskspace import DiskThresholds, disk_report, measure, storage_report

    old = health.get("storage") or {}
    try:
        disk = disk_report(
            measure(Path(config.data_dir)),
            DiskThresholds(
                min_free_mb=config.store.min_free_mb, min_free_percent=config.store.min_free_percent
            ),
        )
    except OSError:
        disk = None
    health["storage"] = storage_report(
        disk,
        integrity if integrity is not None else old.get("integrity") or {},
        old.get("refused", 0),
        failed_recently="writes_failed" in (old.get("kinds") or []),
    )


def _status_data(config: Any) -> dict[str, Any]:
    from gateway.datalock import DataDirLock, DataDirLocked
    from gateway.status import STATUS_FILE
    from gateway.store import Store

    data_dir = Path(config.data_dir)
    snap_path = data_dir / STATUS_FILE
    snap: dict[str, Any] = {}
    if snap_path.is_file():
        try:
            snap = json.loads(snap_path.read_text())
        except (OSError, ValueError):
            snap = {}
    lock = DataDirLock(data_dir)
    owner = lock.is_held_elsewhere()
    out: dict[str, Any] = {"running": owner is not None, "pid": owner or None, "data_dir": str(data_dir)}
    if owner is not None:
        from gateway.web.server import read_live_url

        out["dashboard"] = read_live_url(data_dir)
    out["updates"] = _pending_updates(data_dir)
    if owner is not None or not (data_dir / "db").is_dir():
        # The running gateway owns the database; its snapshot is at most a few seconds old.
        out.update(
            {k: snap.get(k, [] if k != "health" else {}) for k in ("health", "devices", "events", "outbox")}
        )
        out["health"] = dict(out["health"])
        _fresh_storage(config, out["health"])
        return out
    try:
        lock.acquire()
    except DataDirLocked as exc:  # started between our check and now
        out.update({"running": True, "pid": exc.pid})
        out.update(
            {k: snap.get(k, [] if k != "health" else {}) for k in ("health", "devices", "events", "outbox")}
        )
        out["health"] = dict(out["health"])
        _fresh_storage(config, out["health"])
        return out
    try:
        store = Store(
            data_dir, partition=config.store.partition, segment_records=config.store.segment_records
        )
        try:
            keys = ("device", "name", "online", "last_seen", "fw", "rssi", "battery_mv", "spooled",
                    "status_at", "waiting")  # fmt: skip
            out["devices"] = [{k: d.get(k) for k in keys} for d in store.list_devices()]
            out["events"] = store.list_events(limit=10)
            out["outbox"] = store.list_outbox(limit=20)
            health = dict(snap.get("health", {}))
            health["events_total"] = store.event_count()
            health["alerts"] = store.outbox_counts()
            _fresh_storage(config, health, store.integrity())
            out["health"] = health
        finally:
            store.close()
    finally:
        lock.release()
    return out


def _pending_updates(data_dir: Path) -> dict[str, Any]:
    """Over-the-air updates queued and not finished, per box (`parcelbox device update`)."""
    from gateway.ota import pending

    root = pending.ota_root(data_dir)
    out = {}
    for device in pending.devices(root):
        p = pending.pending(root, device)
        if p is not None:
            out[device] = p
    return out


def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def do_status(args: argparse.Namespace) -> int:
    config = _load(args)
    data = _status_data(config)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    h = data.get("health") or {}
    state = f"running (pid {data['pid']})" if data["running"] else "not running"
    print(f"gateway: {state}; data folder {data['data_dir']}")
    if h:
        rej = h.get("rejected") or {}
        print(
            f"counters (since {_fmt_ts(h.get('started_at'))}): received {h.get('received', 0)}, "
            f"stored {h.get('stored', 0)}, duplicates {h.get('duplicates', 0)}, rejected {sum(rej.values())}"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(rej.items()))})" if rej else "")
        )
        al = h.get("alerts") or {}
        print("alerts: " + ", ".join(f"{k} {al.get(k, 0)}" for k in ("pending", "failed", "sent", "dead")))
        st = h.get("storage") or {}
        disk = st.get("disk") or {}
        if disk:
            from gateway.diskspace import human_size

            print(
                f"storage: {'ok' if st.get('ok') else 'PROBLEM'}; {human_size(disk['free_bytes'])} free "
                f"of {human_size(disk['total_bytes'])} ({disk['free_percent']}%)"
            )
        for problem in st.get("problems") or []:
            print(f"  WARNING: {problem}")
        b = h.get("broker") or {}
        if b:
            print(
                f"broker: {b.get('url')} ({b.get('managed') or 'external'}), connected: {b.get('connected')}"
            )
    if data.get("dashboard"):
        print(f"dashboard: {data['dashboard']}")
    print("\nboxes:")
    for d in data.get("devices") or []:
        upd = (data.get("updates") or {}).get(d["device"])
        batt = f"{d['battery_mv']} mV" if d.get("battery_mv") else "mains"
        print(
            f"  {d['device']:<20} {'online ' if d.get('online') else 'offline'}  last seen {_fmt_ts(d.get('last_seen'))}"
            f"  fw {d.get('fw') or '-'}  rssi {d.get('rssi') if d.get('rssi') is not None else '-'}  {batt}"
            f"  spooled {d.get('spooled') if d.get('spooled') is not None else '-'}  waiting {d.get('waiting', 0)}"
            + (f"  update pending ({upd['version']}, {upd['state']})" if upd else "")
        )
        if d.get("fw") or d.get("spooled") is not None:
            print(f"  {'':<20} (fw, rssi, battery, spooled as reported {_fmt_ts(d.get('status_at'))})")
    if not data.get("devices"):
        print("  (none yet)")
    print("\nrecent events:")
    for e in data.get("events") or []:
        print(
            f"  {_fmt_ts(e['ts'])}  {e['device']:<16} {e['type']:<14} {e['id']}{'  +photo' if e.get('photo') else ''}"
        )
    if not data.get("events"):
        print("  (none yet)")
    bad = [o for o in data.get("outbox") or [] if o["state"] in ("failed", "dead")]
    if bad:
        print("\nalerts needing attention:")
        for o in bad:
            print(
                f"  {o['id']}  {o['notifier']}  {o['state']}  attempts {o['attempts']}  {o.get('last_error')}"
            )
    return 0


# --- device -------------------------------------------------------------------------


def _broker_hint(config: Any) -> str:
    if config.broker.url:
        return config.broker.url
    try:
        from gateway.flash.devconfig import lan_address

        host = lan_address() or "<this machine's LAN address>"
    except Exception:
        host = "<this machine's LAN address>"
    return f"mqtt://{host}:{config.broker.listen_port}"


def seen_boxes(data_dir: Path) -> set[str]:
    """Boxes the gateway has a record of, read without opening the store (a running gateway owns it):
    the status snapshot (rewritten every few seconds and on a clean stop) and the box file."""
    from gateway.protocol import valid_device_id
    from gateway.status import STATUS_FILE

    out: set[str] = set()
    try:
        snap = json.loads((data_dir / STATUS_FILE).read_text())
        out |= {d["device"] for d in snap.get("devices") or [] if isinstance(d, dict) and d.get("device")}
    except (OSError, ValueError, AttributeError):
        pass
    try:
        table = json.loads((data_dir / "db" / "boxes.json").read_text()).get("devices") or {}
        out |= {d["device"] for d in table.values() if isinstance(d, dict) and d.get("device")}
    except (OSError, ValueError, AttributeError):
        pass
    from gateway.framing import scan_lines

    try:  # records newer than the file (it is rewritten every 256 changes): a box seen minutes ago
        lines = scan_lines((data_dir / "db" / "boxes.json.journal").read_bytes()).entries
        out |= {e["dev"].get("device") for e in lines if isinstance(e.get("dev"), dict)}
    except OSError:
        pass
    # A box record written with an event or alerts (`Store.add_event`/`add_outbox(device=...)`) is in
    # that month's journal until boxes.json is next rewritten.
    for journal in (data_dir / "db").glob("events-*.journal"):
        try:
            lines = scan_lines(journal.read_bytes()).entries
        except OSError:
            continue
        for e in lines:
            box = e.get("box")
            if isinstance(box, dict) and isinstance(box.get("dev"), dict):
                out.add(box["dev"].get("device"))
    return {d for d in out if isinstance(d, str) and valid_device_id(d)}


_PURGE_WAIT_S = 120.0


def _purge_history(config: Any, device: str) -> None:
    """Delete a box's history (gateway/purge.py): by the running gateway if there is one, else here,
    holding the data-folder lock. The request is written first, so an interrupted purge is finished
    by the next `--purge` or the gateway's next start."""
    from gateway import purge as purging
    from gateway.datalock import DataDirLock, DataDirLocked
    from gateway.store import Store

    data_dir = Path(config.data_dir)
    purging.request(data_dir, device, time.time())
    lock = DataDirLock(data_dir)
    deadline = time.monotonic() + _PURGE_WAIT_S
    told = False
    while True:
        try:
            lock.acquire()
            break
        except DataDirLocked as exc:
            if not told:
                who = f"pid {exc.pid}" if exc.pid else "another process"
                print(f"The running gateway ({who}) is deleting its history now...", flush=True)
                told = True
        # Bounded wait: done by the gateway, or the gateway stopped (then we take over, above).
        while purging.is_pending(data_dir, device) and lock.is_held_elsewhere() is not None:
            if time.monotonic() > deadline:
                print("Not finished yet; the gateway carries on (and after a restart if it stops).")
                return
            time.sleep(0.2)
        if not purging.is_pending(data_dir, device):
            print(_purged_line(device, None))
            return
    try:
        store = Store(
            data_dir, partition=config.store.partition, segment_records=config.store.segment_records
        )
        try:
            done = purging.run_pending(store, data_dir, time.time)
        finally:
            store.close()
    finally:
        lock.release()
    for name, removed in done.items():
        print(_purged_line(name, removed))


def _purged_line(device: str, removed: dict[str, int] | None) -> str:
    what = ""
    if removed is not None:
        what = (
            f" ({removed.get('events', 0)} event(s), {removed.get('photo_files', 0)} photo file(s), "
            f"{removed.get('alerts', 0)} alert(s))"
        )
    return (
        f"History of {device!r} deleted{what}; alerts not yet sent were cancelled. Events it sends again "
        "from before are acknowledged but not stored; anything new it sends is kept."
    )


def do_device(args: argparse.Namespace) -> int:
    from gateway.devices import DeviceError, DeviceRegistry

    config = _load(args)
    if args.device_cmd == "update":
        from gateway.ota.cli import do_update

        if not 30 <= args.trial_s <= 3600 or not 1 <= args.trial_boots <= 10:
            print("error: --trial-s is 30-3600 and --trial-boots 1-10", file=sys.stderr)
            return 2
        return do_update(args, config)
    reg = DeviceRegistry(config.data_dir)
    if args.device_cmd == "add":
        try:
            existed = reg.get(args.name) is not None
            cred = reg.add(args.name, name=args.label)
        except DeviceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"box {cred.device!r} {'already registered' if existed else 'registered'}.")
        print("settings to flash onto it (parcelbox flash reads them from the registry):")
        print(f"  device id      {cred.device}")
        print(f"  broker         {_broker_hint(config)}")
        print(f"  mqtt username  {cred.username}")
        print(f"  mqtt password  {cred.password}")
        print(f"  topic prefix   {config.broker.prefix}")
        print("a running gateway picks the new credentials up within a few seconds.")
        return 0
    if args.device_cmd in ("remove", "forget"):
        from gateway import purge as purging
        from gateway.protocol import valid_device_id

        purge = bool(getattr(args, "purge", False))
        data_dir = Path(config.data_dir)
        # A purge interrupted (a crash, Ctrl-C) left its request: the same command finishes it.
        resumed = purge and valid_device_id(args.name) and purging.is_pending(data_dir, args.name)
        if reg.remove(args.name):
            print(f"box {args.name!r} removed; its broker login stops working within a few seconds.")
        elif args.name in seen_boxes(data_dir) and reg.forget(args.name):
            # Never registered (a simulated box, registration not required): hide it all the same.
            print(f"box {args.name!r} forgotten: it leaves the box list (it had no broker login).")
        elif resumed:
            print(f"box {args.name!r}: finishing the deletion of its history asked for earlier.")
        elif purge and args.name in reg.removed():
            print(f"box {args.name!r} was removed earlier; now its history goes too.")
        else:
            print(f"error: no box named {args.name!r} (registered or seen)", file=sys.stderr)
            return 1
        if purge:
            _purge_history(config, args.name)
        else:
            print(
                "Its deliveries stay in the history (add --purge to delete them). "
                "If it is heard from again, it comes back."
            )
        from gateway.homeassistant import clear_removed_box

        note = clear_removed_box(config, args.name)
        if note:
            print(note)
        return 0
    creds = reg.list()
    if args.json:
        print(
            json.dumps(
                [{"device": c.device, "name": c.name, "created_at": c.created_at} for c in creds], indent=1
            )
        )
        return 0
    if creds:
        print(f"{'DEVICE':<24} {'NAME':<24} REGISTERED")
    for c in creds:
        print(f"{c.device:<24} {c.name:<24} {_fmt_ts(c.created_at)}")
    n = len(creds)
    print(
        f"{n} {'box' if n == 1 else 'boxes'} registered"
        if creds
        else f"no boxes registered ({command('parcelbox')} device add <name>)"
    )
    return 0


def register(subparsers: Any) -> None:
    """The core commands."""
    p = subparsers.add_parser("run", help="run the gateway (Ctrl-C / SIGTERM stops it cleanly)")
    _add_config(p)
    p.set_defaults(func=do_run)

    p = subparsers.add_parser("status", help="boxes, recent events, alert outbox and counters")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=do_status)

    p = subparsers.add_parser("device", help="register boxes (broker credentials)")
    _add_config(p)
    dsub = p.add_subparsers(dest="device_cmd", required=True)
    a = dsub.add_parser("add", help="register a box and print the settings to flash")
    a.add_argument("name", help="device id: 1-32 of a-z 0-9 -")
    a.add_argument("--label", help="human name used in alerts (default: the id)")
    for verb in ("remove", "forget"):
        r = dsub.add_parser(
            verb,
            help="remove a box (registered or only seen): revoke its login, hide it; history stays "
            "unless --purge",
        )
        r.add_argument("name")
        r.add_argument(
            "--purge",
            action="store_true",
            help="also delete its history: events, photos, its alerts (unsent ones are cancelled), its record",
        )
    g = dsub.add_parser("list", help="registered boxes")
    g.add_argument("--json", action="store_true")
    from gateway.ota.cli import add_parser as add_update_parser

    add_update_parser(dsub)
    p.set_defaults(func=do_device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parcelbox", description="parcelbox gateway")
    parser.add_argument("--version", action="version", version=f"parcelbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name).register(sub)
        except Exception as exc:  # a broken plug-in must not break run/status
            logging.getLogger("gateway.cli").warning("commands from %s unavailable: %s", name, exc)
    _config_everywhere(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gateway.config import ConfigError

    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    if not hasattr(args, "demo"):
        args.demo = False
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at interpreter exit
        return code
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `parcelbox status | head`: the reader has what it wanted. Point stdout at /dev/null so
        # Python's final flush does not complain either (the recipe in the `signal` module's docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
