"""One box flooding the gateway must not delay another: box B's ack latency, alone and during a flood.

    .venv/bin/python bench/ingest_fairness.py                  # 20 s flood
    .venv/bin/python bench/ingest_fairness.py --quick          # 6 s flood (smoke run)
    .venv/bin/python bench/ingest_fairness.py --gateway-root /tmp/old-tree   # the same against another tree

Issue 14 item 5: 500k empty chunks with made-up ids from one box made 348k partial photos (141 ->
412 MB) and delayed another box's ack by 30 s. This runs the real gateway (`python -m gateway run`,
external broker configured like the managed one) and:

1. **quiet**: box B sends events one after the other (QoS 1, the next after the ack) and we time
   publish -> ack;
2. **flood**: box A, in its own process, publishes empty chunks for made-up photos at `--rate` per
   second (raw QoS 1 publishes, up to `--window` unacknowledged by the broker; `--rate 0`: as fast
   as it can) while B keeps sending as in 1.

Printed and written to bench/results/ingest_fairness.json: B's ack latency (p50 / p95 / max) in each
phase, how many B events were not acked within `--ack-timeout-s`, the flood's rate, the gateway's RSS
before and at the end of the flood and its partial photos and rejection counters. `--gateway-root`
runs the gateway from another source tree (e.g. `git archive <old commit>` unpacked) for a before /
after comparison. Loopback only; every loop is bounded; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from common import (  # noqa: E402
    GatewayProcess,
    _mqtt_str,
    _varint,
    cpu_cores_used,
    machine_info,
    percentile,
    print_table,
    proc_sample,
    start_broker,
    tool_versions,
    write_json,
)

PREFIX = "fair"


def flood(host: str, port: int, seconds: float, window: int, rate: float, out: Any) -> None:
    """Box A (own process): empty chunks for made-up photos, QoS 1, at most `window` without a PUBACK.

    Raw MQTT 3.1.1 over a socket (packets built here, PUBACKs counted by a drain thread): paho in
    Python tops out near 3-4k publishes/s, well below what the gateway can take, so it would not load
    the gateway at all."""
    import socket
    import threading

    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = f"flood-{uuid.uuid4().hex[:6]}".encode()
    body = _mqtt_str(b"MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _mqtt_str(cid)
    sock.sendall(bytes([0x10]) + _varint(len(body)) + body)
    if sock.recv(4)[3] != 0:
        raise ConnectionError("flood: CONNACK refused")
    acked = [0]
    stop = threading.Event()

    def drain() -> None:  # every packet the broker sends us is a 4-byte PUBACK
        sock.settimeout(0.5)
        got = 0
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            got += len(data)
            acked[0] = got // 4

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    tag = uuid.uuid4().hex[:8]
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if sent - acked[0] >= window or (rate and sent >= rate * (time.monotonic() - start)):
            time.sleep(0.0002)
            continue
        batch = bytearray()
        for _ in range(min(50, window - (sent - acked[0]))):
            sent += 1
            topic = f"{PREFIX}/evil/photo/m{tag}{sent:010d}/0".encode()
            var = _mqtt_str(topic) + (sent % 65535 + 1).to_bytes(2, "big")
            batch += bytes([0x32]) + _varint(len(var)) + var
        sock.sendall(batch)
    elapsed = time.monotonic() - start
    stop.set()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    t.join(2)
    sock.close()
    out.put({"sent": sent, "acked_by_broker": acked[0], "seconds": round(elapsed, 2)})


class GoodBox:
    """Box B: one event at a time, timing publish -> ack on its own ack topic."""

    def __init__(self, host: str, port: int) -> None:
        self.acks: queue.Queue[tuple[str, float]] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="good-box", clean_session=False)
        subscribed: queue.Queue[bool] = queue.Queue()
        self.c.on_connect = lambda c, *_a: c.subscribe(f"{PREFIX}/good/ack", 1)
        self.c.on_subscribe = lambda *_a: subscribed.put(True)
        self.c.on_message = lambda _c, _u, m: self.acks.put((json.loads(m.payload)["id"], time.monotonic()))
        self.c.connect(host, port, keepalive=60)
        self.c.loop_start()
        subscribed.get(timeout=10)
        self.seq = 0

    def one(self, timeout: float) -> float | None:
        """Send one event; its ack latency in ms, or None if no ack within `timeout`."""
        self.seq += 1
        eid = f"good-{uuid.uuid4().hex[:12]}"
        body = {"v": 1, "id": eid, "type": "delivery", "ts": time.time(), "seq": self.seq, "sensors": {}}
        t0 = time.monotonic()
        self.c.publish(f"{PREFIX}/good/event", json.dumps({**body, "photo": None}).encode(), qos=1)
        deadline = t0 + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, t1 = self.acks.get(timeout=left)
            except queue.Empty:
                break
            if got == eid:
                return (t1 - t0) * 1000
        return None

    def run(self, seconds: float, timeout: float, gap_s: float) -> tuple[list[float], int]:
        lat: list[float] = []
        missed = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ms = self.one(timeout)
            if ms is None:
                missed += 1
            else:
                lat.append(ms)
            time.sleep(gap_s)
        return lat, missed

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def summary(lat: list[float], missed: int) -> dict[str, Any]:
    return {
        "events": len(lat) + missed,
        "acked": len(lat),
        "not_acked": missed,
        "p50_ms": round(percentile(lat, 50), 1),
        "p95_ms": round(percentile(lat, 95), 1),
        "max_ms": round(max(lat), 1) if lat else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood-s", type=float, default=20.0)
    ap.add_argument("--quiet-s", type=float, default=5.0)
    ap.add_argument("--window", type=int, default=100, help="box A's unacknowledged publishes at most")
    ap.add_argument(
        "--rate", type=float, default=8000, help="box A's publishes per second (0: as fast as it can)"
    )
    ap.add_argument("--ack-timeout-s", type=float, default=30.0)
    ap.add_argument("--gap-s", type=float, default=0.1, help="box B's pause between events")
    ap.add_argument("--gateway-root", type=Path, default=None, help="run the gateway from this source tree")
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before/after)")
    ap.add_argument("--quick", action="store_true", help="6 s flood, 3 s quiet")
    a = ap.parse_args()
    if a.quick:
        a.flood_s, a.quiet_s = 6.0, 3.0
    if a.gateway_root is not None:
        common.ROOT = a.gateway_root.resolve()  # GatewayProcess runs `python -m gateway` from ROOT

    with tempfile.TemporaryDirectory(prefix="pb-fair-") as tmp:
        work = Path(tmp)
        broker = start_broker(work)
        gw = GatewayProcess(work / "gw", broker.url, PREFIX, extra_toml="")
        host, port = broker.url.removeprefix("mqtt://").split(":")
        good: GoodBox | None = None
        try:
            gw.start()
            good = GoodBox(host, int(port))
            time.sleep(1.0)
            quiet = good.run(a.quiet_s, a.ack_timeout_s, a.gap_s)
            rss0 = proc_sample(gw.pid)
            out: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
            p = multiprocessing.Process(
                target=flood, args=(host, int(port), a.flood_s, a.window, a.rate, out)
            )
            p.start()
            time.sleep(0.5)
            during = good.run(max(1.0, a.flood_s - 1.0), a.ack_timeout_s, a.gap_s)
            rss1 = proc_sample(gw.pid)
            p.join(a.flood_s + 60)
            fl = out.get(timeout=10) if not out.empty() else {}
            time.sleep(2.5)  # one status snapshot later
            st = gw.status().get("health", {})
        finally:
            if good is not None:
                good.close()
            gw.stop()
            broker.stop()

    q, d = summary(*quiet), summary(*during)
    rate = round(fl.get("sent", 0) / fl["seconds"]) if fl.get("seconds") else 0
    result = {
        "label": a.label,
        "gateway_root": str(common.ROOT),
        "quiet": q,
        "flood": d,
        "flood_messages": fl,
        "flood_rate_msgs_s": rate,
        "gateway_rss_mb_before_flood": round(rss0.rss_bytes / 2**20, 1) if rss0 else None,
        "gateway_rss_mb_end_of_flood": round(rss1.rss_bytes / 2**20, 1) if rss1 else None,
        "gateway_cores_during_flood": round(cpu_cores_used(rss0, rss1), 2),
        "gateway_after": {
            "reassembly": st.get("reassembly"),
            "queue": st.get("queue"),
            "rejected": st.get("rejected"),
        },
        "settings": vars(a) | {"gateway_root": str(a.gateway_root) if a.gateway_root else None},
        "machine": machine_info(loadavg_1min_at_end=f"{os.getloadavg()[0]:.2f}"),
        "tools": tool_versions(),
    }
    print(
        f"box A flood: {fl.get('sent', 0)} empty chunks in {fl.get('seconds', 0)} s ({rate}/s); gateway {common.ROOT}"
    )
    print_table(
        ["phase", "B events", "acked", "not acked", "p50 ms", "p95 ms", "max ms", "gateway RSS MB"],
        [
            [
                "quiet",
                q["events"],
                q["acked"],
                q["not_acked"],
                q["p50_ms"],
                q["p95_ms"],
                q["max_ms"],
                result["gateway_rss_mb_before_flood"],
            ],
            [
                "flood",
                d["events"],
                d["acked"],
                d["not_acked"],
                d["p50_ms"],
                d["p95_ms"],
                d["max_ms"],
                result["gateway_rss_mb_end_of_flood"],
            ],
        ],
    )
    print("after:", json.dumps(result["gateway_after"]))
    name = "ingest_fairness" + (f"_{a.label}" if a.label else "")
    print("wrote", write_json(name, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
