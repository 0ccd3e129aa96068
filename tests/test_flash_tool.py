"""The other flash subcommands (install-micropython, logs, ports) and the pure helpers."""

from __future__ import annotations

import ipaddress
import json
import threading
import time

import pytest

from gateway.flash import image as image_mod
from gateway.flash import serialports
from gateway.flash.cli import main
from gateway.flash.devconfig import lan_address
from gateway.flash.online import ConsoleJudge, classify_console_line, status_is_fresh
from gateway.flash.serialports import PortInfo
from tests.support import espimage
from tests.support.fakeboard import FakeBoard, skip_boot_waits  # noqa: F401


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "ESP32_GENERIC-CAM-v1.25.0.bin"
    path.write_bytes(espimage.full_image())
    return path


def test_install_micropython_dry_run_prints_esptool_plan(image, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(image_mod, "run_esptool", calls.append)
    assert main(["install-micropython", "--firmware", str(image), "--port", "/dev/ttyUSB7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert calls == []
    assert "esptool --chip esp32 --port /dev/ttyUSB7 --baud 460800 erase-flash" in out
    assert f"esptool --chip esp32 --port /dev/ttyUSB7 --baud 460800 write-flash -z 0x1000 {image}" in out
    assert "dry run: the board was not touched" in out


def test_install_micropython_erases_then_writes_at_0x1000(image, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(image_mod, "run_esptool", lambda argv: calls.append(list(argv)))
    assert (
        main(["install-micropython", "--firmware", str(image), "--port", "/dev/ttyUSB7", "--baud", "115200"])
        == 0
    )
    common = ["--chip", "esp32", "--port", "/dev/ttyUSB7", "--baud", "115200"]
    assert calls == [[*common, "erase-flash"], [*common, "write-flash", "-z", "0x1000", str(image)]]
    out = capsys.readouterr().out
    assert "[2/3] erase flash on /dev/ttyUSB7" in out and "[3/3] write" in out
    assert "parcelbox flash provision --device NAME" in out


def test_install_micropython_refuses_a_file_that_is_not_an_esp32_image(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(image_mod, "run_esptool", lambda argv: pytest.fail("esptool must not run"))
    uf2 = tmp_path / "firmware.uf2"
    uf2.write_bytes(b"UF2\n" + bytes(100 * 1024))
    assert main(["install-micropython", "--firmware", str(uf2), "--port", "/dev/ttyUSB7"]) == 1
    assert "does not start with the ESP image magic byte 0xE9" in capsys.readouterr().err
    assert main(["install-micropython", "--firmware", str(tmp_path / "nope.bin"), "--port", "x"]) == 1
    assert "image: cannot read" in capsys.readouterr().err


def test_install_micropython_refuses_an_app_only_image(tmp_path, capsys, monkeypatch):
    """Issue 13 item 10: micropython.bin (the app alone, for 0x10000) starts with 0xE9 too, and written at
    0x1000 it leaves the board unbootable. Fails on the old check, which looked at the first byte only."""
    monkeypatch.setattr(image_mod, "run_esptool", lambda argv: pytest.fail("esptool must not run"))
    app_only = tmp_path / "micropython.bin"
    app_only.write_bytes(espimage.app())
    assert app_only.read_bytes()[0] == 0xE9 and len(app_only.read_bytes()) > 64 * 1024
    assert main(["install-micropython", "--firmware", str(app_only), "--port", "/dev/ttyUSB7"]) == 1
    err = capsys.readouterr().err
    assert "is an app-only image" in err and "would leave the board unable to boot" in err
    assert "ESP32_GENERIC" in err and "not micropython.bin" in err


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (espimage.full_image("esp32s3"), "is built for the ESP32-S3; the ESP32-CAM has a classic ESP32"),
        (bytes([0xE9, 0x03, 0x02, 0x20]) + bytes(200 * 1024), "has no partition table at flash 0x8000"),
        (espimage.full_image()[: espimage.APP_AT] + b"\xff" * 0x4000, "has no ESP image at flash 0x10000"),
        (
            espimage.full_image()[: espimage.APP_AT] + espimage.app()[:0x3000],
            "has a broken ESP image at flash 0x10000",
        ),
    ],
)
def test_install_micropython_refuses_images_that_would_not_boot(tmp_path, capsys, monkeypatch, data, message):
    monkeypatch.setattr(image_mod, "run_esptool", lambda argv: pytest.fail("esptool must not run"))
    path = tmp_path / "firmware.bin"
    path.write_bytes(data)
    assert main(["install-micropython", "--firmware", str(path), "--port", "/dev/ttyUSB7"]) == 1
    assert message in capsys.readouterr().err


def test_install_micropython_reports_esptool_connection_failure(image, tmp_path, capsys):
    """Real esptool against a board that is not in its bootloader (the simulated one never answers it)."""
    with FakeBoard(tmp_path / "flash", mode="silent") as board:
        argv = [
            "install-micropython",
            "--firmware",
            str(image),
            "--port",
            board.port,
            "--connect-attempts",
            "1",
        ]
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "esptool: Failed to connect to ESP32" in err and "IO0" in err


def test_logs_follows_the_console(tmp_path, capsys):
    with FakeBoard(tmp_path / "flash") as board:

        def chatter():
            time.sleep(0.3)
            board.console("wifi: connected to HomeNet")
            board.console("mqtt: connected")

        t = threading.Thread(target=chatter)
        t.start()
        assert main(["logs", "--port", board.port, "--seconds", "1.5"]) == 0
        t.join()
    out = capsys.readouterr().out
    assert f"following {board.port}" in out
    assert "wifi: connected to HomeNet\nmqtt: connected" in out


def test_logs_reset_shows_the_boot(tmp_path, capsys):
    def on_boot(board):
        board.console("parcelbox 0.1.0 booting")

    (tmp_path / "flash").mkdir()
    (tmp_path / "flash" / "main.py").write_text("import app\n")  # on_boot stands for main.py
    with FakeBoard(tmp_path / "flash", on_boot=on_boot) as board:
        assert main(["logs", "--port", board.url, "--reset", "--seconds", "1"]) == 0
        assert board.resets == 1
    assert "parcelbox 0.1.0 booting" in capsys.readouterr().out


def test_shell_needs_a_terminal(capsys):
    assert main(["shell", "--port", "/dev/null"]) == 1
    assert "interactive terminal" in capsys.readouterr().err


def test_ports_marks_esp32_bridges(capsys, monkeypatch):
    monkeypatch.setattr(
        serialports,
        "list_ports",
        lambda: [
            PortInfo("/dev/ttyUSB0", "CP2102", 0x10C4, 0xEA60),
            PortInfo("/dev/ttyACM0", "Arduino", 0x2341, 0x43),
        ],
    )
    import gateway.flash.cli as cli

    monkeypatch.setattr(cli, "list_ports", serialports.list_ports)
    assert main(["ports"]) == 0
    out = capsys.readouterr().out
    assert "* /dev/ttyUSB0  10c4:ea60  Silicon Labs CP210x" in out
    assert "  /dev/ttyACM0  2341:0043  Arduino" in out


def test_lan_address_is_a_real_interface_address_or_none():
    address = lan_address()
    if address is not None:
        ip = ipaddress.ip_address(address)
        assert ip.version == 4 and not ip.is_loopback and not ip.is_unspecified


@pytest.mark.parametrize(
    ("payload", "retained", "since_reset", "fresh"),
    [
        ({"v": 1, "online": True, "uptime_s": 3}, True, 10, True),
        ({"v": 1, "online": True, "uptime_s": 86400}, True, 10, False),  # from before the reset
        ({"v": 1, "online": True, "uptime_s": 86400}, False, 10, True),  # published live: new
        ({"v": 1, "online": False}, False, 10, False),  # the last will
        ({"v": 1, "online": True}, True, 10, False),  # retained without uptime: cannot tell
    ],
)
def test_status_freshness(payload, retained, since_reset, fresh):
    assert status_is_fresh(json.dumps(payload).encode(), retained, since_reset) is fresh


def test_status_freshness_survives_garbage():
    assert status_is_fresh(b"\xff not json", False, 1) is False
    assert status_is_fresh(b"[1,2]", False, 1) is False


@pytest.mark.parametrize(
    ("line", "step"),
    [
        ("wifi: connect failed: STAT_WRONG_PASSWORD", "wifi"),
        ("wifi: no connection after 20000 ms, retry in 2000 ms", "wifi"),
        ("wifi: connect failed: OSError('Wifi Internal Error',), retry in 2000 ms", "wifi"),
        ("mqtt: connect failed: MQTTException(5,), retry in 1000 ms", "broker"),
        ("mqtt: connect failed: OSError(113,), retry in 1000 ms", "broker"),
        ("mqtt: connection lost: OSError(104,)", None),
        ("cmd: rejected (bad_json)", None),
        ("wifi: connect failed: STAT_NO_AP_FOUND", "wifi"),
        ("mqtt: connect failed: [Errno 113] EHOSTUNREACH", "broker"),
        ("mqtt: not authorised (5)", "broker"),
        ("main: step failed (1 in a row): OSError(12,)", None),  # the firmware carries on
        ('Type "help()" for more information.', "firmware"),
        ("wifi: connected to HomeNet", None),
        ("mqtt: connected", None),
    ],
)
def test_console_lines_classified(line, step):
    failure = classify_console_line(line)
    assert (failure.step if failure else None) == step


def test_missing_flash_extra_gives_an_install_hint(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpremote(name, *args, **kwargs):
        if name.startswith("mpremote"):
            raise ModuleNotFoundError(f"No module named '{name}'", name="mpremote")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpremote)
    assert main(["logs", "--port", "/dev/null", "--seconds", "0.1"]) == 1
    assert "pip install 'parcelbox[flash]'" in capsys.readouterr().err


def test_cannot_start_block_is_reported_with_every_problem():
    judge = ConsoleJudge()
    lines = [
        "=" * 60,
        "parcelbox: the box cannot start:",
        "  - wifi.ssid is empty",
        "  - pins.ir=GPIO0 is used by the camera or UART on the AI-Thinker board",
        "Fix config.json (see config.example.json and firmware/README.md),",
    ]
    results = [judge.feed(line) for line in lines]
    assert results[:4] == [None] * 4
    failure = results[4]
    assert failure.step == "firmware"
    assert failure.message == (
        "the box cannot start: wifi.ssid is empty; pins.ir=GPIO0 is used by the camera or UART on the AI-Thinker board"
    )
    judge.feed("parcelbox: the box cannot start:")
    judge.feed("  - crashed: MemoryError()")
    assert "crashed: MemoryError()" in judge.finish().message
