"""Spool policy on real files: every case under CPython, then all of them under real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_spool_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_spool_case_cpython(name, fn, tmp_path):
    base = tmp_path / "spool"
    base.mkdir()
    fn(str(base))


def test_spool_cases_under_micropython(micropython, tmp_path):
    res = micropython("import fw_spool_cases\nfw_spool_cases.run_all('/data')\n", data_dir=tmp_path).check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
    assert f"DONE {len(cases.CASES)}" in res.stdout


# --- properties over random add / ack / reboot sequences -----------------------------

import hashlib  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

import protocol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from spool import Spool  # noqa: E402

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(min_value=0, max_value=6000)),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=10)),
        st.tuples(st.just("reboot"), st.just(0)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_spool_invariants(ops):
    """Bounds hold, the newest event is always kept, every kept photo matches its record,
    acked events never come back, and a reboot sees exactly what was there."""
    with tempfile.TemporaryDirectory() as d:
        s = Spool(d, os, max_events=5, max_bytes=15000, log=lambda m: None)
        seq = 0
        gone = set()
        for op, arg in ops:
            if op == "add":
                seq += 1
                photo = bytes((i * seq) & 0xFF for i in range(arg)) if arg else None
                meta = protocol.photo_meta(arg, protocol.sha256_hex(photo), 1024) if photo else None
                eid = protocol.make_id(b"\x00\x11\x22\x33\x44\x55\x66\x77", seq)
                s.add(protocol.event_dict(eid, "delivery", None, seq, {}, meta), photo)
                ids = [s.record(o)["id"] for o in s.orders()]
                assert ids[-1] == eid
            elif op == "ack":
                orders = s.orders()
                if orders:
                    eid = s.record(orders[arg % len(orders)])["id"]
                    assert s.remove(eid)
                    gone.add(eid)
            else:
                before = [s.record(o) for o in s.orders()]
                s = Spool(d, os, max_events=5, max_bytes=15000, log=lambda m: None)
                assert [s.record(o) for o in s.orders()] == before
            assert len(s) <= 5 and s.bytes <= 15000
            for o in s.orders():
                rec = s.record(o)
                assert rec["id"] not in gone
                f = s.open_photo(o)
                if rec["photo"] is None:
                    assert f is None
                else:
                    with f:
                        assert hashlib.sha256(f.read()).hexdigest() == rec["photo"]["sha256"]
            on_disk = sorted(n for n in os.listdir(d) if n.startswith("e"))
            expected = sorted(
                [f"e{o:010d}.json" for o in s.orders()]
                + [f"e{o:010d}.jpg" for o in s.orders() if s.has_photo(o)]
            )
            assert on_disk == expected
