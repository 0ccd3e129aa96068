# The whole app loop (firmware/app.py) with every edge faked in memory: pins, a
# lemariva-style camera, a umqtt-shaped client that records what is published and lets
# the case inject acks and commands. Runs under CPython (tests/test_firmware_app.py)
# and real MicroPython (no sockets there), on a real spool folder.
import json
import os

import app
import cam
import link
import protocol
import sensors
import settings
from spool import Spool

try:
    from tools.sim.board import SimPin  # CPython
except ImportError:
    from board import SimPin  # MicroPython: tools/sim is mounted at /sim


class Clock:
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now


class Camera:
    """lemariva's module-level API."""

    JPEG = 4
    FRAME_SVGA = 3

    def __init__(self):
        self.n = 0

    def init(self, n, **kw):
        return True

    def framesize(self, v):
        pass

    def quality(self, v):
        pass

    def capture(self):
        self.n += 1
        return b"\xff\xd8" + bytes([self.n & 0xFF]) * (3000 + self.n) + b"\xff\xd9"

    def deinit(self):
        pass


class Client:
    """umqtt.simple-shaped; `up` False makes every call fail like a dead socket."""

    def __init__(self):
        self.up = True
        self.cb = None
        self.pub = []
        self.pending = []
        self.sock = None

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (topic, msg, retain, qos)

    def connect(self, clean_session=True):
        if not self.up:
            raise OSError(111)
        self.clean = clean_session
        return 0

    def subscribe(self, topic, qos=0):
        if not self.up:
            raise OSError(104)

    def publish(self, topic, msg, retain=False, qos=0):
        if not self.up:
            raise OSError(104)
        self.pub.append((bytes(topic), bytes(msg), retain))

    def check_msg(self):
        if not self.up:
            raise OSError(104)
        if self.pending:
            t, m = self.pending.pop(0)
            self.cb(t, m)
            return 0x30
        return None

    def ping(self):
        pass

    def disconnect(self):
        pass


class Rig:
    def __init__(self, base, sensor="ir", spool_kw=None, updater=None):
        self.updater = updater
        cfg = settings.copy_defaults()
        cfg["device_id"] = "box-1"
        cfg["prefix"] = "pb"
        cfg["sensor"] = sensor
        cfg["settle_s"] = 1
        cfg["cooldown_s"] = 0
        cfg["ack_timeout_s"] = 10
        cfg["flash_ms"] = 0
        self.cfg = cfg
        self.base = base
        self.clock = Clock()
        self.lid_pin = SimPin(0)
        self.ir_pin = SimPin(1)  # active low: 1 = empty
        self.client = Client()
        self.lines = []
        self.spool_kw = spool_kw or {}
        self.build()

    def log(self, m):
        self.lines.append(m)

    def build(self):
        cfg = self.cfg
        board = app.Board(
            ticks_ms=self.clock.ticks_ms, rand_bytes=lambda n: b"\x01\x02\x03\x04\x05\x06\x07\x08"
        )
        lid = sensors.Reed(self.lid_pin, 1, 0)
        occ = sensors.IRSensor(self.ir_pin, 0) if cfg["sensor"] == "ir" else None
        camera = cam.CameraAdapter(Camera(), "SVGA", 80, 1, SimPin(0), True, 0, None, self.log)
        sp = Spool(self.base, os, log=self.log, **self.spool_kw)
        topics = protocol.Topics("box-1", "pb")
        mqtt = link.Mqtt(self.client, topics, 60, link.Backoff(100, 1000), log=self.log)
        self.topics = topics
        self.app = app.App(
            cfg,
            board,
            lid,
            sp,
            mqtt,
            None,
            occ,
            camera,
            self.base + "/config.json",
            os,
            self.log,
            updater=self.updater,
        )
        self.app.start()

    def run(self, ms, step=50):
        end = self.clock.now + ms
        while self.clock.now < end:
            self.clock.now += step
            self.app.step()

    def deliver(self):
        self.lid_pin.level = 1
        self.run(300)
        self.ir_pin.level = 0
        self.run(300)
        self.lid_pin.level = 0
        self.run(1500)

    def events(self):
        return [json.loads(m) for t, m, r in self.client.pub if t == self.topics.event]

    def photo(self, eid):
        prefix = ("pb/box-1/photo/%s/" % eid).encode()
        parts = {}
        for t, m, r in self.client.pub:
            if t.startswith(prefix):
                parts[int(t[len(prefix) :])] = m
        return b"".join(parts[i] for i in range(len(parts)))

    def inject(self, topic, obj):
        self.client.pending.append((topic, json.dumps(obj).encode()))


def case_ota_offer_over_the_link_status_and_staying_awake(base):
    """The app wiring of an update: the status names the running set, an offer on `ota` is answered
    with a need on `ota/reply`, chunks on `ota/data` are written, and the box stays busy (awake)
    until it has switched; a malformed offer is nacked and the box runs on."""
    try:
        import fw_ota_cases as oc  # MicroPython: tests/mp is on the path
    except ImportError:
        from tests.mp import fw_ota_cases as oc
    import ota
    import otaboot

    app_dir = base + "/flash"
    os.mkdir(app_dir)
    oc.install(app_dir, oc.OLD)
    u = ota.Updater(otaboot.Flash(app_dir, os), "0.1.0", r_log)
    r = Rig(base + "/rig", updater=u)
    r.run(200)
    st = [json.loads(m) for t, m, _ in r.client.pub if t == r.topics.status][-1]
    assert st["set"] == u.running()[1] and st["fw"] == app.FW_VERSION, st
    assert not r.app.busy()
    r.client.pending.append((r.topics.ota, b"{not json"))
    r.run(100)
    offer = oc.offer_for(oc.NEW)
    r.inject(r.topics.ota, offer)
    for _ in range(60):
        r.run(50)
        needs = [json.loads(m) for t, m, _ in r.client.pub if t == r.topics.ota_reply]
        r.client.pub = [p for p in r.client.pub if p[0] != r.topics.ota_reply]
        ops = [n["op"] for n in needs]
        if "staged" in ops:
            break
        assert r.app.busy()
        for n in needs:
            if n["op"] == "need":
                r.client.pending.append((r.topics.ota_data, oc.chunk_for(offer, n)))
    assert "staged" in ops, ops
    assert r.app.busy() or r.app.reboot_pending
    assert r.app.counters["bad_cmd"] == 0 and u.counters["bad_ota"] == 1  # the bad offer, nacked


def r_log(_m):
    pass


def case_delivery_is_spooled_published_and_removed_on_ack(base):
    r = Rig(base)
    r.run(200)
    assert r.app.mqtt.connected and r.client.clean is False
    st = [json.loads(m) for t, m, ret in r.client.pub if t == r.topics.status]
    assert st and st[0]["online"] is True and st[0]["spooled"] == 0
    r.deliver()
    evs = r.events()
    assert [e["type"] for e in evs] == ["delivery"], evs
    ev = evs[0]
    data = r.photo(ev["id"])
    assert len(data) == ev["photo"]["size"] and protocol.sha256_hex(data) == ev["photo"]["sha256"]
    assert len(r.app.spool) == 1
    r.inject(r.topics.ack, {"v": 1, "id": ev["id"], "ok": True})
    r.run(100)
    assert len(r.app.spool) == 0 and r.app.counters["acked"] == 1


def case_offline_events_wait_and_go_oldest_first_with_same_ids(base):
    r = Rig(base)
    r.client.up = False
    r.deliver()
    r.ir_pin.level = 1
    r.lid_pin.level = 1
    r.run(300)
    r.lid_pin.level = 0
    r.run(1500)  # pickup
    assert r.events() == [] and len(r.app.spool) == 2
    ids = [r.app.spool.record(o)["id"] for o in r.app.spool.orders()]
    r.client.up = True
    r.run(3000)
    sent = [e["id"] for e in r.events()]
    assert sent == ids, (sent, ids)
    assert [e["type"] for e in r.events()] == ["delivery", "pickup"]
    for e in r.events():
        assert protocol.sha256_hex(r.photo(e["id"])) == e["photo"]["sha256"]


def case_unacked_events_survive_a_reboot(base):
    r = Rig(base)
    r.deliver()
    eid = r.events()[0]["id"]
    r.client.pub = []
    r.build()  # reboot: new objects over the same spool folder
    assert r.app.seq == 1
    r.run(500)
    assert [e["id"] for e in r.events()] == [eid]


def case_nack_retry_resends_and_refusal_drops(base):
    r = Rig(base)
    r.deliver()
    eid = r.events()[0]["id"]
    r.inject(r.topics.ack, {"v": 1, "id": eid, "ok": False, "error": "sha256 mismatch", "retry": True})
    r.run(200)
    assert [e["id"] for e in r.events()] == [eid, eid]
    r.inject(r.topics.ack, {"v": 1, "id": eid, "ok": False, "error": "schema", "retry": False})
    r.run(200)
    assert len(r.app.spool) == 0 and r.app.counters["refused"] == 1
    assert [x for x in r.lines if "refused for good" in x and eid in x]


def case_ack_timeout_resends(base):
    r = Rig(base)
    r.deliver()
    r.run(11000)
    ids = [e["id"] for e in r.events()]
    assert len(ids) == 2 and ids[0] == ids[1] and r.app.counters["resent"] == 1


def case_resend_interval_doubles_while_the_gateway_is_silent(base):
    r = Rig(base)
    r.deliver()
    r.run(75000)  # sent at ~2 s, then after 10 s, 20 s, 40 s
    ids = [e["id"] for e in r.events()]
    assert len(ids) == 4 and len(set(ids)) == 1, len(ids)


def case_bad_acks_and_commands_are_counted_not_fatal(base):
    r = Rig(base)
    r.run(100)
    r.client.pending.append((r.topics.ack, b"{garbage"))
    r.client.pending.append((r.topics.cmd, b'{"v":1,"id":"../x","cmd":"ping"}'))
    r.inject(r.topics.cmd, {"v": 1, "id": "cmd-00000009", "cmd": "dance"})
    r.run(200)
    assert r.app.counters["bad_ack"] == 1 and r.app.counters["bad_cmd"] == 1
    res = [json.loads(m) for t, m, ret in r.client.pub if t == r.topics.cmd_result]
    assert res == [{"v": 1, "id": "cmd-00000009", "ok": False, "error": "unknown command: dance"}]


def case_commands(base):
    r = Rig(base)
    r.run(100)
    r.inject(r.topics.cmd, {"v": 1, "id": "cmd-00000001", "cmd": "snapshot", "args": {}})
    r.inject(r.topics.cmd, {"v": 1, "id": "cmd-00000002", "cmd": "config", "args": {"left_open_s": 60}})
    r.inject(r.topics.cmd, {"v": 1, "id": "cmd-00000002", "cmd": "config", "args": {"left_open_s": 60}})
    r.inject(r.topics.cmd, {"v": 1, "id": "cmd-00000003", "cmd": "config", "args": {"wifi": {}}})
    r.run(300)
    res = [json.loads(m) for t, m, ret in r.client.pub if t == r.topics.cmd_result]
    assert [x["id"] for x in res] == ["cmd-00000001", "cmd-00000002", "cmd-00000003"]  # duplicate ignored
    snap = r.events()[0]
    assert snap["type"] == "snapshot" and snap["cmd"] == "cmd-00000001" and res[0]["event"] == snap["id"]
    assert res[1]["ok"] is True and res[1]["changed"] == ["left_open_s"]
    assert r.app.detector.left_open_ms == 60000
    with open(base + "/config.json") as f:
        assert json.loads(f.read())["left_open_s"] == 60
    assert res[2]["ok"] is False


def case_camera_failure_sends_event_without_photo(base):
    r = Rig(base)

    def broken(*a, **k):
        raise OSError("Camera Init Failed")

    r.app.camera.driver.init = broken
    r.app.camera.ok = False
    r.deliver()
    ev = r.events()[0]
    assert ev["photo"] is None and "Camera Init Failed" in ev["sensors"]["camera_error"]


class FullDisk:
    """os with rename failing like a full filesystem."""

    def __getattr__(self, name):
        return getattr(os, name)

    def rename(self, a, b):
        raise OSError(28)


def case_spool_failure_is_logged_counted_and_sent_best_effort(base):
    r = Rig(base)
    r.run(100)
    r.app.spool.os = FullDisk()
    r.deliver()
    assert r.app.counters["spool_errors"] == 1
    assert [x for x in r.lines if "not spooled" in x]
    ev = r.events()[0]
    assert protocol.sha256_hex(r.photo(ev["id"])) == ev["photo"]["sha256"]


def case_no_sensor_gives_lid_closed(base):
    r = Rig(base, sensor="none")
    r.deliver()
    assert [e["type"] for e in r.events()] == ["lid_closed"]


CASES = [(n, f) for n, f in sorted(globals().items()) if n.startswith("case_") and callable(f)]


def run_all(root):
    i = 0
    for name, fn in CASES:
        i += 1
        base = "%s/a%02d" % (root, i)
        os.mkdir(base)
        fn(base)
        print("PASS", name)
    print("DONE", len(CASES))
