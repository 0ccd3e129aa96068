"""Ingest throughput: N boxes send UXGA photos through Mosquitto to the real gateway, next to the floor.

    .venv/bin/python bench/ingest.py               # 10, 100 and 1,000 connections, 20 s measured each
    .venv/bin/python bench/ingest.py --quick       # 10 and 100 connections, 5 s each (smoke run)

For each connection count N, in one run on one Mosquitto (configured like the gateway's managed broker):

1. **floor**: N lightweight boxes (bench/common.py `LightBox`: the firmware's byte stream, event JSON
   then 8 KiB chunks, every publish QoS 1 waiting for its PUBACK, then waiting for the application
   ack) send to a bare paho subscriber in its own process that acks an event as soon as it holds the
   event and all of its chunks (no hashing, decoding or disk). That is the broker's throughput for this
   photo stream with a Python client at each end.
2. **gateway**: the same boxes, photos and window against `python -m gateway run` (child process,
   external broker, folder sink): acks now mean "record and photo fsync'd, alert queued".
3. **pipeline alone**: `gateway.photos.process_photo` (with the caption strip, as the gateway runs it) on
   the same photos in a thread pool of one worker per core, nothing else running: the rate at which
   the photo pipeline saturates the cores.

The load is closed-loop: `--window` events are in flight at any moment (each on its own connection,
boxes taken in turn so all N connections carry traffic); a box sends its next event only after the ack.
Measured after `--warmup-s`: acked events/s and MB/s, gateway CPU (from /proc/<pid>/stat, 1.0 = one
core) and peak RSS, broker and load-generator CPU. The table shows gateway/floor and
gateway/min(floor, pipeline alone): the issue's target is gateway >= 50 % of the floor until the photo
pipeline saturates the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BareSubscriber,
    GatewayProcess,
    connect_boxes,
    cpu_cores_used,
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


async def drive(
    url: str,
    prefix: str,
    n_boxes: int,
    window: int,
    photos: list[bytes],
    warmup_s: float,
    measure_s: float,
    pids: dict[str, int],
    rate: float | None = None,
    prime: bool = True,
) -> dict[str, Any]:
    """Closed loop: `window` senders, each taking the next free box; count acks in the measured span.
    With `rate`, open loop: an event may start only every 1/rate s (still at most `window` in flight)."""
    t_conn = time.monotonic()
    boxes = await connect_boxes(url, prefix, n_boxes, stem=prefix)
    connect_s = time.monotonic() - t_conn
    free: asyncio.Queue[Any] = asyncio.Queue()
    for b in boxes:
        free.put_nowait(b)
    counter = itertools.count()
    tag = f"{int(time.time()) % 100000:05d}"
    prime_s = 0.0
    if prime:
        # Every box sends one event first (not measured): the measured span is a fleet the gateway
        # already knows (box record, photo folders), not a thousand first contacts.
        t_prime = time.monotonic()
        todo = list(range(n_boxes))

        async def primer() -> None:
            while todo:
                box = boxes[todo.pop()]
                await box.send_event(f"{prefix}{tag}p{box.device[-4:]}", photos[0])

        await asyncio.wait_for(asyncio.gather(*(primer() for _ in range(window))), timeout=600)
        prime_s = time.monotonic() - t_prime
    start = time.monotonic()
    m0, m1 = start + warmup_s, start + warmup_s + measure_s
    done: list[tuple[float, float, int, int]] = []  # (started, acked, bytes, tries)
    failed = {"nack": 0, "error": 0}
    samples: dict[str, list[Any]] = {k: [] for k in pids}
    rss_peak: dict[str, int] = dict.fromkeys(pids, 0)

    tickets: asyncio.Queue[None] = asyncio.Queue()

    async def ticker() -> None:
        k = 0
        while rate and time.monotonic() < m1:
            tickets.put_nowait(None)
            k += 1
            await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))

    async def sender() -> None:
        while time.monotonic() < m1:
            if rate:
                try:
                    await asyncio.wait_for(tickets.get(), max(0.01, m1 - time.monotonic()))
                except TimeoutError:
                    break
            box = await free.get()
            n = next(counter)
            photo = photos[n % len(photos)]
            try:
                r = await box.send_event(f"{prefix}{tag}-{n:07d}", photo)
            except (TimeoutError, ConnectionError) as exc:
                failed["error"] += 1
                print(f"  {box.device}: {type(exc).__name__} {exc}", file=sys.stderr)
                continue  # the box is not returned: a broken connection stays out of the loop
            free.put_nowait(box)
            if r["ok"]:
                done.append((r["started"], r["acked"], len(photo), r["tries"]))
            else:
                failed["nack"] += 1

    async def sampler() -> None:
        marks = {"m0": False}
        while time.monotonic() < m1 + 0.5:
            now = time.monotonic()
            for k, pid in pids.items():
                s = proc_sample(pid)
                if s is not None:
                    rss_peak[k] = max(rss_peak[k], s.rss_bytes)
                    if now >= m0 and not marks["m0"]:
                        samples[k].append(s)
            if now >= m0 and not marks["m0"]:
                marks["m0"] = True
            elif now >= m1 and marks["m0"]:
                for k, pid in pids.items():
                    s = proc_sample(pid)
                    if s is not None:
                        samples[k].append(s)
                return
            await asyncio.sleep(0.25)

    # Bounded: senders stop starting events at m1; an event in flight has the box's own ack timeout.
    await asyncio.wait_for(
        asyncio.gather(sampler(), ticker(), *(sender() for _ in range(window))),
        timeout=warmup_s + measure_s + 180,
    )
    for b in boxes:
        await b.close()
    measured = [d for d in done if m0 <= d[1] <= m1]
    lat = [(d[1] - d[0]) * 1000 for d in measured]
    cpu = {k: cpu_cores_used(v[0], v[-1]) if len(v) >= 2 else float("nan") for k, v in samples.items()}
    return {
        "connections": n_boxes,
        "window": window,
        "offered_per_s": rate,
        "connect_s": round(connect_s, 2),
        "prime_s": round(prime_s, 2),
        "events_per_s": round(len(measured) / measure_s, 2),
        "mb_per_s": round(sum(d[2] for d in measured) / measure_s / 2**20, 2),
        "acked_total": len(done),
        "primed": n_boxes if prime else 0,
        "resends": sum(d[3] - 1 for d in done),
        "failed": failed,
        "ack_ms": {"p50": round(percentile(lat, 50), 1), "p99": round(percentile(lat, 99), 1)},
        "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
        "rss_peak_mb": {k: round(v / 2**20, 1) for k, v in rss_peak.items()},
    }


def _pipeline_job(photo: bytes) -> int:
    from gateway.captions import caption_strip
    from gateway.photos import PhotoSettings, process_photo

    return len(process_photo(photo, PhotoSettings(), caption_strip("Front door", time.time(), "")).alert_jpeg)


def pipeline_alone(photos: list[bytes], seconds: float, kind: str = "thread") -> dict[str, Any]:
    """process_photo (caption strip on, as the gateway runs it) on a pool of one worker per core:
    threads (what the gateway uses) or processes (for comparison: no GIL between the workers)."""
    import resource

    workers = os.cpu_count() or 1
    _pipeline_job(photos[0])  # warm: fonts, codec tables
    pool_cls = (
        concurrent.futures.ThreadPoolExecutor if kind == "thread" else concurrent.futures.ProcessPoolExecutor
    )
    n = 0
    with pool_cls(workers) as pool:
        list(pool.map(_pipeline_job, photos[:workers]))  # start and warm the workers
        t0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        while time.perf_counter() - t0 < seconds:
            list(pool.map(_pipeline_job, photos))
            n += len(photos)
        wall = time.perf_counter() - t0
        if kind == "thread":
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        else:
            cpu = float("nan")  # children's time is only counted once they exit
    if kind != "thread":
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    return {
        "pool": kind,
        "workers": workers,
        "photos": n,
        "photos_per_s": round(n / wall, 2),
        "ms_per_photo_one_core": round(cpu / n * 1000, 2),
        "cpu_cores": round(cpu / wall, 2),
    }


async def one_count(
    broker: Any,
    work: Path,
    n: int,
    window: int,
    photos: list[bytes],
    args: argparse.Namespace,
    rate: float | None = None,
) -> dict[str, Any]:
    me = os.getpid()
    # floor: bare paho subscriber in place of the gateway
    bare = BareSubscriber(broker.url, f"floor{n}", work)
    bare.start()
    try:
        floor = await drive(
            broker.url,
            f"floor{n}",
            n,
            window,
            photos,
            args.warmup_s,
            args.measure_s,
            {"consumer": bare.pid, "broker": broker.pid, "loadgen": me},
            rate,
        )
    finally:
        bare.stop()
    # gateway
    gw = GatewayProcess(work / f"gw{n}", broker.url, f"gw{n}")
    gw.start()
    try:
        g = await drive(
            broker.url,
            f"gw{n}",
            n,
            window,
            photos,
            args.warmup_s,
            args.measure_s,
            {"consumer": gw.pid, "broker": broker.pid, "loadgen": me},
            rate,
        )
        # Every acked event has an alert queued; the folder sink should catch up within seconds.
        t0 = time.monotonic()
        want = g["acked_total"] + g["primed"]
        alerts = 0
        while time.monotonic() - t0 < 120:
            alerts = len(list(gw.alerts_dir.glob("*.json")))
            if alerts >= want:
                break
            await asyncio.sleep(0.2)
        g["alert_files"] = alerts
        g["alerts_drain_s"] = round(time.monotonic() - t0, 2)
        st = gw.status().get("health", {})
        g["gateway_counters"] = {k: st.get(k) for k in ("stored", "duplicates", "nacks", "acks")}
        g["gateway_rejected"] = {k: v for k, v in st.items() if k.startswith("rejected")}
    finally:
        rc = gw.stop()
        g["gateway_exit"] = rc
        shutil.rmtree(work / f"gw{n}", ignore_errors=True)
    return {"connections": n, "window": window, "offered_per_s": rate, "floor": floor, "gateway": g}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit(4 * max(args.connections) + 256)
    photos, source = uxga_photos()
    work = Path(tempfile.mkdtemp(prefix="parcelbox-ingest-"))
    broker = start_broker(work, tuple(args.broker_config))
    out: dict[str, Any] = {
        "bench": "ingest",
        "machine": machine_info(**tool_versions()),
        "params": {
            "connections": args.connections,
            "window": args.window,
            "warmup_s": args.warmup_s,
            "measure_s": args.measure_s,
            "photos": source,
            "mean_photo_kb": round(sum(map(len, photos)) / len(photos) / 1024, 1),
            "chunk_size": 8192,
            "broker_config": args.broker_config,
        },
        "runs": [],
    }
    try:
        out["pipeline_alone"] = pipeline_alone(photos, args.pipeline_s)
        out["pipeline_alone_processes"] = pipeline_alone(photos, args.pipeline_s, "process")
        for n in args.connections:
            window = min(n, args.window)
            print(f"{n} connections, {window} in flight ...", flush=True)
            out["runs"].append(await one_count(broker, work, n, window, photos, args))
        for rate in args.rates:
            n = args.rate_connections
            window = min(n, args.window)
            print(f"{n} connections, offered {rate} events/s ...", flush=True)
            out["runs"].append(await one_count(broker, work, n, window, photos, args, rate))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", default="10,100,1000", help="comma-separated box connection counts")
    ap.add_argument("--window", type=int, default=100, help="events in flight at most (all boxes together)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--measure-s", type=float, default=20.0)
    ap.add_argument("--pipeline-s", type=float, default=8.0, help="how long to run the pipeline alone")
    ap.add_argument(
        "--rates", default="10,20,30", help="open-loop offered events/s (below the pipeline's saturation)"
    )
    ap.add_argument("--rate-connections", type=int, default=100, help="connections for the --rates runs")
    ap.add_argument(
        "--broker-config", action="append", default=[], help="extra mosquitto.conf line (experiments)"
    )
    ap.add_argument("--name", default="ingest")
    ap.add_argument("--quick", action="store_true", help="10 and 100 connections, 5 s each")
    args = ap.parse_args(argv)
    if args.quick:
        args.connections, args.warmup_s, args.measure_s, args.pipeline_s = "10,100", 2.0, 5.0, 3.0
        args.rates = "10"
        if args.name == "ingest":
            args.name = "ingest_quick"
    args.connections = [int(x) for x in str(args.connections).split(",") if x.strip()]
    args.rates = [float(x) for x in str(args.rates).split(",") if x.strip()]
    out = asyncio.run(run(args))
    pipe = out["pipeline_alone"]["photos_per_s"]
    out["summary"] = []
    rows = []
    for r in out["runs"]:
        f, g = r["floor"], r["gateway"]
        bound = min(f["events_per_s"], pipe)
        ratio = g["events_per_s"] / f["events_per_s"] if f["events_per_s"] else float("nan")
        ratio_b = g["events_per_s"] / bound if bound else float("nan")
        out["summary"].append(
            {
                "connections": r["connections"],
                "gateway_over_floor": round(ratio, 3),
                "gateway_over_bound": round(ratio_b, 3),
            }
        )
        rows.append(
            [
                r["connections"],
                r["window"],
                r["offered_per_s"] or "max",
                f["events_per_s"],
                f["mb_per_s"],
                g["events_per_s"],
                g["mb_per_s"],
                f"{ratio:.0%}",
                f"{ratio_b:.0%}",
                g["cpu_cores"]["consumer"],
                g["rss_peak_mb"]["consumer"],
                g["cpu_cores"]["broker"],
                g["cpu_cores"]["loadgen"],
                g["ack_ms"]["p50"],
                f"{g['alert_files']}/{g['acked_total'] + g['primed']}",
            ]
        )
    path = write_json(args.name, out)
    print(
        f"photo pipeline alone: {pipe} photos/s on {out['pipeline_alone']['workers']} threads "
        f"({out['pipeline_alone']['ms_per_photo_one_core']} ms CPU per photo, "
        f"{out['pipeline_alone']['cpu_cores']} cores busy); with processes instead: "
        f"{out['pipeline_alone_processes']['photos_per_s']} photos/s "
        f"({out['pipeline_alone_processes']['cpu_cores']} cores); photos: {out['params']['photos']}"
    )
    print_table(
        [
            "conns",
            "window",
            "offered",
            "floor ev/s",
            "floor MB/s",
            "gw ev/s",
            "gw MB/s",
            "gw/floor",
            "gw/min(floor,pipe)",
            "gw CPU",
            "gw RSS MB",
            "broker CPU",
            "loadgen CPU",
            "gw ack p50 ms",
            "alerts",
        ],
        rows,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
