"""The one broker-URL parser (gateway/brokeraddr.py), as a table. Before it, the ingest link, the Home
Assistant bridge, `parcelbox flash` and tools/simulate.py each parsed the URL their own way."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.brokeraddr import BrokerAddress, parse_broker_url
from gateway.config import ConfigError, load_config
from gateway.homeassistant import bridge
from gateway.ingest import MqttLink

A = BrokerAddress

CASES = [
    # url, explicit (username, password), expected
    ("mqtt://broker.lan", (None, None), A("broker.lan", 1883, False, None, None)),
    ("mqtt://broker.lan:1884", (None, None), A("broker.lan", 1884, False, None, None)),
    ("mqtts://broker.lan", (None, None), A("broker.lan", 8883, True, None, None)),
    ("mqtts://broker.lan:9000", (None, None), A("broker.lan", 9000, True, None, None)),
    ("tcp://broker.lan", (None, None), A("broker.lan", 1883, False, None, None)),
    ("ssl://broker.lan", (None, None), A("broker.lan", 8883, True, None, None)),
    ("MQTTS://Broker.LAN", (None, None), A("broker.lan", 8883, True, None, None)),
    # no scheme: plain MQTT (flash and the simulator accepted it; ingest refused it)
    ("broker.lan", (None, None), A("broker.lan", 1883, False, None, None)),
    ("broker.lan:1999", (None, None), A("broker.lan", 1999, False, None, None)),
    ("  mqtt://broker.lan  ", (None, None), A("broker.lan", 1883, False, None, None)),
    ("mqtt://", (None, None), A("127.0.0.1", 1883, False, None, None)),
    ("mqtt://[::1]:1883", (None, None), A("::1", 1883, False, None, None)),
    ("mqtt://10.0.0.5:1883/", (None, None), A("10.0.0.5", 1883, False, None, None)),
    # login in the URL, percent-decoded (the simulator did not decode)
    ("mqtt://gw:s%40cret@broker.lan", (None, None), A("broker.lan", 1883, False, "gw", "s@cret")),
    ("mqtt://gw@broker.lan", (None, None), A("broker.lan", 1883, False, "gw", None)),
    # given on its own: wins, field by field
    ("mqtt://gw:pw@broker.lan", ("me", "mine"), A("broker.lan", 1883, False, "me", "mine")),
    ("mqtt://gw:pw@broker.lan", ("me", None), A("broker.lan", 1883, False, "me", "pw")),
    ("mqtt://gw:pw@broker.lan", (None, "mine"), A("broker.lan", 1883, False, "gw", "mine")),
    # an empty string is not given (config defaults are ""; the bridge used to let "" win)
    ("mqtt://gw:pw@broker.lan", ("", ""), A("broker.lan", 1883, False, "gw", "pw")),
    ("mqtt://broker.lan", ("", ""), A("broker.lan", 1883, False, None, None)),
]


@pytest.mark.parametrize(("url", "explicit", "want"), CASES, ids=[c[0].strip() or "empty" for c in CASES])
def test_broker_url(url: str, explicit: tuple[str | None, str | None], want: BrokerAddress) -> None:
    assert parse_broker_url(url, *explicit) == want  # the password is compared too (only hidden from repr)


BAD = [
    ("http://broker.lan", "must start with mqtt:// or mqtts://"),
    ("ws://broker.lan:9001", "must start with mqtt:// or mqtts://"),
    ("mqtt://broker.lan:99999", "port must be a number"),
    ("mqtt://broker.lan:0", "port must be a number"),
    ("mqtt://broker.lan:abc", "port must be a number"),
    ("mqtt://broker.lan/parcelbox", "no path"),
    ("mqtt://broker.lan?x=1", "no path"),
]


@pytest.mark.parametrize(("url", "why"), BAD, ids=[b[0] for b in BAD])
def test_bad_broker_urls_say_why(url: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=why):
        parse_broker_url(url)
    toml = tmp_path / "parcelbox.toml"
    toml.write_text(f'[broker]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match="broker.url"):
        load_config(toml, env={})


def test_password_never_shows_in_repr_and_endpoint_has_no_login() -> None:
    a = parse_broker_url("mqtts://gw:hunter2@broker.lan")
    assert "hunter2" not in repr(a) and a.endpoint == "mqtts://broker.lan:8883"
    assert parse_broker_url("mqtt://[::1]").endpoint == "mqtt://[::1]:1883"


def test_every_client_uses_the_one_parser() -> None:
    """The ingest link and the Home Assistant bridge read the same address from the same URL."""
    url, user, pw = "mqtts://gw:s%40cret@broker.lan", "", ""
    link = MqttLink(url, client_id="t", prefix="p", deliver=lambda *a: None, username=user, password=pw)
    assert (link.host, link.port, link.tls, link.username, link.password) == (
        "broker.lan",
        8883,
        True,
        "gw",
        "s@cret",
    )
    assert bridge.parse_broker_url is parse_broker_url
