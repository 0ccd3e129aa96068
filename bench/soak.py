"""Soak: the real gateway at a steady event rate for a long time; does its memory or fd count grow?

    .venv/bin/python bench/soak.py                 # 1 hour at 1 event/s with UXGA photos (not in CI)
    .venv/bin/python bench/soak.py --quick         # 60 s smoke run

A Mosquitto broker and the gateway (`python -m gateway run`, folder sink) run as child processes;
`--boxes` lightweight boxes (bench/common.py `LightBox`: event + 8 KiB chunks, QoS 1, wait for the
gateway's ack, as the firmware does) take turns sending one delivery with a UXGA photo every
`1/--rate` seconds. Every `--sample-s` seconds the gateway's RSS, open files (/proc/<pid>/fd), CPU and
its own counters are appended to bench/results/<name>.csv, and bench/results/<name>.json is rewritten,
so a run cut short still leaves its samples. Growth is judged after `--warmup-s`: the median RSS of the
last tenth of the samples against the median of the first tenth (target: within 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    GatewayProcess,
    connect_boxes,
    machine_info,
    percentile,
    print_table,
    proc_sample,
    raise_fd_limit,
    start_broker,
    tool_versions,
    uxga_photos,
    write_json,
)

CSV_FIELDS = [
    "elapsed_s",
    "rss_mb",
    "fds",
    "cpu_pct",
    "broker_rss_mb",
    "sent",
    "acked",
    "failed",
    "gw_stored",
    "gw_queue",
    "gw_partials",
    "alerts_pending",
]


def _window_median(rows: list[dict[str, Any]], key: str, first: bool) -> float:
    k = max(3, len(rows) // 10)
    part = rows[:k] if first else rows[-k:]
    return statistics.median(r[key] for r in part) if part else float("nan")


def _slope_kb_per_event(rows: list[dict[str, Any]]) -> float | None:
    xs = [float(r["gw_stored"]) for r in rows]
    ys = [float(r["rss_mb"]) for r in rows]
    if len(set(xs)) < 2:
        return None
    return round(statistics.linear_regression(xs, ys).slope * 1000, 2)


def summarize(rows: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Growth after warm-up: medians of the first and last tenth of the samples, and the extremes."""
    after = [r for r in rows if r["elapsed_s"] >= warmup_s]
    if len(after) < 6:
        return {"samples_after_warmup": len(after), "verdict": "too few samples after warm-up"}
    rss0, rss1 = _window_median(after, "rss_mb", True), _window_median(after, "rss_mb", False)
    fd0, fd1 = _window_median(after, "fds", True), _window_median(after, "fds", False)
    growth = (rss1 - rss0) / rss0 * 100 if rss0 else float("nan")
    span_h = (after[-1]["elapsed_s"] - after[0]["elapsed_s"]) / 3600
    return {
        "samples_after_warmup": len(after),
        "rss_mb_start": round(rss0, 1),
        "rss_mb_end": round(rss1, 1),
        "rss_mb_min": round(min(r["rss_mb"] for r in after), 1),
        "rss_mb_max": round(max(r["rss_mb"] for r in after), 1),
        "rss_growth_pct": round(growth, 2),
        "rss_slope_mb_per_h": round((rss1 - rss0) / span_h, 2) if span_h > 0 else None,
        # least squares of RSS on events stored: what a busier (or quieter) gateway would grow by
        "rss_kb_per_event": _slope_kb_per_event(after),
        "fds_start": fd0,
        "fds_end": fd1,
        "fds_max": max(r["fds"] for r in after),
        "target": "RSS within 10 % after warm-up",
        "met": abs(growth) <= 10.0,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    photos, source = uxga_photos()
    work = Path(tempfile.mkdtemp(prefix="parcelbox-soak-"))
    broker = start_broker(work)
    prefix = "soak"
    gw = GatewayProcess(work / "gw", broker.url, prefix, env=dict(e.split("=", 1) for e in args.gateway_env))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS_DIR / f"{args.name}.csv"
    rows: list[dict[str, Any]] = []
    lat: list[float] = []
    counts = {"sent": 0, "acked": 0, "failed": 0}
    info: dict[str, Any] = {
        "bench": "soak",
        "machine": machine_info(**tool_versions()),
        "params": {
            "duration_s": args.duration_s,
            "rate_per_s": args.rate,
            "boxes": args.boxes,
            "sample_s": args.sample_s,
            "warmup_s": args.warmup_s,
            "photos": source,
            "gateway_env": args.gateway_env,
            "mean_photo_kb": round(sum(map(len, photos)) / len(photos) / 1024, 1),
        },
    }
    tasks: set[asyncio.Task[Any]] = set()
    boxes = []
    try:
        gw.start()
        boxes = await connect_boxes(broker.url, prefix, args.boxes, stem="soak")
        started = time.monotonic()
        end = started + args.duration_s
        first = proc_sample(gw.pid)
        prev = first

        async def one(box: Any, eid: str, photo: bytes) -> None:
            try:
                r = await box.send_event(eid, photo)
            except (TimeoutError, ConnectionError) as exc:
                counts["failed"] += 1
                print(f"event {eid}: {type(exc).__name__} {exc}", file=sys.stderr)
                return
            if r["ok"]:
                counts["acked"] += 1
                lat.append((r["acked"] - r["started"]) * 1000)
            else:
                counts["failed"] += 1

        async def sampler() -> None:
            nonlocal prev
            with csv_path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                w.writeheader()
                while True:
                    await asyncio.sleep(args.sample_s)
                    s = proc_sample(gw.pid)
                    b = proc_sample(broker.pid) if broker.pid else None
                    if s is None:
                        print("gateway process is gone", file=sys.stderr)
                        return
                    st = gw.status().get("health", {})
                    row = {
                        "elapsed_s": round(s.t - started, 1),
                        "rss_mb": round(s.rss_bytes / 2**20, 1),
                        "fds": s.fds,
                        "cpu_pct": round((s.cpu_s - prev.cpu_s) / (s.t - prev.t) * 100, 1) if prev else 0.0,
                        "broker_rss_mb": round(b.rss_bytes / 2**20, 1) if b else 0.0,
                        **counts,
                        "gw_stored": st.get("stored", 0),
                        "gw_queue": st.get("queue", 0),
                        "gw_partials": (st.get("reassembly") or {}).get("partials", 0),
                        "alerts_pending": (st.get("alerts") or {}).get("pending", 0),
                    }
                    prev = s
                    rows.append(row)
                    w.writerow(row)
                    f.flush()
                    # Partial JSON after every sample: a run cut short still reports what it saw.
                    write_json(args.name, {**info, "partial": True, "samples": rows})

        sampler_task = asyncio.get_running_loop().create_task(sampler())
        box_cycle = itertools.cycle(boxes)
        interval = 1.0 / args.rate
        n = 0
        while time.monotonic() < end:
            if len(tasks) < args.max_in_flight:
                box = next(box_cycle)
                eid = f"soak{int(started) % 100000:05d}-{n:07d}"
                t = asyncio.get_running_loop().create_task(one(box, eid, photos[n % len(photos)]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                counts["sent"] += 1
            n += 1
            # Steady schedule: the next send is due at started + n * interval, whatever this one took.
            await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        sampler_task.cancel()
        last = proc_sample(gw.pid)
        elapsed = time.monotonic() - started
        alerts = len(list(gw.alerts_dir.glob("*.json")))
        result = {
            **info,
            "partial": False,
            "elapsed_s": round(elapsed, 1),
            "events": {**counts, "alert_files": alerts},
            "ack_latency_ms": {
                "p50": round(percentile(lat, 50), 1),
                "p95": round(percentile(lat, 95), 1),
                "p99": round(percentile(lat, 99), 1),
            },
            "gateway_cpu_pct_mean": round((last.cpu_s - first.cpu_s) / (last.t - first.t) * 100, 1)
            if last and first
            else None,
            "growth": summarize(rows, args.warmup_s),
            "samples": rows,
        }
        return result
    finally:
        for t in tasks:
            t.cancel()
        for b in boxes:
            await b.close()
        gw.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--rate", type=float, default=1.0, help="events per second (all boxes together)")
    ap.add_argument("--boxes", type=int, default=10)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=300.0)
    ap.add_argument("--max-in-flight", type=int, default=20, help="events awaiting their ack at most")
    ap.add_argument("--name", default="soak", help="results file stem in bench/results/")
    ap.add_argument(
        "--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway's environment"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    ap.add_argument("--quick", action="store_true", help="60 s smoke run (2 s samples, 15 s warm-up)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration_s, args.sample_s, args.warmup_s = 60.0, 2.0, 15.0
        if args.name == "soak":
            args.name = "soak_quick"
    result = asyncio.run(run(args))
    path = write_json(args.name, result)
    g = result["growth"]
    ev = result["events"]
    print(
        f"soak {result['elapsed_s']:.0f} s at {args.rate}/s: sent {ev['sent']}, acked {ev['acked']}, "
        f"failed {ev['failed']}, alert files {ev['alert_files']}; ack p50 {result['ack_latency_ms']['p50']} ms"
    )
    print_table(
        ["after warm-up", "start", "end", "min", "max", "growth %"],
        [
            [
                "RSS MB",
                g.get("rss_mb_start"),
                g.get("rss_mb_end"),
                g.get("rss_mb_min"),
                g.get("rss_mb_max"),
                g.get("rss_growth_pct"),
            ],
            ["open fds", g.get("fds_start"), g.get("fds_end"), "", g.get("fds_max"), ""],
        ],
    )
    print(f"RSS against events stored (least squares): {g.get('rss_kb_per_event')} KB per event")
    print(f"target RSS within 10 %: {'met' if g.get('met') else 'NOT met'}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
