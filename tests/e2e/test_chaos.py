"""Chaos, short form (the full 20 x 25 run is `python bench/chaos.py`): boxes keep sending deliveries
with photos while the gateway, the broker and the WhatsApp child are SIGKILLed at seeded moments;
afterwards every delivery is stored once, in the folder sink once, on WhatsApp at least once (a
duplicate only for a send cut by a kill), and no photo file is orphaned or truncated."""

from __future__ import annotations

from bench.chaos import ChaosPlan, print_counts, run_chaos


def test_chaos_short_every_guarantee_holds(tmp_path, mosquitto, prefix):
    # 8-record store segments: 40 deliveries fill ~15 segment files, so kills land among roll-overs
    plan = ChaosPlan(boxes=4, deliveries=10, gateway_kills=3, broker_kills=2, child_kills=3, seed=7,
                     drain_timeout_s=100.0, segment_records=8)  # fmt: skip
    res = run_chaos(tmp_path, mosquitto, prefix, plan)
    print("\n".join(res.log))
    print_counts(res)
    assert res.problems == []
    c = res.counts
    assert c["deliveries_made"] == c["events_stored_distinct"] == c["events_stored"] == 40
    assert c["alerts_in_folder_sink"] == 40 and c["whatsapp_distinct_alerts"] == 40
    assert c["photo_files"] == 3 * 40  # original, alert copy, thumbnail: nothing else
    assert len(list((tmp_path / "gw" / "data" / "db").glob("events-*.json"))) >= 10
    assert c["kills"]["gateway"] == 3 and c["kills"]["broker"] == 2
    assert c["kills"].get("child", 0) + c["kills_skipped"].get("child", 0) == 3


def test_chaos_short_managed_broker_with_a_client_id_thief(tmp_path, prefix):
    """The gateway's own Mosquitto (issue 14, items 3 and 13): boxes log in; a gateway SIGKILL takes its
    broker with it and the restarted gateway is back on the same port; a broker SIGKILL is repaired by
    the gateway; a thief reconnects under the gateway's and the boxes' client ids all along, and nobody
    but the thief is ever kicked off."""
    plan = ChaosPlan(boxes=3, deliveries=6, gateway_kills=2, broker_kills=1, child_kills=1, seed=11,
                     drain_timeout_s=100.0, managed_broker=True, takeovers_per_s=8.0)  # fmt: skip
    res = run_chaos(tmp_path, None, prefix, plan)
    print("\n".join(res.log))
    print_counts(res)
    assert res.problems == []
    c = res.counts
    assert c["deliveries_made"] == c["events_stored_distinct"] == c["events_stored"] == 18
    assert c["kills"]["gateway"] == 2 and c["kills"]["broker"] == 1
    assert c["thief_connects"] > 5  # it really tried
