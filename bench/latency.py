"""End-to-end latency at low load: a box starts publishing an event -> the alert file is written.

    .venv/bin/python bench/latency.py              # 40 deliveries per phase
    .venv/bin/python bench/latency.py --quick      # 8 deliveries per phase (smoke run)

One simulated box (`tools/simulate.py` `SimulatedBox`: the real firmware modules, its umqtt-style
client, UXGA photos from ../shared/photos or `--photos DIR`, its camera set to the photos' frame size
as a real box sending them would be) makes one delivery at a time, with a pause between them. A run
in which any delivery arrives without its photo (the camera gave no frame) measures no photo
pipeline: it fails (exit 1) and writes no result.
Timestamps are taken in the bench process with `time.monotonic()`:

- t0: the box's client publishes the event JSON (the first byte of the event leaves the box);
- t_pub: its last photo chunk's PUBACK returned (the box is done sending);
- t_ack: the application ack arrives at the box's socket (the box's client is stepped every ~1 ms);
- t_alert: the folder sink's `<alert id>.json` appears (a thread lists the folder every 0.5 ms).

Floor, in the same run: (a) the broker round trip of the same bytes from the same client: the same box
against a bare paho subscriber that acks as soon as it holds the event and every chunk (t0 -> t_ack),
per photo; plus (b) the photo pipeline alone (`gateway.photos.process_photo` with the caption strip)
on the same photo in this process. Target (issue): e2e p50 <= 2x the floor's p50.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import simulate as sim  # noqa: E402
from common import (  # noqa: E402
    PHOTOS_DIR,
    BareSubscriber,
    GatewayProcess,
    machine_info,
    percentile,
    print_table,
    start_broker,
    tool_versions,
    uxga_photos,
    write_json,
)

from tools.sim.lens import camera_frame_size  # noqa: E402

# --- timestamps from inside the simulated box's client -------------------------------------------

MARKS: dict[str, dict[str, float]] = {}
_CURRENT: dict[str, str] = {}
_orig_publish = sim.PahoMQTTClient.publish
_orig_on_message = sim.PahoMQTTClient._on_message


def _publish(self: Any, topic: Any, msg: Any, retain: bool = False, qos: int = 0) -> None:
    t = self._str(topic)
    if t.endswith("/event"):
        try:
            ev = json.loads(bytes(msg))
            eid = ev["id"]
        except (ValueError, KeyError, TypeError):
            eid = None
        if eid is not None and eid not in MARKS:
            MARKS[eid] = {"t0": time.monotonic(), "size": float((ev.get("photo") or {}).get("size", 0))}
            cam_error = (ev.get("sensors") or {}).get("camera_error")  # firmware/app.py
            if cam_error:
                MARKS[eid]["camera_error"] = str(cam_error)
            _CURRENT["eid"] = eid
    _orig_publish(self, topic, msg, retain, qos)
    eid = _CURRENT.get("eid")
    if "/photo/" in t and eid is not None and f"/{eid}/" in t:
        MARKS[eid]["t_pub"] = time.monotonic()


def _on_message(self: Any, c: Any, u: Any, m: Any) -> None:
    if m.topic.endswith("/ack"):
        try:
            eid = json.loads(m.payload)["id"]
        except (ValueError, KeyError, TypeError):
            eid = None
        if eid in MARKS and "t_box_ack" not in MARKS[eid]:
            MARKS[eid]["t_box_ack"] = time.monotonic()
    _orig_on_message(self, c, u, m)


class AckObserver:
    """A paho client with its own network thread, subscribed to every box's ack topic: when the ack
    passes the broker, independent of how often the simulated box reads its socket."""

    def __init__(self, url: str, prefix: str) -> None:
        from urllib.parse import urlparse

        import paho.mqtt.client as mqtt

        u = urlparse(url)
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ackobs-{prefix}")
        self.c.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/+/ack", 1)
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=60)
        self.c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("ack observer did not subscribe")

    @staticmethod
    def _on_message(_c: Any, _u: Any, m: Any) -> None:
        try:
            eid = json.loads(m.payload)["id"]
        except (ValueError, KeyError, TypeError):
            return
        if eid in MARKS and "t_ack" not in MARKS[eid]:
            MARKS[eid]["t_ack"] = time.monotonic()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


sim.PahoMQTTClient.publish = _publish  # type: ignore[method-assign]
sim.PahoMQTTClient._on_message = _on_message  # type: ignore[method-assign]


class FolderWatch(threading.Thread):
    """First time each `*.json` shows up in the alerts folder (a listing every `interval` s)."""

    def __init__(self, folder: Path, interval: float = 0.0005) -> None:
        super().__init__(daemon=True)
        self.folder, self.interval = folder, interval
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with os.scandir(self.folder) as it:
                    now = time.monotonic()
                    for e in it:
                        if (
                            e.name.endswith(".json")
                            and not e.name.startswith(".")
                            and e.name not in self.seen
                        ):
                            self.seen[e.name] = now
            except FileNotFoundError:
                pass
            time.sleep(self.interval)

    def alert_time(self, eid: str) -> float | None:
        # folder alert ids are <device>_<event id>_<notifier>_<recipient hash>
        for name, t in self.seen.items():
            if name.split("_")[1:2] == [eid]:
                return t
        return None


def run_box(
    broker_url: str,
    prefix: str,
    photos_dir: Path,
    frame_size: str,
    n: int,
    pause_s: float,
    watch: FolderWatch | None,
) -> list[str]:
    """One box, `n` deliveries one at a time; returns the event ids in order."""
    obs = AckObserver(broker_url, prefix)
    spool = Path(tempfile.mkdtemp(prefix="parcelbox-lat-spool-"))
    box = sim.SimulatedBox(
        broker_url,
        "lat-box",
        prefix=prefix,
        photos=photos_dir,
        spool_dir=spool,
        tick_ms=50,
        overrides={"frame_size": frame_size},
    )
    ids: list[str] = []
    try:
        # settle: the box's first status and connection
        box.run_until(lambda: True, 1.0, tick=0.001)
        for _ in range(n):
            before = set(MARKS)
            box.deliver()

            def new_eid(before: set[str] = before) -> str | None:
                fresh = [e for e in MARKS if e not in before]
                return fresh[0] if fresh else None

            if not box.run_until(lambda: new_eid() is not None, 30, tick=0.001):
                raise RuntimeError("the box did not publish an event within 30 s")
            eid = new_eid()
            assert eid is not None
            ids.append(eid)

            def finished(eid: str = eid) -> bool:
                acked = "t_ack" in MARKS[eid] and "t_box_ack" in MARKS[eid]
                return acked and (watch is None or watch.alert_time(eid) is not None)

            if not box.run_until(finished, 60, tick=0.001):
                print(f"  {eid}: no ack/alert within 60 s", file=sys.stderr)
            box.run_until(lambda: False, pause_s, tick=0.001)  # low load: idle between deliveries
    finally:
        box.close()
        obs.close()
        shutil.rmtree(spool, ignore_errors=True)
    return ids


def without_photo(ids: list[str]) -> list[str]:
    """One line per delivery that carried no photo (what the box said about its camera)."""
    return [
        f"{e}: no photo (camera_error: {MARKS[e].get('camera_error', 'none given')})"
        for e in ids
        if not MARKS[e]["size"]
    ]


def pipeline_ms(photos: list[bytes], rounds: int) -> dict[int, float]:
    """Median ms of the gateway's photo pipeline (caption strip on) per photo, keyed by photo size."""
    from gateway.captions import caption_strip
    from gateway.photos import PhotoSettings, process_photo

    settings = PhotoSettings()
    out: dict[int, float] = {}
    process_photo(photos[0], settings, caption_strip("lat-box", time.time(), ""))  # warm
    for p in photos:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            process_photo(p, settings, caption_strip("lat-box", time.time(), ""))
            times.append((time.perf_counter() - t) * 1000)
        out[len(p)] = statistics.median(times)
    return out


def pct(values: list[float]) -> dict[str, float]:
    return {k: round(percentile(values, p), 1) for k, p in (("p50", 50), ("p95", 95), ("p99", 99))} | {
        "mean": round(statistics.fmean(values), 1) if values else float("nan")
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40, help="deliveries per phase")
    ap.add_argument("--pause-s", type=float, default=0.3, help="idle time between deliveries")
    ap.add_argument(
        "--poll-s", type=float, default=None, help="gateway outbox.poll_s (default: the gateway's)"
    )
    ap.add_argument(
        "--broker-config", action="append", default=[], help="extra mosquitto.conf line (experiments)"
    )
    ap.add_argument("--name", default="latency")
    ap.add_argument("--quick", action="store_true", help="8 deliveries per phase")
    ap.add_argument(
        "--photos", type=Path, default=None, help="folder of *_uxga.jpg (default ../shared/photos)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.events = 8
        if args.name == "latency":
            args.name = "latency_quick"
    photos, source = uxga_photos(folder=args.photos)
    try:
        frame_size = camera_frame_size(photos)
    except ValueError as e:
        print(f"latency: FAILED: {e}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="parcelbox-latency-"))
    photos_dir = work / "photos"
    photos_dir.mkdir()
    for i, p in enumerate(photos):
        (photos_dir / f"{i:02d}.jpg").write_bytes(p)
    broker = start_broker(work, tuple(args.broker_config))
    try:
        # floor (a): the broker round trip of the same bytes from the same client
        bare = BareSubscriber(broker.url, "latfloor", work)
        bare.start()
        try:
            floor_ids = run_box(
                broker.url, "latfloor", photos_dir, frame_size, args.events, args.pause_s, None
            )
        finally:
            bare.stop()
        # floor (b): the photo pipeline alone, same photos
        pipe = pipeline_ms(photos, 5)
        # the gateway
        gw = GatewayProcess(work / "gw", broker.url, "lat", poll_s=args.poll_s)
        gw.start()
        watch = FolderWatch(gw.alerts_dir)
        watch.start()
        try:
            gw_ids = run_box(broker.url, "lat", photos_dir, frame_size, args.events, args.pause_s, watch)
        finally:
            watch.stop.set()
            gw.stop()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    missing = without_photo(floor_ids + gw_ids)
    if missing:
        # Without photos "e2e" times a text event and the floor a pipeline that never ran: no result.
        print(
            f"latency: FAILED: {len(missing)} of {len(floor_ids) + len(gw_ids)} deliveries carried no photo "
            f"(box frame_size {frame_size}; photos: {source}); no result written:",
            file=sys.stderr,
        )
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        return 1
    rt_by_size: dict[int, list[float]] = {}
    for e in floor_ids:
        m = MARKS[e]
        if "t_ack" in m:
            rt_by_size.setdefault(int(m["size"]), []).append((m["t_ack"] - m["t0"]) * 1000)
    rt_all = [v for vs in rt_by_size.values() for v in vs]
    e2e, floor, pub, to_ack, ack_to_alert, ack_to_box = [], [], [], [], [], []
    for e in gw_ids:
        m = MARKS[e]
        ta = watch.alert_time(e)
        if ta is None or "t_ack" not in m:
            continue
        size = int(m["size"])
        e2e.append((ta - m["t0"]) * 1000)
        rt = statistics.median(rt_by_size.get(size) or rt_all)
        floor.append(rt + pipe.get(size, statistics.median(pipe.values())))
        pub.append((m.get("t_pub", m["t0"]) - m["t0"]) * 1000)
        to_ack.append((m["t_ack"] - m.get("t_pub", m["t0"])) * 1000)
        ack_to_alert.append((ta - m["t_ack"]) * 1000)
        if "t_box_ack" in m:
            ack_to_box.append((m["t_box_ack"] - m["t_ack"]) * 1000)
    rows = {
        "e2e: event publish -> alert file": pct(e2e),
        "  box publishing (event + chunks)": pct(pub),
        "  last chunk -> ack (gateway: reassemble, pipeline, store)": pct(to_ack),
        "  ack -> alert file (outbox, folder sink)": pct(ack_to_alert),
        "  (ack at the broker -> read by the box)": pct(ack_to_box),
        "floor: broker round trip + pipeline alone": pct(floor),
        "  broker round trip, same bytes (bare subscriber)": pct(rt_all),
        "  photo pipeline alone": pct(list(pipe.values())),
    }
    ratio = (
        rows["e2e: event publish -> alert file"]["p50"]
        / rows["floor: broker round trip + pipeline alone"]["p50"]
    )
    out = {
        "bench": "latency",
        "machine": machine_info(**tool_versions()),
        "params": {
            "events": args.events,
            "measured": len(e2e),
            "pause_s": args.pause_s,
            "frame_size": frame_size,
            "photos": source if PHOTOS_DIR.is_dir() else source,
            "mean_photo_kb": round(sum(map(len, photos)) / len(photos) / 1024, 1),
            "outbox_poll_s": args.poll_s,
            "broker_config": args.broker_config,
        },
        "ms": rows,
        "p50_over_floor_p50": round(ratio, 2),
        "target": "e2e p50 <= 2x floor p50",
        "met": ratio <= 2.0,
        "samples": {e: MARKS[e] for e in gw_ids + floor_ids},
    }
    path = write_json(args.name, out)
    print(f"{len(e2e)} deliveries, one at a time; photos: {source}")
    print_table(
        ["ms", "p50", "p95", "p99", "mean"],
        [[k, v["p50"], v["p95"], v["p99"], v["mean"]] for k, v in rows.items()],
    )
    print(
        f"e2e p50 / floor p50 = {ratio:.2f} (target <= 2): {'met' if ratio <= 2 else 'NOT met'}; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
