# Detection state machine cases. Run under CPython (tests/test_firmware_detector.py,
# one test per case) and under real MicroPython (all cases in one script).
# Each case drives firmware/detector.py tick by tick and asserts the exact events.
from detector import IDLE, Detector


def run_ticks(d, script, step=100):
    """script: list of (until_ms, lid_open, level or None). Ticks every `step` ms;
    returns [(t, type, sensors)] for every event emitted."""
    out = []
    t = 0
    for until, lid, level in script:
        while t <= until:
            for ev in d.update(t, lid, level):
                out.append((t, ev["type"], ev["sensors"]))
            t += step
    return out


def types(evs):
    return [e[1] for e in evs]


def case_no_sensor_lid_cycle_gives_one_lid_closed_after_settle():
    d = Detector(settle_ms=2000, cooldown_ms=0, left_open_ms=60000)
    evs = run_ticks(d, [(1000, False, None), (3000, True, None), (10000, False, None)])
    assert types(evs) == ["lid_closed"], evs
    t, _, s = evs[0]
    assert t == 3100 + 2000, t  # closed at 3100, settle 2000
    assert s["lid"] == "closed" and s["open_s"] == 2
    assert "level" not in s
    assert d.state == IDLE


def case_no_event_before_settle_time():
    d = Detector(settle_ms=2000)
    evs = run_ticks(d, [(500, True, None), (2400, False, None)])
    assert evs == [], evs


def case_delivery_when_level_rises():
    d = Detector(settle_ms=1000, has_sensor=True, rise=1, empty=0)
    evs = run_ticks(d, [(1000, False, 0), (2000, True, None), (5000, False, 1)])
    assert types(evs) == ["delivery"], evs
    s = evs[0][2]
    assert s["before"] == 0 and s["level"] == 1
    assert d.level == 1


def case_pickup_when_level_falls_to_empty():
    d = Detector(settle_ms=1000, has_sensor=True, rise=30, empty=15, level=120)
    evs = run_ticks(d, [(500, False, 120), (1500, True, None), (4000, False, 4)])
    assert types(evs) == ["pickup"], evs
    assert evs[0][2]["before"] == 120 and evs[0][2]["level"] == 4


def case_small_change_is_lid_closed_not_delivery():
    d = Detector(settle_ms=1000, has_sensor=True, rise=30, empty=15, cooldown_ms=0)
    evs = run_ticks(d, [(500, False, 100), (1500, True, None), (4000, False, 120)])
    assert types(evs) == ["lid_closed"], evs


def case_partial_pickup_is_lid_closed():
    d = Detector(settle_ms=1000, has_sensor=True, rise=30, empty=15, cooldown_ms=0)
    evs = run_ticks(d, [(500, False, 300), (1500, True, None), (4000, False, 100)])
    assert types(evs) == ["lid_closed"], evs


def case_unknown_baseline_counts_as_empty():
    d = Detector(settle_ms=1000, has_sensor=True, rise=1, empty=0)
    evs = run_ticks(d, [(300, True, None), (3000, False, 1)])
    assert types(evs) == ["delivery"], evs
    assert evs[0][2]["before"] is None


def case_readings_while_open_are_ignored():
    d = Detector(settle_ms=1000, has_sensor=True, rise=1, empty=0)
    # A hand in the box reads "occupied" while open; the box is empty after.
    evs = run_ticks(d, [(500, False, 0), (3000, True, 1), (6000, False, 0)])
    assert types(evs) == ["lid_closed"], evs
    assert evs[0][2]["level"] == 0


def case_lid_left_open_reported_once():
    d = Detector(settle_ms=1000, left_open_ms=5000, cooldown_ms=0)
    evs = run_ticks(d, [(200, False, None), (30000, True, None), (33000, False, None)])
    assert types(evs) == ["lid_left_open", "lid_closed"], evs
    assert evs[0][0] == 300 + 5000
    assert evs[0][2]["lid"] == "open" and evs[0][2]["open_s"] == 5


def case_reopen_during_settle_continues_the_same_opening():
    d = Detector(settle_ms=2000, left_open_ms=4000, cooldown_ms=0)
    script = [
        (0, False, None),
        (3000, True, None),  # opened at 100
        (3500, False, None),  # closed, settling
        (6000, True, None),  # reopened before settle ended: left-open fires at 4100
        (9000, False, None),
    ]
    evs = run_ticks(d, script)
    assert types(evs) == ["lid_left_open", "lid_closed"], evs
    assert evs[0][0] == 4100


def case_cooldown_drops_a_second_lid_closed():
    d = Detector(settle_ms=500, cooldown_ms=10000)
    script = [
        (0, False, None),
        (1000, True, None),
        (3000, False, None),
        (3500, True, None),
        (6000, False, None),
    ]
    evs = run_ticks(d, script)
    assert types(evs) == ["lid_closed"], evs
    # After the cooldown a new cycle reports again.
    evs2 = run_ticks_from(d, 20000, [(21000, True, None), (24000, False, None)])
    assert types(evs2) == ["lid_closed"], evs2


def run_ticks_from(d, t0, script, step=100):
    out = []
    t = t0
    for until, lid, level in script:
        while t <= until:
            for ev in d.update(t, lid, level):
                out.append((t, ev["type"], ev["sensors"]))
            t += step
    return out


def case_two_real_deliveries_inside_cooldown_are_both_reported():
    d = Detector(settle_ms=500, cooldown_ms=60000, has_sensor=True, rise=1, empty=0)
    script = [
        (0, False, 0),
        (1000, True, None),
        (2000, False, 1),  # first parcel
        (2500, True, None),
        (4000, False, 2),  # second parcel on top
    ]
    evs = run_ticks(d, script)
    assert types(evs) == ["delivery", "delivery"], evs
    assert evs[1][2]["before"] == 1 and evs[1][2]["level"] == 2


def case_bounce_after_delivery_is_not_a_second_delivery():
    d = Detector(settle_ms=500, cooldown_ms=10000, has_sensor=True, rise=1, empty=0)
    script = [(0, False, 0), (1000, True, None), (2000, False, 1), (2100, True, None), (4000, False, 1)]
    evs = run_ticks(d, script)
    assert types(evs) == ["delivery"], evs


def case_missing_reading_times_out_to_lid_closed():
    d = Detector(settle_ms=500, has_sensor=True, measure_timeout_ms=1000, cooldown_ms=0)
    evs = run_ticks(d, [(0, False, 0), (1000, True, None), (5000, False, None)])
    assert types(evs) == ["lid_closed"], evs
    t, _, s = evs[0]
    assert s["error"] == "no_reading" and s["level"] is None
    assert t == 1100 + 500 + 1000
    assert d.level == 0  # an unknown reading does not overwrite the last good one


def case_wants_reading_only_when_useful():
    d = Detector(settle_ms=1000, has_sensor=True, sample_ms=5000)
    assert d.wants_reading(0)
    d.update(0, False, 7)
    assert not d.wants_reading(100)
    assert d.wants_reading(5000)
    d.update(5000, True, None)
    assert not d.wants_reading(5100)  # open: a reading is meaningless
    d.update(5200, False, None)
    assert not d.wants_reading(5300)  # settling
    assert d.wants_reading(6200)
    assert not Detector().wants_reading(0)  # no sensor


def case_tick_wraparound_with_ticks_diff():
    period = 1 << 30

    def tdiff(a, b):
        return ((a - b + (period >> 1)) & (period - 1)) - (period >> 1)

    d = Detector(settle_ms=1000, left_open_ms=3000, cooldown_ms=0, ticks_diff=tdiff)
    start = period - 1500
    out = []
    t = 0
    for step in range(80):
        now = (start + step * 100) & (period - 1)
        lid = 2 <= step < 60
        for ev in d.update(now, lid, None):
            out.append((step, ev["type"]))
        t += 1
    assert out == [(32, "lid_left_open"), (70, "lid_closed")], out


def case_can_sleep_only_when_nothing_is_pending():
    d = Detector(settle_ms=1000, left_open_ms=3000)
    assert d.can_sleep()
    d.update(0, True)
    assert not d.can_sleep()  # open, not yet reported
    d.update(3000, True)
    assert d.can_sleep()  # left open and reported: a battery box may sleep
    d.update(3100, False)
    assert not d.can_sleep()  # settling: the close event is still to come
    d.update(4100, False)
    assert d.can_sleep()


def case_events_carry_no_shared_state():
    d = Detector(settle_ms=100, cooldown_ms=0)
    a = run_ticks(d, [(0, False, None), (500, True, None), (1000, False, None)])
    b = run_ticks_from(d, 2000, [(2500, True, None), (3000, False, None)])
    assert a[0][2] is not b[0][2]


def case_missed_cycle_measures_against_the_level_from_before_the_sleep():
    # Woken by the lid, closed again before the app ran: the parcel is a delivery, not the new
    # baseline (issue 13 item 8). Without missed_cycle() the first IDLE sample absorbs it.
    d = Detector(settle_ms=1000, cooldown_ms=0, has_sensor=True, rise=1, empty=0, level=0)
    d.missed_cycle(0)
    assert not d.can_sleep()
    evs = run_ticks(d, [(3000, False, 1)])
    assert types(evs) == ["delivery"], evs
    assert evs[0][2]["before"] == 0 and evs[0][2]["level"] == 1 and d.level == 1
    d2 = Detector(settle_ms=1000, cooldown_ms=0, has_sensor=True, level=0)
    assert run_ticks(d2, [(3000, False, 1)]) == [] and d2.level == 1  # the old loss


CASES = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("case_") and callable(fn)]


def run_all():
    for name, fn in CASES:
        fn()
        print("PASS", name)
    print("DONE", len(CASES))
