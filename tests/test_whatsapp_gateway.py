"""WhatsApp inside the real gateway: real broker, real store and outbox, a real spawned child."""

from __future__ import annotations

import json
import os
import signal

import pytest

from gateway.service import GatewayService
from gateway.whatsapp.component import WhatsAppComponent, whatsapp_component
from tests.support.gateway_core import gateway_config, make_jpeg, new_event_id, wait_for
from tests.support.whatsapp import (
    FakeWhatsApp,
    fake_settings,
    gateway_with_fake_whatsapp,
    pair_fake,
    wait_state,
)

PHOTO = make_jpeg(320, 240, seed=3)
OWNER = "+62 812-3456-789"


def _config(tmp_path, mosquitto, prefix, **env):
    base = {
        "PARCELBOX_DEVICES_NAMES": "box1=Front gate",
        "PARCELBOX_OUTBOX_BACKOFF_INITIAL_S": "0.2",
        "PARCELBOX_OUTBOX_BACKOFF_MAX_S": "1",
        "PARCELBOX_WHATSAPP_ENABLED": "true",
        "PARCELBOX_WHATSAPP_RECIPIENTS": OWNER,
        "PARCELBOX_WHATSAPP_RATE_PER_MINUTE": "1000",
        "PARCELBOX_WHATSAPP_RATE_PER_MINUTE_OVERALL": "1000",
    }
    base.update(env)
    return gateway_config(tmp_path / "data", mosquitto.url, prefix, **base)


def _whatsapp_outbox(svc: GatewayService) -> list[dict]:
    return [o for o in svc.list_outbox(limit=1000) if o["notifier"] == "whatsapp"]


def test_no_network_real_neonize_gateway_keeps_working(tmp_path, mosquitto, prefix, box) -> None:
    """Done-means: neonize installed, no network: the child says so and retries; ingest goes on."""
    pytest.importorskip("neonize")
    cfg = _config(tmp_path, mosquitto, prefix)
    svc = GatewayService(cfg)
    comp = whatsapp_component(svc, cfg)
    assert comp is not None and comp.settings.transport == "neonize"
    comp.settings.reconnect_backoff_s = (0.3, 1.0)
    svc.add_component(comp)
    svc.start()
    try:
        assert svc.wait_connected(10)
        wait_for(
            lambda: "Cannot reach WhatsApp" in svc.whatsapp_state().get("detail", ""),
            timeout=60,
            what="the WhatsApp state on the gateway",
        )
        assert svc.whatsapp_state()["state"] == "not_paired"
        eid = new_event_id()
        box.send(eid, PHOTO)
        assert box.wait_ack(eid)["ok"]
        assert svc.get_event("box1", eid) is not None
        rec = wait_for(
            lambda: [o for o in _whatsapp_outbox(svc) if o["state"] == "failed"],
            what="a failed WhatsApp attempt",
        )[0]
        assert "not connected" in rec["last_error"] and rec["recipient"] == OWNER
        assert comp.supervisor.crashes == 0
        # Reconnects are fresh child processes (one neonize client per process): one is up again.
        wait_for(comp.supervisor.child_pid, timeout=60, what="the WhatsApp child")
    finally:
        svc.stop()
    assert comp.supervisor.child_pid() is None


def test_sigkill_during_a_stream_of_alerts_loses_nothing(tmp_path, mosquitto, prefix, box) -> None:
    """Done-means: SIGKILL of the child during a stream of alerts; ingest goes on; every alert is sent."""
    cfg = _config(tmp_path, mosquitto, prefix)
    with gateway_with_fake_whatsapp(cfg, tmp_path, recipients=[OWNER]) as gw:
        svc, comp, fake = gw.svc, gw.comp, gw.fake
        assert svc.wait_connected(10)
        wait_state(comp.supervisor, "connected")
        ids = [new_event_id() for _ in range(12)]
        for eid in ids[:4]:
            box.send(eid, PHOTO)
            assert box.wait_ack(eid)["ok"]
        wait_for(lambda: len(fake.sent()) == 4, what="the first 4 alerts")
        with fake.hold():
            box.send(ids[4], PHOTO)
            assert box.wait_ack(ids[4])["ok"]
            wait_for(lambda: len(fake.sending()) == 5, what="the 5th send in flight")
            os.kill(comp.supervisor.child_pid(), signal.SIGKILL)
            # Ingest keeps going while WhatsApp is down and restarting.
            for eid in ids[5:]:
                box.send(eid, PHOTO)
                assert box.wait_ack(eid)["ok"]
        wait_for(lambda: len({s["text"] for s in fake.sent()}) == 12, timeout=60, what="all 12 alerts sent")
        wait_for(
            lambda: (
                all(o["state"] == "sent" for o in _whatsapp_outbox(svc)) and len(_whatsapp_outbox(svc)) == 12
            ),
            what="the outbox to agree",
        )
        sent = fake.sent()
        assert len(sent) == 12  # the killed send never left, so not even a duplicate
        assert all(s["image_bytes"] > 0 and s["to"] == "628123456789@s.whatsapp.net" for s in sent)
        assert comp.supervisor.crashes == 1
        failed_once = [o for o in _whatsapp_outbox(svc) if o["attempts"] > 1]
        assert failed_once, "the killed send should have been retried by the outbox"


def test_build_service_wires_whatsapp_from_the_config(tmp_path, mosquitto, prefix, box) -> None:
    from gateway.app import build_service

    fake_dir = tmp_path / "fakewa"
    cfg = _config(
        tmp_path,
        mosquitto,
        prefix,
        PARCELBOX_WHATSAPP_TRANSPORT="fake",
        PARCELBOX_WHATSAPP_FAKE_DIR=str(fake_dir),
        PARCELBOX_WHATSAPP_LANGUAGE="id",
        PARCELBOX_WEB_ENABLED="false",
    )
    settings = fake_settings(tmp_path)  # same session_dir: <data>/whatsapp
    pair_fake(settings)
    fake = FakeWhatsApp(fake_dir)
    svc = build_service(cfg)
    assert "whatsapp" in svc.notifiers
    comp = next(c for c in svc.components if isinstance(c, WhatsAppComponent))
    svc.start()
    try:
        assert svc.wait_connected(10)
        wait_for(lambda: svc.whatsapp_state().get("state") == "connected", what="connected on the gateway")
        assert "whatsapp" in comp.summary
        eid = new_event_id()
        box.send(eid, PHOTO)
        assert box.wait_ack(eid)["ok"]
        sent = wait_for(lambda: fake.sent(), what="the alert on WhatsApp")
        assert sent[0]["text"].startswith("📦 Paket diterima di Front gate") and sent[0]["image_bytes"] > 0
    finally:
        svc.stop()


def test_one_number_listed_in_two_spellings_gets_each_alert_once(
    tmp_path, mosquitto, prefix, box, caplog
) -> None:
    """Each configured recipient became an outbox entry: '+62 812-3456-789' and '628123456789' (one
    WhatsApp user) got every alert twice. The config load names the repeat and keeps the first."""
    from gateway.app import build_service

    fake_dir = tmp_path / "fakewa"
    cfg = _config(
        tmp_path,
        mosquitto,
        prefix,
        PARCELBOX_WHATSAPP_RECIPIENTS=f"{OWNER},628123456789",
        PARCELBOX_WHATSAPP_TRANSPORT="fake",
        PARCELBOX_WHATSAPP_FAKE_DIR=str(fake_dir),
        PARCELBOX_WEB_ENABLED="false",
    )
    pair_fake(fake_settings(tmp_path))
    fake = FakeWhatsApp(fake_dir)
    with caplog.at_level("WARNING", logger="gateway.whatsapp.settings"):
        svc = build_service(cfg)
    assert any(f"lists '{OWNER}' and '628123456789'" in r.getMessage() for r in caplog.records), (
        "the repeat is named at config load"
    )
    svc.start()
    try:
        assert svc.wait_connected(10)
        eid = new_event_id()
        box.send(eid, PHOTO)
        assert box.wait_ack(eid)["ok"]  # the outbox entries are durable before the ack
        entries = _whatsapp_outbox(svc)
        assert [o["recipient"] for o in entries] == [OWNER]
        wait_for(lambda: _whatsapp_outbox(svc)[0]["state"] == "sent", timeout=30, what="the alert sent")
        assert len(fake.sent()) == 1
    finally:
        svc.stop()


def test_alerts_go_out_as_soon_as_whatsapp_is_back(tmp_path, mosquitto, prefix, box) -> None:
    """Issue 16 #9: an alert that failed while WhatsApp was away waited out its backoff (up to 5 min)."""
    cfg = _config(
        tmp_path,
        mosquitto,
        prefix,
        PARCELBOX_OUTBOX_BACKOFF_INITIAL_S="3600",
        PARCELBOX_OUTBOX_BACKOFF_MAX_S="3600",
    )
    with gateway_with_fake_whatsapp(cfg, tmp_path, recipients=[OWNER]) as gw:
        svc, comp, fake = gw.svc, gw.comp, gw.fake
        assert svc.wait_connected(10)
        wait_state(comp.supervisor, "connected")
        fake.inject("disconnected")
        wait_state(comp.supervisor, "disconnected")
        eid = new_event_id()
        box.send(eid, PHOTO)
        assert box.wait_ack(eid)["ok"]
        rec = wait_for(
            lambda: [o for o in _whatsapp_outbox(svc) if o["state"] == "failed"], what="a failed attempt"
        )[0]
        assert rec["next_attempt_at"] > rec["created_at"] + 3000  # the backoff would hold it an hour
        fake.inject("connected")
        wait_for(lambda: fake.sent(), timeout=30, what="the alert once WhatsApp is back")
        wait_for(lambda: _whatsapp_outbox(svc)[0]["state"] == "sent", what="the outbox to agree")
        assert _whatsapp_outbox(svc)[0]["attempts"] == 2


def test_a_recipient_not_on_whatsapp_is_checked_once_and_fails_permanently(
    tmp_path, mosquitto, prefix, box
) -> None:
    """Issue 16 #7: 'no LID found' was retried for 24 h; frequent look-ups of non-users are a ban signal."""
    stranger = "+62 899-0000-0000"
    cfg = _config(tmp_path, mosquitto, prefix, PARCELBOX_WHATSAPP_RECIPIENTS=f"{OWNER},{stranger}")
    with gateway_with_fake_whatsapp(
        cfg, tmp_path, recipients=[OWNER, stranger], script={"not_on_whatsapp": ["6289900000000"]}
    ) as gw:
        svc, comp, fake, settings = gw.svc, gw.comp, gw.fake, gw.settings
        assert svc.wait_connected(10)
        st = wait_state(comp.supervisor, lambda s: s.get("unknown_numbers") is not None)
        assert st["unknown_numbers"] == ["6289900000000"]
        for _ in range(2):
            eid = new_event_id()
            box.send(eid, PHOTO)
            assert box.wait_ack(eid)["ok"]
        wait_for(
            lambda: sorted(o["state"] for o in _whatsapp_outbox(svc)) == ["dead", "dead", "sent", "sent"],
            what="two sent, two dead at once",
        )
        dead = [o for o in _whatsapp_outbox(svc) if o["state"] == "dead"]
        assert all(o["attempts"] == 1 and "not on WhatsApp" in o["last_error"] for o in dead)
        assert {s["to"] for s in fake.sent()} == {"628123456789@s.whatsapp.net"}
        lookups = [json.loads(x) for x in (settings.fake_dir / "lookups.jsonl").read_text().splitlines()]
        assert [sorted(x["phones"]) for x in lookups] == [["628123456789", "6289900000000"]]
        assert comp.counters()["whatsapp.not_on_whatsapp"] == 2


def test_no_lid_found_from_whatsapp_is_a_permanent_failure(tmp_path) -> None:
    """A number that left WhatsApp after the start-up check: the send error itself is permanent."""
    pytest.importorskip("neonize")
    from gateway.whatsapp.neonize_adapter import send_error_is_permanent

    assert send_error_is_permanent(
        "SendMessageError: no LID found for 6289900000000@s.whatsapp.net from server"
    )
    assert not send_error_is_permanent("SendMessageError: websocket not connected")
    settings = fake_settings(tmp_path)
    fake = FakeWhatsApp(settings.fake_dir)
    fake.script(not_on_whatsapp=["6289900000000"])
    pair_fake(settings)
    from tests.support.whatsapp import running

    with running(settings) as sup:
        wait_state(sup, "connected")
        out = sup.send("6289900000000@s.whatsapp.net", "hello")
    assert not out.ok and out.permanent and "no LID found" in out.error


def test_whatsapp_down_for_a_while_is_told_through_the_other_sinks(tmp_path, mosquitto, prefix, box) -> None:
    """Issue 16 (session loss): a logout (the 14-day rule, a ban, stream replaced) stopped alerts
    silently; now the folder sink (and the webhook) get a notice, and another when it is back."""
    from gateway.notify.folder import FolderNotifier

    cfg = _config(tmp_path, mosquitto, prefix, PARCELBOX_WHATSAPP_DOWN_NOTICE_AFTER_S="0.5")
    alerts_dir = tmp_path / "alerts"
    with gateway_with_fake_whatsapp(
        cfg, tmp_path, recipients=[OWNER], notifiers=[FolderNotifier(alerts_dir)]
    ) as gw:
        svc, comp, fake = gw.svc, gw.comp, gw.fake
        assert svc.wait_connected(10)
        wait_state(comp.supervisor, "connected")
        wait_for(lambda: svc.whatsapp_state().get("state") == "connected", what="connected on the gateway")
        assert svc.whatsapp_state()["down_since"] is None
        fake.inject("stream_replaced")
        wait_state(comp.supervisor, "stream_replaced")

        def notices(kind: str) -> list[dict]:
            docs = (
                [json.loads(p.read_text()) for p in alerts_dir.glob("*.json")] if alerts_dir.exists() else []
            )
            return [d for d in docs if d["kind"] == kind]

        [down] = wait_for(lambda: notices("whatsapp_down"), what="the down notice in the folder sink")
        assert "WhatsApp alerts have stopped" in down["caption"] and "14 days" in down["caption"]
        assert "Another client took over" in down["caption"]  # the state's own explanation
        assert down["device"] == "_gateway"
        assert not [
            o
            for o in svc.list_outbox(limit=100)
            if o["kind"].startswith("whatsapp_") and o["notifier"] == "whatsapp"
        ]
        comp.supervisor.restart()  # the owner dealt with it
        wait_state(comp.supervisor, "connected")
        [up] = wait_for(lambda: notices("whatsapp_up"), what="the back-again notice")
        assert "work again" in up["caption"]
        assert len(notices("whatsapp_down")) == 1


def test_receipts_move_an_alert_from_sent_to_delivered_to_read(tmp_path, mosquitto, prefix, box) -> None:
    """Issue 16 (receipts): "sent" meant only that the server took it; the recipient's phone tells more."""
    cfg = _config(tmp_path, mosquitto, prefix)
    with gateway_with_fake_whatsapp(cfg, tmp_path, recipients=[OWNER]) as gw:
        svc, comp, fake = gw.svc, gw.comp, gw.fake
        assert svc.wait_connected(10)
        wait_state(comp.supervisor, "connected")
        eid = new_event_id()
        box.send(eid, PHOTO)
        assert box.wait_ack(eid)["ok"]
        [sent] = wait_for(lambda: fake.sent(), what="the alert on WhatsApp")
        rec = wait_for(lambda: [o for o in _whatsapp_outbox(svc) if o["state"] == "sent"], what="sent")[0]
        assert rec["message_id"] == sent["id"] and rec["receipt"] == "sent"
        fake.inject("receipt", id=sent["id"], type="DELIVERED")
        wait_for(lambda: _whatsapp_outbox(svc)[0]["receipt"] == "delivered", what="delivered")
        fake.inject("receipt", id=sent["id"], type="READ_SELF")  # our own phone read it: not the recipient
        fake.inject("receipt", id=sent["id"], type="READ")
        wait_for(lambda: _whatsapp_outbox(svc)[0]["receipt"] == "read", what="read")
        fake.inject("receipt", id=sent["id"], type="DELIVERED")  # late: never goes backwards
        fake.inject("receipt", id="3EB0NOTOURS", type="READ")  # someone else's message: ignored
        status = svc.data_dir / "status.json"
        wait_for(
            lambda: (
                status.exists()
                and any(o.get("receipt") == "read" for o in json.loads(status.read_text())["outbox"])
            ),
            what="the receipt in status.json (parcelbox status --json)",
        )
        assert _whatsapp_outbox(svc)[0]["receipt"] == "read" and _whatsapp_outbox(svc)[0]["receipt_at"]
