"""Hostile box, hostile LAN client: attacks on the gateway's own Mosquitto (issue 14, items 3, 6, 12).

The gateway runs as `parcelbox run` (a subprocess) with its managed broker; the box listener is bound
to 127.0.0.2, a loopback address standing in for the LAN interface (tests stay on loopback), and the
local listener is 127.0.0.1 as always.

- A stolen box login reconnects 30 times under the gateway's client ids (the old predictable one,
  `parcelbox-gw-<hash of the data folder>`, and the real login name) and under another box's id: the
  gateway and the other box are never kicked off and every one of the victim's 15 events is acked.
- An anonymous client on the LAN address is refused; on the local listener it cannot forge an event
  for a registered box, read its ack or command it.
- A retained 1 MB message drops the sender's connection and is never stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from bench.chaos import _kicked_clients
from gateway.devices import DeviceRegistry
from tests.support.e2e import GatewayProc, wait_for
from tests.support.gateway_core import Box, new_event_id

LAN = "127.0.0.2"


def _once(url: str, client_id: str, login: str | None, password: str | None, publish=None) -> str:
    """One connection driven by hand (no reconnects): "refused", "connected", "acked" or "dropped"."""
    u = urlparse(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if login:
        c.username_pw_set(login, password)
    out: list[str] = []
    c.on_connect = lambda _c, _u, _f, rc, _p: out.append("refused" if rc.is_failure else "connected")
    c.on_publish = lambda *_a: out.append("acked")
    c.on_disconnect = lambda *_a: out.append("dropped")
    c.connect(u.hostname, u.port, keepalive=10)
    if publish is not None:
        c.publish(*publish, qos=1, retain=True)
    deadline = time.monotonic() + 30  # bounded; each loop returns as soon as the broker answers
    while time.monotonic() < deadline:
        c.loop(0.05)
        if "refused" in out or "dropped" in out or (out and (publish is None or "acked" in out)):
            break
    result = next((o for o in ("refused", "dropped", "acked") if o in out), out[0] if out else "nothing")
    c.disconnect()  # (its own on_disconnect comes after the result is taken)
    return result


def test_hostile_box_and_lan_client_against_the_managed_broker(tmp_path, prefix):
    gw = GatewayProc(
        tmp_path / "gw",
        "",
        prefix,
        extra={
            # port 0: the gateway picks both ports and says where in broker.json (a port picked here
            # could be taken by another test worker's process before the gateway binds it)
            "broker": {"listen_host": LAN, "listen_port": 0, "local_port": 0}
        },  # anonymous: default
    )
    reg = DeviceRegistry(gw.data_dir)
    victim_pw = reg.add("victim").password
    stolen_pw = reg.add("hostile").password
    gw.start()
    try:
        live = gw.broker_address()
    except BaseException:
        gw.kill()
        raise
    url, local_url = live["url"], live["local_url"]
    assert url.startswith(f"mqtt://{LAN}:")
    victim = Box(url, prefix, "victim", username="victim", password=victim_pw)
    try:
        wait_for(lambda: gw.health().get("broker", {}).get("connected"), 30, what="the gateway connected")
        old_gateway_id = (
            "parcelbox-gw-" + hashlib.sha256(str(gw.data_dir.resolve()).encode()).hexdigest()[:10]
        )
        gateway_login = (gw.data_dir / "broker" / "gateway-user").read_text().strip()
        stolen_ids = [old_gateway_id, gateway_login, "victim", victim.c._client_id.decode()]
        sent = []
        for i in range(30):
            assert _once(url, stolen_ids[i % len(stolen_ids)], "hostile", stolen_pw) == "connected"
            if i % 2 == 0:
                eid = new_event_id()
                victim.send(eid, None)
                sent.append(eid)
        acks = [victim.wait_ack(eid) for eid in sent]
        assert len(acks) == 15 and all(a["ok"] for a in acks)
        victims = {k: n for k, n in _kicked_clients(gw.data_dir / "broker").items() if k != "hostile"}
        assert victims == {}, f"kicked off by a stolen login: {victims}"

        # hostile LAN client: no anonymous access on the box listener
        assert _once(url, "lan-anon", None, None) == "refused"
        # on the local listener: no forged event for a registered box, no ack to read, no command
        forged = new_event_id()
        event = json.dumps({"v": 1, "id": forged, "type": "delivery", "ts": None, "seq": 1, "photo": None})
        _once(local_url, "anon-1", None, None, (f"{prefix}/victim/event", event))
        _once(
            local_url,
            "anon-2",
            None,
            None,
            (f"{prefix}/victim/cmd", json.dumps({"id": "x1", "cmd": "reboot"})),
        )
        eid = new_event_id()
        victim.send(eid, None)
        assert victim.wait_ack(eid)["ok"]  # processed after the forged one would have been
        assert gw.cli("status", "--json").returncode == 0
        # retained junk: a 1 MB retained chunk drops the connection, and is never stored
        big = (f"{prefix}/hostile/photo/{new_event_id()}/0", b"x" * 1_000_000)
        assert _once(url, "hostile", "hostile", stolen_pw, big) == "dropped"
        assert gw.health()["broker"]["connects"] == 1, "the gateway was disconnected at some point"
    finally:
        victim.close()
        assert gw.stop() == 0
    from tests.support.e2e import audit_data_folder

    stored = {e["id"] for e in audit_data_folder(gw.data_dir, gw.alerts_dir)["events"]}
    assert forged not in stored and set(sent) <= stored
    log = (gw.data_dir / "broker" / "mosquitto.log").read_text()
    assert "oversize packet" in log
