"""How the store's files are framed on disk, and how a damaged file is read back: pure, no I/O.

Journal lines (`gateway.storage.Journal`) are JSON objects, one per line, each behind a CRC-32 of
its JSON bytes:

    1c291ca3 {"ev":{...},"ob":[...]}\\n

Why a checksum per line: the journal is the only copy of an acknowledged event until the next
compaction, and on an SD card a line can be damaged in two ways, a record half-written at a full disk
(ENOSPC) and a flipped bit. A plain JSON line cannot tell "damaged" from "valid JSON with a wrong
digit", and a reader that stops at the first bad line throws away every acknowledged record after it.
With the CRC a reader checks each line on its own and keeps going: the damage costs the damaged line,
never its neighbours. Compact JSON never holds a raw newline (strings escape it), so `\\n` is a safe
separator; when the damage hits a separator itself (two lines glued into one), the later line is found
again at the end of the glued run (`_last_record`), so only the line that lost its newline is lost.

A journal file starts with the header line `HEADER` (written with its first record). It tells the
reader the format without trusting the records: journals written before the checksum (plain JSON
lines, starting with `{`, no header) are still read, and such a line is accepted when it parses to an
object, but in a framed journal a line is accepted only with a good CRC. (If the header itself is
damaged, any framed-looking line decides.)

`salvage_tables` reads the records out of a damaged TinyDB file (`{"events":{"1":{...},...},...}`):
each doc is parsed on its own, so a flipped byte costs the doc it lands in, not the whole file.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
HEADER = b"#parcelbox-journal crc32\n"
# What is left of a framed line's prefix after damage: either half of it, anywhere in the file.
_FRAMED_PREFIX = re.compile(rb"[0-9a-f]{8}[^\n]\{|[^\n]{8} \{")
_HEX = frozenset(b"0123456789abcdef")
_CRC_LEN = 8
# How far back into a glued run `_last_record` looks for the start of its last record, and how many
# candidate starts it tries: a record is at most a few KiB, and a huge damaged run must not cost O(n^2).
_RESYNC_WINDOW = 256 * 1024
_RESYNC_TRIES = 2_000


@dataclass(frozen=True)
class Damage:
    """Bytes of a file that could not be read as records: where, what, and why."""

    offset: int
    data: bytes
    reason: str  # "corrupt" (a bad line followed by more), "torn" (an unfinished last line), "invalid"


@dataclass
class Scan:
    """What a journal holds: its readable records, in order, and the damaged stretches between them."""

    entries: list[dict[str, Any]]
    damage: list[Damage]


def encode_line(entry: dict[str, Any]) -> bytes:
    """One journal line: `<crc32 of body, 8 hex> <compact JSON body>\\n`."""
    body = json.dumps(entry, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def _is_crc_prefix(buf: bytes, start: int) -> bool:
    return (
        start >= 0
        and len(buf) > start + _CRC_LEN
        and buf[start + _CRC_LEN] == 0x20
        and all(c in _HEX for c in buf[start : start + _CRC_LEN])
    )


def decode_line(line: bytes) -> dict[str, Any] | None:
    """A record from one line without its newline: framed (CRC checked) or a plain JSON object (old
    format). None when the line is damaged."""
    if _is_crc_prefix(line, 0):
        body = line[_CRC_LEN + 1 :]
        if int(line[:_CRC_LEN], 16) != zlib.crc32(body):
            return None
        return _json_object(body)
    if line[:1] == b"{":
        return _json_object(line)
    return None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return obj if isinstance(obj, dict) else None


def _last_record(run: bytes, plain: bool) -> tuple[int, dict[str, Any]] | None:
    """The record that ends a damaged run of bytes, and where it starts, if one does.

    A run is damaged when a line lost its newline (its tail and the next line glue together) or when
    a failed append left half a line before the next one. The last line of the run still ends at the
    run's end; its start is one of the places a record can start (`<8 hex> {` or `{"`). Candidates
    are tried right to left: an object nested in a record is always followed by its parent's closing
    brackets, so it never reads to the end of the run, and the first one that does is the record.
    Plain `{"` starts are tried only in an old-format journal (`plain`): in a framed one a bare `{"`
    is the body of a framed record, which must pass its CRC (a damaged prefix must not let a flipped
    digit in the body through).
    """
    lo = max(0, len(run) - _RESYNC_WINDOW)
    pos = len(run)
    for _ in range(_RESYNC_TRIES):
        pos = run.rfind(b"{", lo, pos)
        if pos <= 0:  # 0 is the run's own start, which already failed
            return None
        if run[pos - 1 : pos] == b" " and _is_crc_prefix(run, pos - 1 - _CRC_LEN):
            start = pos - 1 - _CRC_LEN
            if start > 0:
                rec = decode_line(run[start:])
                if rec is not None:
                    return start, rec
        elif plain and run[pos + 1 : pos + 2] == b'"':
            rec = _json_object(run[pos:])
            if rec is not None:
                return pos, rec
    return None


def _looks_framed(raw: bytes) -> bool:
    """Written by this version? Erring towards yes only costs an old journal its resynchronisation
    (plain records are still read line by line); erring towards no could let a damaged framed record
    in unchecked, so any trace of the header (one flip leaves one of its halves) or of a prefix counts."""
    head = raw[: len(HEADER) + 8]
    return b"#parcelbox-" in head or b"journal crc32" in head or _FRAMED_PREFIX.search(raw) is not None


def scan_lines(raw: bytes, valid: Callable[[dict[str, Any]], bool] | None = None) -> Scan:
    """Every readable record of a journal, and the damaged stretches (never a reason to stop reading).

    `valid` rejects records that decode but cannot be what the writer wrote (a wrong shape): they are
    damage too. A damaged stretch at the very end with no newline is `torn` (a crash mid-append; never
    acknowledged, since the ack follows the fsync of the whole line); elsewhere it is `corrupt`.
    """
    entries: list[dict[str, Any]] = []
    damage: list[Damage] = []
    # A journal is all framed or all old plain lines (the store empties it at every open). The header
    # says which; without it (an old journal, or a damaged header) one framed-looking line anywhere does.
    pos, end = 0, len(raw)
    if raw.startswith(HEADER):
        pos = len(HEADER)
    plain = not _looks_framed(raw)
    while pos < end:
        nl = raw.find(b"\n", pos)
        stop = end if nl < 0 else nl
        line = raw[pos:stop]
        if line.strip():
            rec = decode_line(line)
            bad_until = 0
            if rec is None:
                found = _last_record(line, plain)
                bad_until, rec = (found[0], found[1]) if found else (len(line), None)
            if rec is not None and valid is not None and not valid(rec):
                damage.append(Damage(pos + bad_until, line[bad_until:], "invalid"))
                rec = None
            if bad_until:
                damage.append(Damage(pos, line[:bad_until], "torn" if nl < 0 and rec is None else "corrupt"))
            if rec is not None:
                entries.append(rec)
        pos = stop + 1
    damage.sort(key=lambda d: d.offset)
    return Scan(entries, damage)


_DOC_KEY = re.compile(r'"(\d{1,12})"\s*:\s*\{')  # TinyDB's own JSONStorage writes spaces


def salvage_tables(
    raw: bytes, classify: Callable[[dict[str, Any]], str | None]
) -> tuple[dict[str, dict[str, Any]], int]:
    """The docs that can still be read from a damaged TinyDB file, and how many candidates were not.

    Every `"<doc id>":{` is a candidate; a doc that parses to an object `classify` recognises goes to
    the table it names (by its shape, so a damaged table name does not lose the table) and the scan
    continues after it; anything else is skipped. Docs nested inside a good doc are never visited
    (the scan jumps over the whole doc). Linear in the file size but for the skipped candidates.
    """
    text = raw.decode("utf-8", errors="replace")
    tables: dict[str, dict[str, Any]] = {}
    lost = 0
    pos = 0
    while (m := _DOC_KEY.search(text, pos)) is not None:
        try:
            doc, end = _DECODER.raw_decode(text, m.end() - 1)  # the match ends with the doc's "{"
        except ValueError:
            doc, end = None, 0
        table = classify(doc) if isinstance(doc, dict) else None
        if table is None:
            lost += 1
            pos = m.end()
            continue
        tables.setdefault(table, {})[m.group(1)] = doc
        pos = end
    return tables, lost
