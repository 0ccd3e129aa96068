"""The alert rules and box state as tables (gateway/alerts.py, gateway/boxes.py): pure functions, no
broker, no store, no clock; each row is config + box state + input -> what is planned or kept.
The end-to-end path (broker, store, sinks) is tests/test_gateway_alerts.py."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway import alerts, boxes
from gateway.alerts import Sink
from gateway.boxes import Notice
from gateway.config import AlertsConfig
from gateway.ports import EventRecord
from gateway.protocol import Status
from gateway.store import blank_device
from gateway.vocabulary import ALERT_KINDS

NOW = 1_700_000_000.0
FOLDER = Sink("folder", ("",))
HOOK = Sink("webhook", ("",))
HOOK_ALL = Sink("webhook", ("",), every_event=True)  # [webhook] events = "all"
WA = Sink("whatsapp", ("6281111", "6282222"), language="id")
NOBODY = Sink("apprise", ())


def cfg(**over: Any) -> AlertsConfig:
    return AlertsConfig(**{"timezone": "UTC", **over})


def box(**over: Any) -> dict[str, Any]:
    return {**blank_device("box1", "Front gate"), **over}


def event(eid: str = "e1", etype: str = "delivery", ts: float = NOW - 5, **over: Any) -> EventRecord:
    rec = EventRecord(
        device="box1",
        id=eid,
        type=etype,
        ts=ts,
        received_at=over.pop("received_at", ts + 1),
        seq=1,
        sensors=over.pop("sensors", {}),
        photo=None,
        cmd=None,
    )
    rec.update(over)  # type: ignore[typeddict-item]
    return rec


def rows(planned: list[alerts.PlannedAlert]) -> list[tuple[str, str, str, float]]:
    """(sink, recipient, kind, due - now) per entry: what a row expects."""
    return [(p["notifier"], p["recipient"], p["kind"], (p["next_attempt_at"] or 0) - NOW) for p in planned]


# --- which events alert whom --------------------------------------------------------------

EVENT_RULES = [
    pytest.param({}, [FOLDER], "delivery", [("folder", "", "delivery", 0)], id="delivery-alerts"),
    pytest.param({}, [FOLDER], "lid_closed", [], id="not-in-kinds-no-alert"),
    pytest.param(
        {},
        [FOLDER, HOOK_ALL],
        "lid_closed",
        [("webhook", "", "lid_closed", 0)],
        id="every-event-sink-gets-it",
    ),
    pytest.param({}, [FOLDER, HOOK], "snapshot", [], id="alert-only-sinks-skip-non-alerts"),
    pytest.param({"kinds": ["lid_closed"]}, [FOLDER], "delivery", [], id="kinds-config-replaces-the-default"),
    pytest.param(
        {"group_window_s": 60.0},
        [FOLDER],
        "delivery",
        [("folder", "", "delivery", 60)],
        id="grouped-delivery-waits",
    ),
    pytest.param(
        {"group_window_s": 60.0}, [FOLDER], "pickup", [("folder", "", "pickup", 0)], id="pickup-never-waits"
    ),
    pytest.param(
        {},
        [WA, FOLDER, NOBODY],
        "lid_left_open",
        [
            ("whatsapp", "6281111", "lid_left_open", 0),
            ("whatsapp", "6282222", "lid_left_open", 0),
            ("folder", "", "lid_left_open", 0),
        ],
        id="one-per-sink-and-recipient",
    ),
]


@pytest.mark.parametrize(("over", "sinks", "etype", "expected"), EVENT_RULES)
def test_event_rules(over, sinks, etype, expected) -> None:
    planned = alerts.plan_event(box(), event(etype=etype), sinks=sinks, cfg=cfg(**over), now=NOW)
    assert rows(planned) == expected
    assert all(p["kind"] in ALERT_KINDS and p["state"] == "pending" and p["attempts"] == 0 for p in planned)


def test_entry_ids_are_stable() -> None:
    """Stored outboxes depend on these ids (a retry or a re-sent event must not make a second entry)."""
    ev = alerts.plan_event(box(), event("e1"), sinks=[FOLDER, WA], cfg=cfg(), now=NOW)
    assert [p["id"] for p in ev] == [
        "box1_e1_folder_e3b0c442",
        "box1_e1_whatsapp_f7e0bb2a",
        "box1_e1_whatsapp_0f0b353b",
    ]
    assert alerts.rhash("6281111") == hashlib.sha256(b"6281111").hexdigest()[:8]
    off = alerts.plan_notice(box(), Notice("offline", 1234.5678), sinks=[FOLDER], cfg=cfg(), now=NOW)
    assert [p["id"] for p in off] == ["box1_offline_1234567_folder_e3b0c442"]
    again = alerts.plan_event(box(), event("e1"), sinks=[FOLDER, WA], cfg=cfg(), now=NOW + 99)
    assert [p["id"] for p in again] == [p["id"] for p in ev]


def test_planned_entry_carries_what_the_dispatcher_needs() -> None:
    b = boxes.apply_event(box(), event("e0", ts=NOW - 50))
    ev = event("e1", photo={"size": 1, "sha256": "x", "width": 1, "height": 1}, photo_dropped=False)
    b = boxes.apply_event(b, ev)
    (wa, _, folder) = alerts.plan_event(b, ev, sinks=[WA, FOLDER], cfg=cfg(language="en"), now=NOW)
    assert folder["language"] == "en" and wa["language"] == "id"  # a sink's own language first
    assert (
        folder["caption"].startswith("📦 Package delivered to Front gate")
        and "2 packages waiting" in folder["caption"]
    )
    assert wa["caption"].startswith("📦 Paket diterima di Front gate")
    assert folder["has_photo"] and folder["alert_state"] == {"waiting": 2} and folder["ts"] == ev["ts"]
    assert folder["device_name"] == "Front gate" and folder["event_ids"] == ["e1"]
    assert folder["created_at"] == NOW and folder["message_id"] is None and folder["receipt"] is None
    dropped = alerts.plan_event(b, event("e2", photo_dropped=True), sinks=[FOLDER], cfg=cfg(), now=NOW)
    assert "No photo: the box's storage was full" in dropped[0]["caption"] and not dropped[0]["has_photo"]


# --- box health and WhatsApp --------------------------------------------------------------

NOTICE_RULES = [
    pytest.param({}, [FOLDER, HOOK], "online", ["folder", "webhook"], id="online-to-all"),
    pytest.param({"online_alert": False}, [FOLDER, HOOK], "online", [], id="online-off"),
    pytest.param(
        {"online_alert": False}, [FOLDER, HOOK_ALL], "online", ["webhook"], id="online-off-every-event-sink"
    ),
    pytest.param({}, [FOLDER, HOOK], "offline", ["folder", "webhook"], id="offline-to-all"),
    pytest.param({"online_alert": False}, [FOLDER], "low_battery", ["folder"], id="low-battery-to-all"),
]


@pytest.mark.parametrize(("over", "sinks", "kind", "expected"), NOTICE_RULES)
def test_notice_rules(over, sinks, kind, expected) -> None:
    planned = alerts.plan_notice(
        box(battery_mv=3300), Notice(kind, NOW - 60), sinks=sinks, cfg=cfg(**over), now=NOW
    )
    assert [p["notifier"] for p in planned] == expected
    assert all(p["kind"] == kind and p["ts"] == NOW - 60 and p["event_ids"] == [] for p in planned)
    if kind == "low_battery" and planned:
        assert "3.30 V" in planned[0]["caption"]


def test_whatsapp_notice_goes_to_every_other_sink() -> None:
    planned = alerts.plan_whatsapp(
        "whatsapp_down",
        NOW - 400,
        gateway_name="Home",
        note="Not paired.",
        sinks=[WA, FOLDER],
        cfg=cfg(),
        now=NOW,
    )
    assert rows(planned) == [("folder", "", "whatsapp_down", 0)]
    assert planned[0]["device"] == alerts.GATEWAY_DEVICE and planned[0]["caption"].endswith(" Not paired.")
    assert planned[0]["caption"].startswith("⚠️ Home: WhatsApp alerts have stopped")


# --- grouping a burst of deliveries -------------------------------------------------------


def _open(eid: str, **over: Any) -> dict[str, Any]:
    """An open outbox entry as the store holds it (planned 10 s ago for box1 to the folder sink)."""
    (p,) = alerts.plan_event(box(), event(eid), sinks=[FOLDER], cfg=cfg(group_window_s=60.0), now=NOW - 10)
    return {**p, **over}


MERGE_RULES = [
    pytest.param({"group_window_s": 0.0}, [_open("e0")], "delivery", None, id="no-grouping"),
    pytest.param(
        {}, [_open("e0")], "delivery", ("box1_e0_folder_e3b0c442", ["e0", "e1"]), id="folds-into-open"
    ),
    pytest.param({}, [_open("e0", attempts=1)], "delivery", None, id="already-tried"),
    pytest.param({}, [_open("e0", created_at=NOW - 61)], "delivery", None, id="outside-window"),
    pytest.param({}, [_open("e0", recipient="other")], "delivery", None, id="other-recipient"),
    pytest.param({}, [_open("e0", device="box2")], "delivery", None, id="other-box"),
    pytest.param({}, [_open("e0", kind="pickup")], "delivery", None, id="open-is-not-a-delivery"),
    pytest.param({}, [_open("e0")], "pickup", None, id="pickup-not-grouped"),
    pytest.param(
        {},
        [_open("e0"), _open("e9")],
        "delivery",
        ("box1_e0_folder_e3b0c442", ["e0", "e1"]),
        id="oldest-first",
    ),
    pytest.param(
        {},
        [_open("e0", event_ids=["e0", "e1"])],
        "delivery",
        ("box1_e0_folder_e3b0c442", ["e0", "e1"]),
        id="re-sent-event-not-repeated",
    ),
]


@pytest.mark.parametrize(("over", "open_entries", "etype", "merged"), MERGE_RULES)
def test_merge_rules(over, open_entries, etype, merged) -> None:
    c = cfg(**{"group_window_s": 60.0, **over})
    b = box(waiting=2)
    planned = alerts.plan_event(b, event("e1", etype=etype), sinks=[FOLDER], cfg=c, now=NOW)
    before = [dict(o) for o in open_entries]
    keep, updates = alerts.merge_into_burst(planned, open_entries, cfg=c)
    assert open_entries == before  # the entries given are not changed: updates are returned
    if merged is None:
        assert keep == planned and updates == []
        return
    alert_id, ids = merged
    assert keep == []
    ((uid, fields),) = updates
    assert uid == alert_id and fields["event_ids"] == ids
    assert fields["caption"].startswith(f"📦 {len(ids)} packages delivered to Front gate")
    assert fields["alert_state"] == {"waiting": 2} and fields["ts"] == NOW - 5


def test_merge_of_several_planned_against_one_store_view() -> None:
    """Two recipients, each folds into its own open entry; a third recipient has none and stays."""
    c = cfg(group_window_s=60.0)
    sinks = [Sink("whatsapp", ("a", "b", "c"))]
    opened = [
        p
        for p in alerts.plan_event(box(), event("e0"), sinks=sinks, cfg=c, now=NOW - 5)
        if p["recipient"] != "c"
    ]
    planned = alerts.plan_event(box(), event("e1"), sinks=sinks, cfg=c, now=NOW)
    keep, updates = alerts.merge_into_burst(planned, opened, cfg=c)
    assert [k["recipient"] for k in keep] == ["c"]
    assert [(u[0], u[1]["event_ids"]) for u in updates] == [(o["id"], ["e0", "e1"]) for o in opened]


# --- box state from events ----------------------------------------------------------------

EVENT_STATE = [
    pytest.param([("delivery", 10)], {"waiting": 1, "last_event_id": "e0", "last_delivery_ts": 10}, id="one"),
    pytest.param([("delivery", 10), ("delivery", 20)], {"waiting": 2, "last_event_id": "e1"}, id="two"),
    pytest.param([("delivery", 10), ("pickup", 20)], {"waiting": 0, "last_pickup_ts": 20}, id="picked-up"),
    pytest.param(
        [("pickup", 20), ("delivery", 10)],
        {"waiting": 0, "last_event_id": "e0", "last_delivery_ts": 10},
        id="late-delivery-before-pickup",
    ),
    pytest.param(
        [("pickup", 20), ("delivery", 30)], {"waiting": 1, "last_event_id": "e1"}, id="after-pickup"
    ),
    pytest.param(
        [("delivery", 30), ("delivery", 10)], {"waiting": 2, "last_event_id": "e0"}, id="older-event-not-last"
    ),
    pytest.param([("lid_left_open", 10)], {"lid_open": True}, id="lid-left-open"),
    pytest.param([("lid_closed", 10, {"lid": "closed"})], {"lid_open": False}, id="lid-sensor"),
    pytest.param(
        [("lid_closed", 20, {"lid": "closed"}), ("lid_left_open", 10)],
        {"lid_open": False},
        id="older-lid-ignored",
    ),
]


@pytest.mark.parametrize(("events", "expected"), EVENT_STATE)
def test_box_state_from_events(events, expected) -> None:
    b: dict[str, Any] = box()
    for i, (etype, ts, *sensors) in enumerate(events):
        b = boxes.apply_event(
            b, event(f"e{i}", etype, ts, received_at=1000.0 - i, sensors=(sensors or [{}])[0])
        )
    assert {k: b[k] for k in expected} == expected
    assert b["last_seen"] == 1000.0  # the latest reception, whatever order they came in


def test_apply_event_returns_a_new_record() -> None:
    b = box()
    assert boxes.apply_event(b, event()) is not b and b["waiting"] == 0


# --- box state from statuses --------------------------------------------------------------

ON = Status(online=True, fw="0.2.0", rssi=-60, battery_mv=3900)
OFF = Status(online=False)

STATUS_RULES = [
    pytest.param(
        {}, ON, {}, {"online": True, "last_seen": NOW, "fw": "0.2.0", "status_at": NOW}, (), id="first-online"
    ),
    pytest.param(
        {"online": True, "last_seen": NOW - 9},
        OFF,
        {},
        {"online": False, "offline_since": NOW, "fw": None},
        (),
        id="goes-offline",
    ),
    pytest.param(
        {"online": False, "offline_since": NOW - 99},
        OFF,
        {},
        {"offline_since": NOW - 99},
        (),
        id="offline-again-keeps-since",
    ),
    pytest.param(
        {"online": False, "offline_since": NOW - 99, "offline_alerted": True},
        ON,
        {},
        {"online": True, "offline_since": None, "offline_alerted": False},
        ("online",),
        id="back-after-offline-alert",
    ),
    pytest.param(
        {"online": False, "offline_since": NOW - 99}, ON, {}, {"online": True}, (), id="back-before-alert"
    ),
    pytest.param(
        {"online": True, "last_seen": NOW - 9}, ON, {"retained": True}, None, (), id="replay-same-state"
    ),
    pytest.param(
        {"online": True, "last_seen": NOW - 9, "fw": "0.1.0"},
        OFF,
        {"retained": True},
        {"online": False, "offline_since": NOW - 9, "last_seen": NOW - 9, "fw": "0.1.0"},
        (),
        id="replay-other-state",
    ),
    pytest.param(
        {},
        ON,
        {"retained": True},
        {"online": True, "last_seen": None, "status_at": None, "fw": "0.2.0"},
        (),
        id="replay-of-unknown-box",
    ),
    pytest.param(
        {"online": True, "last_seen": NOW - 9}, OFF, {"removed": True}, None, (), id="removed-box-last-will"
    ),
    pytest.param(
        {},
        Status(online=True, battery_mv=3300),
        {"low": 3400},
        {"low_battery_alerted": True},
        ("low_battery",),
        id="low",
    ),
    pytest.param(
        {"low_battery_alerted": True},
        Status(online=True, battery_mv=3300),
        {"low": 3400},
        {"low_battery_alerted": True},
        (),
        id="still-low-once",
    ),
    pytest.param(
        {"low_battery_alerted": True},
        Status(online=True, battery_mv=3450),
        {"low": 3400},
        {"low_battery_alerted": True},
        (),
        id="within-hysteresis",
    ),
    pytest.param(
        {"low_battery_alerted": True},
        Status(online=True, battery_mv=3500),
        {"low": 3400},
        {"low_battery_alerted": False},
        (),
        id="recovered",
    ),
    pytest.param(
        {}, Status(online=True, battery_mv=3300), {"low": 0}, {"battery_mv": 3300}, (), id="low-battery-off"
    ),
    pytest.param({}, Status(online=True), {"low": 3400}, {"battery_mv": None}, (), id="no-battery-reading"),
    pytest.param(
        {"offline_alerted": True},
        Status(online=True, battery_mv=3000),
        {"low": 3400},
        {"online": True},
        ("online", "low_battery"),
        id="back-and-low",
    ),
]


@pytest.mark.parametrize(("before", "st", "opts", "expected", "notices"), STATUS_RULES)
def test_box_state_from_statuses(before, st, opts, expected, notices) -> None:
    out = boxes.apply_status(
        box(**before),
        st,
        NOW,
        retained=opts.get("retained", False),
        removed=opts.get("removed", False),
        low_battery_mv=opts.get("low", 3400),
    )
    # a replay counts as one (statuses_replayed) only for a box already heard from
    assert out.replayed == (opts.get("retained", False) and before.get("last_seen") is not None)
    if expected is None:
        assert out.box is None and out.notices == ()
        return
    assert out.box is not None and {k: out.box.get(k) for k in expected} == expected
    assert tuple(n.kind for n in out.notices) == notices and all(n.ts == NOW for n in out.notices)


# --- which boxes are due offline ----------------------------------------------------------

OFFLINE_RULES = [
    pytest.param({"offline_since": NOW - 600}, {}, NOW - 600, id="offline-long-enough"),
    pytest.param({"offline_since": NOW - 599}, {}, None, id="not-yet"),
    pytest.param({"offline_since": NOW - 9999, "offline_alerted": True}, {}, None, id="alerted-once"),
    pytest.param({"offline_since": None}, {}, None, id="never-seen-offline"),
    pytest.param(
        {"offline_since": NOW - 999, "last_seen": NOW - 999}, {"removed": NOW - 500}, None, id="removed"
    ),
    pytest.param(
        {"offline_since": NOW - 999, "last_seen": NOW - 400},
        {"removed": NOW - 500},
        NOW - 999,
        id="heard-after-removal",
    ),
    pytest.param({"online": True, "last_seen": NOW - 9999}, {}, None, id="online-silent-check-off"),
    pytest.param({"online": True, "last_seen": NOW - 60}, {"silent": 60.0}, NOW - 60, id="silent"),
    pytest.param({"online": True, "last_seen": NOW - 59}, {"silent": 60.0}, None, id="not-silent-yet"),
    pytest.param({"online": True, "last_seen": None}, {"silent": 60.0}, None, id="online-never-seen"),
]


@pytest.mark.parametrize(("state", "opts", "since"), OFFLINE_RULES)
def test_due_offline(state, opts, since) -> None:
    removed = {"box1": opts["removed"]} if "removed" in opts else {}
    b = box(**state)
    due = boxes.due_offline(
        [b], NOW, offline_after_s=600.0, silent_after_s=opts.get("silent", 0.0), removed=removed
    )
    if since is None:
        assert due == []
        return
    ((rec, notice),) = due
    assert (
        notice == Notice("offline", since) and rec["offline_alerted"] is True and not b.get("offline_alerted")
    )
