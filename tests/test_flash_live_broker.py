"""`flash provision` finds the port of the broker `parcelbox run` actually started: when the configured
port is taken, the managed broker moves and writes `<data_dir>/broker.json`, and provision uses it."""

from __future__ import annotations

import json
import socket

import paho.mqtt.client as mqtt
import pytest

from gateway.config import load_config
from gateway.devices import DeviceRegistry
from gateway.flash.cli import main
from gateway.service import GatewayService
from tests.support.fakeboard import FakeBoard, MipIndex, skip_boot_waits, write_firmware_tree  # noqa: F401
from tests.test_flash_provision import EXAMPLE, UMQTT


def box_logs_in_and_reports_online(board: FakeBoard) -> None:
    """The box after reset: its config.json's broker address and its own login (no anonymous here)."""
    cfg = json.loads(board.path("/config.json").read_text())
    b = cfg["broker"]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg["device_id"])
    c.username_pw_set(b["username"], b["password"])
    try:
        c.connect(b["host"], b["port"], keepalive=30)
    except OSError as e:
        board.console(f"mqtt: connect failed: {e!r}, retry in 1000 ms")
        return
    c.loop_start()
    status = {"v": 1, "online": True, "fw": "0.1.0", "uptime_s": 1}
    topic = f"{cfg['prefix']}/{cfg['device_id']}/status"
    c.publish(topic, json.dumps(status), qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def squatted(tmp_path, prefix):
    """A gateway config whose broker port is taken by something else, plus what provision needs."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        data = tmp_path / "data"
        creds = DeviceRegistry(data).add("box1")
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'data_dir = "{data}"\n[broker]\nprefix = "{prefix}"\nlisten_host = "127.0.0.1"\n'
            f"listen_port = {taken}\nallow_anonymous = false\n"
        )
        fw = write_firmware_tree(tmp_path / "firmware", EXAMPLE)
        with MipIndex(tmp_path / "index", {"umqtt.simple": {"umqtt/simple.mpy": UMQTT}}) as index:
            yield type("Env", (), {"data": data, "creds": creds, "config": config, "taken": taken, "fw": fw,
                                   "index": index, "flash": tmp_path / "flash"})  # fmt: skip


def _argv(env, board: FakeBoard, *extra: str) -> list[str]:
    return [
        "provision", "--device", "box1", "--port", board.url, "--config", str(env.config),
        "--firmware-dir", str(env.fw), "--broker-host", "127.0.0.1", "--mip-index", env.index.url,
        "--wifi-ssid", "HomeNet", "--wifi-password", "hunter22", "--online-timeout", "20",
        "--handshake-timeout", "3", *extra,
    ]  # fmt: skip


def test_provision_uses_the_running_gateways_moved_broker(squatted, capsys):
    env = squatted
    svc = GatewayService(load_config(env.config, env={}))
    svc.start()
    try:
        assert svc.wait_connected(10)
        live_port = int(svc.broker.listen.rsplit(":", 1)[1])
        assert live_port != env.taken
        with FakeBoard(env.flash, on_boot=box_logs_in_and_reports_online) as board:
            code = main(_argv(env, board))
        captured = capsys.readouterr()
        out = captured.out
        assert code == 0, captured.err
        cfg = json.loads((env.flash / "config.json").read_text())
        assert cfg["broker"]["port"] == live_port  # not the configured (taken) one
        assert (
            f"broker port {live_port} (the running gateway's broker, from {env.data / 'broker.json'})" in out
        )
        assert "box1 is online" in out  # the box's real login, through the real moved broker

        # flags still win
        with FakeBoard(env.flash) as board:
            assert main(_argv(env, board, "--broker-port", "4242", "--dry-run")) == 0
        out = capsys.readouterr().out
        assert "broker port 4242 (from --broker-port)" in out and "127.0.0.1:4242" in out
    finally:
        svc.stop()
    # the gateway stopped cleanly: no live address, provision falls back to the config
    with FakeBoard(env.flash) as board:
        assert main(_argv(env, board, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{env.taken}" in out and "running gateway's broker" not in out
