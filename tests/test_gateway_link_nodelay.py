"""The gateway's MQTT link turns Nagle off, so an ack is not held back behind the chunks' PUBACKs."""

from __future__ import annotations

import socket

from gateway.ingest import MqttLink


def test_link_socket_has_tcp_nodelay(mosquitto, prefix):
    link = MqttLink(mosquitto.url, client_id=f"nodelay-{prefix}", prefix=prefix, deliver=lambda *a: None)
    link.start(wait_s=10.0)
    try:
        assert link.connected.is_set()
        sock = link.client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        link.stop()


def test_broker_config_turns_nagle_off(tmp_path):
    from gateway.mosquitto import Mosquitto, find_mosquitto

    if not find_mosquitto():
        import pytest

        pytest.skip("mosquitto not installed")
    assert "set_tcp_nodelay true" in Mosquitto(tmp_path).config_text().splitlines()
