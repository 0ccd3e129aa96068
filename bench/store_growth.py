"""Cost of storing one event (record + its outbox entry, durable: temp, fsync, rename, fsync dir)
as history grows: 1k, 10k, 100k events already stored.

Two scenarios, both with the real `gateway.store.Store` on the real disk:

* history: N events received at a steady 100 a day (10 boxes x 10 events) up to the middle of the current
  month, in month files (the default). This is how history grows in life; the target is that one stored
  event at 100k costs at most 2x what it costs at 1k.
* one month: all N events in the current month (a burst, or a big fleet), in month files of segments
  (the store as it is), in one whole file per month (the store before segments, `SEGMENT_DOCS`
  unbounded: the same run shows what segments buy), and in day files.

"in memory" is how many records the store holds parsed in its open files after the writes: what its RAM
grows with besides the indexes.

History is written straight into the store's files in bulk (building 100k events one fsync at a time would
take an hour); the measured writes then go through `Store.add_event` like the gateway's. Per size: the
median and p90 of `--writes` single-event writes, and how long opening the store (the dedupe index) takes.

    .venv/bin/python bench/store_growth.py [--sizes 1000,10000,100000] [--writes 200]

Prints a table and writes bench/results/store_growth.json.
"""

from __future__ import annotations

import argparse
import calendar
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway.store as store_mod  # noqa: E402
from bench.common import machine_info, print_table, write_json  # noqa: E402
from gateway.store import Store  # noqa: E402

NOW = float(calendar.timegm((2026, 11, 15, 12, 0, 0)))  # mid-month: this month already holds half a month
PER_DAY = 100
UNSEGMENTED = 10**12  # SEGMENT_DOCS for the "before" variant: one file per month however big


def record(i: int, received_at: float, prefix: str = "h") -> tuple[dict[str, Any], dict[str, Any]]:
    device = f"box{i % 10}"
    eid = f"{prefix}{i:015d}"
    ev = {
        "device": device,
        "id": eid,
        "type": "delivery",
        "ts": received_at,
        "received_at": received_at,
        "seq": i,
        "sensors": {"lid": "closed", "range_mm": 183},
        "photo": {"size": 153600, "sha256": "ab" * 32, "width": 1600, "height": 1200},
        "cmd": None,
    }
    ob = {
        "id": f"{device}_{eid}_folder_00000000",
        "kind": "delivery",
        "device": device,
        "event_ids": [eid],
        "notifier": "folder",
        "recipient": "",
        "state": "sent",
        "attempts": 1,
        "created_at": received_at,
        "next_attempt_at": None,
        "sent_at": received_at + 1,
        "last_error": None,
        "ts": received_at,
        "device_name": device,
        "caption": "📦 Package delivered to box at 12:00. 1 package waiting.",
        "has_photo": True,
        "alert_state": {"waiting": 1},
        "language": "en",
    }
    return ev, ob


def prefill(data_dir: Path, times: list[float], partition: str) -> None:
    """Write events (and their sent outbox entries) into the store's files in the store's own format."""
    probe = Store(data_dir, partition=partition)
    files: dict[str, dict[str, dict[str, Any]]] = {}
    segment: dict[str, int] = {}  # period -> current segment number
    for i, t in enumerate(times):
        period = probe.period_for(t)
        n = segment.setdefault(period, 1)
        part = store_mod._segment_name(period, n)
        if part in files and sum(map(len, files[part].values())) >= store_mod.SEGMENT_DOCS:
            segment[period] = n + 1  # as the store does: a new segment once this one is full
            part = store_mod._segment_name(period, n + 1)
        f = files.setdefault(part, {"events": {}, "outbox": {}})
        ev, ob = record(i, t)
        f["events"][str(len(f["events"]) + 1)] = {**ev, "key": f"{ev['device']}/{ev['id']}"}
        f["outbox"][str(len(f["outbox"]) + 1)] = ob
    probe.close()
    for part, content in files.items():
        (data_dir / "db" / part).write_text(json.dumps(content, separators=(",", ":")))


def measure(data_dir: Path, partition: str, writes: int) -> dict[str, float]:
    t0 = time.perf_counter()
    store = Store(data_dir, partition=partition)
    open_ms = (time.perf_counter() - t0) * 1000
    costs = []
    warmup = 20  # the first writes pay for opening files and warming caches: not what we measure
    for j in range(writes + warmup):
        ev, ob = record(j, NOW + j, prefix="n")
        ob = {**ob, "state": "pending", "attempts": 0, "sent_at": None}
        t = time.perf_counter()
        store.add_event(ev, [ob])
        if j >= warmup:
            costs.append((time.perf_counter() - t) * 1000)
    # what the store holds parsed in memory (its open files); the indexes come on top (~0.7 KB/event)
    held = sum(len(t) for db in store._dbs.values() for t in (db.storage.read() or {}).values())
    store.close()
    costs.sort()
    return {
        "open_ms": open_ms,
        "median_ms": statistics.median(costs),
        "mean_ms": statistics.fmean(costs),  # includes the amortised compaction (one per 256 writes)
        "max_ms": costs[-1],
        "records_in_memory": held,
        "p90_ms": costs[int(len(costs) * 0.9) - 1],
        "current_file_kb": (data_dir / "db" / Store(data_dir, partition=partition).part_for(NOW))
        .stat()
        .st_size
        / 1024,
    }


def run_case(
    n: int, scenario: str, partition: str, writes: int, root: Path, segment_docs: int
) -> dict[str, Any]:
    if scenario == "history":
        times = [NOW - (n - i) * 86_400 / PER_DAY for i in range(n)]
    else:  # one month: all n events in the current month, before NOW
        start = float(calendar.timegm((2026, 11, 1, 0, 0, 0)))
        times = [start + (NOW - 3600 - start) * i / n for i in range(n)]
    d = Path(tempfile.mkdtemp(dir=root))
    saved = store_mod.SEGMENT_DOCS
    store_mod.SEGMENT_DOCS = segment_docs
    try:
        prefill(d, times, partition)
        res = measure(d, partition, writes)
    finally:
        store_mod.SEGMENT_DOCS = saved
        shutil.rmtree(d, ignore_errors=True)
    files = f"{partition}/{'whole' if segment_docs >= UNSEGMENTED else segment_docs}"
    return {"events": n, "scenario": scenario, "partition": partition, "files": files, **res}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument(
        "--writes", type=int, default=300, help="measured writes per size (>= 256 includes a compaction)"
    )
    ap.add_argument("--dir", default=None, help="where to build the stores (default: a temp dir)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.dir or tempfile.mkdtemp(prefix="store-growth-"))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        variants = [
            ("history", "month", store_mod.SEGMENT_DOCS),
            ("one month", "month", store_mod.SEGMENT_DOCS),
            ("one month", "month", UNSEGMENTED),  # before segments: the whole month in one file
            ("one month", "day", store_mod.SEGMENT_DOCS),
        ]
        for scenario, partition, segment_docs in variants:
            for n in sizes:
                r = run_case(n, scenario, partition, args.writes, root, segment_docs)
                rows.append(r)
                print(
                    f"  {scenario:<9} {r['files']:<11} {n:>7}: {r['median_ms']:.2f} ms/event", file=sys.stderr
                )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    base = {(r["scenario"], r["files"]): r["median_ms"] for r in rows if r["events"] == sizes[0]}
    table = []
    for r in rows:
        r["ratio_vs_smallest"] = r["median_ms"] / base[(r["scenario"], r["files"])]
        table.append(
            [
                r["scenario"],
                r["files"],
                r["events"],
                r["median_ms"],
                r["p90_ms"],
                r["mean_ms"],
                r["max_ms"],
                r["ratio_vs_smallest"],
                r["current_file_kb"],
                r["records_in_memory"],
                r["open_ms"],
            ]
        )
    print()
    print_table(
        [
            "scenario",
            "files",
            "events",
            "median ms",
            "p90 ms",
            "mean ms",
            "max ms",
            "x vs 1k",
            "file KB",
            "in memory",
            "open ms",
        ],
        table,
    )
    hist = {r["events"]: r["median_ms"] for r in rows if r["scenario"] == "history"}
    hist_mean = {r["events"]: r["mean_ms"] for r in rows if r["scenario"] == "history"}
    verdict = hist[max(sizes)] / hist[min(sizes)]
    verdict_mean = hist_mean[max(sizes)] / hist_mean[min(sizes)]
    print(
        f"\nhistory at {max(sizes)} vs {min(sizes)} events: median {verdict:.2f}x, mean {verdict_mean:.2f}x"
        " (target <= 2x)"
    )
    path = write_json(
        "store_growth",
        {
            "machine": machine_info(),
            "writes_per_size": args.writes,
            "events_per_day_in_history": PER_DAY,
            "rows": rows,
            "history_ratio_largest_vs_smallest": verdict,
            "history_ratio_largest_vs_smallest_mean": verdict_mean,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
