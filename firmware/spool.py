"""The spool: every event (JSON record + photo) lives here until its ack.

Layout in the spool folder (internal flash by default, an SD card if mounted):
`e0000000042.json` (the event dict, exactly what is published) and, when it
has a photo, `e0000000042.jpg`. The number is the spool order (oldest first);
`state.json` keeps the event counter and the last settled occupancy level
across reboots and deep sleep.

Crash safety: each file is written to `<name>.tmp` and renamed, photo before
record, so a record on disk always has its whole photo (or `photo: null`).
At start-up `.tmp` files and photos without a record are deleted.

Bounded by `max_events` and `max_bytes`: when space is short the oldest
*photos* go first (the record stays, re-written with `photo: null` and
`photo_dropped: true`), then the oldest records; the record being added is
never dropped. Every drop is logged and counted.

The filesystem is the `os` module passed in (MicroPython's or CPython's): only
listdir / stat / rename / remove / mkdir are used; `statvfs` is optional.
"""

import json

_PREFIX = "e"
_DIGITS = 10
_REC = ".json"
_PHOTO = ".jpg"
_TMP = ".tmp"


class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, path, os_mod, max_events=50, max_bytes=1000000, reserve_bytes=16384, log=print):
        self.path = path.rstrip("/") or "/"
        self.os = os_mod
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.log = log
        self.dropped_photos = 0
        self.dropped_events = 0
        self._orders = []  # oldest first
        self._ids = {}  # event id -> order
        self._sizes = {}  # order -> bytes on disk (record + photo)
        self._has_photo = {}
        self._last_order = 0
        self._ensure_dir()
        self._scan()

    # --- paths -------------------------------------------------------------

    def _name(self, order, ext):
        return "%s/%s%0*d%s" % (self.path, _PREFIX, _DIGITS, order, ext)

    def _ensure_dir(self):
        try:
            self.os.stat(self.path)
        except OSError:
            # Create parents one by one: MicroPython has no makedirs.
            cur = ""
            for part in self.path.split("/"):
                if not part:
                    continue
                cur = cur + "/" + part if (cur or self.path.startswith("/")) else part
                try:
                    self.os.stat(cur)
                except OSError:
                    self.os.mkdir(cur)

    def _size(self, name):
        try:
            return self.os.stat(name)[6]
        except OSError:
            return 0

    def _remove(self, name):
        try:
            self.os.remove(name)
            return True
        except OSError:
            return False

    def _scan(self):
        names = self.os.listdir(self.path)
        records = []
        photos = []
        for n in names:
            if n.endswith(_TMP):
                self._remove(self.path + "/" + n)
                continue
            if not n.startswith(_PREFIX) or len(n) < _DIGITS + 1:
                continue
            try:
                order = int(n[1 : 1 + _DIGITS])
            except ValueError:
                continue
            if n.endswith(_REC):
                records.append(order)
            elif n.endswith(_PHOTO):
                photos.append(order)
        records.sort()
        if records:
            self._last_order = records[-1]
        for order in records:
            rec = self._load(order)
            if rec is None:
                self.log("spool: unreadable record %d removed" % order)
                self._remove(self._name(order, _REC))
                continue
            self._orders.append(order)
            self._ids[rec["id"]] = order
            self._has_photo[order] = rec.get("photo") is not None
            self._sizes[order] = self._size(self._name(order, _REC))
        for order in photos:
            if order in self._has_photo and self._has_photo[order]:
                self._sizes[order] += self._size(self._name(order, _PHOTO))
            else:
                # Orphan: the power went between photo and record, or a photo
                # drop was interrupted after the record was rewritten.
                self._remove(self._name(order, _PHOTO))
        for order in self._orders:
            if self._has_photo[order] and self._size(self._name(order, _PHOTO)) == 0:
                # Record says photo but the file is gone: send without it.
                self._forget_photo(order, "photo file missing")

    def _load(self, order):
        try:
            with open(self._name(order, _REC), "rb") as f:
                d = json.loads(f.read())
        except (OSError, ValueError):
            return None
        if not isinstance(d, dict) or not isinstance(d.get("id"), str):
            return None
        return d

    def _write(self, name, data):
        tmp = name + _TMP
        try:
            with open(tmp, "wb") as f:
                n = f.write(data)
            if n is not None and n != len(data):
                raise OSError(28)  # ENOSPC: a short write means the disk is full
            self.os.rename(tmp, name)
        except OSError:
            # A full disk (or any write error): the half-written temp file would hold the
            # very space the next write needs until the next boot's scan. Gone now.
            self._remove(tmp)
            raise

    # --- queries -----------------------------------------------------------

    def __len__(self):
        return len(self._orders)

    @property
    def bytes(self):
        t = 0
        for o in self._orders:
            t += self._sizes.get(o, 0)
        return t

    def orders(self):
        """Spool orders, oldest first (a copy; safe to iterate while acking)."""
        return list(self._orders)

    def order_of(self, event_id):
        return self._ids.get(event_id)

    def record(self, order):
        """The stored event dict, or None if it is gone."""
        return self._load(order)

    def record_bytes(self, order):
        try:
            with open(self._name(order, _REC), "rb") as f:
                return f.read()
        except OSError:
            return None

    def has_photo(self, order):
        return bool(self._has_photo.get(order))

    def open_photo(self, order):
        """An open binary file of the photo, or None. Caller closes it."""
        if not self._has_photo.get(order):
            return None
        try:
            return open(self._name(order, _PHOTO), "rb")
        except OSError:
            return None

    def free_bytes(self):
        """Free space on the spool's filesystem, or None where unknown."""
        try:
            st = self.os.statvfs(self.path)
            return st[0] * st[4]
        except (OSError, AttributeError):
            return None

    # --- changes -----------------------------------------------------------

    def add(self, record, photo=None):
        """Store one event before it is published. `record` is the event dict
        (its `photo` meta must describe `photo`). Returns the spool order."""
        data = json.dumps(record).encode()
        psize = len(photo) if photo is not None else 0
        try:
            room = self._make_room(len(data), psize)
        except OSError as e:
            raise SpoolError("spool cleanup failed: %r" % (e,))
        if not room:
            self.log("spool: no room for the photo of %s, keeping the event without it" % record["id"])
            self.dropped_photos += 1
            record = dict(record)
            record["photo"] = None
            record["photo_dropped"] = True
            data = json.dumps(record).encode()
            psize = 0
        order = self._last_order + 1
        try:
            if psize:
                self._write(self._name(order, _PHOTO), photo)
            self._write(self._name(order, _REC), data)
        except OSError as e:
            self._remove(self._name(order, _PHOTO))
            raise SpoolError("spool write failed: %r" % (e,))
        self._orders.append(order)
        self._ids[record["id"]] = order
        self._has_photo[order] = psize > 0
        self._sizes[order] = len(data) + psize
        self._last_order = order
        return order

    def _fits(self, need, reserve):
        if self.bytes + need > self.max_bytes:
            return False
        free = self.free_bytes()
        if free is not None and free < need + reserve:
            return False
        return True

    def _make_room(self, rec_size, photo_size):
        """Free space for a new record (+ photo). False if the photo cannot fit."""
        # Count: the new record needs a slot; the oldest records go.
        while len(self._orders) >= self.max_events and self._orders:
            self._drop_record(self._orders[0], "spool full (%d events)" % self.max_events)
        photo_ok = True
        if photo_size:
            # Photos are big and records are small: sacrifice old photos first,
            # and keep a reserve so later event records still find room.
            while not self._fits(rec_size + photo_size, self.reserve_bytes):
                if not self._drop_oldest_photo():
                    photo_ok = False
                    break
        need = rec_size + (photo_size if photo_ok else 0)
        while self._orders and not self._fits(need, 0):
            if not self._drop_oldest_photo():
                self._drop_record(self._orders[0], "spool full, no photos left")
        return photo_ok

    def _drop_oldest_photo(self):
        for o in self._orders:
            if self._has_photo.get(o):
                self._forget_photo(o, "spool full")
                return True
        return False

    def _forget_photo(self, order, why):
        rec = self._load(order)
        if rec is not None:
            rec["photo"] = None
            rec["photo_dropped"] = True
            data = json.dumps(rec).encode()
            # Record first: a crash after this leaves an orphan photo that the
            # next start-up deletes, never a record pointing at nothing.
            self._write(self._name(order, _REC), data)
            self._sizes[order] = len(data)
            self.log("spool: dropped photo of %s (%s)" % (rec["id"], why))
        self._remove(self._name(order, _PHOTO))
        self._has_photo[order] = False
        self.dropped_photos += 1

    def _drop_record(self, order, why):
        rec = self._load(order)
        eid = rec["id"] if rec else "?"
        self.log("spool: dropped event %s (%s)" % (eid, why))
        self.dropped_events += 1
        self._delete(order, eid)

    def _delete(self, order, eid):
        self._remove(self._name(order, _PHOTO))
        self._remove(self._name(order, _REC))
        if order in self._orders:
            self._orders.remove(order)
        if eid in self._ids:
            del self._ids[eid]
        self._sizes.pop(order, None)
        self._has_photo.pop(order, None)

    def drop_photo(self, order, why):
        """Keep the event, lose its photo (a damaged file); logged and counted."""
        if self._has_photo.get(order):
            self._forget_photo(order, why)

    def drop(self, order, why):
        """Lose a whole event (an unreadable record); logged and counted."""
        if order in self._orders:
            self._drop_record(order, why)

    def remove(self, event_id):
        """Delete an event after its ack. True if it was here."""
        order = self._ids.get(event_id)
        if order is None:
            return False
        self._delete(order, event_id)
        return True

    # --- small persistent state (event counter, last level) ------------------

    def load_state(self):
        try:
            with open(self.path + "/state.json", "rb") as f:
                d = json.loads(f.read())
            if isinstance(d, dict):
                return d
        except (OSError, ValueError):
            pass
        return {}

    def save_state(self, d):
        try:
            self._write(self.path + "/state.json", json.dumps(d).encode())
        except OSError as e:
            self.log("spool: state not saved: %r" % (e,))
