"""`flash provision` end to end: mpremote talks to a simulated board over a real pty, mip downloads
from a local index over HTTP, the box's status goes through the real Mosquitto fixture."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from gateway.devices import DeviceRegistry
from gateway.flash.cli import main
from tests.support.fakeboard import FakeBoard, MipIndex, skip_boot_waits, write_firmware_tree  # noqa: F401
from tests.support.mqtt import client

# The real firmware's example config: the config the tool writes must have exactly its keys.
EXAMPLE = json.loads((Path(__file__).resolve().parents[1] / "firmware" / "config.example.json").read_text())
UMQTT = b"M\x06\x00\x1f fake umqtt.simple bytecode"


def _key_tree(d):
    return {k: _key_tree(v) if isinstance(v, dict) else None for k, v in d.items()}


def publish_status_on_boot(board: FakeBoard) -> None:
    """What the firmware's main.py does after reset: read config.json, connect, publish retained online."""
    if not board.path("/config.json").exists():
        board.console("parcelbox: the box cannot start:")  # what main.py says without a config
        return
    cfg = json.loads(board.path("/config.json").read_text())
    board.console("parcelbox 0.1.0 starting")
    board.console(f"wifi: connected to {cfg['wifi']['ssid']}")
    c = client(f"mqtt://{cfg['broker']['host']}:{cfg['broker']['port']}")
    status = {"v": 1, "online": True, "fw": "0.1.0", "uptime_s": 2, "rssi": -58, "heap_free": 81234}
    c.publish(
        f"{cfg['prefix']}/{cfg['device_id']}/status", json.dumps(status), qos=1, retain=True
    ).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    board.console("mqtt: connected")


@pytest.fixture
def env(tmp_path, mosquitto, prefix):
    """Firmware tree, gateway config + registry, a local mip index: everything but the board."""
    fw = write_firmware_tree(tmp_path / "firmware", EXAMPLE)
    data = tmp_path / "data"
    creds = DeviceRegistry(data).add("box1")
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[broker]\nurl = "{mosquitto.url}"\nprefix = "{prefix}"\n')
    with MipIndex(tmp_path / "index", {"umqtt.simple": {"umqtt/simple.mpy": UMQTT}}) as index:
        yield type(
            "Env",
            (),
            {
                "fw": fw,
                "data": data,
                "creds": creds,
                "config": config,
                "index": index,
                "broker": mosquitto,
                "prefix": prefix,
                "flash": tmp_path / "flash",
            },
        )


def provision_argv(env, board: FakeBoard, *extra: str) -> list[str]:
    return [
        "provision", "--device", "box1", "--port", board.url, "--config", str(env.config),
        "--firmware-dir", str(env.fw), "--broker-host", "127.0.0.1", "--mip-index", env.index.url,
        "--wifi-ssid", "HomeNet", "--wifi-password", "hunter22", "--online-timeout", "20",
        "--handshake-timeout", "3", *extra,
    ]  # fmt: skip


def test_provision_copies_firmware_writes_config_and_waits_for_online(env, capsys):
    with FakeBoard(env.flash, on_boot=publish_status_on_boot) as board:
        assert main(provision_argv(env, board)) == 0
        assert board.resets == 1
    out = capsys.readouterr().out
    flash = env.flash
    # Entry points stay source; every other module is mpy-cross output for the ESP32.
    assert (flash / "main.py").read_bytes() == (env.fw / "main.py").read_bytes()
    assert (flash / "boot.py").read_bytes() == (env.fw / "boot.py").read_bytes()
    for mpy in ("app.mpy", "detector.mpy", "drivers/reed.mpy", "drivers/__init__.mpy"):
        data = (flash / mpy).read_bytes()
        assert data[:2] == b"M\x06", mpy
    assert not (flash / "app.py").exists() and not (flash / "sim_board.py").exists()
    assert not list(flash.rglob("*.tmp"))
    # umqtt.simple is frozen into the board's MicroPython: nothing downloaded, nothing in /lib.
    assert not (flash / "lib").exists() and env.index.requests == []
    assert (
        "umqtt.simple: frozen into this MicroPython build (import umqtt.simple works), nothing to install"
        in out
    )
    # config.json: valid JSON, same keys as the example, this box's settings.
    cfg = json.loads((flash / "config.json").read_text())
    assert _key_tree(cfg) == _key_tree(EXAMPLE)
    assert cfg["device_id"] == "box1" and cfg["prefix"] == env.prefix
    assert cfg["wifi"] == {"ssid": "HomeNet", "password": "hunter22"}
    assert cfg["broker"]["host"] == "127.0.0.1" and cfg["broker"]["port"] == env.broker.port
    assert (cfg["broker"]["username"], cfg["broker"]["password"]) == (env.creds.username, env.creds.password)
    # Everything the tool does not own keeps the example's value.
    assert (
        cfg["pins"] == EXAMPLE["pins"]
        and cfg["mode"] == EXAMPLE["mode"]
        and cfg["sensor"] == EXAMPLE["sensor"]
    )
    # Progress for every step, the box's console, and the result.
    for step in ("[1/9] settings", "[2/9] broker", "[3/9] compile", "[4/9] connect", "[5/9] camera",
                 "[6/9] libraries", "[7/9] copy", "[8/9] reset", "[9/9] online"):  # fmt: skip
        assert step in out, step
    assert "box | wifi: connected to HomeNet" in out
    assert "box1 is online (firmware 0.1.0, Wi-Fi signal -58 dBm)" in out
    assert env.creds.password not in out and "hunter22" not in out


def test_second_run_copies_only_what_changed(env, capsys):
    with FakeBoard(env.flash, on_boot=publish_status_on_boot) as board:
        assert main(provision_argv(env, board)) == 0
        capsys.readouterr()
        before = {p: p.stat().st_mtime_ns for p in env.flash.rglob("*") if p.is_file()}

        assert main(provision_argv(env, board)) == 0
        out = capsys.readouterr().out
        assert "0 copied, 7 unchanged, all verified by sha256" in out
        assert "umqtt.simple: frozen into this MicroPython build" in out
        assert {p: p.stat().st_mtime_ns for p in env.flash.rglob("*") if p.is_file()} == before

        # One module edited, the Wi-Fi changed: exactly those two files travel.
        (env.fw / "detector.py").write_text("THRESHOLD = 4\n")
        argv = provision_argv(env, board)
        argv[argv.index("HomeNet")] = "OtherNet"
        assert main(argv) == 0
        out = capsys.readouterr().out
    assert "copy /detector.mpy" in out and "copy /config.json" in out
    assert "2 copied, 5 unchanged" in out
    assert json.loads((env.flash / "config.json").read_text())["wifi"]["ssid"] == "OtherNet"


def test_hashes_are_computed_on_the_board(env, capsys):
    (env.flash / "lib").mkdir(parents=True)
    (env.flash / "main.py").write_bytes((env.fw / "main.py").read_bytes())
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        hash_runs = [code for code in board.executed if "hashlib.sha256()" in code and "hexlify" in code]
    out = capsys.readouterr().out
    assert hash_runs, "the sha256 comparison must run on the board"
    assert "unchanged /main.py" in out and "copy /boot.py" in out
    expected = hashlib.sha256((env.fw / "main.py").read_bytes()).hexdigest()
    assert expected not in out  # compared silently, not dumped


def test_stale_source_twin_is_removed_so_it_cannot_shadow_the_mpy(env, capsys):
    env.flash.mkdir(parents=True)
    (env.flash / "detector.py").write_text("THRESHOLD = 'old'\n")
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
    assert "remove stale /detector.py" in capsys.readouterr().out
    assert not (env.flash / "detector.py").exists() and (env.flash / "detector.mpy").exists()


def test_no_compile_copies_sources(env, capsys):
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--no-compile", "--no-wait")) == 0
    assert (env.flash / "app.py").read_bytes() == (env.fw / "app.py").read_bytes()
    assert (env.flash / "drivers" / "reed.py").exists()
    assert not list(env.flash.rglob("*.mpy"))


def test_a_watchdog_reset_mid_copy_is_survived(env, capsys):
    """The firmware's watchdog keeps running in the raw REPL and resets the board mid-copy:
    the tool reconnects and finishes, and no half-written file is left."""
    with FakeBoard(env.flash, watchdog_on=lambda code: "/app.mpy.tmp" in code) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        deadline = time.monotonic() + 10
        while board.resets < 2 and time.monotonic() < deadline:  # our reset is sent without waiting
            time.sleep(0.02)
        assert board.resets == 2  # the watchdog's, then ours at the end
    out = capsys.readouterr().out
    assert "may have been reset by its watchdog. Reconnecting, attempt 2 of 3" in out
    assert (env.flash / "app.mpy").read_bytes()[:2] == b"M\x06"
    assert json.loads((env.flash / "config.json").read_text())["device_id"] == "box1"
    assert not list(env.flash.rglob("*.tmp"))


def test_works_with_a_board_without_raw_paste(env, capsys):
    """Older MicroPython answers R\\x00 to raw-paste; mpremote falls back to the plain raw REPL."""
    with FakeBoard(env.flash, raw_paste=False, on_boot=publish_status_on_boot) as board:
        assert main(provision_argv(env, board)) == 0
    assert "box1 is online" in capsys.readouterr().out
    assert (env.flash / "config.json").exists()


def test_wifi_is_kept_from_the_boards_config_when_not_given(env, capsys):
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        argv = provision_argv(env, board, "--no-wait")
        for flag in ("--wifi-ssid", "--wifi-password"):
            i = argv.index(flag)
            del argv[i : i + 2]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Wi-Fi HomeNet (kept from the board's config.json)" in out
    assert json.loads((env.flash / "config.json").read_text())["wifi"]["password"] == "hunter22"


def test_dry_run_prints_the_plan_and_touches_nothing(env, capsys):
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--dry-run")) == 0
        assert board.executed == [] and board.soft_resets == 0
    out = capsys.readouterr().out
    assert not list(env.flash.iterdir())
    assert "dry run: the board was not touched" in out
    assert f"connect: {board.url}" in out
    assert "main.py -> /main.py" in out and "detector.py -> /detector.mpy" in out
    assert "drivers/reed.py -> /drivers/reed.mpy" in out and "sim_board" not in out
    assert (
        f"libraries: use the firmware's frozen umqtt.simple; mip install from {env.index.url} to /lib only if "
        "`import` fails on the board" in out
    )
    assert f"wait up to 20 s for {env.prefix}/box1/status" in out
    assert 'wifi.ssid = "HomeNet"' in out and 'wifi.password = "********"' in out
    assert 'broker.username = "box1"' in out and 'broker.password = "********"' in out
    assert "hunter22" not in out and env.creds.password not in out


def test_unknown_device_says_how_to_create_it(env, capsys):
    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board)
        argv[argv.index("box1")] = "box2"
        assert main(argv) == 1
        assert board.executed == []
    err = capsys.readouterr().err
    assert "unknown device 'box2'" in err and "parcelbox device add box2" in err


def test_config_keys_follow_the_firmware_example(env, capsys):
    """A firmware example without a key the tool must fill is a clear error, before the board is touched."""
    example = dict(EXAMPLE)
    del example["prefix"]
    (env.fw / "config.example.json").write_text(json.dumps(example))
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board)) == 1
        assert board.executed == []
    assert "config.example.json has no key for prefix" in capsys.readouterr().err


def test_flags_replace_the_registry(env, capsys):
    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board, "--mqtt-user", "custom", "--mqtt-password", "s3cret", "--no-wait")
        argv[argv.index("box1")] = "box9"  # not registered: flags are enough
        assert main(argv) == 0
    cfg = json.loads((env.flash / "config.json").read_text())
    assert (cfg["device_id"], cfg["broker"]["username"], cfg["broker"]["password"]) == (
        "box9",
        "custom",
        "s3cret",
    )


def test_parcelbox_flash_is_a_gateway_subcommand(env, capsys):
    from gateway import cli

    with FakeBoard(env.flash) as board:
        code = cli.main(["flash", *provision_argv(env, board, "--dry-run")])
    assert code == 0
    assert "dry run: the board was not touched" in capsys.readouterr().out


def test_the_real_firmware_folder_is_what_gets_bundled():
    from gateway.flash.bundle import planned_bundle
    from gateway.flash.devconfig import BoxSettings, build_config, load_template
    from gateway.flash.provision import FIRMWARE_DIR

    pairs = planned_bundle(FIRMWARE_DIR)
    remotes = {remote for _, remote in pairs}
    assert "/main.py" in remotes
    assert all(r.endswith(".mpy") or r.rsplit("/", 1)[-1] in ("main.py", "boot.py") for r in remotes)
    template = load_template(FIRMWARE_DIR)
    settings = BoxSettings("box1", "parcelbox", "HomeNet", "pw", "192.0.2.10", 1883, "box1", "secret")
    config = build_config(template, settings)
    assert _key_tree(config) == _key_tree(template)
    assert json.loads(json.dumps(config)) == config
    assert "HomeNet" in json.dumps(config) and "secret" in json.dumps(config)


def test_provisions_the_real_firmware(env, capsys):
    """The default firmware folder (this checkout's firmware/) compiles and lands whole."""
    from gateway.flash.bundle import firmware_sources
    from gateway.flash.provision import FIRMWARE_DIR

    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board, "--no-wait")
        i = argv.index("--firmware-dir")
        del argv[i : i + 2]
        assert main(argv) == 0
    for source in firmware_sources(FIRMWARE_DIR):
        rel = source.relative_to(FIRMWARE_DIR).as_posix()
        if source.name in ("main.py", "boot.py"):
            assert (env.flash / rel).read_bytes() == source.read_bytes()
        else:
            assert (env.flash / (rel[:-3] + ".mpy")).read_bytes()[:2] == b"M\x06", rel
    cfg = json.loads((env.flash / "config.json").read_text())
    real = json.loads((FIRMWARE_DIR / "config.example.json").read_text())
    assert _key_tree(cfg) == _key_tree(real)
    assert cfg["broker"]["username"] == env.creds.username and cfg["device_id"] == "box1"


def test_reprovision_keeps_settings_made_on_the_board_and_applies_set(env, capsys):
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        # The owner tuned the box by editing its config.json (or with the `config` command).
        cfg = json.loads((env.flash / "config.json").read_text())
        cfg["debounce_ms"] = 80
        cfg["not_a_firmware_key"] = 1
        (env.flash / "config.json").write_text(json.dumps(cfg))
        assert main(provision_argv(env, board, "--no-wait", "--set", "sensor=ir", "--set", "pins.ir=14")) == 0
        cfg = json.loads((env.flash / "config.json").read_text())
        assert cfg["debounce_ms"] == 80 and cfg["sensor"] == "ir" and cfg["pins"]["ir"] == 14
        assert "not_a_firmware_key" not in cfg and _key_tree(cfg) == _key_tree(EXAMPLE)

        for bad, message in [
            ("nope=1", "--set nope: no such key in firmware/config.example.json"),
            ("wifi.password=x", "--set wifi.password: set by the tool"),
            ("sensor", "use KEY=VALUE"),
        ]:
            assert main(provision_argv(env, board, "--no-wait", "--set", bad)) == 1
            assert message in capsys.readouterr().err


def test_mip_index_can_be_a_local_folder(env, capsys):
    """Offline installs: --mip-index pointing at a folder with the index layout."""
    with FakeBoard(env.flash, frozen=()) as board:
        argv = provision_argv(env, board, "--no-wait")
        argv[argv.index("--mip-index") + 1] = str(env.index.root)
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert (env.flash / "lib" / "umqtt" / "simple.mpy").read_bytes() == UMQTT
    assert "mip: Installing: /lib/umqtt/simple.mpy" in out
    assert env.index.requests == []  # nothing fetched over HTTP


def test_updates_files_on_a_fat_filesystem(env, capsys):
    """FAT's rename refuses an existing target; the copy still replaces the file."""
    with FakeBoard(env.flash, fat=True) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        (env.fw / "detector.py").write_text("THRESHOLD = 5\n")
        assert main(provision_argv(env, board, "--no-wait")) == 0
    assert "1 copied" in capsys.readouterr().out
    assert not list(env.flash.rglob("*.tmp"))


def test_umqtt_is_installed_with_mip_when_the_build_lacks_it(env, capsys):
    """A build from a trimmed manifest (no frozen umqtt.simple): mpremote's mip installs it from the index."""
    with FakeBoard(env.flash, frozen=()) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        out = capsys.readouterr().out
        assert f"umqtt.simple: not in this MicroPython build: mip install from {env.index.url}" in out
        assert (env.flash / "lib" / "umqtt" / "simple.mpy").read_bytes() == UMQTT
        assert any(r.startswith("/package/6/umqtt.simple/latest.json") for r in env.index.requests)
        # Next run: the board imports it from /lib, so it is not downloaded again.
        served = len(env.index.requests)
        assert main(provision_argv(env, board, "--no-wait")) == 0
        assert "umqtt.simple: already on the board in /lib/umqtt/simple.mpy" in capsys.readouterr().out
        assert len(env.index.requests) == served


def test_frozen_umqtt_needs_no_internet(env, capsys):
    """Issue 13 item 9: umqtt.simple is frozen into every ESP32 build, so an offline host provisions.
    Fails on the old code, which always ran mip (and failed on the unreachable index)."""
    with FakeBoard(env.flash) as board:
        argv = provision_argv(env, board, "--no-wait")
        argv[argv.index("--mip-index") + 1] = "http://127.0.0.1:9/offline"
        assert main(argv) == 0
        assert main([*argv, "--reinstall-libs"]) == 0
        ran = board.executed
    out = capsys.readouterr().out
    assert "umqtt.simple: frozen into this MicroPython build" in out
    assert "not reinstalled: the frozen copy comes before /lib on the board's sys.path" in out
    assert not (env.flash / "lib").exists()
    assert any("__import__(_n)" in code and "umqtt.simple" in code for code in ran)  # asked the board
