"""Cost of the gateway's durable write for one event: the event, its outbox entry and its box's new
record, with the real `gateway.store.Store` on the real disk, as `IngestPipeline._store_event` does it.

A store whose `add_event` takes the box record (`device=`, issue 17) writes all three in one journal
line (one fsync); an older store needs `add_event` and then `put_device` (two lines, two fsyncs).
With `--grouped N` every measured event is a grouped delivery (`alerts.group_window_s` > 0): its box
already has a burst with one open alert for each of N recipients, and the event joins them (the burst
merge, `alerts.merge_into_burst`: N alert changes). A store whose `add_event` takes `outbox_updates=`
writes the event, the N changes and the box record in one line; an older one wrote each change with
`update_outbox` first (1 + N lines, 1 + N fsyncs).

`--tree` runs another source tree (e.g. the previous commit's worktree) in its own process; with two
trees the runs alternate (A B A B ...) so that load from elsewhere on the machine hits both alike.

    .venv/bin/python bench/event_write.py --tree /path/to/old/checkout --tree . [--writes 300] [--rounds 3]

Prints a table (median / p90 / mean ms per event, fsyncs per event) and the ratio of each tree to the
first, and writes bench/results/event_write.json. The data folders are made under --dir (default: a
temp folder next to this checkout, on the same disk as the data a gateway keeps, never a tmpfs).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOW = 1_795_000_000.0  # 2026-11-17: mid-month


def _records(i: int, boxes: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    device = f"box{i % boxes:04d}"
    eid = f"w{i:015d}"
    ev = {
        "device": device,
        "id": eid,
        "type": "delivery",
        "ts": NOW + i,
        "received_at": NOW + i,
        "seq": i,
        "sensors": {"lid": "closed", "range_mm": 183},
        "photo": None,
        "cmd": None,
    }
    ob = {
        "id": f"{device}_{eid}_folder_00000000",
        "kind": "delivery",
        "device": device,
        "event_ids": [eid],
        "notifier": "folder",
        "recipient": "",
        "state": "pending",
        "attempts": 0,
        "created_at": NOW + i,
        "next_attempt_at": None,
        "sent_at": None,
        "last_error": None,
        "ts": NOW + i,
        "device_name": device,
        "caption": "Package delivered to box at 12:00. 1 package waiting.",
        "has_photo": False,
        "alert_state": {"waiting": 1},
        "language": "en",
    }
    return ev, ob, device


def _joined(eids: list[str], t: float) -> dict[str, Any]:
    """The fields the burst merge changes (gateway.alerts.merge_into_burst)."""
    return {
        "event_ids": list(eids),
        "caption": f"{len(eids)} packages delivered to box at 12:00. {len(eids)} packages waiting.",
        "ts": t,
        "alert_state": {"waiting": len(eids)},
        "has_photo": False,
    }


def child(tree: Path, data_dir: Path, writes: int, boxes: int, grouped: int = 0) -> dict[str, Any]:
    """One measured run of `tree`'s store (this process imports only that tree's gateway)."""
    sys.path.insert(0, str(tree))
    from gateway import store as store_mod

    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    os.fsync = counting_fsync  # type: ignore[assignment]
    params = inspect.signature(store_mod.Store.add_event).parameters
    one_write = "device" in params and (not grouped or "outbox_updates" in params)
    # Grouped: one segment for the run, so every burst's alerts stay in the file the events go to.
    store = store_mod.Store(data_dir, segment_records=1_000_000) if grouped else store_mod.Store(data_dir)
    for b in range(boxes):  # every box known already, as in a running gateway
        store.put_device(dict(store_mod.blank_device(f"box{b:04d}")))
    bursts: dict[str, tuple[list[str], list[str]]] = {}  # box -> (its open alerts' ids, event ids)
    for b in range(boxes if grouped else 0):  # each box's burst: its first delivery, N alerts
        ev, ob, device = _records(-1 - b, 1)
        ev["device"] = ob["device"] = device = f"box{b:04d}"
        alerts = [
            {**ob, "id": f"{device}_{ev['id']}_folder_{k:08d}", "recipient": f"r{k}"} for k in range(grouped)
        ]
        store.add_event(ev, alerts)
        bursts[device] = ([a["id"] for a in alerts], [ev["id"]])
    warmup = 20  # the first writes open files and warm caches: not measured
    costs: list[float] = []
    syncs_before = 0
    for i in range(warmup + writes):
        if i == warmup:
            syncs_before = fsyncs
        ev, ob, device = _records(i, boxes)
        rec = store.get_device(device)
        rec = {
            **rec,
            "waiting": (rec.get("waiting") or 0) + 1,
            "last_event_id": ev["id"],
            "last_seen": NOW + i,
        }
        updates: list[tuple[str, dict[str, Any]]] = []
        if grouped:
            ids, eids = bursts[device]
            eids.append(ev["id"])
            updates = [(aid, _joined(eids, ev["ts"])) for aid in ids]
        t = time.perf_counter()
        if grouped and one_write:
            with store.exclusive():  # as the pipeline does: read the burst, plan, write
                store.mergeable_outbox(ev["received_at"])
                store.add_event(ev, [], device=rec, outbox_updates=updates)
        elif grouped:
            for aid, fields in updates:
                store.update_outbox(aid, **fields)
            store.add_event(ev, [], device=rec)
        elif one_write:
            store.add_event(ev, [ob], device=rec)
        else:
            store.add_event(ev, [ob])
            store.put_device(rec)
        if i >= warmup:
            costs.append((time.perf_counter() - t) * 1000)
    syncs = fsyncs - syncs_before
    store.close()
    costs.sort()
    return {
        "store_module": store_mod.__file__,
        "one_write": one_write,
        "median_ms": statistics.median(costs),
        "p90_ms": costs[int(len(costs) * 0.9) - 1],
        "mean_ms": statistics.fmean(costs),  # includes the amortised compactions (every 256 lines)
        "fsyncs_per_event": syncs / writes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", help="source tree to measure (repeat; default: this one)")
    ap.add_argument("--writes", type=int, default=300, help="measured events per run (>= 256: a compaction)")
    ap.add_argument("--boxes", type=int, default=100, help="boxes the events come from")
    ap.add_argument("--rounds", type=int, default=3, help="runs per tree, alternating between trees")
    ap.add_argument("--grouped", type=int, default=0, help="N: each event joins its box's burst of N alerts")
    ap.add_argument("--dir", default=None, help="where to make the data folders")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    trees = [Path(t).resolve() for t in (args.tree or [str(HERE.parent)])]
    if args.child:
        print(json.dumps(child(trees[0], Path(args.dir), args.writes, args.boxes, args.grouped)))
        return 0
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix=".event-write-", dir=HERE.parent))
    root.mkdir(parents=True, exist_ok=True)
    runs: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    try:
        for r in range(args.rounds):
            for tree in trees:
                d = Path(tempfile.mkdtemp(dir=root))
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--tree", str(tree), "--dir", str(d)]
                    + [
                        "--writes",
                        str(args.writes),
                        "--boxes",
                        str(args.boxes),
                        "--grouped",
                        str(args.grouped),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    cwd=tree,
                )
                shutil.rmtree(d, ignore_errors=True)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs[tree].append(res)
                print(f"  round {r + 1} {tree}: {res['median_ms']:.2f} ms/event", file=sys.stderr)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    rows = []
    for tree in trees:
        rs = runs[tree]
        rows.append(
            {
                "tree": str(tree),
                "one_write": rs[0]["one_write"],
                "median_ms": statistics.median(r["median_ms"] for r in rs),
                "p90_ms": statistics.median(r["p90_ms"] for r in rs),
                "mean_ms": statistics.median(r["mean_ms"] for r in rs),
                "fsyncs_per_event": statistics.median(r["fsyncs_per_event"] for r in rs),
                "runs": rs,
            }
        )
    sys.path.insert(0, str(HERE.parent))
    from bench.common import machine_info, print_table, write_json

    base = rows[0]
    table = []
    for row in rows:
        row["median_ratio_vs_first"] = row["median_ms"] / base["median_ms"]
        row["mean_ratio_vs_first"] = row["mean_ms"] / base["mean_ms"]
        table.append(
            [
                row["tree"],
                "1 line" if row["one_write"] else f"{1 + max(1, args.grouped)} lines",
                row["median_ms"],
                row["p90_ms"],
                row["mean_ms"],
                row["fsyncs_per_event"],
                row["median_ratio_vs_first"],
                row["mean_ratio_vs_first"],
            ]
        )
    print_table(
        ["tree", "lines/event", "median ms", "p90 ms", "mean ms", "fsyncs/event", "median x", "mean x"], table
    )
    path = write_json(
        "event_write",
        {
            "machine": machine_info(),
            "writes": args.writes,
            "boxes": args.boxes,
            "rounds": args.rounds,
            "grouped": args.grouped,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
