# Spool policy cases on a real filesystem. Run under CPython (tests/test_firmware_spool.py,
# one test per case, in tmp_path) and under real MicroPython (all cases, in a writable /data).
# Each case gets its own empty folder `base`.
import json
import os

import protocol
from spool import Spool


def quiet(_msg):
    pass


class Log:
    def __init__(self):
        self.lines = []

    def __call__(self, msg):
        self.lines.append(msg)


def photo_bytes(n, seed):
    b = bytearray(n)
    for i in range(n):
        b[i] = (i * 7 + seed) & 0xFF
    return bytes(b)


def event(seq, photo=None):
    eid = protocol.make_id(b"\x10\x20\x30\x40\x50\x60\x70\x80", seq)
    meta = None
    if photo is not None:
        meta = protocol.photo_meta(len(photo), protocol.sha256_hex(photo), 1024)
    return protocol.event_dict(eid, "delivery", None, seq, {"lid": "closed"}, meta)


def files(base):
    return sorted(os.listdir(base))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def case_survives_reboot_oldest_first(base):
    s = Spool(base, os, log=quiet)
    ids = []
    for seq in range(1, 4):
        ev = event(seq, photo_bytes(3000, seq))
        ids.append(ev["id"])
        s.add(ev, photo_bytes(3000, seq))
    s2 = Spool(base, os, log=quiet)  # a reboot: a new instance over the same files
    assert len(s2) == 3
    got = [s2.record(o)["id"] for o in s2.orders()]
    assert got == ids, got
    o = s2.orders()[1]
    f = s2.open_photo(o)
    assert f.read() == photo_bytes(3000, 2)
    f.close()
    assert json.loads(s2.record_bytes(o))["id"] == ids[1]
    # New events after the reboot sort after the old ones.
    ev = event(4)
    s2.add(ev)
    assert [s2.record(x)["id"] for x in s2.orders()] == ids + [ev["id"]]


def case_remove_only_what_was_acked(base):
    s = Spool(base, os, log=quiet)
    a = event(1, photo_bytes(100, 1))
    b = event(2)
    s.add(a, photo_bytes(100, 1))
    s.add(b)
    assert s.remove(a["id"]) is True
    assert s.remove(a["id"]) is False  # a duplicate ack
    assert s.remove("unknown-id-123") is False
    assert [s.record(o)["id"] for o in s.orders()] == [b["id"]]
    assert files(base) == ["e0000000002.json"]
    assert len(Spool(base, os, log=quiet)) == 1


def case_temp_files_and_orphans_are_cleaned_at_start(base):
    s = Spool(base, os, log=quiet)
    ev = event(1, photo_bytes(500, 1))
    s.add(ev, photo_bytes(500, 1))
    # Power lost mid-write: a temp record, a photo whose record never landed.
    with open(base + "/e0000000002.json.tmp", "wb") as f:
        f.write(b'{"v":1,"id":"half')
    with open(base + "/e0000000002.jpg", "wb") as f:
        f.write(b"\xff\xd8partial")
    with open(base + "/e0000000003.jpg.tmp", "wb") as f:
        f.write(b"\xff\xd8")
    with open(base + "/e0000000004.json", "wb") as f:
        f.write(b"{not json")
    s2 = Spool(base, os, log=quiet)
    assert len(s2) == 1
    assert files(base) == ["e0000000001.jpg", "e0000000001.json"], files(base)


def case_count_bound_drops_oldest_record_keeps_newest(base):
    log = Log()
    s = Spool(base, os, max_events=3, log=log)
    ids = []
    for seq in range(1, 6):
        ev = event(seq)
        ids.append(ev["id"])
        s.add(ev)
    got = [s.record(o)["id"] for o in s.orders()]
    assert got == ids[2:], got
    assert s.dropped_events == 2
    assert len([x for x in log.lines if "dropped event" in x]) == 2


def case_bytes_bound_drops_oldest_photo_first(base):
    log = Log()
    s = Spool(base, os, max_events=50, max_bytes=12000, log=log)
    ids = []
    for seq in range(1, 5):
        p = photo_bytes(3500, seq)
        ev = event(seq, p)
        ids.append(ev["id"])
        s.add(ev, p)
    # 4 x (3500 + record) > 12000: the oldest photo went, every record stayed.
    got = [s.record(o)["id"] for o in s.orders()]
    assert got == ids, got
    recs = [s.record(o) for o in s.orders()]
    assert recs[0]["photo"] is None and recs[0]["photo_dropped"] is True
    assert all(r["photo"] is not None for r in recs[1:])
    assert s.open_photo(s.orders()[0]) is None
    assert s.dropped_photos == 1 and s.dropped_events == 0
    assert s.bytes <= 12000
    assert any("dropped photo of " + ids[0] in x for x in log.lines)
    # And it stays that way after a reboot.
    s2 = Spool(base, os, max_bytes=12000, log=quiet)
    assert s2.record(s2.orders()[0])["photo"] is None
    assert "e0000000001.jpg" not in files(base)


def case_records_go_only_when_no_photo_is_left(base):
    s = Spool(base, os, max_events=50, max_bytes=900, log=quiet)
    ids = []
    for seq in range(1, 12):
        ev = event(seq)
        ids.append(ev["id"])
        s.add(ev)
    got = [s.record(o)["id"] for o in s.orders()]
    assert got[-1] == ids[-1]
    assert got == ids[-len(got) :]
    assert s.bytes <= 900 and s.dropped_events == len(ids) - len(got) > 0


def case_plain_record_makes_room_by_dropping_a_photo_not_a_record(base):
    s = Spool(base, os, max_bytes=4100, log=quiet)
    p = photo_bytes(3800, 1)
    e1 = event(1, p)
    s.add(e1, p)
    e2 = event(2)
    s.add(e2)  # no photo, but the bytes bound is hit: e1's photo goes, e1 stays
    assert [s.record(o)["id"] for o in s.orders()] == [e1["id"], e2["id"]]
    assert s.record(s.orders()[0])["photo"] is None
    assert s.dropped_events == 0 and s.dropped_photos == 1


def case_photo_larger_than_spool_keeps_the_record(base):
    s = Spool(base, os, max_bytes=4000, log=quiet)
    p = photo_bytes(6000, 9)
    ev = event(1, p)
    o = s.add(ev, p)
    rec = s.record(o)
    assert rec["id"] == ev["id"] and rec["photo"] is None and rec["photo_dropped"] is True
    assert s.dropped_photos == 1
    assert files(base) == ["e0000000001.json"]


def case_newest_record_never_dropped_even_when_tiny_spool(base):
    s = Spool(base, os, max_events=1, max_bytes=10, log=quiet)
    last = None
    for seq in range(1, 4):
        last = event(seq)
        s.add(last)
    assert [s.record(o)["id"] for o in s.orders()] == [last["id"]]


def case_missing_photo_file_becomes_photo_null(base):
    s = Spool(base, os, log=quiet)
    p = photo_bytes(800, 3)
    ev = event(1, p)
    s.add(ev, p)
    os.remove(base + "/e0000000001.jpg")
    s2 = Spool(base, os, log=quiet)
    rec = s2.record(s2.orders()[0])
    assert rec["photo"] is None and rec["photo_dropped"] is True


class LowDiskOs:
    """The real os, except statvfs reports the disk nearly full."""

    def __init__(self, free_blocks):
        self.free_blocks = free_blocks

    def __getattr__(self, name):
        return getattr(os, name)

    def statvfs(self, path):
        return (4096, 4096, 1000, self.free_blocks, self.free_blocks, 0, 0, 0, 0, 255)


def case_low_free_space_drops_photos(base):
    fs = LowDiskOs(100)
    s = Spool(base, fs, max_bytes=10**7, reserve_bytes=4096, log=quiet)
    p = photo_bytes(2000, 1)
    e1 = event(1, p)
    s.add(e1, p)
    fs.free_blocks = 1  # 4 KB left: below the reserve
    p2 = photo_bytes(2000, 2)
    e2 = event(2, p2)
    s.add(e2, p2)
    recs = [s.record(o) for o in s.orders()]
    assert [r["id"] for r in recs] == [e1["id"], e2["id"]]
    assert recs[0]["photo"] is None and recs[1]["photo"] is None
    assert s.free_bytes() == 4096


def case_statvfs_missing_is_tolerated(base):
    class NoStatvfs:
        def __getattr__(self, name):
            if name == "statvfs":
                raise AttributeError(name)
            return getattr(os, name)

    s = Spool(base, NoStatvfs(), log=quiet)
    p = photo_bytes(100, 1)
    s.add(event(1, p), p)
    assert s.free_bytes() is None and len(s) == 1


def case_state_roundtrip(base):
    s = Spool(base, os, log=quiet)
    assert s.load_state() == {}
    s.save_state({"seq": 41, "level": 3})
    s.save_state({"seq": 42, "level": 3})
    assert Spool(base, os, log=quiet).load_state() == {"seq": 42, "level": 3}
    assert "state.json" in files(base)


def case_nested_spool_dir_is_created(base):
    s = Spool(base + "/a/b", os, log=quiet)
    s.add(event(1))
    assert files(base + "/a/b") == ["e0000000001.json"]


class DiskFull:
    """A full filesystem as the board shows it: the write (or the rename that commits it)
    raises OSError(ENOSPC=28). Only `mode` calls fail; everything else is the real os."""

    def __init__(self, mode):
        self.mode = mode

    def __getattr__(self, name):
        return getattr(os, name)

    def rename(self, a, b):
        if self.mode == "rename":
            raise OSError(28)
        return os.rename(a, b)


class FullFile:
    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(28)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


def _no_tmp_left_after_enospc(base, mode):
    import spool as spool_mod

    s = Spool(base, os, log=quiet)
    s.add(event(1))
    s.os = DiskFull(mode)
    real_open = open
    if mode == "write":
        spool_mod.open = lambda name, m="r": FullFile(real_open(name, m))
    try:
        try:
            s.add(event(2, photo_bytes(3000, 2)))
        except Exception as e:
            assert type(e).__name__ == "SpoolError", e
        else:
            raise AssertionError("a full disk did not fail the add")
        s.save_state({"seq": 2})  # logged, not raised
    finally:
        if mode == "write":
            del spool_mod.open
    # was: e0000000002.jpg.tmp stayed until the next boot, eating the space the box needs
    assert [n for n in files(base) if n.endswith(".tmp")] == [], files(base)
    assert files(base) == ["e0000000001.json"], files(base)


def case_enospc_on_write_leaves_no_tmp_file(base):
    _no_tmp_left_after_enospc(base, "write")


def case_enospc_on_rename_leaves_no_tmp_file(base):
    _no_tmp_left_after_enospc(base, "rename")


CASES = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("case_") and callable(fn)]


def run_all(root):
    i = 0
    for name, fn in CASES:
        i += 1
        base = "%s/c%02d" % (root, i)
        os.mkdir(base)
        fn(base)
        print("PASS", name)
    print("DONE", len(CASES))
