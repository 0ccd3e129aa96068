# Over-the-air update cases on a real filesystem, with the power cut after every write.
# Run under CPython (tests/test_firmware_ota.py, one test per case, in tmp_path) and under real
# MicroPython (all cases, in a writable /data). Each case gets its own empty folder `base`.
#
# The power cut: `Power` counts every call that changes the flash (open for writing, write,
# rename, remove, mkdir); when the budget is spent the call raises PowerCut - a write is cut
# halfway, leaving half its data, as a torn write on the board would. "Reset" = new objects over
# the same files, then otaboot.at_boot() as boot.py runs it.
import json
import os

import ota
import otaboot
import protocol

try:
    from tools.sim.board import Machine, MachineV120  # CPython
except ImportError:
    from board import Machine, MachineV120  # MicroPython: tools/sim is mounted at /sim


class PowerCut(BaseException):
    pass


class Power:
    def __init__(self, budget=None):
        self.budget = budget
        self.ops = 0

    def tick(self):
        self.ops += 1
        if self.budget is not None and self.ops > self.budget:
            self.budget = 0
            raise PowerCut()

    def will_cut(self):
        return self.budget is not None and self.ops + 1 > self.budget


class CutFile:
    def __init__(self, f, power):
        self.f = f
        self.power = power

    def write(self, data):
        if self.power.will_cut():
            self.f.write(bytes(data[: len(data) // 2]))
            self.f.close()
            self.power.tick()
        self.power.tick()
        return self.f.write(data)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


class CutOs:
    """The real os, with the power cut before any change to the flash."""

    def __init__(self, power, free=None):
        self.power = power
        self.free = free

    def stat(self, p):
        return os.stat(p)

    def listdir(self, p):
        return os.listdir(p)

    def statvfs(self, p):
        if self.free is None:
            raise OSError(95)
        return (1, 1, self.free, self.free, self.free, 0, 0, 0, 0, 255)

    def rename(self, a, b):
        self.power.tick()
        os.rename(a, b)

    def remove(self, p):
        self.power.tick()
        os.remove(p)

    def mkdir(self, p):
        self.power.tick()
        os.mkdir(p)


def cut_open(power):
    def _open(p, mode="r"):
        if "w" in mode or "a" in mode:
            power.tick()
            return CutFile(open(p, mode), power)
        return open(p, mode)

    return _open


def flash(base, power, free=None):
    return otaboot.Flash(base, CutOs(power, free), cut_open(power))


def quiet(_m):
    pass


# --- two file sets ------------------------------------------------------------------------


def body(name, version, n=700):
    line = "# %s of %s\n" % (name, version)
    out = line * (n // len(line) + 1)
    return out[:n].encode()


OLD = {"main.py": body("main", "old"), "app.mpy": body("app", "old", 900), "keep.mpy": body("keep", "x"),
       "gone.mpy": body("gone", "old", 300)}  # fmt: skip
# app changed, keep unchanged, gone removed, added new.
NEW = {"main.py": body("main", "new", 650), "app.mpy": body("app", "new", 1100), "keep.mpy": body("keep", "x"),
       "added.mpy": body("added", "new", 520)}  # fmt: skip
BOOT = {"boot.py": b"# boot\n", "otaboot.py": b"# stays\n", "config.json": b"{}"}


def install(base, files):
    for name in files:
        with open(base + "/" + name, "wb") as f:
            f.write(files[name])
    for name in BOOT:
        with open(base + "/" + name, "wb") as f:
            f.write(BOOT[name])


def app_folder(base):
    got = {}
    for n in os.listdir(base):
        if otaboot.is_app_file(n):
            with open(base + "/" + n, "rb") as f:
                got[n] = f.read()
    return got


def which_set(base):
    got = app_folder(base)
    if got == OLD:
        return "old"
    if got == NEW:
        return "new"
    raise AssertionError("a mix of sets: %r" % sorted((n, len(got[n])) for n in got))


def sha(b):
    return protocol.sha256_hex(b)


def offer_for(files, uid="update-0001", version="0.2.0", chunk=256, **extra):
    lst = [[n, len(files[n]), sha(files[n])] for n in sorted(files)]
    d = {"v": 1, "op": "offer", "id": uid, "version": version, "files": lst,
         "set": otaboot.set_sha([(f[0], f[2]) for f in lst]), "chunk": chunk}  # fmt: skip
    for k in extra:
        d[k] = extra[k]
    return d


def enc(d):
    return json.dumps(d).encode()


def chunk_for(offer, need, corrupt=False, source=None):
    name = offer["files"][need["f"]][0]
    data = (source or NEW)[name][need["o"] : need["o"] + need["n"]]
    h = {"v": 1, "id": offer["id"], "f": need["f"], "o": need["o"], "sha": sha(data)}
    if corrupt:
        data = b"X" + data[1:]
    return enc(h) + b"\n" + data


def replies(payloads):
    return [json.loads(p) for p in payloads]


def transfer(u, offer, corrupt_at=None, source=None):
    """Play the gateway: answer every need until the box says something else. Returns the
    last non-need replies and how many chunks went."""
    out = replies(u.on_ota(enc(offer), 0))
    sent = 0
    for _ in range(200):
        needs = [r for r in out if r["op"] == "need"]
        if not needs:
            return out, sent
        sent += 1
        out = replies(u.on_chunk(chunk_for(offer, needs[0], sent == corrupt_at, source), 0))
    raise AssertionError("no end to the transfer")


# --- a box's life, cut anywhere -------------------------------------------------------------


def life(base, power, confirm):
    """One boot of the box: boot.py's at_boot(), then the app: confirm a set on trial, else take
    the (retained) offer. Returns "done" or "reboot"."""
    fl = flash(base, power)
    st = otaboot.at_boot(fl, quiet)
    which_set(base)  # after every boot: a complete set, old or new
    u = ota.Updater(fl, "x", quiet)
    if u.result is not None:
        return "done"  # updated or rolled back: the gateway clears its offer
    if st is not None:
        if confirm:
            out = replies(u.on_ota(enc({"v": 1, "op": "confirm", "set": st["set"]}), 0))
            assert out[0]["op"] == "updated", out
            return "done"
        return "reboot"  # crashes, never confirmed
    out, _ = transfer(u, offer_for(NEW, trial_boots=2))
    assert out[-1]["op"] in ("staged", "current"), out
    return "reboot"


def run_life(base, budget, confirm):
    power = Power(budget)
    cut = False
    for _ in range(30):
        try:
            if life(base, power, confirm) == "done":
                return cut
        except PowerCut:
            cut = True
            power.budget = None  # power back: no more cuts
    raise AssertionError("the box never settled")


def _every_cut(base, confirm, expect):
    total = Power(None)
    _mk(base + "/count")
    install(base + "/count", OLD)
    _count(base + "/count", total, confirm)
    cuts = 0
    for k in range(total.ops):
        d = base + "/k%d" % k
        _mk(d)
        install(d, OLD)
        if run_life(d, k, confirm):
            cuts += 1
        assert which_set(d) == expect, (k, which_set(d))
        with open(d + "/.ota/result.json") as f:
            res = json.loads(f.read())
        assert res["ok"] is confirm, res
        # No gc.collect() here: the WASI build's collector misses objects held only by running
        # functions' locals and corrupts the heap (tests/mp/fw_heap.py).
    assert cuts == total.ops, (cuts, total.ops)
    return total.ops


def _count(base, power, confirm):
    for _ in range(30):
        if life(base, power, confirm) == "done":
            return


def _mk(d):
    try:
        os.mkdir(d)
    except OSError:
        pass


def case_power_cut_at_every_write_then_confirmed(base):
    n = _every_cut(base, True, "new")
    assert n > 40, n  # transfer, verify, switch, trial and commit all had writes to cut


def case_power_cut_at_every_write_then_rolled_back(base):
    _every_cut(base, False, "old")
    with open(base + "/k0/.ota/result.json") as f:
        res = json.loads(f.read())
    assert "within 2 boots" in res["reason"], res


def case_only_changed_files_travel(base):
    install(base, OLD)
    u = ota.Updater(flash(base, Power()), "0.1.0", quiet)
    offer = offer_for(NEW)
    out = replies(u.on_ota(enc(offer), 0))
    assert out[0]["op"] == "need" and offer["files"][out[0]["f"]][0] == "added.mpy", out
    wanted = []
    for _ in range(100):
        needs = [r for r in out if r["op"] == "need"]
        if not needs:
            break
        name = offer["files"][needs[0]["f"]][0]
        if name not in wanted:
            wanted.append(name)
        out = replies(u.on_chunk(chunk_for(offer, needs[0]), 0))
    assert sorted(wanted) == ["added.mpy", "app.mpy", "main.py"], wanted  # keep.mpy is the same
    assert out[-1]["op"] == "staged" and u.reboot_wanted
    assert which_set(base) == "old"  # nothing in the app folder touched before the switch


def case_corrupted_chunk_is_asked_for_again(base):
    install(base, OLD)
    u = ota.Updater(flash(base, Power()), "0.1.0", quiet)
    offer = offer_for(NEW)
    out = replies(u.on_ota(enc(offer), 0))
    first = out[0]
    out = replies(u.on_chunk(chunk_for(offer, first, corrupt=True), 0))
    assert out[0]["op"] == "nack" and "sha256" in out[0]["error"], out
    assert out[1]["op"] == "need" and (out[1]["f"], out[1]["o"]) == (first["f"], first["o"]), out
    assert u.counters["bad_chunk"] == 1
    out, _ = transfer(u, offer)
    assert out[-1]["op"] == "staged", out


def case_same_set_is_current(base):
    install(base, OLD)
    u = ota.Updater(flash(base, Power()), "0.1.0", quiet)
    out = replies(u.on_ota(enc(offer_for(OLD)), 0))
    assert out == [
        {"v": 1, "op": "current", "id": "update-0001", "set": u.running()[1], "version": "0.1.0"}
    ], out


def case_malformed_messages_are_nacked_and_nothing_changes(base):
    install(base, OLD)
    u = ota.Updater(flash(base, Power()), "0.1.0", quiet)
    good = offer_for(NEW)
    bad = [b"{", b"[]", enc({"v": 1, "op": "explode"}), enc({"v": 2, "op": "offer"}), b"x" * 7000]
    for path in ("../evil.py", "lib/x.mpy", "/main.py", "boot.py", "otaboot.mpy", "a.txt", "Main.py", ".py"):
        d = offer_for(NEW)
        d["files"][0][0] = path
        bad.append(enc(d))
    d = offer_for(NEW)
    d["files"][0][1] = protocol.OTA_MAX_FILE_BYTES + 1
    bad.append(enc(d))
    d = offer_for(NEW)
    d["set"] = "0" * 64  # does not match its files
    bad.append(enc(d))
    for b in bad:
        out = replies(u.on_ota(b, 0))
        assert len(out) == 1 and out[0]["op"] == "nack", (b[:60], out)
    assert u.counters["bad_ota"] == len(bad)
    for junk in (b"", b"no header", b'{"v":1}\nxx', b'{"v":1,"id":"update-0001","f":0,"o":0,"sha":"zz"}\nx'):
        u.on_chunk(junk, 0)
    assert which_set(base) == "old" and not otaboot.read_state(u.fl)
    out, _ = transfer(u, good)  # and it still takes a good one
    assert out[-1]["op"] == "staged"


def case_not_enough_flash_is_refused(base):
    install(base, OLD)
    fl = otaboot.Flash(base, CutOs(Power(), free=8000), cut_open(Power()))
    u = ota.Updater(fl, "0.1.0", quiet)
    out = replies(u.on_ota(enc(offer_for(NEW)), 0))
    assert out[0]["op"] == "nack" and out[0]["error"].startswith("no_space"), out
    assert u.status_fields()["flash_free"] == 8000


def case_new_offer_during_trial_is_refused(base):
    install(base, OLD)
    fl = flash(base, Power())
    u = ota.Updater(fl, "0.1.0", quiet)
    transfer(u, offer_for(NEW))
    st = otaboot.at_boot(fl, quiet)
    assert st["phase"] == "trial" and which_set(base) == "new"
    u = ota.Updater(fl, "0.2.0", quiet)
    assert u.status_fields()["trial"] is True
    assert u.on_ota(enc(offer_for(NEW)), 0) == []  # its own offer, still retained
    out = replies(u.on_ota(enc(offer_for(OLD, uid="update-0002")), 0))
    assert out[0]["op"] == "nack" and out[0]["error"].startswith("busy"), out


def case_trial_out_of_time_gives_up_with_reason(base):
    install(base, OLD)
    fl = flash(base, Power())
    u = ota.Updater(fl, "0.1.0", quiet)
    transfer(u, offer_for(NEW, trial_s=60))
    otaboot.at_boot(fl, quiet)
    u = ota.Updater(fl, "0.2.0", quiet)
    assert u.poll(0, 59000, True, False, False) == [] and not u.reboot_wanted
    u.poll(0, 60000, True, False, False)
    assert u.reboot_wanted
    assert otaboot.at_boot(fl, quiet) is None and which_set(base) == "old"
    u = ota.Updater(fl, "0.1.0", quiet)
    out = replies(u.on_connect())
    assert out[0]["op"] == "update_failed" and out[0]["reason"] == "no broker within 60 s", out


def case_crash_on_import_is_rolled_back_with_its_reason(base):
    install(base, OLD)
    fl = flash(base, Power())
    transfer(ota.Updater(fl, "0.1.0", quiet), offer_for(NEW))
    otaboot.at_boot(fl, quiet)
    assert otaboot.give_up(fl, "crashed: ImportError('no module named x')")
    otaboot.at_boot(fl, quiet)
    assert which_set(base) == "old"
    u = ota.Updater(fl, "0.1.0", quiet)
    assert u.status_fields()["update"]["reason"] == "crashed: ImportError('no module named x')"


def case_need_unanswered_is_asked_again(base):
    install(base, OLD)
    u = ota.Updater(flash(base, Power()), "0.1.0", quiet)
    first = replies(u.on_ota(enc(offer_for(NEW)), 1000))[0]
    assert u.poll(1000 + ota.NEED_RETRY_MS - 1, 0, True, True, True) == []
    again = replies(u.poll(1000 + ota.NEED_RETRY_MS, 0, True, True, True))
    assert again == [first], again


# --- a config update: the same machinery, a partial set of one file ---------------------------

CFG_OLD = (
    b'{"device_id": "box-1", "wifi": {"ssid": "home", "password": "right"}, "broker": {"host": "10.0.0.2"}}'
)
CFG_NEW = (
    b'{"device_id": "box-1", "wifi": {"ssid": "home", "password": "wrong"}, "broker": {"host": "10.0.0.2"}}'
)
CFG = {"config.json": CFG_NEW}


def config_now(base):
    with open(base + "/config.json", "rb") as f:
        return f.read()


def config_life(base, power, confirm):
    fl = flash(base, power)
    st = otaboot.at_boot(fl, quiet)
    assert which_set(base) == "old"  # a config update never touches the app
    assert config_now(base) in (CFG_OLD, CFG_NEW), config_now(base)
    u = ota.Updater(fl, "0.1.0", quiet)
    if u.result is not None:
        return "done"
    if st is not None:
        if confirm:
            replies(u.on_ota(enc({"v": 1, "op": "confirm", "set": st["set"]}), 0))
            return "done"
        u.poll(0, 60000, False, False, False)  # never joined the new Wi-Fi: give up
        return "reboot"
    out, _ = transfer(u, offer_for(CFG, partial=True, trial_s=60), source=CFG)
    assert out[-1]["op"] in ("staged", "current"), out
    return "reboot"


def case_config_update_power_cut_at_every_write(base):
    for confirm, expect in ((True, CFG_NEW), (False, CFG_OLD)):
        total = Power(None)
        d0 = base + "/count%d" % confirm
        _mk(d0)
        install(d0, OLD)
        with open(d0 + "/config.json", "wb") as f:
            f.write(CFG_OLD)
        for _ in range(10):
            if config_life(d0, total, confirm) == "done":
                break
        for k in range(total.ops):
            d = base + "/c%d-%d" % (confirm, k)
            _mk(d)
            install(d, OLD)
            with open(d + "/config.json", "wb") as f:
                f.write(CFG_OLD)
            power = Power(k)
            for _ in range(10):
                try:
                    if config_life(d, power, confirm) == "done":
                        break
                except PowerCut:
                    power.budget = None
            assert config_now(d) == expect, (confirm, k, config_now(d))
        with open(d0 + "/.ota/result.json") as f:
            res = json.loads(f.read())
        assert res["ok"] is confirm and (confirm or res["reason"] == "no Wi-Fi within 60 s"), res


def case_a_config_the_box_cannot_use_is_refused_before_the_switch(base):
    install(base, OLD)
    with open(base + "/config.json", "wb") as f:
        f.write(CFG_OLD)
    u = ota.Updater(flash(base, Power()), "0.1.0", quiet)
    bad = {"config.json": b'{"device_id": "box-1", "wifi": {"ssid": ""}}'}
    out, _ = transfer(u, offer_for(bad, partial=True), source=bad)
    assert out[-1]["op"] == "nack" and out[-1]["error"].startswith("bad_config"), out
    assert config_now(base) == CFG_OLD and not u.reboot_wanted
    # config.json only in a partial offer (a whole set never replaces the config).
    out = replies(u.on_ota(enc(offer_for(CFG)), 0))
    assert out[0]["op"] == "nack" and "partial" in out[0]["error"], out


def case_a_usb_provision_during_the_trial_ends_it_without_a_mix(base):
    install(base, OLD)
    fl = flash(base, Power())
    transfer(ota.Updater(fl, "0.1.0", quiet), offer_for(NEW))
    otaboot.at_boot(fl, quiet)
    assert which_set(base) == "new"
    # `parcelbox flash provision` copies its own set during the trial.
    prov = dict(NEW)
    prov["app.mpy"] = body("app", "provisioned", 800)
    for n in list(app_folder(base)):
        os.remove(base + "/" + n)
    install(base, prov)
    for _ in range(5):  # never confirmed: without the check the trial would roll old/ back over it
        otaboot.at_boot(fl, quiet)
        assert app_folder(base) == prov, sorted(app_folder(base))
    assert otaboot.read_state(fl) is None and os.listdir(base + "/.ota/old") == []


def case_a_set_that_only_removes_a_file_is_applied(base):
    install(base, OLD)
    fl = flash(base, Power())
    smaller = dict(OLD)
    del smaller["gone.mpy"]
    out, sent = transfer(ota.Updater(fl, "0.1.0", quiet), offer_for(smaller))
    assert out[-1]["op"] == "staged" and sent == 0, out  # nothing to fetch, still a new set
    otaboot.at_boot(fl, quiet)
    assert app_folder(base) == smaller


def case_boot_hook_quiet_window_and_trial_watchdog(base):
    install(base, OLD)
    fl = flash(base, Power())
    transfer(ota.Updater(fl, "0.1.0", quiet), offer_for(NEW))
    m = Machine()  # tools/sim/board.py: machine.WDT as ports/esp32/machine_wdt.c has it
    with open(base + "/noapp", "w") as f:
        f.write("")
    # The quiet window: nothing switches, no watchdog (provisioning needs a board it can stop).
    assert otaboot.boot_hook(os, m, base, base + "/noapp", log=quiet) is None
    assert which_set(base) == "old" and m.wdt is None
    os.remove(base + "/noapp")
    st = otaboot.boot_hook(os, m, base, base + "/noapp", log=quiet)
    assert st["phase"] == "trial" and which_set(base) == "new" and m.wdt.timeout_ms == 120000
    otaboot.commit(fl)
    assert otaboot.boot_hook(os, m, base, base + "/noapp", log=quiet) is None and m.wdt.starts == 1


def case_main_reconfigures_the_trial_watchdog_on_micropython_1_20(base):
    """v1.20 (ESP-IDF 4) has no esp_task_wdt_reconfigure, but its WDT() calls esp_task_wdt_init,
    which reconfigures a running task watchdog: main.py's WDT() takes over boot.py's, in whole
    seconds (tools/sim/board.MachineV120)."""
    import main

    install(base, OLD)
    fl = flash(base, Power())
    transfer(ota.Updater(fl, "0.1.0", quiet), offer_for(NEW))
    m = MachineV120()
    otaboot.boot_hook(os, m, base, base + "/noapp", log=quiet)
    assert m.wdt.timeout_ms == 120000
    wdt = main.start_watchdog(m, 60500, quiet)
    assert wdt is m.wdt is otaboot.BOOT_WDT and wdt.timeout_ms == 60000 and wdt.starts == 2
    otaboot.BOOT_WDT = None


class RefusingWdtMachine(Machine):
    """Fault injection, not a MicroPython release: every WDT() after the first raises
    OSError(ESP_ERR_INVALID_STATE). No release seen does this (v1.20 reconfigures through
    esp_task_wdt_init, v1.21+ through esp_task_wdt_reconfigure); main.start_watchdog still keeps
    feeding boot.py's trial watchdog if one ever does."""

    def WDT(self, id=0, timeout=5000):
        if self.wdt is not None:
            raise OSError(259)
        return Machine.WDT(self, id, timeout)


def case_main_keeps_the_trial_watchdog_when_a_second_wdt_is_refused(base):
    import main

    install(base, OLD)
    fl = flash(base, Power())
    transfer(ota.Updater(fl, "0.1.0", quiet), offer_for(NEW))
    m = RefusingWdtMachine()
    otaboot.boot_hook(os, m, base, base + "/noapp", log=quiet)
    wdt = main.start_watchdog(m, 60000, quiet)
    assert wdt is m.wdt and wdt.timeout_ms == 120000  # boot.py's, fed by the app
    otaboot.BOOT_WDT = None
    try:
        main.start_watchdog(m, 60000, quiet)
    except OSError:
        pass
    else:
        raise AssertionError("without a trial watchdog the error must not be hidden")


CASES = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("case_") and callable(fn)]


def run_one(root, name):
    """One case in a fresh interpreter: the power-cut cases make a lot of garbage, and the WASI
    build's automatic collection can free objects that running functions still hold."""
    for n, fn in CASES:
        if n == name:
            fn(root)
            print("PASS", name)
            return
    raise AssertionError("no case " + name)


def run_all(root):
    i = 0
    for name, fn in CASES:
        i += 1
        base = "%s/c%02d" % (root, i)
        os.mkdir(base)
        fn(base)
        print("PASS", name)
    print("DONE", len(CASES))
