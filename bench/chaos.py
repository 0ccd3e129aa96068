#!/usr/bin/env python3
"""Chaos: simulated boxes send deliveries with photos while the gateway, the broker and the WhatsApp
child are SIGKILLed and restarted at seeded random moments; then every guarantee is audited.

    python bench/chaos.py                       # the full run: 20 boxes x 25 deliveries = 500
    python bench/chaos.py --boxes 4 --deliveries 10 --seed 3 --gateway-kills 2
    python bench/chaos.py --managed-broker      # the gateway's own Mosquitto, boxes with their logins
    python bench/chaos.py --disk-fulls 3           # also fill the gateway's disk now and then (root)

Boxes are `tools/simulate.py`'s `SimulatedBox` (the real firmware modules, spool on disk), the
broker a real Mosquitto, the gateway `parcelbox run` as a subprocess with the folder sink and WhatsApp
on the fake transport (its child process writes every message it "sends" to sent.jsonl).

Kill moments are seeded: each kill fires once a seeded random share of the deliveries has been
acked, plus a seeded random delay, so kills always land while boxes are sending. After the last kill
everything is brought back up, the boxes drain their spools, and the audit checks:

- every delivery the boxes made is stored exactly once, with an intact photo whose sha256 matches;
- every alert is in the folder sink exactly once; the database opens and matches the sink;
- no photo file is orphaned, truncated or left as a temp file;
- every alert reached the fake WhatsApp at least once, with duplicates only for sends cut by a kill
  (at most one per child or gateway kill).

With `--managed-broker` the broker is the gateway's own Mosquitto (`broker.url` empty) instead of an
external one: every box is registered and logs in on the box listener, a gateway SIGKILL takes its
broker down with it (parent-death signal) and the restarted gateway must come back on the same port,
and a broker SIGKILL is repaired by the gateway's own supervision. A thief with a registered login of
its own keeps reconnecting under the gateway's client id and the boxes' ids (`--takeovers`); the audit
also checks, in the broker's log, that nobody but the thief itself was ever kicked off (issue 14,
items 3 and 13).
With `--disk-fulls N` the gateway's data folder is a tmpfs (needs root) that is filled to the last
byte N times, for a seeded few seconds each, while boxes send: whatever the gateway cannot write it
must not ack, and everything above must still hold once there is room again.

`run_chaos()` is also the short form run by `tests/e2e/test_chaos.py` in `make test`. The full run
prints its counts and writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.e2e import GatewayProc, audit_data_folder, wait_for  # noqa: E402
from tests.support.fullfs import fill, free, mount_tmpfs, unmount  # noqa: E402
from tools.simulate import SimulatedBox  # noqa: E402

RECIPIENT = "+62 811-0000-0001"


@dataclass
class ChaosPlan:
    boxes: int = 20
    deliveries: int = 25  # per box
    gateway_kills: int = 4
    broker_kills: int = 3
    child_kills: int = 4
    seed: int = 0
    down_s: tuple[float, float] = (0.3, 2.5)  # how long a killed gateway / broker stays down
    drain_timeout_s: float = 900.0
    # False: the board's own spool limits, so a box may drop old photos while the gateway is down
    # (documented behaviour); such events must then arrive without a photo, and only those.
    spool_room: bool = True
    # records per store segment file (0: the store's default); small values make the kills land among
    # segment roll-overs
    segment_records: int = 0
    # the gateway's own Mosquitto instead of the external `broker` (which is then unused)
    managed_broker: bool = False
    # managed broker: reconnects per second by a thief under the gateway's and the boxes' client ids
    takeovers_per_s: float = 0.0
    # times the gateway's disk (then a tmpfs of disk_size) is filled up, each for full_s seconds
    disk_fulls: int = 0
    disk_size: str = "128m"
    full_s: tuple[float, float] = (1.0, 4.0)


@dataclass
class ChaosResult:
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _BoxDriver(threading.Thread):
    """Steps every box in one thread (the firmware is single-threaded, like on the board)."""

    def __init__(self, boxes: list[SimulatedBox]) -> None:
        super().__init__(name="boxes", daemon=True)
        self.boxes = boxes
        self.stop_flag = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for b in self.boxes:
                try:
                    b.step()
                except Exception as exc:  # a box must never die silently: the audit reports it
                    self.errors.append(f"{b.device}: {type(exc).__name__}: {exc}")
            time.sleep(0.003)

    def acked(self) -> int:
        return sum(len(b.acked) for b in self.boxes)

    def done(self) -> bool:
        return all(b.all_acked() for b in self.boxes)


def _child_pid(gw: GatewayProc) -> int | None:
    """The WhatsApp child's pid from its session lock file, if it is alive and the gateway's child."""
    try:
        pid = int((gw.data_dir / "whatsapp" / "session.lock").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return pid if ppid == gw.pid else None


def _fake_sent(fake_dir: Path) -> list[dict[str, Any]]:
    path = fake_dir / "sent.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line cut by a SIGKILL mid-write is not a send
    return out


class ManagedBroker:
    """The gateway's own Mosquitto as the chaos run sees it: the box listener's fixed address, and
    kill / start / running like `gateway.mosquitto.Mosquitto` has. It is the gateway's child: `kill()`
    SIGKILLs it, `start()` only waits for the gateway's supervision to bring it back."""

    def __init__(self, broker_dir: Path, host: str, port: int) -> None:
        self.dir = broker_dir
        self.host = host
        self.port = port
        self.url = f"mqtt://{host}:{port}"

    def pid(self) -> int | None:
        from gateway.mosquitto import leftover_pid  # our mosquitto with our config, checked in /proc

        return leftover_pid(self.dir)

    def running(self) -> bool:
        return self.pid() is not None

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: self.pid() != pid, 30, 0.05, "the killed broker to be gone")

    def start(self) -> None:
        from gateway.mosquitto import wait_for_port

        # The gateway's housekeeping restarts it, with backoff (2, 4, 8 ... s between attempts).
        wait_for(lambda: self.running() and wait_for_port(self.host, self.port, 0.5), 120, 0.1,
                 "the gateway to restart its broker")  # fmt: skip


class _Thief(threading.Thread):
    """A registered login of its own, reconnecting under other clients' ids (issue 14, item 3)."""

    def __init__(self, url: str, login: str, password: str, ids: list[str], per_s: float) -> None:
        super().__init__(name="thief", daemon=True)
        self.url, self.login, self.password, self.ids, self.per_s = url, login, password, ids, per_s
        self.stop_flag = threading.Event()
        self.connects = 0

    def run(self) -> None:
        from urllib.parse import urlparse

        import paho.mqtt.client as mqtt

        u = urlparse(self.url)
        i = 0
        while not self.stop_flag.wait(1.0 / self.per_s):
            stolen = self.ids[i % len(self.ids)]
            i += 1
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=stolen, clean_session=True)
            c.username_pw_set(self.login, self.password)
            try:
                c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=10)
                for _ in range(5):  # long enough for the CONNACK (and, on a weak broker, the kick)
                    c.loop(0.05)
                self.connects += 1
                c.disconnect()
            except OSError:
                pass  # the broker is down (a kill): try again later


def _kicked_clients(broker_dir: Path) -> collections.Counter[str]:
    """Client ids Mosquitto disconnected because another connection took their id (from its log)."""
    out: collections.Counter[str] = collections.Counter()
    try:
        text = (broker_dir / "mosquitto.log").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        # mosquitto 2.0: "Client <id> already connected, closing old connection."
        if "already connected, closing old connection" in line:
            out[line.split("Client ", 1)[1].split(" already", 1)[0]] += 1
    return out


def run_chaos(workdir: Path, broker: Any, prefix: str, plan: ChaosPlan, echo: bool = False) -> ChaosResult:
    """Run one chaos round against `broker` (a `gateway.mosquitto.Mosquitto`, started); see module doc.

    With `plan.managed_broker`, `broker` is not used (pass None): the gateway runs its own."""
    res = ChaosResult()
    rnd = random.Random(plan.seed)
    t0 = time.monotonic()

    def note(msg: str) -> None:
        line = f"[{time.monotonic() - t0:7.1f}s] {msg}"
        res.log.append(line)
        if echo:
            print(line, flush=True)

    fake_dir = workdir / "fakewa"
    (fake_dir / "inbox").mkdir(parents=True, exist_ok=True)
    managed: dict[str, Any] = {}
    holds: list[socket.socket] = []
    if plan.managed_broker:
        from gateway.mosquitto import hold_port

        # Fixed ports, as a user's boxes are flashed with: a restarted gateway must come back on them.
        # Held by this process for the whole run (bound, never listening; Mosquitto listens beside):
        # picked and let go, another process could take one while no gateway runs after a kill.
        for _ in range(2):
            h = hold_port("127.0.0.1")
            if h is None:
                raise RuntimeError("no free loopback port to hold")
            holds.append(h)
        managed = {"listen_host": "127.0.0.1", "listen_port": holds[0].getsockname()[1],
                   "local_port": holds[1].getsockname()[1], "allow_anonymous": False}  # fmt: skip
    gw = GatewayProc(
        workdir / "gw",
        "" if plan.managed_broker else broker.url,
        prefix,
        extra={
            "broker": managed,
            "whatsapp": {
                "enabled": True,
                "transport": "fake",
                "fake_dir": str(fake_dir),
                "recipients": [RECIPIENT],
                "rate_per_minute": 100000,
                "rate_per_minute_overall": 100000,
            },
            "ingest": {"reassembly_timeout_s": 10.0},
            "store": {"segment_records": plan.segment_records},
        },
    )
    if plan.disk_fulls:
        why = mount_tmpfs(gw.data_dir, plan.disk_size)
        if why is not None:
            raise RuntimeError(f"--disk-fulls: {why}")
    try:
        return _run_chaos(gw, fake_dir, workdir, broker, prefix, plan, res, rnd, note, t0, managed)
    finally:
        if plan.disk_fulls:
            unmount(gw.data_dir)
        for h in holds:
            h.close()


def _run_chaos(
    gw: GatewayProc,
    fake_dir: Path,
    workdir: Path,
    broker: Any,
    prefix: str,
    plan: ChaosPlan,
    res: ChaosResult,
    rnd: random.Random,
    note: Any,
    t0: float,
    managed: dict[str, Any],
) -> ChaosResult:
    session = gw.data_dir / "whatsapp"
    session.mkdir(parents=True, exist_ok=True)
    (session / "fake-session.json").write_text(json.dumps({"jid": "6281100000000@s.whatsapp.net"}))

    # The spool is bounded on the board (oldest photos go first when it is full, by design); give the
    # simulated boxes room for a whole run so that every delivery must arrive with its photo.
    spool_room: dict[str, Any] = (
        {"spool_max_events": 1000, "spool_max_bytes": plan.deliveries * 500_000} if plan.spool_room else {}
    )
    names = [f"chaos-{i:02d}" for i in range(plan.boxes)]
    logins: dict[str, str | None] = dict.fromkeys(names)
    thief: _Thief | None = None
    if plan.managed_broker:
        from gateway.devices import DeviceRegistry

        registry = DeviceRegistry(gw.data_dir)  # `parcelbox device add` for each box, before the first run
        logins = {n: registry.add(n).password for n in names}
        broker = ManagedBroker(gw.data_dir / "broker", "127.0.0.1", managed["listen_port"])
    if plan.disk_fulls:
        spool_room["ack_timeout_s"] = 5  # refused events come back soon (the firmware's minimum)
    boxes = [
        SimulatedBox(
            broker.url,
            n,
            prefix=prefix,
            username=n if logins[n] else None,
            password=logins[n],
            spool_dir=workdir / "spool" / n,
            overrides=spool_room,
        )
        for n in names
    ]
    for b in boxes:
        for _ in range(plan.deliveries):
            b.deliver()
    total = plan.boxes * plan.deliveries
    actions = (
        ["gateway"] * plan.gateway_kills
        + ["broker"] * plan.broker_kills
        + ["child"] * plan.child_kills
        + ["disk"] * plan.disk_fulls
    )
    # Each kill fires when a seeded share of the deliveries is acked, plus a seeded delay.
    schedule = sorted((rnd.uniform(0.05, 0.85), rnd.uniform(0.0, 0.3), a) for a in actions)
    kills: collections.Counter[str] = collections.Counter()
    skipped: collections.Counter[str] = collections.Counter()
    driver = _BoxDriver(boxes)
    gw.start()

    def check_port() -> None:
        """Managed: the gateway's broker is back on its configured port (boxes know no other)."""
        if not plan.managed_broker:
            return
        try:
            live = json.loads((gw.data_dir / "broker.json").read_text())
        except (OSError, ValueError):
            live = {}
        if live.get("port") != managed["listen_port"]:
            res.problems.append(f"run {gw.runs}: the broker listens on {live.get('port')}, not "
                                f"{managed['listen_port']} (a leftover broker held it?)")  # fmt: skip

    check_port()
    if plan.managed_broker and plan.takeovers_per_s > 0:
        from gateway.devices import DeviceRegistry

        thief_pw = DeviceRegistry(gw.data_dir).add("thief").password  # a stolen box's login, say
        gateway_id = (gw.data_dir / "broker" / "gateway-user").read_text().strip()
        thief = _Thief(broker.url, "thief", thief_pw, [gateway_id, *names], plan.takeovers_per_s)
        thief.start()
    driver.start()
    try:
        for share, delay, action in schedule:
            wait_for(
                lambda share=share: driver.acked() >= share * total or driver.done(),
                plan.drain_timeout_s,
                0.05,
                f"{share:.0%} of the deliveries acked",
            )
            time.sleep(delay)
            if action == "gateway":
                gw.kill()
                note(f"SIGKILL gateway at {driver.acked()}/{total} acked")
                time.sleep(rnd.uniform(*plan.down_s))
                gw.start()
                check_port()
                note("gateway restarted")
            elif action == "disk":
                filler = fill(gw.data_dir, "chaos-filler")
                note(f"disk full at {driver.acked()}/{total} acked")
                time.sleep(rnd.uniform(*plan.full_s))
                refused = gw.log_path.read_text(errors="replace").count("; not acked,")
                free(filler)
                note(f"disk has room again ({refused} refusals logged so far)")
            elif action == "broker":
                broker.kill()
                note(f"SIGKILL broker at {driver.acked()}/{total} acked")
                time.sleep(rnd.uniform(*plan.down_s))
                broker.start()
                note("broker restarted")
            else:
                try:
                    pid = wait_for(lambda: _child_pid(gw), 30, 0.05, "a WhatsApp child to kill")
                except TimeoutError:
                    skipped[action] += 1
                    note("no WhatsApp child to kill (still restarting); skipped")
                    continue
                os.kill(pid, signal.SIGKILL)
                note(f"SIGKILL WhatsApp child {pid} at {driver.acked()}/{total} acked")
            kills[action] += 1
        note("last kill done; draining")
        wait_for(driver.done, plan.drain_timeout_s, 0.2, "every box to be acked")
        note(f"all {total} deliveries acked by the gateway")

        def outbox_drained() -> bool:
            a = gw.health().get("alerts", {})
            return a.get("sent", 0) >= 2 * total and not a.get("pending") and not a.get("failed")

        wait_for(outbox_drained, plan.drain_timeout_s, 0.5, "the outbox to send everything")
        note("outbox drained")
    finally:
        if thief is not None:
            thief.stop_flag.set()
            thief.join(30)
        driver.stop_flag.set()
        driver.join(30)
        for b in boxes:
            try:
                b.close()
            except Exception:
                pass
        if not broker.running():
            broker.start()
        code = gw.stop() if gw.running() else None
        if code not in (0, None):
            res.problems.append(f"gateway exited with {code} on SIGTERM")
        gw.kill()

    res.problems += [f"box driver: {e}" for e in driver.errors]
    spool_drops = sum(b.app.spool.dropped_photos + b.app.spool.dropped_events for b in boxes)
    photo_drops = sum(b.app.spool.dropped_photos for b in boxes)
    if spool_drops and plan.spool_room:
        res.problems.append(f"the boxes' spools dropped {spool_drops} photos/events (spool too small)")
    made = [(b.device, eid, t) for b in boxes for eid, t in b.made]
    made_keys = {(d, e) for d, e, _ in made}
    if len(made) != total or any(t != "delivery" for _, _, t in made):
        res.problems.append(
            f"the boxes made {collections.Counter(t for _, _, t in made)}, not {total} deliveries"
        )
    audit = audit_data_folder(gw.data_dir, gw.alerts_dir)
    res.problems += audit["problems"]
    stored = [(e["device"], e["id"]) for e in audit["events"]]
    if len(stored) != len(set(stored)) or set(stored) != made_keys:
        res.problems.append(
            f"stored {len(stored)} events ({len(set(stored))} distinct), boxes made {len(made_keys)}; "
            f"missing {sorted(made_keys - set(stored))[:5]}, extra {sorted(set(stored) - made_keys)[:5]}"
        )
    served = {hashlib.sha256(p).hexdigest() for b in boxes for p in b.photos.served}
    for e in audit["events"]:
        if e.get("photo") is None or e["photo"]["sha256"] not in served:
            if e.get("photo") is None and not plan.spool_room:
                continue  # counted below against the photos the boxes dropped
            res.problems.append(f"event {e['device']}/{e['id']}: photo missing or not one the box took")
    without_photo = sum(1 for e in audit["events"] if e.get("photo") is None)
    if without_photo > photo_drops:
        res.problems.append(f"{without_photo} events stored without a photo, the boxes dropped {photo_drops}")
    # Folder sink: every delivery in exactly one alert document.
    in_sink = collections.Counter((a["device"], eid) for a in audit["alerts"] for eid in a["event_ids"])
    if set(in_sink) != made_keys or any(n != 1 for n in in_sink.values()):
        res.problems.append(
            f"folder sink: {len(in_sink)} deliveries, {sum(n > 1 for n in in_sink.values())} more than once, "
            f"{len(made_keys - set(in_sink))} missing"
        )
    # WhatsApp (fake transport): every alert at least once; duplicates only for sends cut by a kill.
    # A send is matched to its alert by the photo's sha256 (text-only alerts: by their caption).
    alerts_by_key: collections.Counter[str] = collections.Counter()
    for a in audit["alerts"]:
        if a.get("photo"):
            alerts_by_key[hashlib.sha256((gw.alerts_dir / a["photo"]).read_bytes()).hexdigest()] += 1
        else:
            alerts_by_key["text:" + a["caption"]] += 1
    sent = _fake_sent(fake_dir)
    per_key = collections.Counter(s.get("image_sha256") or "text:" + s.get("text", "") for s in sent)
    unknown = sum(n for k, n in per_key.items() if k not in alerts_by_key)
    missing_wa = {k for k, n in alerts_by_key.items() if per_key.get(k, 0) < n}
    duplicates = sum(max(0, per_key[k] - n) for k, n in alerts_by_key.items())
    allowed_dups = kills["child"] + kills["gateway"]
    if unknown:
        res.problems.append(f"WhatsApp: {unknown} sends that match no alert photo")
    if missing_wa:
        res.problems.append(f"WhatsApp: {len(missing_wa)} alerts never sent")
    if duplicates > allowed_dups:
        res.problems.append(f"WhatsApp: {duplicates} duplicate sends, more than the {allowed_dups} kills")
    kicked: collections.Counter[str] = collections.Counter()
    if plan.managed_broker:
        kicked = _kicked_clients(gw.data_dir / "broker")
        victims = {k: n for k, n in kicked.items() if k != "thief"}
        if victims:
            res.problems.append(f"clients kicked off by another connection under their id: {victims}")
    photo_files = sum(1 for p in (gw.data_dir / "photos").rglob("*") if p.is_file())
    res.counts = {
        "boxes": plan.boxes,
        "box_spool_drops": spool_drops,
        "events_without_photo": without_photo,
        "deliveries_made": len(made),
        "events_stored": len(stored),
        "events_stored_distinct": len(set(stored)),
        "photo_files": photo_files,
        "alerts_in_folder_sink": len(audit["alerts"]),
        "outbox": audit["outbox_counts"],
        "whatsapp_sent": len(sent),
        "whatsapp_distinct_alerts": sum(min(per_key.get(k, 0), n) for k, n in alerts_by_key.items()),
        "whatsapp_duplicates": duplicates,
        "kills": dict(kills),
        "kills_skipped": dict(skipped),
        "gateway_runs": gw.runs,
        # lines where the gateway said it could not write an event and did not ack it (rate-limited
        # to one a minute, so a floor): shows the full disks really hit incoming events
        "refused_writes_logged": gw.log_path.read_text(errors="replace").count("; not acked,"),
        "box_mqtt_connects": sum(b.app.mqtt.connects for b in boxes),
        "broker": "managed" if plan.managed_broker else "external",
        "thief_connects": thief.connects if thief is not None else 0,
        "clients_kicked_by_id": dict(kicked),
        "problems": len(res.problems),
        "seconds": round(time.monotonic() - t0, 1),
    }
    return res


def print_counts(res: ChaosResult) -> None:
    for k, v in res.counts.items():
        print(f"  {k:<26} {v}")
    for p in res.problems[:50]:
        print(f"  PROBLEM: {p}")
    print("OK: every guarantee held" if res.ok else f"NOT OK: {len(res.problems)} problems")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--deliveries", type=int, default=25, help="per box")
    ap.add_argument("--gateway-kills", type=int, default=4)
    ap.add_argument("--broker-kills", type=int, default=3)
    ap.add_argument("--child-kills", type=int, default=4)
    ap.add_argument(
        "--disk-fulls", type=int, default=0, help="fill the gateway's disk (a tmpfs; root) N times"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--board-spool", action="store_true", help="the board's spool limits (old photos may be dropped)"
    )
    ap.add_argument("--segment-records", type=int, default=0, help="store segment size (0: default 512)")
    ap.add_argument(
        "--managed-broker", action="store_true", help="the gateway's own Mosquitto; boxes log in (issue 14)"
    )
    ap.add_argument(
        "--takeovers", type=float, default=2.0, metavar="PER_S",
        help="managed broker: a thief's reconnects per second under other clients' ids (0: none)",
    )  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/chaos.json")
    a = ap.parse_args(argv)
    from bench.common import machine_info, write_json
    from gateway.mosquitto import Mosquitto

    plan = ChaosPlan(
        boxes=a.boxes,
        deliveries=a.deliveries,
        gateway_kills=a.gateway_kills,
        broker_kills=a.broker_kills,
        child_kills=a.child_kills,
        disk_fulls=a.disk_fulls,
        seed=a.seed,
        spool_room=not a.board_spool,
        segment_records=a.segment_records,
        managed_broker=a.managed_broker,
        takeovers_per_s=a.takeovers if a.managed_broker else 0.0,
    )
    work = Path(tempfile.mkdtemp(prefix="parcelbox-chaos-"))
    broker = None if a.managed_broker else Mosquitto(work / "broker")
    if broker is not None:
        broker.start()
    try:
        res = run_chaos(work, broker, f"chaos{a.seed}", plan, echo=True)
    finally:
        if broker is not None:
            broker.kill()
            broker.release_port()
    print()
    where = "the gateway's managed broker" if plan.managed_broker else "an external broker"
    print(f"chaos run: {plan.boxes} boxes x {plan.deliveries} deliveries, seed {plan.seed}, {where}")
    print_counts(res)
    if not a.no_json:
        path = write_json(
            "chaos-managed" if plan.managed_broker else "chaos",
            {"machine": machine_info(), "plan": plan.__dict__, "counts": res.counts, "problems": res.problems,
             "log": res.log},
        )  # fmt: skip
        print(f"wrote {path}")
    if a.keep or not res.ok:
        print(f"work folder kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
