"""Over-the-air update, app side: receive a file set into staging, check it, report the outcome.

The box pulls: the gateway's offer (retained on `<prefix>/<device>/ota`, so a sleeping box finds
it at its next wake) lists every file of the new set with its size and sha256; the box asks for
the files that differ from its running set, one chunk at a time (`need`: file, offset), and the
gateway answers each need with one chunk on `ota/data` carrying the chunk's sha256. One chunk in
flight: the broker never queues more than one chunk's RAM for the box. A chunk whose hash does not
match is asked for again; a need without answer is asked again after `NEED_RETRY_MS`; after a reset
the receiver resumes at the size each staged file already has (a file is only appended to, and
hashed whole when complete: a torn last write is caught there and the file fetched again).

Nothing in the running app folder is written here. When every wanted file is complete and its
hash checked, `ready.json` is written (atomic) and the app reboots when idle: `otaboot.at_boot()`
then switches, and the new set has `trial_s` seconds (and `trial_boots` boots) to be confirmed by
the gateway, else it is rolled back (otaboot.py).

RAM: one read buffer for hashing, allocated here once; chunks are written from the memoryview
of the received payload, never copied.
"""

import otaboot
import protocol

NEED_RETRY_MS = 5000
_SPACE_MARGIN = 16384  # left free for the spool and the journal files


def _outcome(op, r):
    extra = {
        "set": r.get("set"),
        "version": r.get("version"),
        "from": r.get("from"),
        "reason": r.get("reason"),
    }
    return protocol.ota_reply_payload(op, r.get("id"), **extra)


class Updater:
    def __init__(self, fl, fw_version, log=print, ticks_diff=None, buf_size=1024):
        self.fl = fl
        self.fw = fw_version
        self.log = log
        self._diff = ticks_diff or (lambda a, b: a - b)
        self.buf = bytearray(buf_size)
        self.offer = fl.read_json(otaboot.ota_dir(fl, "stage.json"))  # resume after a reset
        st = otaboot.read_state(fl)
        self.trial = st if st and st.get("phase") == "trial" else None
        self.result = fl.read_json(otaboot.ota_dir(fl, "result.json"))
        self.pending = None  # (file index, offset) asked for
        self._asked_at = None
        self.reboot_wanted = False
        self._running = None
        self._gave_up = False
        self.counters = {"bad_ota": 0, "bad_chunk": 0, "need_retries": 0, "file_restarts": 0}

    # --- what the box runs -------------------------------------------------------

    def running(self):
        """({name: (size, sha)}, set sha) of the running set, hashed once per boot."""
        if self._running is None:
            self._running = otaboot.current_set(self.fl, self.buf)
        return self._running

    def status_fields(self):
        d = {"set": self.running()[1], "flash_free": self.fl.free_bytes()}
        if self.trial is not None:
            d["trial"] = True
            d["trial_set"] = self.trial.get("set")  # what the gateway's confirm must name
        if self.result is not None:
            d["update"] = self.result
        if self.offer is not None:
            d["updating"] = self.offer.get("version")
        return d

    def on_connect(self):
        """Replies to publish on a new connection: the outcome of the last update, once per
        connection until the next update starts (the gateway ignores a repeat by its id)."""
        r = self.result
        if r is None:
            return []
        op = "updated" if r.get("ok") else "update_failed"
        return [_outcome(op, r)]

    # --- messages ----------------------------------------------------------------

    def _nack(self, uid, error):
        self.counters["bad_ota"] += 1
        self.log("ota: refused (%s)" % (error,))
        return [protocol.ota_reply_payload("nack", uid, error=error)]

    def on_ota(self, payload, now):
        """A message on the `ota` topic. Returns reply payloads; never raises on bad input."""
        if not payload:
            return []  # the gateway cleared its retained offer
        try:
            d = protocol.decode_ota(payload)
        except protocol.ProtocolError as e:
            return self._nack(None, "%s: %s" % (e.args[0], e.args[1] if len(e.args) > 1 else ""))
        if d["op"] == "confirm":
            return self._on_confirm(d)
        try:
            return self._on_offer(d, now)
        except OSError as e:  # a full or failing flash: say so, keep running
            return self._nack(d["id"], "flash: %r" % (e,))

    def _on_confirm(self, d):
        if self.trial is None or d["set"] != self.trial.get("set"):
            return []
        res = otaboot.commit(self.fl)
        self.trial = None
        if res is None:
            return []
        self.result = res
        self.log("ota: %s confirmed by the gateway: kept" % res.get("version"))
        return [_outcome("updated", res)]

    def _on_offer(self, d, now):
        uid = d["id"]
        fl = self.fl
        if self.trial is not None:
            if d["set"] == self.trial.get("set"):
                return []  # our own trial: the confirm is what counts
            return self._nack(uid, "busy: %s is in its trial" % self.trial.get("version"))
        files = d["files"]
        pairs = sorted((f[0], f[2]) for f in files)
        if otaboot.set_sha(pairs) != d["set"]:
            return self._nack(uid, "bad_schema: set sha256 does not match the files")
        running, running_sha = self.running()
        if d["set"] == running_sha:
            return [protocol.ota_reply_payload("current", uid, set=running_sha, version=self.fw)]
        if d["partial"]:
            running = dict(running)
            cp = fl.path(protocol.OTA_CONFIG)
            if fl.size(cp) >= 0:
                running[protocol.OTA_CONFIG] = (fl.size(cp), otaboot.file_sha(fl, cp, self.buf))
        ready = fl.read_json(otaboot.ota_dir(fl, "ready.json"))
        if ready is not None and ready.get("set") == d["set"]:
            self.reboot_wanted = True
            return [protocol.ota_reply_payload("staged", uid, set=d["set"])]
        want = [f[0] for f in files if running.get(f[0], (0, None))[1] != f[2]]
        names = [f[0] for f in files]
        removes = not d["partial"] and [n for n in running if n not in names]
        if not want and not removes:
            return [protocol.ota_reply_payload("current", uid, set=d["set"], version=self.fw)]
        need_bytes = 0
        for f in files:
            if f[0] in want:
                need_bytes += f[1]
        free = fl.free_bytes()
        if free is not None and need_bytes + _SPACE_MARGIN > free:
            return self._nack(uid, "no_space: %d bytes needed, %d free" % (need_bytes + _SPACE_MARGIN, free))
        o = self.offer
        if o is None or o.get("set") != d["set"]:
            self._wipe_stage()
            o = {"id": uid, "version": d["version"], "set": d["set"], "files": files, "want": want,
                 "chunk": d["chunk"], "trial_boots": d["trial_boots"], "trial_s": d["trial_s"], "partial": d["partial"],
                 "from": self.fw, "from_set": running_sha}  # fmt: skip
            fl.mkdir(otaboot.ota_dir(fl))
            fl.mkdir(otaboot.ota_dir(fl, "stage"))
            fl.write_json(otaboot.ota_dir(fl, "stage.json"), o)
            self.result = None
            fl.remove(otaboot.ota_dir(fl, "result.json"))
            self.log(
                "ota: receiving %s: %d of %d file(s), %d bytes"
                % (d["version"], len(want), len(files), need_bytes)
            )
        elif o.get("id") != uid:
            o["id"] = uid  # the same set offered again (a gateway restart): resume
            fl.write_json(otaboot.ota_dir(fl, "stage.json"), o)
        self.offer = o
        self.pending = None
        return self._next(now)

    def _wipe_stage(self):
        fl = self.fl
        for n in fl.listdir(otaboot.ota_dir(fl, "stage")):
            fl.remove(otaboot.ota_dir(fl, "stage", n))
        fl.remove(otaboot.ota_dir(fl, "ready.json"))
        fl.remove(otaboot.ota_dir(fl, "stage.json"))
        self.offer = None

    def _staged_path(self, name):
        return otaboot.ota_dir(self.fl, "stage", name)

    def _next(self, now):
        """Ask for the next missing chunk, or check the whole set when nothing is missing."""
        o = self.offer
        files = o["files"]
        for i in range(len(files)):
            name, size, _sha = files[i]
            if name not in o["want"]:
                continue
            p = self._staged_path(name)
            have = self.fl.size(p)
            if have < 0:
                with self.fl.open(p, "wb"):
                    pass
                have = 0
            if have > size:
                self.fl.remove(p)
                return self._next(now)
            if have < size:
                self.pending = (i, have)
                self._asked_at = now
                n = min(o["chunk"], size - have)
                return [protocol.ota_reply_payload("need", o["id"], f=i, o=have, n=n)]
        return self._finish(now)

    def _finish(self, now):
        o = self.offer
        fl = self.fl
        staged = {}
        for f in o["files"]:
            staged[f[0]] = [f[1], f[2]]
            if f[0] in o["want"] and otaboot.file_sha(fl, self._staged_path(f[0]), self.buf) != f[2]:
                # Complete but wrong (a torn write before a reset): fetch that file again.
                self.counters["file_restarts"] += 1
                self.log("ota: %s failed its sha256 check: fetching it again" % f[0])
                fl.remove(self._staged_path(f[0]))
                return self._next(now)
        if protocol.OTA_CONFIG in o["want"]:
            problems = self._config_problems()
            if problems:
                self._wipe_stage()
                return self._nack(o["id"], "bad_config: " + "; ".join(problems))
        ready = {"id": o["id"], "version": o["version"], "set": o["set"], "from": o["from"],
                 "from_set": o["from_set"], "files": staged, "staged": o["want"], "partial": o.get("partial", False),
                 "trial_boots": o["trial_boots"], "trial_s": o["trial_s"]}  # fmt: skip
        fl.write_json(otaboot.ota_dir(fl, "ready.json"), ready)
        fl.remove(otaboot.ota_dir(fl, "stage.json"))
        self.offer = None
        self.pending = None
        self.reboot_wanted = True
        self.log("ota: %s staged and checked: switching at the next reboot" % o["version"])
        return [protocol.ota_reply_payload("staged", o["id"], set=o["set"])]

    def _config_problems(self):
        """What settings.load says about the staged config.json (the box would refuse to start)."""
        import settings

        _cfg, problems = settings.load(self._staged_path(protocol.OTA_CONFIG), True, lambda m: None)
        return problems

    def on_chunk(self, payload, now):
        """A chunk on `ota/data`. Returns reply payloads; never raises on bad input."""
        try:
            uid, fi, off, sha, data = protocol.decode_ota_chunk(payload)
        except protocol.ProtocolError as e:
            self.counters["bad_chunk"] += 1
            uid = self.offer.get("id") if self.offer else None
            replies = self._nack(uid, "%s: %s" % (e.args[0], e.args[1] if len(e.args) > 1 else ""))
            return replies + (self._again(now) if self.pending is not None else [])
        o = self.offer
        if o is None or uid != o["id"] or (fi, off) != self.pending:
            return []  # stale or a redelivery: the pending need stands
        name, size, fsha = o["files"][fi]
        if off + len(data) > size or (len(data) == 0 and size > 0):
            self.counters["bad_chunk"] += 1
            return self._nack(uid, "bad_chunk: wrong length") + self._again(now)
        if protocol.sha256_hex(data) != sha:
            self.counters["bad_chunk"] += 1
            self.log("ota: chunk %s@%d failed its sha256 check: asking again" % (name, off))
            return [
                protocol.ota_reply_payload("nack", uid, error="bad_chunk: sha256", f=fi, o=off)
            ] + self._again(now)
        try:
            with self.fl.open(self._staged_path(name), "ab") as f:
                f.write(data)
        except OSError as e:
            self._wipe_stage()
            return self._nack(uid, "flash: %r" % (e,))
        self.pending = None
        if off + len(data) == size and otaboot.file_sha(self.fl, self._staged_path(name), self.buf) != fsha:
            self.counters["file_restarts"] += 1
            self.log("ota: %s failed its sha256 check: fetching it again" % name)
            self.fl.remove(self._staged_path(name))
        return self._next(now)

    def _again(self, now):
        fi, off = self.pending
        o = self.offer
        self._asked_at = now
        n = min(o["chunk"], o["files"][fi][1] - off)
        return [protocol.ota_reply_payload("need", o["id"], f=fi, o=off, n=n)]

    # --- time ----------------------------------------------------------------------

    def poll(self, now, uptime_ms, wifi_up, mqtt_up, connected_once):
        """Ask again for a need nobody answered; give up a trial that ran out of time.
        Returns reply payloads (published only while connected)."""
        t = self.trial
        if (
            t is not None
            and not self._gave_up
            and uptime_ms >= t.get("trial_s", otaboot.DEFAULT_TRIAL_S) * 1000
        ):
            if not connected_once:
                reason = (
                    "no broker within %d s" % t["trial_s"]
                    if wifi_up
                    else "no Wi-Fi within %d s" % t["trial_s"]
                )
            else:
                reason = "status not acknowledged by the gateway within %d s" % t["trial_s"]
            self.log("ota: %s: rolling back at the next boot" % reason)
            otaboot.give_up(self.fl, reason)
            self._gave_up = True
            self.reboot_wanted = True
        if (self.pending is not None and mqtt_up and now is not None and self._asked_at is not None
                and self._diff(now, self._asked_at) >= NEED_RETRY_MS):  # fmt: skip
            self.counters["need_retries"] += 1
            return self._again(now)
        return []
