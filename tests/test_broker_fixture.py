"""The Mosquitto fixture itself: real broker, free port, persistence across restart and SIGKILL."""

from __future__ import annotations

import socket
import time

import pytest

from gateway import mosquitto as mosquitto_mod
from gateway.mosquitto import Mosquitto, PortTaken
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


def _squatter() -> socket.socket:
    """Another process's listener on a port that was free a moment ago (as a parallel test worker's)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_a_port_taken_by_another_listener_is_never_passed_off_as_the_broker(tmp_path):
    """Old code: Mosquitto failed to bind (Address already in use), but start() connected to the other
    listener before Mosquitto had exited and returned as if the broker were up: the test then talked
    to whatever held the port (under pytest-xdist, another worker's broker)."""
    squatter = _squatter()
    try:
        broker = Mosquitto(tmp_path / "b", port=squatter.getsockname()[1])
        with pytest.raises(PortTaken):
            broker.start()
        assert not broker.running()
        broker.release_port()
    finally:
        squatter.close()


def test_a_picked_port_taken_before_the_bind_moves_to_another(tmp_path, monkeypatch, prefix):
    squatter = _squatter()
    taken = squatter.getsockname()[1]
    real = mosquitto_mod.free_port
    picks = iter([taken])
    monkeypatch.setattr(mosquitto_mod, "free_port", lambda host="127.0.0.1": next(picks, None) or real(host))
    broker = Mosquitto(tmp_path / "b")
    try:
        assert broker.port == taken
        broker.start()
        assert broker.port != taken and broker.running()
        col = Collector(broker.url, f"{prefix}/#")  # a real MQTT broker answers there
        col.close()
        broker.restart(hard=True)  # from now on the port stays
        assert broker.port != taken and broker.running()
    finally:
        broker.kill()
        broker.release_port()
        squatter.close()


def test_up_only_once_every_listener_is_open(tmp_path):
    """Old code returned from start() as soon as the first listener answered, while Mosquitto was
    exiting because a later listener's port was taken (the managed broker's local listener): the
    gateway then went on with a broker that was already gone."""
    squatter = _squatter()
    try:
        broker = Mosquitto(
            tmp_path / "b",
            extra_listeners=[f"listener {squatter.getsockname()[1]} 127.0.0.1", "allow_anonymous true"],
        )
        with pytest.raises(PortTaken):
            broker.start()
        assert not broker.running()
        broker.release_port()
    finally:
        squatter.close()


def test_a_stopped_brokers_port_cannot_be_taken_before_it_starts_again(mosquitto, prefix):
    """CI flake: a test stopped its broker and started it again on the same port, and another worker's
    process (a plain bind, or a client's outgoing connection: both draw from the same ports) had taken
    the port in between, so the start failed with PortTaken. Old code: the bind below succeeded."""
    port = mosquitto.port
    for stop in (mosquitto.kill, mosquitto.stop):
        stop()
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process, no SO_REUSEADDR
        try:
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        finally:
            other.close()
        mosquitto.start()
        assert mosquitto.port == port and mosquitto.running()
        col = Collector(mosquitto.url, f"{prefix}/#")  # our broker answers there, nothing else
        col.close()


def test_a_released_port_is_free_again(tmp_path):
    broker = Mosquitto(tmp_path / "b")
    broker.start()
    broker.kill()
    broker.release_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", broker.port))
