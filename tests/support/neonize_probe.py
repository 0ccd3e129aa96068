"""Runs the neonize adapter against the real neonize in a process of its own; prints one JSON line.

A Go panic aborts the whole process, so the tests in `tests/test_whatsapp_neonize.py`
run these probes in a subprocess (with a timeout) and read the last stdout line.
No network is needed: every connect fails at DNS, which is all these checks need.

    python -m tests.support.neonize_probe gc <dir>        # failed connects, gc, then get_me
    python -m tests.support.neonize_probe fds <dir>       # fds on the session db after connect + is_paired
    python -m tests.support.neonize_probe schema <db>     # let neonize create its tables
    python -m tests.support.neonize_probe paired <db>     # is_paired() on an existing db
    python -m tests.support.neonize_probe path <db>       # connect with this session path
    python -m tests.support.neonize_probe presence <db>   # what the adapter does on events.Connected
"""

from __future__ import annotations

import gc
import json
import os
import sys
import weakref
from pathlib import Path
from typing import Any


def _fds_on(name: str) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if name in os.readlink(f"/proc/self/fd/{fd}"):
                n += 1
        except OSError:
            pass
    return n


def main(cmd: str, arg: str) -> dict[str, Any]:
    import gateway.whatsapp.neonize_adapter as na

    made: list[weakref.ref[Any]] = []
    newest: dict[str, Any] = {}
    real = na.NewClient

    def counting(*a: Any, **k: Any) -> Any:
        c = real(*a, **k)
        made.append(weakref.ref(c))
        newest["client"] = c  # only the newest is held strongly, as the transport would
        return c

    na.NewClient = counting  # type: ignore[misc]
    out: dict[str, Any] = {}
    if cmd == "gc":
        t = na.NeonizeTransport(Path(arg) / "neonize.sqlite3")
        errors = []
        for _ in range(3):
            try:
                t.connect(lambda ev: None)
            except na.TransportError as e:
                errors.append(str(e)[:80])
        gc.collect()
        out["clients_made"] = len(made)
        out["errors"] = errors
        print(json.dumps(out), flush=True)  # before the call that may abort the process
        out["me"] = newest["client"].get_me().JID.User  # a Go nil-pointer panic when Stop(uuid) ran
    elif cmd == "fds":
        db = Path(arg) / "neonize.sqlite3"
        t = na.NeonizeTransport(db)
        for _ in range(4):
            try:
                t.connect(lambda ev: None)
            except na.TransportError:
                pass
            t.is_paired()
        out["db_fds"] = _fds_on(str(db))
    elif cmd == "schema":
        try:
            na.NeonizeTransport(arg).connect(lambda ev: None)
        except na.TransportError:
            pass
    elif cmd == "paired":
        t = na.NeonizeTransport(arg)
        out["paired"] = t.is_paired()
        out["jid"] = na.paired_jid_from_db(Path(arg)) if hasattr(na, "paired_jid_from_db") else None
        try:
            t.connect(lambda ev: None)  # fails offline; a paired session stays paired
        except na.TransportError:
            pass
        out["paired_after_connect"] = t.is_paired()
    elif cmd == "presence":
        import ctypes

        from neonize.events import EVENT_TO_INT, ConnectedEv

        calls: list[str] = []
        t = (
            na.NeonizeTransport(arg, push_name="parcelbox")
            if "push_name" in na.NeonizeTransport.__init__.__code__.co_varnames
            else na.NeonizeTransport(arg)
        )
        try:
            t.connect(lambda ev: None)  # fails offline; the client stays in Go's table
        except na.TransportError:
            pass
        client = newest["client"]
        for name in ("send_presence", "set_profile_name"):
            real_fn = getattr(client, name)

            def record(*a: Any, _n: str = name, _f: Any = real_fn) -> Any:
                calls.append(f"{_n}:{getattr(a[0], 'name', a[0])}")
                return _f(*a)

            setattr(client, name, record)
        # What Go hands neonize when whatsmeow emits events.Connected (goneonize main.go, code 3).
        data = ConnectedEv(status=True).SerializeToString()
        buf = ctypes.create_string_buffer(data, len(data))
        client.event.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[ConnectedEv])
        out["calls"] = calls
    elif cmd == "path":
        try:
            t = na.NeonizeTransport(arg)
            t.connect(lambda ev: None)
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
