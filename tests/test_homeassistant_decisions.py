"""The Home Assistant bridge's decisions, table by table, without a broker: what a worker turn publishes
and clears (`sync`), the coalesced to-do list (`pending`), what an incoming message is (`inbound`),
whether a button press or install is acted on (`commands`), which boxes to show across restarts
(`roster`), the order of a box's messages (`messages`) and the photo entities' bytes (`image`); and a
whole worker turn (`publisher`) against the in-memory gateway, publishing into a list.

The bridge itself, against a real Mosquitto, is tests/test_homeassistant*.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from collections import Counter
from typing import Any

import pytest
from PIL import Image

from gateway.homeassistant import discovery as d
from gateway.homeassistant import inbound, messages, sync
from gateway.homeassistant.commands import Refusal, install_refusal, press_refusal
from gateway.homeassistant.discovery import HAConfig
from gateway.homeassistant.image import PhotoLedger, shrink_jpeg
from gateway.homeassistant.pending import Batch, PendingWork
from gateway.homeassistant.publisher import Publisher
from gateway.homeassistant.roster import Roster, Saved, parse_saved
from tests.support.ha_gateway import memory_port
from tests.support.web import MemoryPort

CFG = HAConfig(prefix="ha", protocol_prefix="pb", gateway_id="gw")


def rec(device: str, **fields: Any) -> dict[str, Any]:
    return {"device": device, "name": device, "online": True, "waiting": 0, **fields}


def jpeg(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buf, fmt)
    return buf.getvalue()


# --- sync: the steps of one worker turn ----------------------------------------------------------------------


def run_turn(
    batch: Batch,
    *,
    roster: Roster | None = None,
    announced: set[str] | None = None,
    ha_online: bool | None = True,
    gateway: list[dict[str, Any]] | None = None,
    photos: dict[tuple[str, str], str] | None = None,
) -> tuple[list[sync.Step], Roster, set[str], list[str]]:
    roster = roster or Roster(registered=None)
    announced = set() if announced is None else announced
    reads: list[str] = []

    def boxes() -> list[dict[str, Any]]:
        reads.append("boxes")
        return roster.listed(gateway or [])

    def latest_photo(device: str, kind: str) -> str | None:
        reads.append(f"photo {device} {kind}")
        return (photos or {}).get((device, kind))

    steps = list(
        sync.plan_turn(
            batch, roster, announced, ha_online=lambda: ha_online, boxes=boxes, latest_photo=latest_photo
        )
    )
    return steps, roster, announced, reads


def test_a_state_change_publishes_the_box_from_its_record_without_reading_the_gateway() -> None:
    steps, _roster, announced, reads = run_turn(Batch(devices={"box-1": rec("box-1", waiting=2)}))
    assert steps == [sync.PublishBox(rec("box-1", waiting=2), force=False)]
    assert announced == {"box-1"} and reads == []


def test_a_box_without_a_record_is_read_once_from_the_gateway() -> None:
    batch = Batch(devices={"box-1": None, "box-2": None, "ghost": None})
    steps, _, announced, reads = run_turn(batch, gateway=[rec("box-1"), rec("box-2")])
    assert steps == [
        sync.PublishBox(rec("box-1"), force=False),
        sync.PublishBox(rec("box-2"), force=False),
        sync.Skipped("skipped.unknown_device"),
    ]
    assert reads == ["boxes"] and announced == {"box-1", "box-2"}


@pytest.mark.parametrize(
    ("ha_online", "tombstone"),
    [(True, False), (False, True), (None, True)],  # not known to be up: repeated after its next birth
)
def test_a_removed_box_is_cleared_first_and_nothing_else_of_it_is_sent(ha_online, tombstone) -> None:
    batch = Batch(
        removals={"box-2"},
        devices={"box-2": rec("box-2"), "box-1": rec("box-1")},
        images={("box-2", "delivery"): "e1", ("box-1", "delivery"): "e2"},
        presses={"box-2": b"PRESS"},
    )
    steps, roster, announced, _ = run_turn(batch, announced={"box-1", "box-2"}, ha_online=ha_online)
    assert steps == [
        sync.ClearBox("box-2"),
        sync.SaveState(),
        sync.PublishBox(rec("box-1"), force=False),
        sync.PublishImage("box-1", "delivery", "e2"),
    ]
    assert roster.removed == {"box-2"} and announced == {"box-1"}
    assert roster.tombstones == ({"box-2"} if tombstone else set())


def test_a_removed_box_stays_out_even_when_a_late_state_arrives() -> None:
    roster = Roster(registered={"box-1"}, removed={"box-2"})
    steps, *_ = run_turn(Batch(devices={"box-2": rec("box-2")}), roster=roster)
    assert steps == [sync.Skipped("skipped.removed_device")]


def test_a_box_registered_again_is_announced_with_its_last_photos() -> None:
    roster = Roster(registered={"box-1", "box-2"}, removed={"box-2"}, tombstones={"box-2"})
    steps, roster, announced, _ = run_turn(
        Batch(restores={"box-2"}),
        roster=roster,
        gateway=[rec("box-2")],
        photos={("box-2", "delivery"): "e1", ("box-2", "snapshot"): "e2"},
    )
    assert steps == [
        sync.SaveState(),
        sync.PublishBox(rec("box-2"), force=False),
        sync.PublishImage("box-2", "delivery", "e1"),
        sync.PublishImage("box-2", "snapshot", "e2"),
    ]
    assert roster.removed == set() and roster.tombstones == set() and announced == {"box-2"}


@pytest.mark.parametrize(
    ("batch", "want", "left"),
    [
        # a reconnect repeats the removals Home Assistant may have missed, and keeps them
        (Batch(full=True), [sync.RepeatRemoval("box-9")], {"box-9"}),
        # its birth message: repeated once more, then confirmed and forgotten
        (
            Batch(discovery=True, ha_birth=True),
            [sync.RepeatRemoval("box-9"), sync.RemovalsConfirmed(("box-9",)), sync.SaveState()],
            set(),
        ),
        # an ordinary turn does not
        (Batch(devices={"box-1": rec("box-1")}), [], {"box-9"}),
    ],
)
def test_unconfirmed_removals_are_repeated_until_home_assistant_is_born(batch, want, left) -> None:
    roster = Roster(registered={"box-1"}, removed={"box-9"}, tombstones={"box-9"})
    steps, roster, *_ = run_turn(batch, roster=roster, gateway=[rec("box-1")])
    removal_steps = [
        s for s in steps if isinstance(s, sync.RepeatRemoval | sync.RemovalsConfirmed | sync.SaveState)
    ]
    assert removal_steps == want
    assert roster.tombstones == left


def test_a_full_resync_sends_everything_again_and_clears_boxes_gone_from_the_gateway() -> None:
    roster = Roster(registered={"box-1", "box-3"}, names={"box-3": "Side door"})
    steps, _, announced, reads = run_turn(
        Batch(full=True, images={("box-1", "delivery"): "new"}),
        roster=roster,
        announced={"box-1", "gone"},
        gateway=[rec("box-1")],
        photos={("box-1", "delivery"): "old", ("box-1", "snapshot"): "s1"},
    )
    silent = {"device": "box-3", "name": "Side door", "online": False, "waiting": 0}
    assert steps == [
        sync.PublishGateway(),
        sync.ClearBox("gone"),
        sync.PublishBox(rec("box-1"), force=True),
        sync.PublishBox(silent, force=True),
        sync.ResendPhotos(),
        sync.PublishImage("box-1", "delivery", "new"),  # the batch's photo wins over the stored latest
        sync.PublishImage("box-1", "snapshot", "s1"),
    ]
    assert announced == {"box-1", "box-3"}
    assert reads == ["boxes", "photo box-1 snapshot", "photo box-3 delivery", "photo box-3 snapshot"]


def test_a_home_assistant_restart_resends_configs_but_not_photos() -> None:
    steps, *_ = run_turn(Batch(discovery=True), announced={"box-1"}, gateway=[rec("box-1")])
    assert steps == [sync.PublishGateway(), sync.PublishBox(rec("box-1"), force=True)]


def test_a_photo_of_a_box_home_assistant_was_not_told_about_waits() -> None:
    steps, *_ = run_turn(Batch(images={("box-1", "delivery"): "e1"}))
    assert steps == []


def test_presses_come_last() -> None:
    steps, *_ = run_turn(Batch(devices={"box-1": rec("box-1")}, presses={"box-1": b"PRESS"}))
    assert steps == [sync.PublishBox(rec("box-1"), force=False), sync.Press("box-1", b"PRESS")]


# --- pending: the coalesced to-do list ---------------------------------------------------------------------


def test_a_burst_of_changes_becomes_one_entry_per_box() -> None:
    p = PendingWork()
    for n in range(50):
        p.device_changed("box-1", rec("box-1", rssi=-n))
    p.event_stored("box-2", "delivery", "e1", True)
    p.event_stored("box-2", "delivery", "e2", True)
    p.event_stored("box-2", "pickup", "e3", True)  # no image entity for pickups
    p.event_stored("box-3", "snapshot", "e4", False)  # no photo: state only
    batch = p.take()
    assert batch.devices == {"box-1": rec("box-1", rssi=-49), "box-2": None, "box-3": None}
    assert batch.images == {("box-2", "delivery"): "e2"}
    assert not p.has_work() and p.take() == Batch()


@pytest.mark.parametrize(
    ("record", "want_whatsapp", "want_storage"),
    [
        (lambda p: None, None, None),
        (lambda p: p.whatsapp_state(b"ON"), b"ON", None),
        (lambda p: p.storage_state({"ok": False}), None, {"ok": False}),
        # after a (re)connect the storage state goes again with the configs (WhatsApp is in the configs)
        (lambda p: p.full_resync(), None, {"ok": True}),
        (lambda p: p.ha_birth(), None, {"ok": True}),
    ],
)
def test_whatsapp_and_storage_are_sent_when_changed_or_with_a_resync(
    record, want_whatsapp, want_storage
) -> None:
    p = PendingWork()
    p.whatsapp_state(b"OFF")
    p.storage_state({"ok": True})
    p.take()
    p.whatsapp_state(b"OFF")  # unchanged: not sent again
    record(p)
    batch = p.take()
    assert (batch.whatsapp, batch.storage) == (want_whatsapp, want_storage)


def test_a_failed_turn_keeps_presses_and_installs_and_asks_for_a_full_resync() -> None:
    p = PendingWork()
    p.press("box-1", b"PRESS")
    p.install("box-1", b"INSTALL")
    p.device_changed("box-1", rec("box-1"))
    failed = p.take()
    p.press("box-1", b"newer")
    p.retry(failed)
    again = p.take()
    assert again.full and again.presses == {"box-1": b"newer"} and again.installs == {"box-1": b"INSTALL"}
    assert again.devices == {}  # rebuilt from the gateway by the resync


def test_removal_and_restore_are_recorded() -> None:
    p = PendingWork()
    p.remove("box-1")
    p.remove_all({"box-2"})
    p.restore("box-3")
    b = p.take()
    assert b.removals == {"box-1", "box-2"} and b.restores == {"box-3"} and b.devices == {"box-3": None}


# --- inbound: what arrives --------------------------------------------------------------------------------------

IMG = d.image_topic(CFG, "box-1", "delivery")


@pytest.mark.parametrize(
    ("topic", "payload", "want"),
    [
        ("ha/status", b"online", inbound.HomeAssistantStatus(True)),
        ("ha/status", b" online\n", inbound.HomeAssistantStatus(True)),
        ("ha/status", b"offline", inbound.HomeAssistantStatus(False)),
        ("ha/status", b"rebooting", None),
        (d.sync_probe_topic(CFG), b"abc", inbound.SyncProbe("abc")),
        (
            IMG,
            b"\xff\xd8jpeg",
            inbound.RetainedImage("box-1", "delivery", hashlib.sha256(b"\xff\xd8jpeg").hexdigest()),
        ),
        (IMG, b"", inbound.RetainedImage("box-1", "delivery", None)),
        ("pb/_ha/box/box-1/image/other", b"x", inbound.Unexpected("pb/_ha/box/box-1/image/other")),
        (d.press_topic(CFG, "box-1"), b"PRESS", inbound.Press("box-1", b"PRESS")),
        (d.press_topic(CFG, "box-1"), b"P" * 1000, inbound.Press("box-1", b"P" * 64)),
        (d.install_topic(CFG, "box-1"), b"INSTALL", inbound.Install("box-1", b"INSTALL")),
        (
            "pb/_ha/box/Bad_Id/snapshot/press",
            b"PRESS",
            inbound.Unexpected("pb/_ha/box/Bad_Id/snapshot/press"),
        ),
        ("pb/_ha/box/+/snapshot/press", b"PRESS", inbound.Unexpected("pb/_ha/box/+/snapshot/press")),
        ("pb/_ha/elsewhere", b"", inbound.Unexpected("pb/_ha/elsewhere")),
    ],
)
def test_what_an_mqtt_message_is(topic: str, payload: bytes, want: Any) -> None:
    assert inbound.classify(CFG, topic, payload) == want


@pytest.mark.parametrize(
    ("data", "device"),
    [
        ({"device": "box-1"}, "box-1"),
        ({"device": "Bad_Id"}, None),
        ({"device": 7}, None),
        ([1], None),
        (None, None),
    ],
)
def test_bus_device(data: Any, device: str | None) -> None:
    assert inbound.bus_device(data) == device


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (
            {"device": "box-1", "id": "box1aaaa-000001", "type": "delivery", "photo": {"size": 1}},
            inbound.StoredEvent("box-1", "box1aaaa-000001", "delivery", True),
        ),
        (
            {"device": "box-1", "id": "box1aaaa-000001", "type": "pickup", "photo": None},
            inbound.StoredEvent("box-1", "box1aaaa-000001", "pickup", False),
        ),
        ({"device": "box-1", "id": "../../etc", "type": "delivery"}, None),
        ({"device": "box 1", "id": "box1aaaa-000001"}, None),
        ("not a dict", None),
    ],
)
def test_bus_event(data: Any, want: Any) -> None:
    assert inbound.bus_event(data) == want


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (
            {"device": "box-2", "registered": ["box-1", "Bad_Id", 3]},
            inbound.RegistryChange("box-2", {"box-1"}),
        ),
        ({"device": "box-2"}, inbound.RegistryChange("box-2", None)),
        ({"device": "box-2", "registered": "box-1"}, inbound.RegistryChange("box-2", None)),
        ({"device": "../x", "registered": []}, None),
        ({}, None),
    ],
)
def test_bus_registry_change(data: Any, want: Any) -> None:
    assert inbound.bus_registry_change(data) == want


# --- commands: whether a press or an install is acted on --------------------------------------------------------


def never() -> set[str]:
    raise AssertionError("the gateway is read only for a well-formed command")


@pytest.mark.parametrize(
    ("payload", "shown", "last", "want"),
    [
        (b"PRESS", lambda: {"box-1"}, None, None),
        (b" PRESS\n", lambda: {"box-1"}, None, None),
        (b"PRESS", lambda: {"box-1"}, 94.0, None),  # 6 s after the previous one
        (b"PRESS", lambda: {"box-1"}, 96.5, Refusal("too_soon", "3.5 s after the previous one")),
        (b"press", never, None, Refusal("bad_payload", "b'press'")),
        (b"PRESS", lambda: {"box-2"}, None, Refusal("unknown_device", "box-1")),
    ],
)
def test_snapshot_button(payload, shown, last, want) -> None:
    assert press_refusal(payload, "box-1", shown, now=100.0, last_press=last, min_interval_s=5.0) == want


@pytest.mark.parametrize(
    ("payload", "shown", "supported", "want"),
    [
        (b"INSTALL", lambda: {"box-1"}, True, None),
        (b"INSTALL", lambda: {"box-1"}, False, Refusal("unsupported", "this gateway does not send updates")),
        (b"INSTALL" * 5, never, True, Refusal("bad_payload", repr((b"INSTALL" * 5)[:32]))),
        (b"INSTALL", lambda: set(), True, Refusal("unknown_device", "box-1")),
    ],
)
def test_install_action(payload, shown, supported, want) -> None:
    assert install_refusal(payload, "box-1", shown, supported=supported) == want


# --- roster: which boxes Home Assistant should show, across restarts --------------------------------------------


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (
            b'{"v": 1, "registered": ["a", "b"], "removed": ["c", "Bad_Id"], "unconfirmed_removals": ["c"]}',
            Saved(frozenset({"a", "b"}), frozenset({"c"}), frozenset({"c"})),
        ),
        (b"{}", Saved()),
        (b"{not json", ValueError),
        (b"[1, 2]", ValueError),
        (b'{"registered": 5}', ValueError),
    ],
)
def test_saved_state_file(body: bytes, want: Any) -> None:
    if want is ValueError:
        with pytest.raises(ValueError):
            parse_saved(body)
    else:
        assert parse_saved(body) == want


@pytest.mark.parametrize(
    ("saved", "clear_now", "removed", "tombstones"),
    [
        (None, set(), set(), set()),  # no state file kept: nothing to compare with
        (Saved(), set(), set(), set()),  # first start
        # box-2 was removed while the gateway was down: cleared now and never announced again
        (Saved(registered=frozenset({"box-1", "box-2"})), {"box-2"}, {"box-2"}, set()),
        # removed before, registered again while down: shown again, its unconfirmed removal dropped
        (
            Saved(removed=frozenset({"box-1", "box-3"}), unconfirmed=frozenset({"box-1", "box-3"})),
            set(),
            {"box-3"},
            {"box-3"},
        ),
    ],
)
def test_registry_compared_with_the_saved_state_at_start(saved, clear_now, removed, tombstones) -> None:
    roster = Roster()
    assert roster.load([("box-1", "Front door")], saved) == clear_now
    assert (roster.registered, roster.removed, roster.tombstones) == ({"box-1"}, removed, tombstones)
    assert roster.names == {"box-1": "Front door"}


def test_state_file_body() -> None:
    assert Roster().body() is None  # registry never readable: nothing worth saving
    body = Roster(registered={"b", "a"}, removed={"c"}, tombstones={"c"}).body()
    assert body is not None
    assert json.loads(body) == {
        "v": 1,
        "registered": ["a", "b"],
        "removed": ["c"],
        "unconfirmed_removals": ["c"],
    }


def test_the_registry_from_the_bus_is_followed_once_known() -> None:
    unknown = Roster()
    unknown.follow({"box-1"})
    assert unknown.registered is None  # still read from the registry itself, to clear removals made offline
    known = Roster(registered={"box-1"})
    known.follow({"box-2"})
    known.follow(None)
    assert known.registered == {"box-2"}


def test_listed_boxes() -> None:
    roster = Roster(
        registered={"box-1", "box-4", "box-5"}, names={"box-4": "Back gate"}, removed={"box-2", "box-5"}
    )
    gateway = [rec("box-1"), rec("box-2"), {"device": "../etc"}, rec("box-3")]
    assert roster.listed(gateway) == [
        rec("box-1"),
        rec("box-3"),  # heard from but not registered (a gateway without a registry): still shown
        {
            "device": "box-4",
            "name": "Back gate",
            "online": False,
            "waiting": 0,
        },  # registered, never heard from
    ]
    assert Roster().listed([rec("box-1")]) == [rec("box-1")]


# --- messages: configs before states ----------------------------------------------------------------------------


@pytest.mark.parametrize("with_battery", [False, True])
def test_a_box_s_configs_come_before_its_availability_and_state(with_battery: bool) -> None:
    record = rec("box-1", battery_mv=3700, lid_open=True)
    msgs = messages.box_messages(CFG, record, with_battery=with_battery)
    configs = [t for t, _ in msgs if t.endswith("/config")]
    assert [t for t, _ in msgs] == configs + [d.availability_topic(CFG, "box-1"), d.state_topic(CFG, "box-1")]
    assert (d.config_topic(CFG, "sensor", "gw_box_box-1", "battery") in configs) is with_battery
    assert msgs[-1][1] == d.state_payload(record) and msgs[-2][1] == b"online"


def test_the_gateway_s_messages_include_whatsapp_only_when_enabled() -> None:
    without = messages.gateway_messages(CFG, None)
    assert [t for t, _ in without] == [e.topic(CFG) for e in d.gateway_entities(CFG)]
    with_wa = messages.gateway_messages(CFG, b"ON")
    assert with_wa[len(without) :] == [
        (d.whatsapp_entity(CFG).topic(CFG), d.whatsapp_entity(CFG).payload()),
        (d.whatsapp_topic(CFG), b"ON"),
    ]


# --- image: the photo entities' bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_px", "want"), [((1600, 1200), 640, (640, 480)), ((300, 200), 640, (300, 200))]
)
def test_shrink_jpeg(size: tuple[int, int], max_px: int, want: tuple[int, int]) -> None:
    with Image.open(io.BytesIO(shrink_jpeg(jpeg(size), max_px))) as im:
        assert (im.format, im.size) == ("JPEG", want)


@pytest.mark.parametrize("data", [jpeg((20, 20), "PNG"), b"\xff\xd8\xff garbage", b""])
def test_shrink_jpeg_refuses_what_is_not_a_jpeg(data: bytes) -> None:
    with pytest.raises(ValueError):
        shrink_jpeg(data, 640)


def test_a_photo_the_broker_already_holds_is_not_sent_again() -> None:
    ledger = PhotoLedger()
    key = ("box-1", "delivery")
    assert ledger.to_send(key, b"one") is True
    assert ledger.to_send(key, b"one") is False  # what the broker holds now
    ledger.broker_holds(key, None)  # cleared on the broker (a restart without persistence)
    assert ledger.to_send(key, b"one") is True
    ledger.sent[key] = "e1"
    ledger.sent[("box-2", "delivery")] = "e2"
    assert ledger.is_sent(key, "e1") and not ledger.is_sent(key, "e0")
    ledger.forget_box("box-1")
    assert ledger.retained == {} and ledger.sent == {("box-2", "delivery"): "e2"}


# --- publisher: a whole turn against the in-memory gateway, publishing into a list ---------------------------


class Sent:
    """Stands in for paho's publish: records (topic, payload, retain); `ok` False plays a lost connection."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes, bool]] = []
        self.ok = True

    def __call__(self, topic: str, payload: bytes, retain: bool) -> bool:
        if self.ok:
            self.log.append((topic, payload, retain))
        return self.ok


def make_publisher(tmp_path, **kw: Any) -> tuple[Publisher, Sent, MemoryPort, Counter[str]]:
    port, sent, counts = memory_port(tmp_path / "photos"), Sent(), Counter[str]()
    port.firmware_status = None  # type: ignore[assignment]  # a gateway without over-the-air updates
    pub = Publisher(
        port,
        CFG,
        send=sent,
        lock=threading.Lock(),
        pending=PendingWork(),
        roster=Roster(),
        photos=PhotoLedger(),
        ha_online=lambda: True,
        count=lambda key: counts.update([key]),
        logger=logging.getLogger("test"),
        clock=lambda: 100.0,
        **kw,
    )
    return pub, sent, port, counts


def test_a_turn_publishes_a_box_once_and_only_what_changed_after(tmp_path) -> None:
    pub, sent, port, counts = make_publisher(tmp_path)
    box = port.add_device("box-1")
    pub.turn(Batch(devices={"box-1": dict(box)}))
    assert sent.log == [(t, p, True) for t, p in messages.box_messages(CFG, box, with_battery=False)]
    sent.log.clear()
    pub.turn(Batch(devices={"box-1": dict(box)}))
    assert sent.log == [] and counts["published"] == len(messages.box_messages(CFG, box, with_battery=False))
    pub.turn(Batch(devices={"box-1": {**box, "lid_open": True}}))
    assert [t for t, _, _ in sent.log] == [d.state_topic(CFG, "box-1")]


def test_a_lost_connection_is_counted_and_the_message_sent_again_later(tmp_path) -> None:
    pub, sent, port, counts = make_publisher(tmp_path)
    box = port.add_device("box-1")
    sent.ok = False
    pub.turn(Batch(devices={"box-1": dict(box)}))
    assert counts["publish_failed"] > 0 and counts["published"] == 0
    sent.ok = True
    pub.turn(Batch(devices={"box-1": dict(box)}))
    assert len(sent.log) == len(messages.box_messages(CFG, box, with_battery=False))


def test_a_press_becomes_one_snapshot_command_and_a_second_too_soon_is_refused(tmp_path) -> None:
    pub, _sent, port, counts = make_publisher(tmp_path)
    port.add_device("box-1")
    pub.turn(Batch(presses={"box-1": b"PRESS"}))
    pub.turn(Batch(presses={"box-1": b"PRESS"}))  # the clock stands still: too soon
    assert [c[1:] for c in port.commands] == [("box-1", "snapshot", None)]
    assert counts["presses.sent"] == 1 and counts["press_rejected.too_soon"] == 1
