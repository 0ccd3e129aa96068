"""Detection state machine: every case under CPython, then all of them under real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_detector_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_detector_case_cpython(name, fn):
    fn()


def test_detector_cases_under_micropython(micropython):
    res = micropython("import fw_detector_cases\nfw_detector_cases.run_all()\n").check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
    assert f"DONE {len(cases.CASES)}" in res.stdout


# --- properties over random lid/occupancy histories ------------------------------------

from detector import IDLE, Detector  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_segments = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=3)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(_segments, st.booleans())
def test_detector_invariants(segments, has_sensor):
    """Whatever the lid and the parcels do: left-open at most once per opening, no close
    event while the lid is open, at most one close event per closing, and a delivery only
    when the level really rose by the threshold (a pickup only when it fell to empty)."""
    d = Detector(settle_ms=500, cooldown_ms=3000, left_open_ms=2000, has_sensor=has_sensor, rise=1, empty=0)
    t = 0
    level_now = 0
    closed_level = None  # the last level the box measured while closed
    prev_open = False
    left_reports = 0
    close_events_this_cycle = 0
    for lid_open, ticks, parcels in segments:
        for _ in range(ticks):
            t += 100
            if lid_open:
                level_now = parcels
            reading = level_now if d.wants_reading(t) else None
            before_state = d.state
            baseline = d.level
            evs = list(d.update(t, lid_open, reading))
            if lid_open and not prev_open:
                left_reports = 0
                close_events_this_cycle = 0
            prev_open = lid_open
            for ev in evs:
                if ev["type"] == "lid_left_open":
                    assert lid_open
                    left_reports += 1
                    assert left_reports == 1
                    continue
                assert not lid_open and before_state != IDLE
                close_events_this_cycle += 1
                assert close_events_this_cycle == 1
                s = ev["sensors"]
                if ev["type"] == "delivery":
                    assert has_sensor and s["level"] - (baseline or 0) >= 1
                elif ev["type"] == "pickup":
                    assert has_sensor and s["level"] <= 0 < (baseline or 0)
                else:
                    assert ev["type"] == "lid_closed"
            if not lid_open and d.state == IDLE and has_sensor and reading is not None:
                closed_level = reading
    # Closing and waiting long enough always brings the machine back to IDLE.
    for _ in range(80):
        t += 100
        d.update(t, False, level_now if d.wants_reading(t) else None)
    assert d.state == IDLE
    if has_sensor and closed_level is not None:
        assert d.level == level_now
