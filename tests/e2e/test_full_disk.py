"""Issue 14, the full-disk scenario through the real gateway process: its data folder is a small
tmpfs that the test fills. While full, an event whose photo or journal line cannot be written is not
acked (the journal line is half written by the kernel, then cut back); `parcelbox status` says the
disk is full; once there is room again, two more events are acked; SIGKILL; after the restart those
two are there, and the two refused ones are stored when the box sends them again."""

from __future__ import annotations

import signal

import pytest

from gateway.store import Store
from tests.support.e2e import GatewayProc, wait_for
from tests.support.fullfs import fill, free, tmpfs
from tests.support.gateway_core import Box, make_jpeg, new_event_id

BIG = {"note": "x" * 6000}  # a journal line longer than a page: it cannot fit in the last page's room


def test_full_disk_then_sigkill_loses_no_acked_event(tmp_path, mosquitto, prefix):
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        extra={"store": {"min_free_mb": 1, "min_free_percent": 0}},
    )
    with tmpfs(gw.data_dir, "8m"):
        box = Box(mosquitto.url, prefix, "fullbox")
        photo = make_jpeg(320, 240, seed=5)
        ok_before, refused_photo, refused_line, ok_after_1, ok_after_2 = (new_event_id() for _ in range(5))
        try:
            gw.start()
            box.send(ok_before, photo)
            assert box.wait_ack(ok_before, 30)["ok"]
            assert gw.status()["health"]["storage"]["ok"]

            filler = fill(gw.data_dir)
            box.send(refused_photo, photo)
            box.send(refused_line, None, etype="lid_closed", sensors=BIG)
            wait_for(lambda: "not acked" in gw.tail(200), 30, what="the gateway to refuse a write")
            st = gw.status()["health"]["storage"]  # measured by the CLI: status.json cannot be rewritten now
            assert not st["ok"] and st["disk"]["low"], st
            text = gw.cli("status")
            assert "WARNING: disk almost full" in text.stdout, text.stdout

            free(filler)
            box.send(ok_after_1, None, etype="lid_closed", sensors=BIG)
            box.send(ok_after_2, photo)
            assert box.wait_ack(ok_after_1, 30)["ok"] and box.wait_ack(ok_after_2, 30)["ok"]
            # Acks come in order on one topic: the refused events were never acked.
            assert not box._acks.get(refused_photo) and not box._acks.get(refused_line)

            gw.kill()
            assert gw.proc is not None and gw.proc.returncode == -signal.SIGKILL
            gw.start()
            for eid in (refused_photo, refused_line):  # the box's spool: re-sent after the ack timeout
                box.send(
                    eid,
                    photo if eid == refused_photo else None,
                    etype="delivery" if eid == refused_photo else "lid_closed",
                    sensors=BIG,
                )
            assert box.wait_ack(refused_photo, 30)["ok"] and box.wait_ack(refused_line, 30)["ok"]
            assert gw.stop() == 0
        finally:
            box.close()
            gw.kill()
        log = gw.log_path.read_text(errors="replace")
        assert "storage: disk almost full" in log
        s = Store(gw.data_dir)
        try:
            for eid in (ok_before, refused_photo, refused_line, ok_after_1, ok_after_2):
                assert s.has_event("fullbox", eid), eid
            assert s.integrity()["journal_damaged"] == 0  # the half line had been cut off, nothing to skip
        finally:
            s.close()


def test_chaos_with_full_disks_every_guarantee_holds(tmp_path, mosquitto, prefix):
    """The chaos run (bench/chaos.py) with the gateway's disk filled to the last byte twice while
    boxes send, and one gateway SIGKILL: every delivery stored once with its photo, in the folder
    sink once, on WhatsApp at least once."""
    from bench.chaos import ChaosPlan, print_counts, run_chaos
    from tests.support.fullfs import mount_tmpfs, unmount

    probe = tmp_path / "probe"
    why = mount_tmpfs(probe, "1m")
    if why is not None:
        pytest.skip(why)
    unmount(probe)
    plan = ChaosPlan(boxes=3, deliveries=15, gateway_kills=1, broker_kills=0, child_kills=0, disk_fulls=2,
                     seed=14, drain_timeout_s=150.0)  # fmt: skip
    res = run_chaos(tmp_path, mosquitto, prefix, plan)
    print("\n".join(res.log))
    print_counts(res)
    assert res.problems == []
    c = res.counts
    assert c["deliveries_made"] == c["events_stored_distinct"] == c["events_stored"] == 45
    assert c["alerts_in_folder_sink"] == 45 and c["whatsapp_distinct_alerts"] == 45
    assert c["kills"] == {"gateway": 1, "disk": 2}
    # c["refused_writes_logged"] says whether a full disk met incoming events this time (it depends on
    # timing, so it is printed, not asserted; test_full_disk_then_sigkill_loses_no_acked_event always does)
