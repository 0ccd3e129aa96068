"""Reads whatsmeow's session database without neonize (pure sqlite3; usable from any process).

`NeonizeTransport.is_paired` and `parcelbox whatsapp status` both ask "is a device
linked?"; the answer is the `jid` column of whatsmeow's `whatsmeow_device` table
(whatsmeow store/sqlstore, schema as created by neonize 0.5.2).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

__all__ = ["paired_jid_from_db"]


def paired_jid_from_db(db_path: Path) -> str:
    """The linked account's JID ('628..:12@s.whatsapp.net'), read from whatsmeow's table; '' when none.

    Not `ClientFactory.get_all_devices_from_db`: neonize 0.5.2 joins each device's
    fields with commas in Go and splits them in Python, so a push or business name
    with a comma ("Siti, S.Pd") raises; and every call opens a new whatsmeow
    container (an SQLite connection) that is never closed. This opens the file
    read-only and closes it. Call it only before neonize opened the same file in
    this process (`NeonizeTransport.is_paired` does): two SQLite copies in one
    process do not share POSIX locks, and closing ours could drop Go's.
    """
    if not db_path.exists():
        return ""
    uri = "file:" + urllib.parse.quote(str(db_path)) + "?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        # whatsmeow sqlstore GetFirstDevice = the first row of GetAllDevices (no ORDER BY either).
        row = con.execute("SELECT jid FROM whatsmeow_device LIMIT 1").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return ""  # created by a connect that never paired
        raise
    finally:
        con.close()
    return str(row[0]) if row and row[0] else ""
