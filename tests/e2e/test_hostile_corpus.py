"""Hostile input: every file of `tests/corpus/` replayed through a real Mosquitto at one real gateway.

Each corpus file is one attack (its name says which): a list of MQTT messages (topic relative to the
prefix; payload as `text`, `b64`, `json`, `repeat` {text, count}, or a `photo_event` built here from a
small real JPEG; `pad_bytes` N adds an N-byte key to a `json` payload; `times` N repeats a message
with `$N` replaced by its number) and the rejection counters it must raise (`"each"`: one per message); `nack`,
when present, is the `retry` flag of the nack the box must get (null: no answer at all). The gateway
must survive all of them, count each under its reason and nothing else, write nothing outside its
data folder, and still store and ack a valid event sent right after.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from PIL import Image

from tests.support.e2e import GatewayProc, audit_data_folder, wait_for
from tests.support.gateway_core import Box, make_jpeg

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
FILES = sorted(CORPUS.glob("*.json"))
REGISTERED = ("hostile", "hostile2", "valid")


def _base_jpeg() -> bytes:
    return make_jpeg(160, 120, seed=5)


def _jpeg(spec: dict[str, Any]) -> bytes:
    kind = spec["kind"]
    base = _base_jpeg()
    if kind == "valid":
        return base
    if kind == "truncated":
        return base[: spec["at"]] if spec["at"] >= 0 else base[: len(base) + spec["at"]]
    if kind == "garbage":
        data = random.Random(9).randbytes(spec["size"])
        return b"\x00" + data[1:]  # never starts like a JPEG
    if kind == "png":
        out = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 10, 10)).save(out, "PNG")
        return out.getvalue()
    if kind == "sof":
        # Patch the baseline frame header (FFC0, length, precision, height, width) of a real JPEG.
        i = base.index(b"\xff\xc0")
        patched = bytearray(base)
        patched[i + 5 : i + 7] = spec["height"].to_bytes(2, "big")
        patched[i + 7 : i + 9] = spec["width"].to_bytes(2, "big")
        return bytes(patched)
    raise ValueError(f"unknown jpeg kind {kind!r}")


def _photo_event(spec: dict[str, Any], eid: str) -> list[tuple[str, bytes]]:
    """An event with a photo and its chunks, bent as the spec says."""
    data = _jpeg(spec["jpeg"])
    cs = int(spec.get("chunk_size", 1024))
    parts = [(i, data[o : o + cs]) for i, o in enumerate(range(0, len(data), cs))]
    sha = hashlib.sha256(data).hexdigest()
    if spec.get("claim", {}).get("sha256") == "other":
        sha = hashlib.sha256(data + b"other").hexdigest()
    event = {
        "v": 1,
        "id": eid,
        "type": "delivery",
        "ts": 1700000000,
        "seq": 1,
        "sensors": {"lid": "closed"},
        "photo": {"size": len(data), "sha256": sha, "chunks": len(parts), "chunk_size": cs},
    }
    tamper = spec.get("tamper", {})
    if "index" in tamper:
        i = tamper["index"]
        parts[i] = (i, parts[i][1] + b"\x00" * tamper["append"])
    if "extra_index" in tamper:
        parts.insert(0, (tamper["extra_index"], b"\x00" * cs))
    if "skip" in tamper:
        parts = [p for p in parts if p[0] != tamper["skip"]]
    dev = spec["device"]
    chunk_msgs = [(f"{dev}/photo/{eid}/{i}", chunk) for i, chunk in parts]
    event_msg = (f"{dev}/event", json.dumps(event).encode())
    if spec.get("order") == "chunks_first":
        return [*chunk_msgs, event_msg]
    return [event_msg, *chunk_msgs]


def _subst(obj: Any, eid: str) -> Any:
    if isinstance(obj, str):
        return obj.replace("$ID", eid)
    if isinstance(obj, list):
        return [_subst(x, eid) for x in obj]
    if isinstance(obj, dict):
        return {k: _subst(v, eid) for k, v in obj.items()}
    return obj


def _subst_n(obj: Any, n: str) -> Any:
    if isinstance(obj, str):
        return obj.replace("$N", n)
    if isinstance(obj, list):
        return [_subst_n(x, n) for x in obj]
    if isinstance(obj, dict):
        return {k: _subst_n(v, n) for k, v in obj.items() if k != "times"}
    return obj


def expand(doc: dict[str, Any], eid: str) -> list[tuple[str, bytes, bool]]:
    """A corpus file's messages as (topic relative to the prefix, payload, retain)."""
    out: list[tuple[str, bytes, bool]] = []
    messages: list[dict[str, Any]] = []
    for msg in doc["messages"]:  # "times": N sends a message N times, `$N` its number in ids
        n = msg.get("times", 1)
        messages += [_subst_n(msg, f"{i:04d}") for i in range(n)] if "times" in msg else [msg]
    for msg in messages:
        if "photo_event" in msg:
            out += [(t, p, False) for t, p in _photo_event(msg["photo_event"], eid)]
            continue
        topic = _subst(msg["topic"], eid)
        if "json" in msg:
            obj = _subst(msg["json"], eid)
            if "pad_bytes" in msg:  # a big payload without a big corpus file
                obj = {**obj, "pad": "x" * msg["pad_bytes"]}
            payload = json.dumps(obj, ensure_ascii=False).encode()
        elif "b64" in msg:
            payload = base64.b64decode(msg["b64"])
        elif "repeat" in msg:
            payload = (msg["repeat"]["text"] * msg["repeat"]["count"]).encode()
        else:
            payload = _subst(msg["text"], eid).encode()
        out.append((topic, payload, bool(msg.get("retain"))))
    return out


def test_corpus_is_big_enough_and_well_formed():
    assert len(FILES) >= 50
    for p in FILES:
        doc = json.loads(p.read_text())
        assert p.stem[:3].isdigit() and doc["tries"] and doc["messages"], p.name
        assert doc["expect"] and all(v == "each" or v > 0 for v in doc["expect"].values()), p.name
        assert expand(doc, "corpusid-0001"), p.name


class Publisher:
    """Publishes the corpus and listens to every box's ack topic (acks and nacks by event id)."""

    def __init__(self, url: str, prefix: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.prefix = prefix
        self.acks: dict[str, list[dict[str, Any]]] = {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hostile-{prefix}")
        self.c.on_message = self._on_message
        self.c.connect(host, int(port))
        self.c.loop_start()
        sub = self.c.subscribe(f"{prefix}/+/ack", 1)
        assert sub[0] == mqtt.MQTT_ERR_SUCCESS

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            a = json.loads(m.payload)
        except ValueError:
            return  # the corpus's own junk on an ack topic
        if isinstance(a, dict) and isinstance(a.get("id"), str):
            self.acks.setdefault(a["id"], []).append(a)

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.c.publish(f"{self.prefix}/{topic}", payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def gateway(tmp_path, mosquitto, prefix):
    gw = GatewayProc(
        tmp_path / "gw",
        mosquitto.url,
        prefix,
        extra={
            "web": {"enabled": True, "port": 0},  # its own pick, read back from web.json
            "devices": {"registration_required": True},
            "ingest": {"reassembly_timeout_s": 2.0},
        },
    )
    for d in REGISTERED:
        r = gw.cli("device", "add", d)
        assert r.returncode == 0, r.stderr
    gw.start()
    try:
        with httpx.Client(base_url=gw.web_url(), timeout=10) as web:
            gw.web = web  # type: ignore[attr-defined]
            yield gw
    finally:
        gw.kill()


def test_replay_corpus_gateway_survives_counts_each_and_still_stores(gateway, mosquitto, prefix, tmp_path):
    gw = gateway

    def rejected() -> dict[str, int]:
        return dict(gw.web.get("/api/health").json()["rejected"])

    def quiet() -> bool:
        """Nothing queued, no partial photo held, no photo in the pool: every count is final."""
        h = gw.web.get("/api/health").json()
        return h["queue"] == 0 and h["reassembly"]["partials"] == 0 and h["photos_in_progress"] == 0

    pub = Publisher(mosquitto.url, prefix)
    totals: dict[str, int] = {}
    wrong: list[str] = []
    silent: list[tuple[str, str]] = []  # files whose event must get no answer at all
    try:
        for n, path in enumerate(FILES):
            doc = json.loads(path.read_text())
            eid = f"corpus{n:04d}-{path.stem[:3]}"
            msgs = expand(doc, eid)
            expect = {k: (len(msgs) if v == "each" else v) for k, v in doc["expect"].items()}
            before = rejected()
            for topic, payload, retain in msgs:
                pub.publish(topic, payload, retain)

            def delta(before=before) -> dict[str, int]:
                now = rejected()
                return {k: now.get(k, 0) - before.get(k, 0) for k in now if now.get(k, 0) != before.get(k, 0)}

            try:
                got = wait_for(
                    lambda expect=expect, delta=delta: (
                        (d := delta()) and sum(d.values()) >= sum(expect.values()) and quiet() and delta()
                    ),
                    20,
                    0.05,
                    f"{path.name} to be counted",
                )
            except TimeoutError:
                got = delta()
            if got != expect:
                wrong.append(f"{path.name}: {doc['tries']}: counted {got}, expected {expect}")
            if doc.get("nack") is not None:
                # A refused event with a usable id gets a nack: retry:false = drop it, true = send again.
                try:
                    nack = wait_for(lambda eid=eid: pub.acks.get(eid), 10, 0.05, f"the nack for {path.name}")[
                        0
                    ]
                    if nack["ok"] is not False or nack["retry"] is not doc["nack"]:
                        wrong.append(f"{path.name}: nack {nack}, expected retry={doc['nack']}")
                except TimeoutError:
                    wrong.append(f"{path.name}: no nack for {eid}")
            elif "nack" in doc:
                silent.append((path.name, eid))
            for k, v in got.items():
                totals[k] = totals.get(k, 0) + v
            assert gw.running(), f"gateway died on {path.name}:\n{gw.tail()}"
    except BaseException:
        pub.close()
        raise

    assert wrong == [], "\n".join(wrong)
    # The gateway survived all of it, counted exactly these, and nothing crashed inside it.
    health = gw.web.get("/api/health").json()
    assert health["pid"] == gw.pid and health["broker"]["connected"] is True
    assert health["rejected"] == totals and "internal_error" not in health["rejected"]
    assert health["events_total"] == 0

    # A valid event right after is stored and acked.
    box = Box(mosquitto.url, prefix, "valid")
    try:
        photo = make_jpeg(320, 240, seed=11)
        eid = "valid-after-corpus-0001"
        box.send(eid, photo, chunk_size=4096)
        ack = box.wait_ack(eid, timeout=30)
        assert ack == {"v": 1, "id": eid, "ok": True}
    finally:
        box.close()
    # No answer to an unregistered box (it keeps its spool until registered) or to a path-like id.
    assert [(name, pub.acks[eid]) for name, eid in silent if eid in pub.acks] == []
    pub.close()
    ev = gw.web.get(f"/api/events/valid/{eid}").json()
    assert ev["photo"]["sha256"] == hashlib.sha256(photo).hexdigest()
    assert gw.web.get(f"/api/photos/valid/{eid}/original").content == photo

    # Retained junk greets every new subscriber: a gateway killed and restarted meets it again, counts
    # it again, and keeps what it stored.
    gw.kill()
    gw.start()
    gw.web.base_url = gw.web_url()  # the new run's dashboard picked its own port
    wait_for(
        lambda: gw.web.get("/api/health").json()["rejected"] == {"bad_json": 1}, 30, 0.1, "the retained junk"
    )
    assert gw.web.get(f"/api/events/valid/{eid}").status_code == 200
    assert gw.stop() == 0

    audit = audit_data_folder(gw.data_dir, gw.alerts_dir)
    assert audit["problems"] == []
    assert [(e["device"], e["id"]) for e in audit["events"]] == [("valid", eid)]
    # Nothing written outside the gateway's folders, whatever the ids tried.
    allowed = {gw.data_dir, gw.alerts_dir, mosquitto.data_dir}
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert any(a in p.parents for a in allowed) or p.parent == gw.root, p
