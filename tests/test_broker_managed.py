"""The managed broker: Mosquitto with per-box passwords and ACLs from the registry; the amqtt fallback."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest

from gateway.broker import acl_text, mosquitto_password_hash
from gateway.service import GatewayService
from tests.support.gateway_core import Box, gateway_config, make_jpeg, new_event_id, wait_for


def _managed(tmp_path, prefix, **env):
    base = {
        "PARCELBOX_BROKER_URL": "",
        "PARCELBOX_BROKER_LISTEN_HOST": "127.0.0.1",
        "PARCELBOX_BROKER_LISTEN_PORT": "0",
    }
    base.update(env)
    return gateway_config(tmp_path / "data", "", prefix, **base)


def _connect_rc(url: str, username: str | None, password: str | None) -> int:
    """The CONNACK reason code value (0 = accepted)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    if username:
        c.username_pw_set(username, password)
    codes: list[int] = []
    c.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    c.connect(u.hostname, u.port)
    c.loop_start()
    try:
        wait_for(lambda: codes, 10, what="CONNACK")
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]


def test_password_hash_format():
    h = mosquitto_password_hash("pw")
    assert h.startswith("$7$101$") and len(h.split("$")) == 5
    assert "pattern write pfx/%u/event" in acl_text("pfx", False)
    assert "topic readwrite pfx/#" not in acl_text("pfx", False)
    # provision watches for a box's online status with the box's login
    assert "pattern readwrite pfx/%u/status" in acl_text("pfx", False)


def test_managed_mosquitto_enforces_passwords_and_per_box_acl(tmp_path, prefix):
    cfg = _managed(tmp_path, prefix, PARCELBOX_BROKER_ALLOW_ANONYMOUS="false")
    svc = GatewayService(cfg)
    a = svc.registry.add("box-a")
    svc.start()
    try:
        assert svc.broker.kind == "mosquitto" and svc.wait_connected(10)
        url = svc.broker.url
        assert (tmp_path / "data" / "broker" / "passwd").stat().st_mode & 0o777 == 0o600
        assert _connect_rc(url, None, None) != 0  # anonymous refused
        assert _connect_rc(url, "box-a", "wrong") != 0
        box = Box(url, prefix, "box-a", username="box-a", password=a.password)
        try:
            e1 = new_event_id()
            box.send(e1, make_jpeg(160, 120))
            assert box.wait_ack(e1)["ok"]
            # box-a may not speak for box-b: the broker drops the message (Mosquitto may also drop the
            # connection), nothing is stored. A separate connection, so the box itself carries on: on the
            # local listener, since on the box listener the same login is the same client id ("box-a").
            rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue-box-a")
            rogue.username_pw_set("box-a", a.password)
            from urllib.parse import urlparse

            u = urlparse(svc.broker.local_url)
            rogue.connect(u.hostname, u.port)
            rogue.loop_start()
            e2 = new_event_id()
            wait_for(rogue.is_connected, 10, what="rogue connect")
            rogue.publish(
                f"{prefix}/box-b/event",
                json.dumps(
                    {"v": 1, "id": e2, "type": "delivery", "ts": None, "seq": 1, "photo": None}
                ).encode(),
                qos=1,
            )
            time.sleep(0.5)
            rogue.disconnect()
            rogue.loop_stop()
            e3 = new_event_id()
            box.send(e3, None)
            assert box.wait_ack(e3)["ok"]  # processed after e2 would have been
            assert svc.get_event("box-b", e2) is None
        finally:
            box.close()
        # a box added while the gateway runs can connect within a few seconds
        b = svc.registry.add("box-b")
        wait_for(lambda: _connect_rc(url, "box-b", b.password) == 0, 15, interval=0.5, what="reload")
        svc.registry.remove("box-b")
        wait_for(lambda: _connect_rc(url, "box-b", b.password) != 0, 15, interval=0.5, what="revoke")
    finally:
        svc.stop()
    assert svc.broker is None  # stopped with the gateway


def test_amqtt_fallback_serves_events(tmp_path, prefix, caplog):
    pytest.importorskip("amqtt")
    cfg = _managed(tmp_path, prefix, PARCELBOX_BROKER_PREFER="amqtt")
    svc = GatewayService(cfg)
    svc.start()
    try:
        assert svc.broker.kind == "amqtt" and svc.wait_connected(15)
        assert any("TRYING THINGS OUT" in r.getMessage() for r in caplog.records)
        box = Box(svc.broker.url, prefix, "box1")
        try:
            eid = new_event_id()
            box.send(eid, make_jpeg(160, 120))
            assert box.wait_ack(eid, timeout=30)["ok"]
        finally:
            box.close()
    finally:
        svc.stop()


def test_a_port_taken_between_the_check_and_amqtts_bind_moves_the_fallback_broker(
    tmp_path, prefix, monkeypatch
):
    """The amqtt fallback's port was free when chosen and taken before amqtt bound it (another program,
    a parallel test worker). Old code: "amqtt broker failed to start", and the gateway exited."""
    pytest.importorskip("amqtt")
    import socket

    from gateway import broker as broker_mod

    with socket.socket() as squatter:  # took the port after the check
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(broker_mod, "_port_free", lambda host, port: True)  # the check saw it free
        cfg = _managed(
            tmp_path, prefix, PARCELBOX_BROKER_PREFER="amqtt", PARCELBOX_BROKER_LISTEN_PORT=str(taken)
        )
        svc = GatewayService(cfg)
        try:
            svc.start()
            assert svc.broker.kind == "amqtt" and svc.wait_connected(15)
            port = int(svc.broker.listen.rsplit(":", 1)[1])
            assert port not in (taken, 0)
            assert json.loads((tmp_path / "data" / "broker.json").read_text())["url"] == svc.broker.url
            box = Box(svc.broker.url, prefix, "box1")
            try:
                eid = new_event_id()
                box.send(eid, None)
                assert box.wait_ack(eid, timeout=30)["ok"]
            finally:
                box.close()
        finally:
            svc.stop()


def test_the_amqtt_fallback_never_listens_on_the_lan(tmp_path, prefix):
    """Item 12: amqtt has no logins, client-id binding or ACL here, so it stays on 127.0.0.1 whatever
    listen_host says (the old code bound it to every interface, anonymous)."""
    pytest.importorskip("amqtt")
    cfg = _managed(tmp_path, prefix, PARCELBOX_BROKER_PREFER="amqtt", PARCELBOX_BROKER_LISTEN_HOST="0.0.0.0")
    svc = GatewayService(cfg)
    svc.start()
    try:
        assert svc.broker.kind == "amqtt" and svc.wait_connected(15)
        assert svc.broker.listen.startswith("127.0.0.1:")
        import socket

        with socket.socket() as s:  # not on another address ("the LAN")
            assert s.connect_ex(("127.0.0.2", int(svc.broker.listen.rsplit(":", 1)[1]))) != 0
    finally:
        svc.stop()


def test_a_port_taken_between_the_check_and_mosquittos_bind_moves_the_broker(tmp_path, prefix, monkeypatch):
    """The port was free when chosen and taken before Mosquitto bound it (another program, a parallel
    test worker): the broker moves to a free port, as for a port taken before the check. It used to
    leave `start_managed_broker` with PortTaken, so the gateway exited."""
    import socket

    from gateway import mosquitto as mosquitto_mod

    squatters: list[socket.socket] = []
    real = mosquitto_mod.Mosquitto._start_once

    def squat_then_start(self, timeout):
        if not squatters:  # the first start only: take its box port just before Mosquitto binds it
            s = socket.socket()
            s.bind((self.host, self.port))
            s.listen(1)
            squatters.append(s)
        return real(self, timeout)

    monkeypatch.setattr(mosquitto_mod.Mosquitto, "_start_once", squat_then_start)
    svc = GatewayService(_managed(tmp_path, prefix, PARCELBOX_BROKER_LOCAL_PORT="0"))
    try:
        svc.start()
        assert svc.wait_connected(10)
        taken = squatters[0].getsockname()[1]
        assert int(svc.broker.listen.rsplit(":", 1)[1]) != taken
        assert json.loads((tmp_path / "data" / "broker.json").read_text())["url"] == svc.broker.url
    finally:
        svc.stop()
        for s in squatters:
            s.close()


def test_a_moved_broker_writes_its_live_address_and_removes_it_on_a_clean_stop(tmp_path, prefix):
    """Port taken (a system Mosquitto on 1883, say): the broker moves, and says where in broker.json."""
    import socket

    from gateway.broker import BROKER_FILE, read_live_address

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        cfg = _managed(
            tmp_path,
            prefix,
            PARCELBOX_BROKER_LISTEN_PORT=str(taken),
            PARCELBOX_BROKER_ALLOW_ANONYMOUS="false",
        )
        svc = GatewayService(cfg)
        box = svc.registry.add("box-a")
        svc.start()
        path = tmp_path / "data" / BROKER_FILE
        try:
            assert svc.wait_connected(10)
            port = int(svc.broker.listen.rsplit(":", 1)[1])
            assert port != taken
            text = path.read_text()
            doc = json.loads(text)
            assert doc["port"] == port and doc["listen_host"] == "127.0.0.1"
            assert doc["url"] == f"mqtt://127.0.0.1:{port}" == svc.broker.url
            assert doc["kind"] == "mosquitto"
            # never credentials: not the gateway's own login, not a box's
            assert svc.broker.gateway_password not in text and box.password not in text
            assert "password" not in text and "username" not in text
            live = read_live_address(tmp_path / "data")
            assert live is not None and live.port == port and live.path == path
            # what it names is the broker: a box logs in there
            assert _connect_rc(live.url, "box-a", box.password) == 0
        finally:
            svc.stop()
    assert not path.exists()  # clean stop: no stale address left behind


def test_a_broker_file_left_by_a_crash_is_ignored(tmp_path):
    """No gateway holds the data folder: the file is stale (its port may belong to anyone now)."""
    from gateway.broker import BROKER_FILE, read_live_address
    from gateway.datalock import DataDirLock

    data = tmp_path / "data"
    data.mkdir()
    (data / BROKER_FILE).write_text(
        json.dumps(
            {
                "v": 1,
                "kind": "mosquitto",
                "listen_host": "0.0.0.0",
                "port": 18830,
                "url": "mqtt://127.0.0.1:18830",
                "pid": 999999,
            }
        )  # fmt: skip
    )
    assert read_live_address(data) is None
    with DataDirLock(data):  # a running gateway holds it
        live = read_live_address(data)
        assert live is not None and live.port == 18830 and live.listen_host == "0.0.0.0"
        (data / BROKER_FILE).write_text("{not json")
        assert read_live_address(data) is None  # unreadable: ignored, never a crash


# --- issue 14: identities, anonymous clients, retained junk, orphaned broker, data-folder mode ---------

LAN = "127.0.0.2"  # a loopback address standing in for the LAN interface; 127.0.0.1 is the local listener


def _lan(tmp_path, prefix, **env):
    return _managed(
        tmp_path, prefix, PARCELBOX_BROKER_LISTEN_HOST=LAN, PARCELBOX_BROKER_LOCAL_PORT="0", **env
    )


def _client(url: str, client_id: str, username: str | None = None, password: str | None = None):
    """A connected paho client (its loop running) and the list of its CONNACK codes / disconnects."""
    from urllib.parse import urlparse

    u = urlparse(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if username:
        c.username_pw_set(username, password)
    events: list[str] = []
    c.on_connect = lambda _c, _u, _f, rc, _p: events.append(f"connack:{rc.value}")
    c.on_disconnect = lambda *_a: events.append("disconnect")
    c.connect(u.hostname, u.port)
    c.loop_start()
    wait_for(lambda: any(e.startswith("connack") for e in events), 10, what="CONNACK")
    return c, events


def _subscriber(url: str, topic_filter: str, username: str | None = None, password: str | None = None):
    """A connected client subscribed to `topic_filter`; returns it and the list its messages land in."""
    got: list[mqtt.MQTTMessage] = []
    c, _events = _client(url, f"spy-{time.monotonic_ns()}", username, password)
    c.on_message = lambda _c, _u, m: got.append(m)
    subscribed: list[int] = []
    c.on_subscribe = lambda *_a: subscribed.append(1)
    c.subscribe(topic_filter, 1)
    wait_for(lambda: subscribed, 10, what="SUBACK")
    return c, got


def _close(c) -> None:
    c.disconnect()
    c.loop_stop()


def _count_disconnects(box: Box) -> list[int]:
    n = [0]
    box.c.on_disconnect = lambda *_a: n.__setitem__(0, n[0] + 1)
    return n


def test_a_box_cannot_take_the_gateways_or_another_boxs_client_id(tmp_path, prefix):
    """Item 3: box-a's login connecting under the gateway's id or box-b's id kicks nobody off."""
    cfg = _lan(tmp_path, prefix, PARCELBOX_BROKER_ALLOW_ANONYMOUS="false")
    svc = GatewayService(cfg)
    a = svc.registry.add("box-a")
    b = svc.registry.add("box-b")
    svc.start()
    try:
        assert svc.wait_connected(10)
        url = svc.broker.url
        box_b = Box(url, prefix, "box-b", username="box-b", password=b.password)
        b_drops = _count_disconnects(box_b)
        try:
            gateway_ids = {svc.client_id, getattr(svc.broker, "gateway_username", svc.client_id)}
            box_b_ids = {box_b.c._client_id.decode(), "box-b"}
            for stolen in sorted(gateway_ids | box_b_ids):
                rogue, events = _client(url, stolen, "box-a", a.password)
                _close(rogue)
            e1 = new_event_id()
            box_b.send(e1, make_jpeg(160, 120))
            assert box_b.wait_ack(e1)["ok"]
            assert svc.link.connects == 1, "the gateway was kicked off and reconnected"
            assert b_drops[0] == 0, "box-b was kicked off"
        finally:
            box_b.close()
    finally:
        svc.stop()


def test_anonymous_clients_only_on_the_local_listener_and_never_on_a_registered_box(tmp_path, prefix):
    """Item 12: the trial works anonymously on 127.0.0.1; the box listener refuses anonymous clients, and
    an anonymous client can neither forge a registered box's event, read its ack, nor command it."""
    cfg = _lan(tmp_path, prefix)  # allow_anonymous: default (true)
    svc = GatewayService(cfg)
    a = svc.registry.add("box-a")
    svc.start()
    try:
        assert svc.wait_connected(10)
        assert svc.broker.url.startswith(f"mqtt://{LAN}:")
        assert _connect_rc(svc.broker.url, None, None) != 0  # the "LAN" listener: logins only
        local = svc.broker.local_url
        assert local.startswith("mqtt://127.0.0.1:")
        # the five-minute trial: an anonymous simulated box on the local listener is acked
        sim = Box(local, prefix, "sim-1")
        try:
            e0 = new_event_id()
            sim.send(e0, make_jpeg(160, 120))
            assert sim.wait_ack(e0)["ok"]
        finally:
            sim.close()
        box_a = Box(svc.broker.url, prefix, "box-a", username="box-a", password=a.password)
        # on the local listener: on the box listener this login would be client id "box-a" and kick box_a
        cmds_c, cmds = _subscriber(local, f"{prefix}/box-a/cmd", "box-a", a.password)
        spy, seen = _subscriber(local, f"{prefix}/#")
        try:
            forged = new_event_id()
            spy.publish(
                f"{prefix}/box-a/event",
                json.dumps({"v": 1, "id": forged, "type": "delivery", "ts": None, "seq": 1, "photo": None}),
                qos=1,
            ).wait_for_publish(10)
            spy.publish(f"{prefix}/box-a/cmd", json.dumps({"id": "forged-cmd-1", "cmd": "config",
                                                              "args": {"camera": False}}), qos=1)  # fmt: skip
            e1 = new_event_id()
            box_a.send(e1, None)
            assert box_a.wait_ack(e1)["ok"]  # processed after the forged event would have been
            assert svc.get_event("box-a", forged) is None
            real = svc.send_command("box-a", "ping")
            first = wait_for(lambda: cmds, 10, what="the gateway's command")[0]
            assert real in first.payload.decode() and "forged" not in first.payload.decode()
            assert not [m.topic for m in seen if m.topic.startswith(f"{prefix}/box-a/")]
        finally:
            box_a.close()
            _close(cmds_c)
            _close(spy)
    finally:
        svc.stop()


def _publish_once(url: str, login: str, password: str, topic: str, payload: bytes) -> str:
    """Connect with `login`, publish one retained QoS 1 message: "acked" or "disconnected".

    Driven by hand, without paho's network thread, which would reconnect and send the message again.
    """
    from urllib.parse import urlparse

    u = urlparse(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=login)
    c.username_pw_set(login, password)
    outcome: list[str] = []
    c.on_disconnect = lambda *_a: outcome.append("disconnected")
    c.on_publish = lambda *_a: outcome.append("acked")
    c.connect(u.hostname, u.port)
    c.publish(topic, payload, qos=1, retain=True)
    for _ in range(100):  # bounded: 100 x 0.1 s
        if outcome:
            break
        c.loop(0.1)
    c.disconnect()
    return outcome[0] if outcome else "nothing"


def _db_state(path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def test_retained_junk_is_bounded_and_an_idle_broker_does_not_rewrite_its_database(tmp_path, prefix):
    """Item 6: a box's oversized retained message is refused (disconnect), one below its photo topic's
    exact depth is dropped by the ACL, and an idle broker does not rewrite its database every second."""
    from gateway.broker import MAX_PACKET_BYTES

    cfg = _lan(tmp_path, prefix, PARCELBOX_BROKER_ALLOW_ANONYMOUS="false")
    svc = GatewayService(cfg)
    a = svc.registry.add("box-a")
    svc.start()
    try:
        assert svc.wait_connected(10)
        url = svc.broker.url
        big = f"{prefix}/box-a/photo/{new_event_id()}/0"
        assert _publish_once(url, "box-a", a.password, big, b"x" * (MAX_PACKET_BYTES + 1)) == "disconnected"
        deep = f"{prefix}/box-a/photo/{new_event_id()}/0/deeper/still"
        _publish_once(url, "box-a", a.password, deep, b"junk")  # dropped by the ACL (PUBACK or disconnect)
        kept = f"{prefix}/box-a/photo/{new_event_id()}/0"  # the exact depth: allowed (and small)
        assert _publish_once(url, "box-a", a.password, kept, b"small") == "acked"
        # Read what is retained with the gateway's login, on the local listener (free client ids there).
        reader, got = _subscriber(
            svc.broker.local_url,
            f"{prefix}/box-a/#",
            svc.broker.gateway_username,
            svc.broker.gateway_password,
        )
        try:
            wait_for(lambda: got, 10, what="retained messages")
            assert sorted(m.topic for m in got if m.retain) == [kept]
        finally:
            _close(reader)
        db = tmp_path / "data" / "broker" / "mosquitto.db"
        before = _db_state(db)
        # A negative observation needs a wait: the old 1 s autosave rewrote the database twice in this time.
        time.sleep(2.5)
        assert _db_state(db) == before, "an idle broker rewrote its database"
    finally:
        svc.stop()


def _retained_on(url: str, login: str, password: str, topic_filter: str) -> list[str]:
    """The topics under `topic_filter` that the broker holds retained messages for, read with `login`.

    Complete, not sampled: after subscribing, the reader publishes a live probe under the same filter;
    one connection keeps order, so every retained message has arrived when the probe does."""
    probe = topic_filter.rstrip("#") + "probe"
    reader, got = _subscriber(url, topic_filter, login, password)
    try:
        reader.publish(probe, b"", qos=1)
        wait_for(lambda: any(m.topic == probe for m in got), 10, what="the probe")
        return sorted(m.topic for m in got if m.retain)
    finally:
        _close(reader)


def test_retained_junk_on_a_box_topic_is_counted_and_cleared_from_the_broker(tmp_path, prefix):
    """A stolen box login leaves retained messages on its own event, chunk, command-result and update-reply
    topics (the ACL cannot tell retained from live): the broker replayed each to the gateway at every
    start and reconnect, forever. Now the first replay is counted (`rejected.retained_junk`) and cleared
    with an empty retained publish by the gateway's login; the box's retained status stays."""
    cfg = _managed(tmp_path, prefix, PARCELBOX_BROKER_ALLOW_ANONYMOUS="false")
    svc = GatewayService(cfg)
    a = svc.registry.add("box-a")
    svc.start()
    status = f"{prefix}/box-a/status"
    junk = {
        f"{prefix}/box-a/photo/{new_event_id()}/0": b"\xff" * 60_000,  # below max_packet_size: accepted
        f"{prefix}/box-a/event": b'{"v":1,"id":',
        f"{prefix}/box-a/cmd/result": b"junk",
        f"{prefix}/box-a/ota/reply": b"junk",
    }
    try:
        assert svc.wait_connected(10)
        live = json.dumps({"v": 1, "online": True, "fw": "0.1.0", "uptime_s": 5}).encode()
        assert _publish_once(svc.broker.url, "box-a", a.password, status, live) == "acked"
        for topic, payload in junk.items():
            assert _publish_once(svc.broker.url, "box-a", a.password, topic, payload) == "acked"
        # This gateway got them live (handled like any message): wait until it took them, or the broker
        # would hand the ones it had not acknowledged to the next run from the persistent session.
        wait_for(lambda: svc.health()["received"] == 1 + len(junk), 10, what="the live copies")
    finally:
        svc.stop()  # Mosquitto saves its retained messages on the way down
    for run in (1, 2):  # a restart replays them: the first clears, the second finds nothing left
        svc = GatewayService(cfg)
        svc.start()
        try:
            assert svc.wait_connected(10)
            assert svc.link is not None and svc.broker is not None
            if run == 1:
                wait_for(
                    lambda s=svc: s.health()["rejected"].get("retained_junk") == len(junk),
                    10,
                    what="junk counted",
                )
                # Our clears came back to us: the broker has applied every one of them.
                wait_for(lambda s=svc: s.link.retained.pending_echoes == 0, 10, what="clears applied")
            login, password = svc.broker.gateway_username, svc.broker.gateway_password
            assert _retained_on(svc.broker.local_url, login, password, f"{prefix}/box-a/#") == [status]
            # The echoes of the clears were dropped quietly, not counted as malformed chunks or events.
            rejected = svc.health()["rejected"]
            assert {k: v for k, v in rejected.items() if v} == (
                {"retained_junk": len(junk)} if run == 1 else {}
            )
        finally:
            svc.stop()


def test_a_broker_left_over_by_a_dead_gateway_is_stopped_and_its_port_reused(tmp_path, prefix):
    """Item 13: a gateway that died without its broker dying (no parent-death signal) left Mosquitto
    holding the port; the next gateway stops that broker (pid file + /proc check) and keeps the port."""
    import os

    from gateway.mosquitto import hold_port, leftover_pid

    # A fixed port, as boxes are flashed with, held by the test all along (a bound socket that never
    # listens; Mosquitto listens beside it): no other process can take it before the first start or
    # between the old broker's end and the second start.
    hold = hold_port(LAN)
    assert hold is not None
    picked = hold.getsockname()[1]
    cfg = _lan(
        tmp_path,
        prefix,
        PARCELBOX_BROKER_ALLOW_ANONYMOUS="false",
        PARCELBOX_BROKER_LISTEN_PORT=str(picked),
    )
    first = GatewayService(cfg)
    first.registry.add("box-a")
    first.start()
    assert first.broker.listen == f"{LAN}:{picked}"
    a = first.registry.get("box-a")
    assert a is not None
    assert first.wait_connected(10)
    port = first.broker.listen
    orphan = first.broker.mosquitto.pid
    first.broker.mosquitto.proc = None  # forget it, as a SIGKILLed gateway would: stop() leaves it running
    first.stop()
    assert leftover_pid(tmp_path / "data" / "broker") == orphan
    second = GatewayService(cfg)
    second.start()
    try:
        assert second.wait_connected(10)
        assert second.broker.listen == port  # same port: boxes flashed with it still reach it
        assert second.broker.mosquitto.pid != orphan
        wait_for(lambda: not os.path.exists(f"/proc/{orphan}/cmdline") or
                 not open(f"/proc/{orphan}/cmdline", "rb").read(), 10, what="the old broker gone")  # fmt: skip
        box = Box(second.broker.url, prefix, "box-a", username="box-a", password=a.password)
        try:
            eid = new_event_id()
            box.send(eid, None)
            assert box.wait_ack(eid)["ok"]
        finally:
            box.close()
    finally:
        second.stop()
        hold.close()


def test_a_pid_file_naming_another_process_is_not_trusted(tmp_path):
    """The pid in a stale pid file may belong to anything by now: only our mosquitto with our config counts."""
    import os
    import subprocess
    import sys

    from gateway.mosquitto import PID_FILE, leftover_pid, stop_leftover

    d = tmp_path / "broker"
    d.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (d / PID_FILE).write_text(f"{other.pid}\n")
        assert leftover_pid(d) is None
        assert stop_leftover(d) is None
        assert other.poll() is None  # untouched
        (d / PID_FILE).write_text(f"{os.getpid()}\n")
        assert leftover_pid(d) is None
        (d / PID_FILE).write_text("not a pid")
        assert stop_leftover(d) is None
    finally:
        other.kill()
        other.wait()


def test_the_data_folder_is_private(tmp_path, prefix, caplog):
    """Item 14: a new data folder is created 0700; an existing world-readable one is tightened, logged."""
    import logging

    fresh = tmp_path / "fresh"
    cfg = _managed(tmp_path, prefix)
    cfg.data_dir = fresh
    svc = GatewayService(cfg)
    svc.start()
    try:
        assert svc.wait_connected(10)
        assert fresh.stat().st_mode & 0o777 == 0o700
    finally:
        svc.stop()
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)
    (old / "status.json").write_text("{}")
    cfg.data_dir = old
    svc = GatewayService(cfg)
    with caplog.at_level(logging.WARNING):
        svc.start()
    try:
        assert old.stat().st_mode & 0o777 == 0o700
        assert any("now 0700" in r.getMessage() for r in caplog.records)
    finally:
        svc.stop()
    # `parcelbox device add` before the first run creates it private too
    from gateway.devices import DeviceRegistry

    DeviceRegistry(tmp_path / "by-device-add").add("box-a")
    assert (tmp_path / "by-device-add").stat().st_mode & 0o777 == 0o700


def test_the_service_unit_keeps_the_state_directory_private():
    """Item 14: systemd creates /var/lib/parcelbox itself; it must create it 0700 (default 0755)."""
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[1] / "deploy" / "parcelbox.service").read_text()
    assert "\nStateDirectoryMode=0700\n" in unit


def test_the_session_under_the_gateways_old_client_id_is_discarded(tmp_path, prefix):
    """Upgrade: the gateway used to connect as parcelbox-gw-<hash>; that persistent session, subscribed
    to every box's events, would queue them forever. The gateway discards it at start."""
    cfg = _lan(tmp_path, prefix)
    svc = GatewayService(cfg)
    svc.start()
    old_id = svc.client_id
    local = svc.broker.local_url
    # what the old gateway left: a persistent session under its id (made here with the gateway's login)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=old_id, clean_session=False)
    c.username_pw_set(svc.broker.gateway_username, svc.broker.gateway_password)
    from urllib.parse import urlparse

    u = urlparse(local)
    c.connect(u.hostname, u.port)
    c.loop_start()
    wait_for(c.is_connected, 10, what="connect")
    done: list[int] = []
    c.on_subscribe = lambda *_a: done.append(1)
    c.subscribe(f"{prefix}/+/event", 1)
    wait_for(lambda: done, 10, what="SUBACK")
    c.disconnect()
    c.loop_stop()
    svc.stop()
    svc = GatewayService(cfg)
    svc.start()
    try:
        assert svc.wait_connected(10)
        flags: list[bool] = []
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=old_id, clean_session=False)
        probe.username_pw_set(svc.broker.gateway_username, svc.broker.gateway_password)
        probe.on_connect = lambda _c, _u, f, _rc, _p: flags.append(bool(f.session_present))
        u = urlparse(svc.broker.local_url)
        probe.connect(u.hostname, u.port)
        probe.loop_start()
        wait_for(lambda: flags, 10, what="CONNACK")
        probe.disconnect()
        probe.loop_stop()
        assert flags == [False], "the old gateway session is still there"
    finally:
        svc.stop()


def test_a_box_reads_only_its_own_update_topics(tmp_path, prefix):
    """Over-the-air update: the gateway's offer and chunks for box-a reach box-a only (the ACL's
    `pattern read <prefix>/%u/ota`, `.../ota/data`); box-b subscribing to them gets nothing."""
    cfg = _managed(tmp_path, prefix, PARCELBOX_BROKER_ALLOW_ANONYMOUS="false")
    svc = GatewayService(cfg)
    a = svc.registry.add("box-a")
    b = svc.registry.add("box-b")
    svc.start()
    try:
        assert svc.wait_connected(10)
        # The local listener: there several clients may share a login (on the box listener the login
        # is the client id, so a second one would take the first one's session).
        url = svc.broker.local_url
        spy_a, got_a = _subscriber(url, f"{prefix}/box-a/ota/#", "box-a", a.password)
        spy_a2, got_a2 = _subscriber(url, f"{prefix}/box-a/ota", "box-a", a.password)
        spy_b, got_b = _subscriber(url, f"{prefix}/+/ota/#", "box-b", b.password)
        spy_b2, got_b2 = _subscriber(url, f"{prefix}/box-a/ota", "box-b", b.password)
        try:
            svc.link.publish(f"{prefix}/box-a/ota", b'{"v":1,"op":"offer"}', retain=True)
            svc.link.publish(f"{prefix}/box-a/ota/data", b"chunk")
            svc.link.publish(f"{prefix}/box-b/ota/data", b"for b")  # b's own: it arrives, after a's
            wait_for(lambda: len(got_a) >= 2 and got_a2 and got_b, 10, what="the update messages")
            assert sorted(m.topic for m in got_a) == [f"{prefix}/box-a/ota", f"{prefix}/box-a/ota/data"]
            assert [m.topic for m in got_b] == [f"{prefix}/box-b/ota/data"]
            assert got_b2 == []
        finally:
            for c in (spy_a, spy_a2, spy_b, spy_b2):
                _close(c)
            svc.link.publish(f"{prefix}/box-a/ota", b"", retain=True)
    finally:
        svc.stop()
