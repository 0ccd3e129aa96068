"""How fast the dashboard's events API answers with 100,000 stored events (issue: "well under a second").

The real `gateway.store.Store` on disk, filled in bulk in its own file format (as bench/store_growth.py
does), served by the real dashboard (`gateway.web.WebServer`: uvicorn on its thread) and queried over
HTTP with httpx, like the browser does. Two histories: 100 events a day over ~3 years (one file per
month, the default) and all events in the current month (a burst or a big fleet).

Queries: the first page (what the deliveries page loads), one box, a type that never occurs (the
worst case when the store scanned files), a page deep in history (keyset cursor at the middle), a rare
type (1 event in 1,000, spread over every month file: a page of them comes from many files) and the
page shell itself. Per query: median and p90 of --repeat requests. Also: how long the store takes to
open (it builds its indexes) and, when the store has one, the size of its timeline index.

    .venv/bin/python bench/web_events.py [--events 100000] [--repeat 20]

Prints a table and writes bench/results/web_events.json.
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

import httpx2 as httpx  # noqa: E402

from bench.common import machine_info, print_table, write_json  # noqa: E402
from bench.store_growth import NOW, PER_DAY, prefill  # noqa: E402
from gateway.bus import Bus  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.web import WebServer, WebSettings  # noqa: E402


class StorePort:
    """The read side of the gateway port straight over a Store (what GatewayService delegates to)."""

    def __init__(self, store: Store) -> None:
        self.bus = Bus()
        self.store = store

    def list_events(self, **kw: Any) -> list[Any]:
        return self.store.list_events(**kw)

    def get_event(self, device: str, event_id: str) -> Any:
        return self.store.get_event(device, event_id)

    def photo_path(self, device: str, event_id: str, variant: Any) -> Any:
        return self.store.photo_path(device, event_id, variant)

    def list_devices(self) -> list[Any]:
        return self.store.list_devices()

    def health(self) -> dict[str, Any]:
        return {"events_total": self.store.event_count()}

    def list_outbox(self, state: Any = None, limit: int = 100) -> list[Any]:
        return self.store.list_outbox(state, limit)

    def retry_alert(self, alert_id: str) -> bool:
        return False

    def send_command(self, device: str, cmd: str, args: Any = None) -> str:
        raise RuntimeError("no broker in this bench")

    def command_result(self, cmd_id: str) -> Any:
        return None

    def whatsapp_state(self) -> dict[str, Any]:
        return {"state": "disabled"}


RARE_TYPE = "lid_left_open"
RARE_EVERY = 1000


def mark_rare(data_dir: Path) -> int:
    """Make every RARE_EVERY-th prefilled event a RARE_TYPE one (prefill writes only deliveries)."""
    n = 0
    for f in sorted((data_dir / "db").glob("events-*.json")):
        data = json.loads(f.read_text())
        for doc in data["events"].values():
            if doc["seq"] % RARE_EVERY == 0:
                doc["type"] = RARE_TYPE
                n += 1
        f.write_text(json.dumps(data, separators=(",", ":")))
    return n


def index_mb(store: Store) -> float | None:
    """Bytes held by the store's timeline index (lists, tuples, ts floats, id strings), if it has one."""
    idx = getattr(store, "_timeline", None)
    if idx is None:
        return None
    total = sys.getsizeof(idx._all)
    for e in idx._all:
        total += sys.getsizeof(e) + sys.getsizeof(e[0]) + sys.getsizeof(e[1])  # device/type: interned
    for lists in (idx._by_device, idx._by_type, idx._by_pair):
        total += sys.getsizeof(lists) + sum(sys.getsizeof(v) for v in lists.values())
    return total / 1e6


def timings(client: httpx.Client, url: str, repeat: int) -> tuple[float, float, int, float]:
    """Median, p90, rows of the last answer, and the first (cold) request's time, all in ms."""
    costs = []
    n = 0
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(url)
        costs.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        n = len(r.json()["events"]) if url.startswith("/api/events") else len(r.content)
    first = costs[0]
    costs.sort()
    return statistics.median(costs), costs[max(0, int(len(costs) * 0.9) - 1)], n, first


def run_case(n: int, scenario: str, repeat: int, root: Path) -> list[dict[str, Any]]:
    if scenario == "history":
        times = [NOW - (n - i) * 86_400 / PER_DAY for i in range(n)]
    else:
        start = float(calendar.timegm((2026, 11, 1, 0, 0, 0)))
        times = [start + (NOW - 3600 - start) * i / n for i in range(n)]
    d = Path(tempfile.mkdtemp(dir=root))
    rows = []
    try:
        prefill(d, times, "month")
        mark_rare(d)
        t0 = time.perf_counter()
        store = Store(d, partition="month")
        open_ms = (time.perf_counter() - t0) * 1000
        mb = index_mb(store)
        print(
            f"  {scenario:<9} {n:>7} store open {open_ms:.0f} ms, timeline index "
            + (f"{mb:.1f} MB" if mb is not None else "none"),
            file=sys.stderr,
        )
        srv = WebServer(StorePort(store), WebSettings(host="127.0.0.1", port=0))
        srv.start()
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                # The cursor of the event in the middle of history: a page deep down the timeline.
                mid = n // 2
                mid_cursor = f"{times[mid]!r}:h{mid:015d}"
                queries = [
                    ("first page (50)", "/api/events?limit=50"),
                    ("one box", "/api/events?limit=50&device=box3"),
                    ("type never seen (full scan)", "/api/events?limit=50&type=pickup"),
                    ("deep page (middle)", "/api/events?limit=50&before=" + mid_cursor),
                    (f"rare type (1 in {RARE_EVERY})", f"/api/events?limit=50&type={RARE_TYPE}"),
                    ("page shell /", "/"),
                ]
                c.get("/api/events?limit=50")  # first touch loads the current file
                for name, url in queries:
                    med, p90, got, first = timings(c, url, repeat)
                    rows.append(
                        {
                            "scenario": scenario,
                            "events": n,
                            "query": name,
                            "median_ms": med,
                            "p90_ms": p90,
                            "first_ms": first,
                            "rows": got,
                            "store_open_ms": open_ms,
                            "index_mb": mb,
                        }
                    )
                    print(
                        f"  {scenario:<9} {n:>7} {name:<28} {med:8.1f} ms (first request {first:.1f} ms)",
                        file=sys.stderr,
                    )
        finally:
            srv.stop()
            store.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="web-events-"))
    rows: list[dict[str, Any]] = []
    try:
        for scenario in ("history", "one month"):
            rows += run_case(args.events, scenario, args.repeat, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print_table(
        ["scenario", "events", "query", "median ms", "p90 ms", "rows"],
        [[r["scenario"], r["events"], r["query"], r["median_ms"], r["p90_ms"], r["rows"]] for r in rows],
    )
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        r = next(r for r in rows if r["scenario"] == scenario)
        mb = f"{r['index_mb']:.1f} MB" if r["index_mb"] is not None else "none"
        print(f"{scenario}: store open {r['store_open_ms']:.0f} ms, timeline index {mb}")
    worst = max(r["median_ms"] for r in rows)
    print(f"\nslowest median: {worst:.1f} ms (target: well under 1000 ms)")
    path = write_json("web_events", {"machine": machine_info(), "repeat": args.repeat, "rows": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
