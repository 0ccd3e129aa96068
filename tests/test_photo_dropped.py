"""A box whose spool was full drops the oldest photos but keeps the records (`photo_dropped`).
The gateway must keep that fact on the record and tell the owner why the alert has no photo."""

from __future__ import annotations

import json

import protocol as fw

from gateway import protocol as gw
from gateway.captions import render_caption
from tests.support.gateway_core import event_payload, new_event_id, wait_for
from tests.test_gateway_alerts import _alerts, _start, box  # noqa: F401 - fixture reused

EID = "a1b2c3d4-000009"


def test_decoder_keeps_the_flag_only_without_a_photo():
    rec = fw.event_dict(EID, "delivery", None, 9, {})
    rec["photo_dropped"] = True  # what firmware/spool.py writes into the spooled record it re-sends
    assert gw.decode_event(json.dumps(rec).encode()).photo_dropped is True
    rec["photo"] = fw.photo_meta(100, "0" * 64)
    assert gw.decode_event(json.dumps(rec).encode()).photo_dropped is False
    assert gw.decode_event(fw.event_payload(EID, "delivery", None, 9, {})).photo_dropped is False
    rec = fw.event_dict(EID, "delivery", None, 9, {})
    rec["photo_dropped"] = "yes"  # only a real true counts
    assert gw.decode_event(json.dumps(rec).encode()).photo_dropped is False


def test_caption_says_why_there_is_no_photo_in_both_languages():
    en = render_caption("delivery", "Front gate", 0, photo_dropped=True)
    idn = render_caption("delivery", "Front gate", 0, language="id", photo_dropped=True)
    assert "No photo" in en and "storage was full" in en
    assert "Tanpa foto" in idn
    assert "No photo" not in render_caption("delivery", "Front gate", 0)


def test_gateway_stores_the_flag_and_the_alert_explains_it(tmp_path, mosquitto, prefix, box):  # noqa: F811
    svc = _start(tmp_path, mosquitto, prefix)
    try:
        eid = new_event_id()
        box.event(eid, event_payload(eid, None, photo_dropped=True))
        assert box.wait_ack(eid)["ok"]
        rec = svc.get_event("box1", eid)
        assert rec is not None and rec["photo"] is None and rec["photo_dropped"] is True
        docs = wait_for(lambda: _alerts(svc.config.folder_sink_path), what="alert")
        assert "No photo" in docs[0]["caption"]
        plain = new_event_id()
        box.event(plain, event_payload(plain, None))
        assert box.wait_ack(plain)["ok"]
        assert "photo_dropped" not in svc.get_event("box1", plain)
    finally:
        svc.stop()
