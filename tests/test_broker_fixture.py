"""The Mosquitto fixture itself: real broker, free port, persistence across restart and SIGKILL."""

from __future__ import annotations

import time

import pytest

from tests.support.mqtt import Collector, client


def test_broker_is_on_a_free_loopback_port(mosquitto):
    assert mosquitto.host == "127.0.0.1" and mosquitto.port != 1883
    assert mosquitto.running()


def test_retained_message_round_trip(mosquitto, prefix):
    pub = client(mosquitto.url)
    pub.publish(f"{prefix}/box-1/status", b'{"v":1,"online":true}', qos=1, retain=True).wait_for_publish(5)
    col = Collector(mosquitto.url, f"{prefix}/+/status")
    m = col.get()
    assert m.retain and m.payload == b'{"v":1,"online":true}'
    col.close()
    pub.disconnect()


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_queued_qos1_messages_survive_broker_restart(mosquitto, prefix, hard):
    """A persistent subscriber that is offline gets its queued QoS 1 messages after the broker restarts."""
    sub_id = f"{prefix}-gw"
    col = Collector(mosquitto.url, f"{prefix}/#", client_id=sub_id, clean=False)
    col.close()  # offline now; the session and subscription stay on the broker
    pub = client(mosquitto.url)
    for i in range(5):
        pub.publish(f"{prefix}/box-1/event", str(i).encode(), qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    if hard:
        time.sleep(2.5)  # autosave_interval 1: what was saved before the SIGKILL survives it
    mosquitto.restart(hard=hard)
    col = Collector(mosquitto.url, f"{prefix}/#", client_id=sub_id, clean=False)
    got = sorted(m.payload for m in col.take(5, timeout=10))
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    col.close()


def test_broker_can_be_stopped_and_started_on_the_same_port(mosquitto):
    port = mosquitto.port
    mosquitto.kill()
    assert not mosquitto.running()
    mosquitto.start()
    assert mosquitto.port == port and mosquitto.running()
