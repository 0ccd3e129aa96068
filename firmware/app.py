"""The box's application loop: sensors -> detector -> camera -> spool -> MQTT.

One cooperative loop, no threads: `step()` is called over and over by
`main.py` (on the board) or by the simulator. Everything it touches comes in
through the constructor - pins wrapped as `sensors.Reed` etc., the camera
adapter, the spool, the Wi-Fi and MQTT links and a `Board` of clock, entropy
and system functions - so this file imports no hardware module.

Delivery guarantee (docs/architecture.md): an event is written to the spool
before anything is published and leaves it only on the gateway's `ok` ack.
Unacked events are re-sent oldest first after every (re)connect and after
`ack_timeout_s`; a nack with `retry: true` re-sends at once (event + photo), a
nack with `retry: false` drops the event with a log line. A fresh frame is
published straight from the camera buffer (memoryview chunks); a spooled one
is read back chunk by chunk into one buffer allocated here at start-up.
"""

import json

import protocol
import sender
import settings
from detector import IDLE, Detector
from link import LINK_ERRORS
from spool import SpoolError

FW_VERSION = "0.1.0"
_MAX_RESEND_MS = 600000


def _diff(a, b):
    return a - b


class Board:
    """Clock, entropy and system hooks. Defaults are harmless stand-ins."""

    def __init__(
        self,
        ticks_ms,
        ticks_diff=_diff,
        ticks_add=None,
        unix_time=None,
        rand_bytes=None,
        heap_free=None,
        battery_mv=None,
        reboot=None,
        feed=None,
    ):
        self.ticks_ms = ticks_ms
        self.ticks_diff = ticks_diff
        self.ticks_add = ticks_add or (lambda a, b: a + b)
        self.unix_time = unix_time or (lambda: None)
        self.rand_bytes = rand_bytes
        self.heap_free = heap_free or (lambda: None)
        self.battery_mv = battery_mv or (lambda: None)
        self.reboot = reboot
        self.feed = feed


class App:
    def __init__(
        self,
        cfg,
        board,
        lid,
        spool,
        mqtt,
        wifi=None,
        occupancy=None,
        camera=None,
        config_path=None,
        os_mod=None,
        log=print,
        updater=None,
    ):
        self.cfg = cfg
        self.board = board
        self.lid = lid
        self.spool = spool
        self.mqtt = mqtt
        self.wifi = wifi
        self.occupancy = occupancy
        self.camera = camera
        self.config_path = config_path
        self.os = os_mod
        self.log = log
        self.updater = updater  # ota.Updater, or None (no over-the-air updates)
        self._connected_once = False
        self.topics = mqtt.topics
        self.chunk_size = cfg["chunk_size"]
        # Allocated once, early (before RAM fragments): every spooled photo is
        # re-sent through this one buffer.
        self.chunk_buf = bytearray(self.chunk_size)
        state = spool.load_state()
        self.seq = state.get("seq", 0) if isinstance(state.get("seq"), int) else 0
        level = state.get("level")
        rise, empty = settings.thresholds(cfg)
        self.detector = Detector(
            settle_ms=cfg["settle_s"] * 1000,
            cooldown_ms=cfg["cooldown_s"] * 1000,
            left_open_ms=cfg["left_open_s"] * 1000,
            has_sensor=occupancy is not None,
            rise=rise,
            empty=empty,
            level=level if isinstance(level, (int, float)) else None,
            ticks_diff=board.ticks_diff,
            sample_ms=cfg["sample_s"] * 1000,
        )
        self._sent = {}  # spool order -> ticks when last published (awaiting ack)
        self._tries = {}  # spool order -> times published (for the resend backoff)
        self._was_connected = False
        self._last_status = None
        self._recent_cmds = []
        self.reboot_pending = False
        self._uptime_ms = 0
        self._last_tick = board.ticks_ms()
        self.counters = {
            "events": 0,
            "acked": 0,
            "nacked_retry": 0,
            "refused": 0,
            "resent": 0,
            "sensor_errors": 0,
            "bad_ack": 0,
            "bad_cmd": 0,
            "spool_errors": 0,
        }

    # --- life cycle ----------------------------------------------------------

    def start(self, init_camera=True):
        """`init_camera` False (a heartbeat wake in battery mode) leaves the camera off until
        a capture needs it: init costs time and current for a photo nobody takes."""
        if init_camera and self.camera is not None and self.cfg["camera"]:
            self.camera.init()
        self.log(
            "app: %s fw %s, %d event(s) spooled, sensor %s"
            % (self.cfg["device_id"], FW_VERSION, len(self.spool), self.cfg["sensor"])
        )

    def step(self):
        """One pass of the loop: sensors, detection, link, sending."""
        b = self.board
        now = b.ticks_ms()
        self._uptime_ms += b.ticks_diff(now, self._last_tick)
        self._last_tick = now
        if b.feed is not None:
            b.feed()
        lid_open = self.lid.read(now)
        level = None
        if self.occupancy is not None and self.detector.wants_reading(now):
            try:
                level = self.occupancy.read_level()
            except OSError as e:
                self.counters["sensor_errors"] += 1
                if self.cfg["debug"]:
                    self.log("sensor: read failed: %r" % (e,))
        for ev in self.detector.update(now, lid_open, level):
            sensors = ev["sensors"]
            if self.occupancy is not None:
                for k in self.occupancy.info:
                    sensors[k] = self.occupancy.info[k]
            self.record_event(ev["type"], sensors)
        self.service(now)

    def service(self, now=None):
        """Keep the link up, handle what arrived, send what is due."""
        b = self.board
        if now is None:
            now = b.ticks_ms()
        net = self.wifi.poll(now) if self.wifi is not None else True
        up = self.mqtt.poll(now, net)
        if up and not self._was_connected:
            # A new connection: everything unacked goes again, oldest first.
            self._sent = {}
            self._connected_once = True
            self._publish_status(now)
            if self.updater is not None:
                self._ota_send(self.updater.on_connect(), now)
        self._was_connected = up
        self._handle_inbox(now)
        u = self.updater
        if u is not None:
            self._ota_send(
                u.poll(now, self._uptime_ms, self.wifi is None or self.wifi.up, up, self._connected_once), now
            )
            if u.reboot_wanted and self.detector.state == IDLE and not self.reboot_pending:
                # A staged set switches (or a failed trial rolls back) at boot; the spool keeps
                # every event across the reset.
                u.reboot_wanted = False
                self.log("ota: rebooting to switch sets")
                self.reboot_pending = True
        if self.mqtt.connected:
            if (
                self._last_status is None
                or b.ticks_diff(now, self._last_status) >= self.cfg["status_interval_s"] * 1000
            ):
                self._publish_status(now)
            self._pump(now)
        if self.reboot_pending and b.reboot is not None:
            self.reboot_pending = False
            self.mqtt.disconnect(offline_status=False)
            b.reboot()

    def lid_cycle_during_boot(self):
        """Battery mode woke on the lid but it is closed already: report that opening."""
        self.log("app: woken by the lid, closed again before the app started: measuring")
        self.detector.missed_cycle(self.board.ticks_ms())

    def busy(self):
        """True while there is work a deep sleep would interrupt."""
        u = self.updater
        # An update being received, staged, or on trial (it needs the gateway's confirm) keeps a
        # battery box awake: a deep sleep would cost a wake (and a trial boot) per chunk.
        updating = u is not None and (u.offer is not None or u.reboot_wanted or u.trial is not None)
        return self.detector.state != IDLE or len(self.spool) > 0 or self.reboot_pending or updating

    def uptime_s(self):
        return self._uptime_ms // 1000

    # --- events --------------------------------------------------------------

    def record_event(self, etype, sensors, cmd=None):
        """Photograph, spool, and (when the link is idle) publish one event.
        Returns the event id, or None if even the spool refused it."""
        b = self.board
        self.seq += 1
        rnd = b.rand_bytes(8) if b.rand_bytes is not None else None
        if not rnd:
            rnd = ("%08x" % ((b.ticks_ms() * 2654435761) & 0xFFFFFFFF)).encode()
        eid = protocol.make_id(rnd, self.seq)
        frame = None
        meta = None
        if self.camera is not None and self.cfg["camera"]:
            frame = self.camera.capture()
            if frame is None:
                sensors["camera_error"] = self.camera.error or "no frame"
            else:
                try:
                    meta = protocol.photo_meta(len(frame), protocol.sha256_hex(frame), self.chunk_size)
                except protocol.ProtocolError as e:
                    self.log("camera: frame refused (%s), event without photo" % (e.args[0],))
                    sensors["camera_error"] = e.args[0]
                    frame = None
        rec = protocol.event_dict(eid, etype, b.unix_time(), self.seq, sensors, meta, cmd)
        self.counters["events"] += 1
        self.log("event: %s %s (photo: %s)" % (etype, eid, "yes" if meta else "no"))
        try:
            order = self.spool.add(rec, frame)
        except SpoolError as e:
            self.counters["spool_errors"] += 1
            self.log("event: %s not spooled (%s); sending best effort" % (eid, e))
            data = json.dumps(rec).encode()
            if self.mqtt.connected:
                now = b.ticks_ms()
                if self.mqtt.publish(self.topics.event, data, False, 1, now) and frame is not None:
                    self._publish_frame(eid, frame, now)
            return eid
        self.spool.save_state({"seq": self.seq, "level": self.detector.level})
        if self.mqtt.connected and self._backlog_sent(order):
            # Nothing older waiting: publish now, straight from the frame buffer.
            now = b.ticks_ms()
            data = self.spool.record_bytes(order)
            if data is not None and self.mqtt.publish(self.topics.event, data, False, 1, now):
                if self.spool.has_photo(order) and frame is not None:
                    if not self._publish_frame(eid, frame, now):
                        return eid
                self._sent[order] = now
                self._tries[order] = 1
        return eid

    def _backlog_sent(self, order):
        for o in self.spool.orders():
            if o != order and o not in self._sent:
                return False
        return True

    def _publish_frame(self, eid, frame, now):
        try:
            sender.publish_frame(
                self.mqtt.client, self.topics, eid, frame, self.chunk_size, 1, self.board.feed
            )
            return True
        except LINK_ERRORS as e:
            self.mqtt.lost(now, e)
            return False

    def _pump(self, now):
        """Send the oldest spooled event that is not awaiting its ack."""
        b = self.board
        base = self.cfg["ack_timeout_s"] * 1000
        waiting = 0
        due = None
        for order in self.spool.orders():
            t = self._sent.get(order)
            # A gateway that stays silent gets the event again after ack_timeout_s,
            # then twice that, ... up to 10 minutes: no flood of photos.
            tries = self._tries.get(order, 1)
            timeout = min(base << min(tries - 1, 10), _MAX_RESEND_MS)
            if t is not None and b.ticks_diff(now, t) < timeout:
                waiting += 1
            elif due is None:
                due = order
        if due is None or waiting >= self.cfg["max_inflight"]:
            return
        self._send_spooled(due, now)

    def _send_spooled(self, order, now):
        data = self.spool.record_bytes(order)
        if data is None:
            return False
        try:
            rec = json.loads(data)
            eid = rec["id"]
            photo = rec.get("photo")
        except (ValueError, KeyError, TypeError):
            self.log("spool: record %d unreadable, dropped" % order)
            self.spool.drop(order, "unreadable")
            return False
        if order in self._sent:
            self.counters["resent"] += 1
        if not self.mqtt.publish(self.topics.event, data, False, 1, now):
            return False
        if photo:
            f = self.spool.open_photo(order)
            if f is not None:
                try:
                    sender.publish_file(
                        self.mqtt.client,
                        self.topics,
                        eid,
                        f,
                        photo["size"],
                        self.chunk_buf,
                        photo["chunk_size"],
                        1,
                        self.board.feed,
                    )
                except sender.ShortPhoto:
                    # A damaged file, not the link: keep the event, send it without the photo.
                    self.spool.drop_photo(order, "photo file damaged")
                    return False
                except LINK_ERRORS as e:
                    self.mqtt.lost(now, e)
                    return False
                finally:
                    f.close()
        self._sent[order] = now
        self._tries[order] = self._tries.get(order, 0) + 1
        return True

    # --- incoming ------------------------------------------------------------

    def _handle_inbox(self, now):
        inbox = self.mqtt.inbox
        while inbox:
            topic, msg = inbox.pop(0)
            if topic == self.topics.ack:
                self._on_ack(msg)
            elif topic == self.topics.cmd:
                self._on_cmd(msg, now)
            elif self.updater is not None and topic == self.topics.ota:
                self._ota_send(self.updater.on_ota(msg, now), now)
                self._publish_status(now)  # "updating" / "trial" changed: the gateway shows it
            elif self.updater is not None and topic == self.topics.ota_data:
                self._ota_send(self.updater.on_chunk(msg, now), now)

    def _ota_send(self, replies, now):
        for p in replies:
            self.mqtt.publish(self.topics.ota_reply, p, False, 1, now)

    def _on_ack(self, msg):
        try:
            eid, ok, error, retry = protocol.decode_ack(msg)
        except protocol.ProtocolError as e:
            self.counters["bad_ack"] += 1
            self.log("ack: rejected (%s)" % (e.args[0],))
            return
        order = self.spool.order_of(eid)
        if order is None:
            return  # a duplicate ack for an event already gone
        if ok:
            self.spool.remove(eid)
            self._sent.pop(order, None)
            self._tries.pop(order, None)
            self.counters["acked"] += 1
        elif retry:
            self.counters["nacked_retry"] += 1
            self.log("ack: %s refused for now (%s), sending again" % (eid, error))
            self._sent.pop(order, None)
        else:
            self.counters["refused"] += 1
            self.log("ack: %s refused for good (%s), dropped from the spool" % (eid, error))
            self.spool.remove(eid)
            self._sent.pop(order, None)
            self._tries.pop(order, None)

    def _reply(self, cid, ok, error=None, **extra):
        self.mqtt.publish(
            self.topics.cmd_result,
            protocol.cmd_result_payload(cid, ok, error, **extra),
            False,
            1,
            self.board.ticks_ms(),
        )

    def _on_cmd(self, msg, now):
        try:
            cid, cmd, args = protocol.decode_cmd(msg)
        except protocol.ProtocolError as e:
            self.counters["bad_cmd"] += 1
            self.log("cmd: rejected (%s)" % (e.args[0],))
            return
        if cid in self._recent_cmds:
            return  # QoS 1 redelivery of a command already done
        self._recent_cmds.append(cid)
        if len(self._recent_cmds) > 16:
            self._recent_cmds.pop(0)
        self.log("cmd: %s %s" % (cmd, cid))
        if cmd == "ping":
            self._reply(cid, True, None, fw=FW_VERSION, uptime_s=self.uptime_s(), spooled=len(self.spool))
        elif cmd == "snapshot":
            if self.camera is None or not self.cfg["camera"]:
                self._reply(cid, False, "no camera")
                return
            sensors = {"lid": "open" if self.lid.is_open else "closed"}
            eid = self.record_event("snapshot", sensors, cid)
            if eid is None or "camera_error" in sensors:
                self._reply(cid, False, "camera: %s" % sensors.get("camera_error", "failed"), event=eid)
            else:
                self._reply(cid, True, None, event=eid)
        elif cmd == "reboot":
            self._reply(cid, True)
            self.reboot_pending = True
        elif cmd == "config":
            try:
                changed = settings.apply_remote(self.cfg, args)
            except ValueError as e:
                self._reply(cid, False, str(e))
                return
            if changed and self.config_path is not None and self.os is not None:
                try:
                    settings.save(self.config_path, self.cfg, self.os)
                except OSError as e:
                    self._reply(cid, False, "not saved: %r" % (e,), changed=changed)
                    return
            self.apply_config()
            self._reply(cid, True, None, changed=changed)
        else:
            self._reply(cid, False, "unknown command: %s" % cmd)

    def apply_config(self):
        """Push tunables into the running parts (after a `config` command)."""
        c = self.cfg
        d = self.detector
        d.settle_ms = c["settle_s"] * 1000
        d.cooldown_ms = c["cooldown_s"] * 1000
        d.left_open_ms = c["left_open_s"] * 1000
        d.sample_ms = c["sample_s"] * 1000
        d.rise, d.empty = settings.thresholds(c)
        self.lid.debounce_ms = c["debounce_ms"]
        occ = self.occupancy
        if occ is not None:
            if hasattr(occ, "empty_range_mm"):
                occ.empty_range_mm = c["empty_range_mm"]
            if hasattr(occ, "scale"):
                occ.scale = c["hx_scale"]
                occ.offset = c["hx_offset"]
        cam = self.camera
        if cam is not None:
            if cam.frame_size != c["frame_size"] or cam.quality != c["jpeg_quality"]:
                cam.deinit()  # re-initialised with the new settings on the next capture
            cam.frame_size = c["frame_size"]
            cam.quality = c["jpeg_quality"]
            cam.warmup = c["warmup_frames"]
            cam.flash = c["flash"]
            cam.flash_ms = c["flash_ms"]

    # --- status --------------------------------------------------------------

    def _publish_status(self, now):
        rssi = self.wifi.rssi() if self.wifi is not None else None
        payload = protocol.status_payload(
            FW_VERSION,
            self.uptime_s(),
            rssi,
            self.board.heap_free(),
            self.board.battery_mv(),
            len(self.spool),
            self.updater.status_fields() if self.updater is not None else None,
        )
        if self.mqtt.publish(self.topics.status, payload, True, 1, now):
            self._last_status = now
