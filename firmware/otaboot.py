"""Over-the-air update, boot side: the switch to a staged file set, the trial, the rollback.

`boot.py` calls `at_boot()` at every reset, before `main.py` imports anything of the app. This
file and `boot.py` are the box's boot files: an update never replaces them (the gateway leaves
them out of every set; only `parcelbox flash provision` over USB writes them), so a broken update
can never break the code that undoes it.

Layout (`root` is the app folder, "/" on the board; every app file lives directly in it):

    <root>/*.py, *.mpy       the running set (every .py/.mpy except the boot files)
    <root>/.ota/stage/       files of an update being received (ota.py writes them)
    <root>/.ota/ready.json   the staged set is complete and every hash checked
    <root>/.ota/old/         the files the switch replaced or removed (kept for a rollback)
    <root>/.ota/state.json   the journal: phase "switch", "trial" or "rollback"
    <root>/.ota/result.json  how the last update ended (the app reports it)

Power loss at any point leaves a box that boots a complete set, old or new, never a mix:
- before ready.json exists nothing in the app folder was touched (a half-received stage is resumed);
- the switch writes its plan to state.json (atomic: temp + rename) before it renames anything, and
  every step is a rename that the next boot can redo or skip by looking at which files exist
  (root -> old/, then stage/ -> root), so a cut switch is rolled forward at the next boot, before
  the app runs;
- the trial counts boots in state.json; the new set is kept only when the app calls commit()
  (the gateway acknowledged its status); too many boots, or give_up() from the app (no broker in
  time, an exception on import), make the next boot roll back: state "rollback" first, then the
  renames old/ -> root, then result.json, then state.json goes. Each step is idempotent.

The filesystem is passed in (`Flash`: an `os` module and an `open`), so tests cut the power after
any write and "reboot" by calling at_boot() again, under CPython and under real MicroPython.
"""

import json

BOOT_FILES = ("boot.py", "otaboot.py", "otaboot.mpy")
DEFAULT_TRIAL_BOOTS = 3
DEFAULT_TRIAL_S = 300


class Flash:
    """The app folder and the two calls that touch the filesystem (os and open)."""

    def __init__(self, root, os_mod, open_fn=None):
        self.root = root.rstrip("/")
        self.os = os_mod
        self.open = open_fn or open

    def path(self, *parts):
        return self.root + "/" + "/".join(parts)

    def exists(self, p):
        try:
            self.os.stat(p)
            return True
        except OSError:
            return False

    def size(self, p):
        try:
            return self.os.stat(p)[6]
        except OSError:
            return -1

    def listdir(self, p):
        try:
            return self.os.listdir(p)
        except OSError:
            return []

    def mkdir(self, p):
        if not self.exists(p):
            self.os.mkdir(p)

    def remove(self, p):
        try:
            self.os.remove(p)
        except OSError:
            pass

    def read_json(self, p):
        try:
            with self.open(p, "rb") as f:
                d = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def write_json(self, p, d):
        """Atomic: a power cut leaves the old file or the new one."""
        tmp = p + ".tmp"
        with self.open(tmp, "wb") as f:
            f.write(json.dumps(d).encode())
        self.os.rename(tmp, p)

    def free_bytes(self):
        try:
            st = self.os.statvfs(self.root or "/")
            return st[0] * st[4]
        except (AttributeError, OSError):
            return None


def ota_dir(fl, *parts):
    return fl.path(".ota", *parts)


# --- the running set -----------------------------------------------------------------


def is_app_file(name):
    return (name.endswith(".py") or name.endswith(".mpy")) and name not in BOOT_FILES


def app_files(fl):
    """The running set's names, sorted."""
    names = []
    for n in fl.listdir(fl.root or "/"):
        if is_app_file(n) and fl.size(fl.path(n)) >= 0:
            names.append(n)
    names.sort()
    return names


def _hex(digest):
    return "".join("%02x" % b for b in digest)


def file_sha(fl, p, buf):
    """sha256 hex of a file, read through `buf` (no allocation per block)."""
    import hashlib

    h = hashlib.sha256()
    mv = memoryview(buf)
    with fl.open(p, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return _hex(h.digest())


def set_sha(pairs):
    """The sha256 of a whole set from its sorted (name, sha256 hex) pairs: one line each,
    `<name> <sha>\\n`. gateway/ota/manifest.py computes the same."""
    import hashlib

    h = hashlib.sha256()
    for name, sha in pairs:
        h.update(("%s %s\n" % (name, sha)).encode())
    return _hex(h.digest())


def current_set(fl, buf):
    """{name: (size, sha)} of the running set and its set sha. Hashed at every call (about
    0.1 s for 100 KB on an ESP32): never a stale cache after a USB provision."""
    files = {}
    for n in app_files(fl):
        files[n] = (fl.size(fl.path(n)), file_sha(fl, fl.path(n), buf))
    return files, set_sha([(n, files[n][1]) for n in sorted(files)])


# --- boot ----------------------------------------------------------------------------


def read_state(fl):
    return fl.read_json(ota_dir(fl, "state.json"))


def at_boot(fl, log=print):
    """Finish what a power cut interrupted, start a staged switch, count a trial boot or roll
    back. Returns the state after it (None when no update is in its trial)."""
    st = read_state(fl)
    phase = st.get("phase") if st else None
    if phase == "switch":
        log("ota: finishing an interrupted switch")
        return _switch(fl, st, log)
    if phase == "rollback":
        log("ota: finishing an interrupted rollback")
        _rollback(fl, st, log)
        return None
    if phase == "trial":
        if _replaced_meanwhile(fl, st):
            # Someone provisioned over USB during the trial: those files are the truth now, and
            # renaming old/ back over some of them would make a mix. The update is over.
            log("ota: the files on trial were replaced (a USB provision?): update journal dropped")
            fl.remove(ota_dir(fl, "state.json"))
            for n in fl.listdir(ota_dir(fl, "old")):
                fl.remove(ota_dir(fl, "old", n))
            return None
        boots = st.get("boots", 0) + 1
        limit = st.get("trial_boots", DEFAULT_TRIAL_BOOTS)
        if st.get("give_up") or boots > limit:
            reason = (
                st.get("give_up")
                or st.get("error")
                or ("not confirmed by the gateway within %d boots (crash loop?)" % limit)
            )
            st["phase"] = "rollback"
            st["reason"] = reason
            fl.write_json(ota_dir(fl, "state.json"), st)
            _rollback(fl, st, log)
            return None
        st["boots"] = boots
        fl.write_json(ota_dir(fl, "state.json"), st)
        log("ota: trial boot %d of %d for %s" % (boots, limit, st.get("version")))
        return st
    ready = fl.read_json(ota_dir(fl, "ready.json"))
    if ready is not None:
        return _start_switch(fl, ready, log)
    # No update in flight: backups of a committed set are no longer needed.
    for n in fl.listdir(ota_dir(fl, "old")):
        fl.remove(ota_dir(fl, "old", n))
    return None


def _replaced_meanwhile(fl, st):
    expect = st.get("expect")
    if not isinstance(expect, dict):
        return False
    buf = bytearray(512)
    for n in expect:
        p = fl.path(n)
        if fl.size(p) < 0 or file_sha(fl, p, buf) != expect[n]:
            return True
    return False


def _start_switch(fl, ready, log):
    names = ready.get("files")
    staged = ready.get("staged")
    if not isinstance(names, dict) or not isinstance(staged, list):
        log("ota: ready.json is unusable; update dropped")
        fl.remove(ota_dir(fl, "ready.json"))
        return None
    fl.mkdir(ota_dir(fl))
    fl.mkdir(ota_dir(fl, "old"))
    for n in fl.listdir(ota_dir(fl, "old")):  # leftovers of a committed update
        fl.remove(ota_dir(fl, "old", n))
    running = app_files(fl)
    st = {
        "phase": "switch",
        "id": ready.get("id"),
        "version": ready.get("version"),
        "set": ready.get("set"),
        "from": ready.get("from"),
        "from_set": ready.get("from_set"),
        "staged": staged,
        "expect": dict((n, names[n][1]) for n in staged if n in names),  # name -> sha256 of the new file
        # A partial set (a config update) changes only what it lists.
        "remove": [] if ready.get("partial") else [n for n in running if n not in names],
        "absent": [n for n in staged if not fl.exists(fl.path(n))],
        "trial_boots": ready.get("trial_boots", DEFAULT_TRIAL_BOOTS),
        "trial_s": ready.get("trial_s", DEFAULT_TRIAL_S),
        "boots": 0,
    }
    fl.write_json(ota_dir(fl, "state.json"), st)  # the plan is on flash before any rename
    log("ota: switching to %s (%d file(s))" % (st["version"], len(staged)))
    return _switch(fl, st, log)


def _switch(fl, st, log):
    for n in st["staged"]:
        live = fl.path(n)
        old = ota_dir(fl, "old", n)
        new = ota_dir(fl, "stage", n)
        if fl.exists(new):
            if fl.exists(live) and not fl.exists(old):
                fl.os.rename(live, old)
            fl.os.rename(new, live)
    for n in st["remove"]:
        live = fl.path(n)
        old = ota_dir(fl, "old", n)
        if fl.exists(live) and not fl.exists(old):
            fl.os.rename(live, old)
    # ready.json goes while the journal still says "switch" (a cut here redoes the renames,
    # which are all done: a no-op), so a leftover can never start the same switch twice.
    fl.remove(ota_dir(fl, "ready.json"))
    st["phase"] = "trial"
    st["boots"] = 1  # this boot is the new set's first
    fl.write_json(ota_dir(fl, "state.json"), st)
    for n in fl.listdir(ota_dir(fl, "stage")):
        fl.remove(ota_dir(fl, "stage", n))
    fl.remove(ota_dir(fl, "stage.json"))
    log("ota: trial boot 1 of %d for %s" % (st["trial_boots"], st["version"]))
    return st


def _rollback(fl, st, log):
    for n in st["staged"] + st["remove"]:
        old = ota_dir(fl, "old", n)
        if fl.exists(old):
            fl.os.rename(old, fl.path(n))
    for n in st["absent"]:
        fl.remove(fl.path(n))
    fl.write_json(
        ota_dir(fl, "result.json"),
        {"ok": False, "id": st.get("id"), "set": st.get("set"), "version": st.get("version"),
         "from": st.get("from"), "reason": st.get("reason")},
    )  # fmt: skip
    fl.remove(ota_dir(fl, "state.json"))
    log("ota: rolled back to %s: %s" % (st.get("from"), st.get("reason")))


def boot_hook(os_mod, machine, root="/", quiet_marker="/noapp", wdt_ms=120000, log=print):
    """What boot.py runs: nothing in the quiet window (main.py's /noapp: no switch, no trial count,
    no watchdog); else at_boot(), and for a set on trial a watchdog, so a new main.py that never
    gets as far as starting its own (a syntax error drops to the REPL) still resets the board and
    the boot count rolls it back. main.py's WDT(timeout=wdt_s) then reconfigures it (MicroPython
    >= 1.21: esp_task_wdt_reconfigure; 1.20 and older: esp_task_wdt_init, in whole seconds).
    Returns the trial state or None."""
    try:
        os_mod.stat(quiet_marker)
        return None
    except OSError:
        pass
    global BOOT_WDT
    st = at_boot(Flash(root, os_mod), log)
    if st is not None and machine is not None and hasattr(machine, "WDT"):
        BOOT_WDT = machine.WDT(timeout=wdt_ms)
    return st


# The watchdog boot_hook started for a trial. Should a second machine.WDT() ever raise instead of
# reconfiguring it (no release seen does: ports/esp32/machine_wdt.c v1.20 and v1.25), main.py
# feeds this one.
BOOT_WDT = None


# --- called by the running app -------------------------------------------------------


def commit(fl):
    """The gateway acknowledged the new set's status: keep it. Returns the result dict."""
    st = read_state(fl)
    if not st or st.get("phase") != "trial":
        return None
    res = {"ok": True, "id": st.get("id"), "set": st.get("set"), "version": st.get("version"),
           "from": st.get("from")}  # fmt: skip
    fl.write_json(ota_dir(fl, "result.json"), res)
    fl.remove(ota_dir(fl, "state.json"))
    for n in fl.listdir(ota_dir(fl, "old")):
        fl.remove(ota_dir(fl, "old", n))
    return res


def give_up(fl, reason):
    """The new set failed (no broker in time, an exception): roll back at the next boot."""
    st = read_state(fl)
    if not st or st.get("phase") != "trial":
        return False
    st["give_up"] = reason
    fl.write_json(ota_dir(fl, "state.json"), st)
    return True
