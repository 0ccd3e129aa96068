"""The command table on its own (`gateway/commands.py`) and the log throttle (`gateway/lograte.py`),
with injected clocks: matching by id and box, one answer each, bounds per box and in total, expiry."""

from __future__ import annotations

import pytest

from gateway.commands import CommandTable, UnknownResult
from gateway.lograte import LogThrottle


def test_only_answers_to_commands_sent_to_that_box_are_kept_once():
    t = CommandTable()
    t.sent("cmd-00000001", "box1", "ping", now=0)
    for device, cid, reason in [
        ("box1", "cmd-made-up-1", "unknown_command"),
        ("box2", "cmd-00000001", "unknown_command"),  # sent to box1, answered by box2
    ]:
        with pytest.raises(UnknownResult) as ei:
            t.answer(device, cid, {"ok": True}, now=1)
        assert ei.value.reason == reason
    assert t.result("cmd-00000001", now=1) is None
    t.answer("box1", "cmd-00000001", {"ok": True}, now=1)
    with pytest.raises(UnknownResult) as ei:
        t.answer("box1", "cmd-00000001", {"ok": False}, now=2)  # the first answer stands
    assert ei.value.reason == "duplicate_cmd_result"
    assert t.result("cmd-00000001", now=2) == {"ok": True}


def test_bounded_per_box_in_total_and_by_age():
    t = CommandTable(per_device=3, total=5, ttl_s=100)
    for i in range(10):
        t.sent(f"cmd-box1-{i:04d}", "box1", "ping", now=i)
    assert len(t) == 3  # only the newest three waiting for box1
    with pytest.raises(UnknownResult):
        t.answer("box1", "cmd-box1-0000", {}, now=10)
    t.answer("box1", "cmd-box1-0009", {"ok": True}, now=10)
    for d in ("box2", "box3", "box4"):
        t.sent(f"cmd-{d}-0000", d, "ping", now=11)
    assert len(t) == 5  # the total: the oldest went first
    assert t.result("cmd-box1-0009", now=12) == {"ok": True}
    assert t.result("cmd-box1-0009", now=109.5) is None  # sent at 9: forgotten after ttl_s
    assert len(t) == 3
    assert t.result("cmd-box4-0000", now=111) is None and len(t) == 0


def test_log_throttle_bursts_then_counts_what_it_held_back():
    now = [0.0]
    th = LogThrottle(burst=3, per_s=10, clock=lambda: now[0])
    assert [th.allow("bad_json") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert th.allow("oversize") == (True, 0)  # per key
    now[0] = 10.0
    assert th.allow("bad_json") == (True, 2)
    assert th.allow("bad_json") == (True, 0)


def test_budget_per_box_and_total_one_item_always_fits_an_empty_box():
    from gateway.budget import Budget

    b = Budget(per_key_count=2, per_key_bytes=100, total_count=3, total_bytes=1000)
    assert b.take("evil", 10) is None and b.take("evil", 10) is None
    assert b.take("evil", 10) == "device"  # its count
    assert b.take("good", 500) is None  # another box is not affected
    assert b.take("third", 1) == "total"  # 3 in total
    b.give("evil", 10)
    assert b.take("third", 1) is None and b.used("evil") == (1, 10)
    b2 = Budget(per_key_count=5, per_key_bytes=100, total_count=5, total_bytes=10_000)
    assert b2.take("big", 5000) is None  # one item always fits a box holding nothing
    assert b2.take("big", 1) == "device"  # but nothing more while it is over its bytes
    b2.give("big", 5000)
    assert (b2.count, b2.size, b2.used("big")) == (0, 0, (0, 0))


def test_commands_publish_then_keep_and_announce_only_an_answer_to_what_was_sent():
    """`Commands`, the I/O around the table: with a real bus and the protocol's own codecs; the MQTT
    link is the edge, recorded (what `GatewayService._publish` hands to `MqttLink.publish`)."""
    import json

    from gateway.bus import COMMAND_RESULT, Bus
    from gateway.commands import Commands
    from gateway.protocol import VERSION, Limits, ProtocolError

    bus = Bus()
    told: list[dict] = []
    bus.subscribe(lambda _t, d: told.append(d), COMMAND_RESULT)
    published: list[tuple[str, bytes]] = []
    rejected: list[str] = []
    running = [False]
    c = Commands(
        prefix="pb",
        limits=Limits(),
        bus=bus,
        publish=lambda t, p: published.append((t, p)),
        running=lambda: running[0],
        reject=lambda reason, _detail, _where: rejected.append(reason),
        clock=lambda: 0.0,
    )
    with pytest.raises(ValueError):
        c.send("Not A Box", "ping")
    with pytest.raises(RuntimeError):
        c.send("box1", "ping")  # not started: nothing published, nothing remembered
    assert published == [] and len(c) == 0
    running[0] = True
    with pytest.raises(ProtocolError):
        c.send("box1", "format_flash")  # not a command a box knows
    cid = c.send("box1", "ping")
    assert [t for t, _ in published] == ["pb/box1/cmd"] and json.loads(published[0][1])["id"] == cid

    def answer(device: str, body: dict) -> None:
        c.on_result(device, json.dumps({"v": VERSION, **body}).encode())

    answer("box2", {"id": cid, "ok": True})  # another box answering box1's command
    answer("box1", {"id": cid, "ok": "yes"})
    answer("box1", {"id": cid, "ok": True, "rtt_ms": 12})
    answer("box1", {"id": cid, "ok": False})  # QoS 1 redelivery or a liar: the first answer stands
    assert rejected == ["unknown_command", "bad_schema", "duplicate_cmd_result"]
    expected = {"device": "box1", "id": cid, "ok": True, "error": None, "rtt_ms": 12}
    assert told == [expected] and c.result(cid) == expected
