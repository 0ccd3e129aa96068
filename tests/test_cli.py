"""`parcelbox` CLI: the command table, device registry commands, status, run's single-owner lock."""

from __future__ import annotations

import json
import stat

import pytest

from gateway import cli
from gateway.datalock import DataDirLock
from gateway.devices import DeviceRegistry


@pytest.fixture
def env(tmp_path, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("PARCELBOX_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PARCELBOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PARCELBOX_CONFIG", "")
    return tmp_path / "data"


def test_device_add_list_remove(env, capsys):
    assert cli.main(["device", "add", "front-gate", "--label", "Front gate"]) == 0
    out = capsys.readouterr().out
    cred = DeviceRegistry(env).get("front-gate")
    assert cred is not None and cred.password in out and "mqtt username  front-gate" in out
    assert stat.S_IMODE((env / "devices.json").stat().st_mode) == 0o600
    assert cli.main(["device", "add", "front-gate"]) == 0  # idempotent: same credentials
    assert DeviceRegistry(env).get("front-gate").password == cred.password
    capsys.readouterr()
    assert cli.main(["device", "list", "--json"]) == 0
    assert [d["device"] for d in json.loads(capsys.readouterr().out)] == ["front-gate"]
    assert cli.main(["device", "add", "../evil"]) == 1
    assert cli.main(["device", "add", "parcelbox-gateway"]) == 1
    assert cli.main(["device", "remove", "front-gate"]) == 0
    assert cli.main(["device", "remove", "front-gate"]) == 1
    assert DeviceRegistry(env).list() == []
    assert set(DeviceRegistry(env).removed()) == {"front-gate"}  # the gateway hides it from now on
    assert cli.main(["device", "add", "front-gate"]) == 0
    assert DeviceRegistry(env).removed() == {}


def test_status_json_when_not_running(env, capsys):
    assert cli.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is False and data["devices"] == [] and data["events"] == []
    assert cli.main(["status"]) == 0
    assert "not running" in capsys.readouterr().out


def test_run_refuses_when_data_folder_is_owned(env, capsys):
    import os

    with DataDirLock(env):
        assert cli.main(["run"]) == cli.EXIT_LOCKED
    assert f"in use by pid {os.getpid()}" in capsys.readouterr().err


def test_config_error_exit_code(env, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nport = 'x'\n")
    assert cli.main(["status", "--config", str(bad)]) == 2
    assert "web.port" in capsys.readouterr().err


def test_plugin_commands_and_broken_plugin_does_not_break_cli(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("gateway.no_such_module", "gateway.flash.cli"))
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {"run", "status", "device"} <= set(choices)


def test_status_warns_of_a_disk_filling_up_and_of_damage_found(env, monkeypatch, capsys):
    """Issue 14: `parcelbox status` measures the disk itself (a full disk stops status.json) and
    reports what the store found when it opened the data folder."""
    from gateway.store import Store
    from tests.test_store import NOV, ev

    s = Store(env)
    s.add_event(ev("box1", "event0001", NOV))
    s.add_event(ev("box1", "event0002", NOV))
    journal = env / "db" / "events-2026-11.json.journal"
    raw = bytearray(journal.read_bytes())
    raw[raw.index(b"event0001") + 3] ^= 0x01  # bit rot; the store was never closed (a crash)
    journal.write_bytes(bytes(raw))
    monkeypatch.setenv("PARCELBOX_STORE_MIN_FREE_PERCENT", "50")
    monkeypatch.setenv("PARCELBOX_STORE_MIN_FREE_MB", str(10**9))  # "almost full" on any disk
    assert cli.main(["status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["health"]["storage"]
    assert not st["ok"] and st["disk"]["low"] and st["integrity"]["journal_damaged"] == 1
    monkeypatch.setenv("PARCELBOX_STORE_MIN_FREE_MB", "0")
    monkeypatch.setenv("PARCELBOX_STORE_MIN_FREE_PERCENT", "0")
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    # Found by the first status (which opened the store); still shown while its copy is in quarantine.
    assert "WARNING: damaged records or files found" in out and "1 kept in db/quarantine/" in out
    for p in (env / "db" / "quarantine").glob("*.bad"):
        p.unlink()  # looked at, deleted: the warning goes
    assert cli.main(["status"]) == 0
    assert "storage: ok" in capsys.readouterr().out
