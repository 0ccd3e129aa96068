"""Config: defaults, TOML, environment overrides by the PARCELBOX_<SECTION>_<KEY> rule, errors, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, load_config


def test_defaults_without_any_file(tmp_path):
    cfg = load_config(None, env={"PARCELBOX_CONFIG": "", "HOME": str(tmp_path)})
    assert cfg.broker.url == "" and cfg.web.host == "127.0.0.1" and cfg.web.port == 8080
    assert cfg.notify.folder.enabled and cfg.folder_sink_path == cfg.data_dir / "alerts"
    assert cfg.whatsapp.language == "en" and cfg.devices.registration_required is False
    assert cfg.source is None


def test_toml_then_env_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'data_dir = "data"\n'
        '[broker]\nurl = "mqtt://user:secret@127.0.0.1:1999"\npassword = "hunter2"\n'
        "[web]\nport = 9000\n"
        '[notify.folder]\npath = "/tmp/alerts-x"\n'
        '[notify.webhook]\nurl = "http://127.0.0.1:1/h"\nheaders = { Authorization = "Bearer abc" }\n'
        '[whatsapp]\nenabled = true\nlanguage = "id"\nrecipients = ["+628123", "group@g.us"]\n'
        "[alerts]\noffline_after_s = 120\n"
        '[devices.names]\nbox1 = "Front gate"\n'
    )
    env = {
        "PARCELBOX_WEB_PORT": "9100",
        "PARCELBOX_NOTIFY_FOLDER_PATH": "/tmp/alerts-env",
        "PARCELBOX_WHATSAPP_RECIPIENTS": "+6281, +6282",
        "PARCELBOX_DEVICES_REGISTRATION_REQUIRED": "yes",
        "PARCELBOX_ALERTS_LOW_BATTERY_MV": "3300",
    }
    cfg = load_config(f, env=env)
    assert cfg.source == f and cfg.data_dir == (tmp_path / "data").resolve()
    assert cfg.web.port == 9100
    assert cfg.folder_sink_path == Path("/tmp/alerts-env")
    assert cfg.whatsapp.recipients == ["+6281", "+6282"] and cfg.whatsapp.language == "id"
    assert cfg.devices.registration_required is True and cfg.alerts.low_battery_mv == 3300
    assert cfg.alerts.offline_after_s == 120.0 and cfg.devices.names == {"box1": "Front gate"}
    red = cfg.redacted()
    text = repr(red)
    assert "hunter2" not in text and "secret" not in text and "Bearer abc" not in text
    assert red["broker"]["url"] == "mqtt://***@127.0.0.1:1999"


def test_env_var_selects_file_and_data_dir(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[web]\nenabled = false\n")
    cfg = load_config(None, env={"PARCELBOX_CONFIG": str(f), "PARCELBOX_DATA_DIR": str(tmp_path / "d")})
    assert cfg.web.enabled is False and cfg.data_dir == tmp_path / "d"


@pytest.mark.parametrize(
    "text,env,msg",
    [
        ('[web]\nport = "x"\n', {}, "web.port"),
        ("[nope]\na = 1\n", {}, "unknown key 'nope'"),
        ("[web]\nbogus = 1\n", {}, "unknown key 'web.bogus'"),
        ('[whatsapp]\nlanguage = "fr"\n', {}, "whatsapp.language"),
        ('[broker]\nurl = "http://x"\n', {}, "broker.url"),
        ("web = 3\n", {}, "web must be a table"),
        ("this is not toml", {}, "c.toml"),
        ("", {"PARCELBOX_WEB_ENABLED": "maybe"}, "PARCELBOX_WEB_ENABLED"),
        ('[alerts]\ntimezone = "Mars/Base"\n', {}, "timezone"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, env, msg):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        load_config(f, env=env)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})


def test_every_key_documented():
    """docs/configuration.md has a table row for every key, under its section's heading."""
    import dataclasses
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in doc.splitlines():
        h = re.match(r"### `\[(.+)\]`", line)
        if h:
            current = h.group(1)
        elif line.startswith("### Top level"):
            current = ""
        row = re.match(r"\| `([a-z_]+)` \|", line)
        if row:
            sections.setdefault(current, set()).add(row.group(1))

    def walk(obj, section):
        for f in dataclasses.fields(obj):
            if f.name == "source":
                continue
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                yield from walk(v, f"{section}.{f.name}".lstrip("."))
            else:
                yield section, f.name

    missing = [f"{sec}.{k}" for sec, k in walk(Config(), "") if k not in sections.get(sec, set())]
    assert not missing, f"undocumented keys: {missing}"
