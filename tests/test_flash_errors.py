"""Every common provisioning failure ends with the step that failed and a message a person can act on."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from gateway.broker import password_file_text
from gateway.devices import DeviceRegistry
from gateway.flash import board as board_mod
from gateway.flash.cli import main
from gateway.flash.serialports import PortInfo
from gateway.mosquitto import Mosquitto
from tests.support.fakeboard import FakeBoard, MipIndex, skip_boot_waits, write_firmware_tree  # noqa: F401
from tests.support.mqtt import client
from tests.test_flash_provision import EXAMPLE, UMQTT, provision_argv


@pytest.fixture
def env(tmp_path, mosquitto, prefix):
    fw = write_firmware_tree(tmp_path / "firmware", EXAMPLE)
    data = tmp_path / "data"
    creds = DeviceRegistry(data).add("box1")
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[broker]\nurl = "{mosquitto.url}"\nprefix = "{prefix}"\n')
    with MipIndex(tmp_path / "index", {"umqtt.simple": {"umqtt/simple.mpy": UMQTT}}) as index:
        yield type("Env", (), {"fw": fw, "data": data, "creds": creds, "config": config, "index": index,
                               "broker": mosquitto, "prefix": prefix, "flash": tmp_path / "flash"})  # fmt: skip


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_board_at_the_given_port(env, capsys):
    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board)
    argv[argv.index("--port") + 1] = "/dev/ttyUSB-parcelbox-missing"
    code, _, err = run(argv, capsys)
    assert code == 1
    assert "connect: no board found at /dev/ttyUSB-parcelbox-missing" in err
    assert "data USB cable" in err or "data-capable" in err


def test_no_board_when_auto_detecting(env, capsys, monkeypatch):
    monkeypatch.setattr(board_mod, "esp32_ports", lambda: [])
    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board)
        del argv[argv.index("--port") : argv.index("--port") + 2]
        code, _, err = run(argv, capsys)
        assert board.executed == []
    assert code == 1
    assert "no board found: no USB serial port that looks like an ESP32" in err


def test_several_boards_need_a_choice(env, capsys, monkeypatch):
    two = [PortInfo("/dev/ttyUSB0", "", 0x10C4, 0xEA60), PortInfo("/dev/ttyUSB1", "", 0x1A86, 0x7523)]
    monkeypatch.setattr(board_mod, "esp32_ports", lambda: two)
    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board)
    del argv[argv.index("--port") : argv.index("--port") + 2]
    code, _, err = run(argv, capsys)
    assert code == 1 and "several boards found (/dev/ttyUSB0, /dev/ttyUSB1)" in err and "--port" in err


def test_port_busy_names_the_program_holding_it(env, capsys):
    with FakeBoard(env.flash) as board:
        # Another program with the port open and locked, as pyserial/screen/another mpremote would.
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys, time\n"
             f"fd = os.open({board.port!r}, os.O_RDWR | os.O_NOCTTY)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "print('locked', flush=True)\n"
             "time.sleep(60)\n"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "locked"
            argv = provision_argv(env, board)
            argv[argv.index("--port") + 1] = board.port  # the pty itself: that is what is locked
            code, _, err = run(argv, capsys)
        finally:
            holder.kill()
            holder.wait()
        assert board.executed == []
    assert code == 1
    assert f"connect: port {board.port} is busy" in err
    assert f"(pid {holder.pid})" in err
    assert "close the serial monitor" in err


def test_board_not_running_micropython(env, capsys):
    with FakeBoard(env.flash, mode="garbage") as board:
        code, _, err = run(provision_argv(env, board), capsys)
    assert code == 1
    assert f"handshake: the board on {board.url} is not running MicroPython" in err
    assert "install-micropython --firmware" in err


def test_board_that_does_not_answer(env, capsys):
    with FakeBoard(env.flash, mode="silent") as board:
        code, _, err = run(provision_argv(env, board, "--handshake-timeout", "1"), capsys)
    assert code == 1
    assert "does not answer" in err and "press RST" in err


def test_build_without_camera_support(env, capsys):
    with FakeBoard(env.flash, camera=False) as board:
        code, _, err = run(provision_argv(env, board), capsys)
        assert not (env.flash / "main.py").exists()  # stopped before copying anything
    assert code == 1
    assert (
        "camera: this MicroPython build has no camera support (ImportError: no module named 'camera')" in err
    )
    assert "hardware/README.md" in err


def test_broker_unreachable(env, capsys):
    env.broker.stop()
    with FakeBoard(env.flash) as board:
        code, _, err = run(provision_argv(env, board), capsys)
        assert board.executed == []  # checked before the board is touched
    assert code == 1
    assert f"broker: broker unreachable at 127.0.0.1:{env.broker.port}" in err
    assert "parcelbox run" in err


def test_broker_refuses_the_boxs_credentials(env, tmp_path, capsys):
    registry = DeviceRegistry(env.data)
    secured = tmp_path / "secured"
    secured.mkdir()
    passwd = secured / "passwd"
    passwd.write_text(password_file_text(registry, "gateway-pw"))
    broker = Mosquitto(secured, allow_anonymous=False, extra_config=[f"password_file {passwd}"])
    broker.start()
    try:
        with FakeBoard(env.flash) as board:
            argv = provision_argv(env, board, "--broker-port", str(broker.port))
            argv[argv.index("--online-timeout") + 1] = "1"
            _, ok_out, _ = run(argv, capsys)
            # The registry's credentials are accepted by a broker built from the same registry ...
            assert "reachable, credentials accepted" in ok_out
            # ... and a wrong password is refused with a clear reason.
            bad = provision_argv(env, board, "--broker-port", str(broker.port), "--mqtt-user", "box1",
                                 "--mqtt-password", "wrong")  # fmt: skip
            code, _, err = run(bad, capsys)
    finally:
        broker.kill()
        broker.release_port()
    assert code == 1
    assert f"broker: broker at 127.0.0.1:{broker.port} refused the box's credentials" in err
    assert "parcelbox device add" in err


def _box_prints(*lines: str):
    def on_boot(board: FakeBoard) -> None:
        for line in lines:
            board.console(line)

    return on_boot


def test_wrong_wifi_password_reported_by_the_box(env, capsys):
    # What firmware/link.py prints when the join times out (the ESP32 gives no reason by itself).
    line = "wifi: no connection after 20000 ms, retry in 2000 ms"
    with FakeBoard(env.flash, on_boot=_box_prints("parcelbox 0.1.0", line)) as b:
        code, out, err = run(provision_argv(env, b), capsys)
    assert code == 1
    assert (
        "wifi: the box could not join the Wi-Fi network (wrong password" in err and "--wifi-password" in err
    )
    assert "box | wifi: no connection after 20000 ms" in out


def test_wifi_wrong_password_status_is_named(env, capsys):
    with FakeBoard(env.flash, on_boot=_box_prints("wifi: connect failed: STAT_WRONG_PASSWORD")) as b:
        code, _, err = run(provision_argv(env, b), capsys)
    assert code == 1 and "wifi: the box reports the Wi-Fi password is wrong" in err


@pytest.mark.parametrize(
    "line, message, hint",
    [
        (
            "wifi: join failed: wrong_password (status 202) ssid='home', retry in 2000 ms",
            "wifi: the box could not join Wi-Fi 'home': wrong password (it reported status 202)",
            "--wifi-password",
        ),
        (
            "wifi: join failed: no_ap_found (status 201) ssid='home', retry in 2000 ms",
            "wifi: the box could not join Wi-Fi 'home': no network with that name in reach",
            "2.4 GHz",
        ),
        (
            "wifi: join failed: timeout (status 1001) ssid='home', retry in 4000 ms",
            "wifi: the box could not join Wi-Fi 'home': no answer from the network",
            "--wifi-ssid and --wifi-password",
        ),
    ],
)
def test_wifi_join_failure_cause_printed_by_the_box(env, capsys, line, message, hint):
    # firmware/link.py's documented line (tests/test_firmware_wifi_cause.py checks the firmware prints it).
    with FakeBoard(env.flash, on_boot=_box_prints("parcelbox 0.1.0", line)) as b:
        code, out, err = run(provision_argv(env, b), capsys)
    assert code == 1
    assert message in err
    assert "hint:" in err and hint in err.split("hint:", 1)[1]
    assert "box | " + line in out  # the console line itself is shown too


def test_box_login_refused_by_the_broker(env, capsys):
    with FakeBoard(
        env.flash, on_boot=_box_prints("mqtt: connect failed: MQTTException(5,), retry in 1000 ms")
    ) as b:
        code, _, err = run(provision_argv(env, b), capsys)
    assert code == 1 and "broker: the broker refused the box's MQTT username/password" in err


def test_box_cannot_reach_the_broker(env, capsys):
    with FakeBoard(
        env.flash,
        on_boot=_box_prints("wifi: connected", "mqtt: connect failed: OSError(113,), retry in 1000 ms"),
    ) as b:
        code, _, err = run(provision_argv(env, b), capsys)
    assert code == 1
    assert "broker: the box cannot reach the broker" in err and "LAN address" in err


def test_firmware_refuses_its_config(env, capsys):
    """What firmware/main.py's safe_idle prints when config.json is unusable."""
    block = _box_prints(
        "=" * 60,
        "parcelbox: the box cannot start:",
        "  - pins.ir=GPIO0 is used by the camera or UART on the AI-Thinker board",
        "Fix config.json (see config.example.json and firmware/README.md),",
        "for example with `python tools/flash.py provision`, then reset the board.",
        "=" * 60,
    )
    with FakeBoard(env.flash, on_boot=block) as b:
        code, _, err = run(provision_argv(env, b), capsys)
    assert code == 1
    assert "firmware: the box cannot start: pins.ir=GPIO0 is used by the camera" in err
    assert "--set KEY=VALUE" in err


def test_stale_online_status_is_not_taken_for_the_new_boot(env, capsys):
    """A retained online status from before the reset (long uptime) must not count."""
    c = client(env.broker.url)
    old = {"v": 1, "online": True, "fw": "0.0.9", "uptime_s": 86400}
    c.publish(f"{env.prefix}/box1/status", json.dumps(old), qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    with FakeBoard(env.flash, on_boot=_box_prints("wifi: connecting")) as b:
        argv = provision_argv(env, b)
        argv[argv.index("--online-timeout") + 1] = "2"
        started = time.monotonic()
        code, _, err = run(argv, capsys)
        assert time.monotonic() - started < 60  # bounded by --online-timeout, not hanging
    assert code == 1
    assert f"online: no online status on {env.prefix}/box1/status within 2 s" in err
    assert "parcelbox flash logs" in err


def test_library_download_failure(env, capsys):
    with FakeBoard(env.flash, frozen=()) as board:
        argv = provision_argv(env, board)
        argv[argv.index("--mip-index") + 1] = "http://127.0.0.1:9/no-index"
        code, _, err = run(argv, capsys)
    assert code == 1
    assert "libraries: installing umqtt.simple failed" in err and "--mip-index" in err


def test_micropython_too_old_for_compiled_modules(env, capsys):
    with FakeBoard(env.flash, mpy_abi=5) as board:
        code, _, err = run(provision_argv(env, board), capsys)
        assert code == 1 and not (env.flash / "main.py").exists()
        assert "loads .mpy version 5, mpy-cross makes version 6" in err and "--no-compile" in err
        # Sources need no particular .mpy version.
        code, out, _ = run(provision_argv(env, board, "--no-compile", "--no-wait"), capsys)
    assert code == 0 and (env.flash / "detector.py").exists()
