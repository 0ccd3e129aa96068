"""Over-the-air update, gateway side: the set (gateway/ota/manifest.py) agrees with the box's rules,
`parcelbox device update` refuses what a box could not take, and the server (gateway/ota/server.py)
refuses every malformed reply with a reason and never sends a byte outside the offer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import otaboot
import protocol as fw_protocol
import pytest

from gateway import cli
from gateway.ota import manifest, pending
from gateway.ota.server import OtaServer
from gateway.protocol import ProtocolError, decode_status
from tests.support.fullfs import fill, tmpfs

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"


@pytest.fixture
def env(tmp_path, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("PARCELBOX_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PARCELBOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PARCELBOX_CONFIG", "")
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def _box_reported(data: Path, **box) -> None:
    rec = {"online": True, "fw": "0.1.0", "set": "a" * 64, "flash_free": 1_500_000, **box}
    (data / "status.json").write_text(json.dumps({"ota": {"box-1": rec}}))


def _fw(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "fw"
    shutil.copytree(FIRMWARE, d, ignore=shutil.ignore_patterns("__pycache__"))
    for name, body in files.items():
        p = d / (name.replace("__", "/") + ".py")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    return d


# --- the same rules on both sides ------------------------------------------------------


def test_limits_and_boot_files_match_the_box():
    assert manifest.BOOT_FILES == set(fw_protocol.OTA_BOOT_FILES) == set(otaboot.BOOT_FILES)
    assert manifest.MAX_FILES == fw_protocol.OTA_MAX_FILES
    assert manifest.MAX_FILE_BYTES == fw_protocol.OTA_MAX_FILE_BYTES
    assert manifest.MAX_SET_BYTES == fw_protocol.OTA_MAX_SET_BYTES
    assert manifest.MAX_OFFER_BYTES == fw_protocol.OTA_MAX_OFFER_BYTES
    assert manifest.DEFAULT_CHUNK == fw_protocol.OTA_DEFAULT_CHUNK_BYTES


@pytest.mark.parametrize(
    "name",
    ["app.mpy", "main.py", "a_b9.py", "x" * 28 + ".mpy", "x" * 29 + ".mpy", "../a.py", "a/b.py", "A.py", ".py",
     "a.txt", "boot.py", "otaboot.mpy", "a b.py", "é.py"],
)  # fmt: skip
def test_file_names_the_same_on_both_sides(name):
    gw_ok = manifest.NAME_RE.fullmatch(name) is not None and name not in manifest.BOOT_FILES
    assert gw_ok == fw_protocol.valid_ota_name(name), name


def test_set_sha_is_the_boxes():
    m = manifest.from_board_files("0.2.0", [("/main.py", b"m"), ("/app.mpy", b"a"), ("/boot.py", b"b")])
    assert [f.name for f in m.files] == ["app.mpy", "main.py"]  # boot.py never travels
    assert m.set_sha == otaboot.set_sha(sorted((f.name, f.sha256) for f in m.files))
    offer = json.dumps(m.offer("upd-0123456789ab")).encode()
    assert fw_protocol.decode_ota(offer)["set"] == m.set_sha  # the box takes what the gateway makes


def test_status_carries_the_firmware_set():
    st = decode_status(
        json.dumps({"v": 1, "online": True, "fw": "0.2.0", "set": "b" * 64, "flash_free": 9000, "trial": True,
                    "update": {"ok": False, "id": "upd-0123456789ab", "reason": "x" * 999, "junk": [1]}}).encode()
    )  # fmt: skip
    assert (st.set, st.flash_free, st.trial) == ("b" * 64, 9000, True)
    assert st.update == {"ok": False, "id": "upd-0123456789ab", "set": None, "version": None, "from": None,
                         "reason": "x" * 300}  # fmt: skip
    for bad in ({"set": "../x"}, {"flash_free": -1}, {"update": {"ok": "yes"}}, {"updating": "x" * 40}):
        with pytest.raises(ProtocolError):
            decode_status(json.dumps({"v": 1, "online": True, **bad}).encode())


# --- refused on the gateway ------------------------------------------------------------


def test_a_set_that_does_not_compile_is_refused(env, tmp_path, capsys):
    _box_reported(env)
    fw = _fw(tmp_path, broken_mod="def f(:\n")
    assert cli.main(["device", "update", "box-1", "--firmware-dir", str(fw)]) == 1
    err = capsys.readouterr().err
    assert "update refused: the firmware does not build" in err and "broken_mod.py" in err, err
    assert not (env / "ota" / "box-1" / "offer.json").exists()


def test_a_path_outside_the_app_folder_is_refused(env, tmp_path, capsys):
    _box_reported(env)
    fw = _fw(tmp_path, lib__helper_mod="X = 1\n")
    assert cli.main(["device", "update", "box-1", "--no-compile", "--firmware-dir", str(fw)]) == 1
    err = capsys.readouterr().err
    assert "/lib/helper_mod.py is outside the app folder" in err, err


def test_more_than_the_boxes_free_flash_is_refused(env, tmp_path, capsys):
    _box_reported(env, flash_free=40_000)
    assert cli.main(["device", "update", "box-1", "--no-compile", "--firmware-dir", str(_fw(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "box-1 refused" in err and "39 KB of flash free" in err, err


def test_a_box_without_ota_firmware_is_told_to_provision(env, tmp_path, capsys):
    _box_reported(env, set=None)
    assert cli.main(["device", "update", "box-1", "--no-compile", "--firmware-dir", str(_fw(tmp_path))]) == 1
    assert "provision it over USB once" in capsys.readouterr().err


def test_queued_without_a_gateway_and_status_shows_update_pending(env, tmp_path, capsys):
    _box_reported(env)
    assert cli.main(["device", "update", "box-1", "--no-compile", "--firmware-dir", str(_fw(tmp_path))]) == 0
    assert "queued; the gateway sends it when it runs" in capsys.readouterr().out
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["updates"]["box-1"]["state"] == "queued"


# --- the server ------------------------------------------------------------------------


class _Sent:
    def __init__(self) -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.rejects: list[str] = []

    def publish(self, t: str, p: bytes, retain: bool) -> None:
        self.msgs.append((t, p, retain))

    def reject(self, reason: str, detail: str, where: str) -> None:
        self.rejects.append(reason)


def _server(tmp_path: Path) -> tuple[OtaServer, _Sent, dict]:
    root = tmp_path / "ota"
    m = manifest.from_board_files("0.2.0", [("/main.py", b"m" * 5000), ("/app.mpy", b"a" * 100)])
    offer = pending.write_offer(
        root, "box-1", m, from_version="0.1.0", trial_s=300, trial_boots=3, chunk=4096
    )
    sent = _Sent()
    srv = OtaServer(root, "pfx", sent.publish, sent.reject, clock=lambda: 1000.0)
    srv.tick()
    return srv, sent, offer


def test_offer_is_retained_and_needs_are_served_from_the_offer(tmp_path):
    srv, sent, offer = _server(tmp_path)
    t, p, retain = sent.msgs.pop()
    assert (t, retain) == ("pfx/box-1/ota", True) and json.loads(p)["set"] == offer["set"]
    srv.tick()
    assert sent.msgs == []  # offered once
    srv.on_reply(
        "box-1", json.dumps({"v": 1, "op": "need", "id": offer["id"], "f": 1, "o": 4096, "n": 904}).encode()
    )
    t, p, retain = sent.msgs.pop()
    head, _, data = p.partition(b"\n")
    assert t == "pfx/box-1/ota/data" and not retain and data == b"m" * 904
    assert fw_protocol.decode_ota_chunk(p)[1:3] == (1, 4096)


@pytest.mark.parametrize(
    "reply",
    [b"{", b"[]", b'{"v":2,"op":"need"}', b'{"v":1,"op":"explode"}', b"x" * 2000,
     b'{"v":1,"op":"need","id":"upd-other0000","f":0,"o":0,"n":10}',
     b'{"v":1,"op":"need","id":"ID","f":9,"o":0,"n":10}', b'{"v":1,"op":"need","id":"ID","f":1,"o":4990,"n":20}',
     b'{"v":1,"op":"need","id":"ID","f":1,"o":-5,"n":10}', b'{"v":1,"op":"need","id":"ID","f":1,"o":0,"n":99999}',
     b'{"v":1,"op":"need","id":"ID","f":true,"o":0,"n":1}'],
)  # fmt: skip
def test_malformed_replies_are_refused_and_nothing_is_sent(tmp_path, reply):
    srv, sent, offer = _server(tmp_path)
    sent.msgs.clear()
    srv.on_reply("box-1", reply.replace(b"ID", offer["id"].encode()))
    assert sent.msgs == [] and len(sent.rejects) == 1


def test_trial_status_is_confirmed_and_the_outcome_recorded(tmp_path):
    srv, sent, offer = _server(tmp_path)
    sent.msgs.clear()
    srv.on_reply(
        "box-1", json.dumps({"v": 1, "op": "staged", "id": offer["id"], "set": offer["set"]}).encode()
    )
    assert sent.msgs.pop() == ("pfx/box-1/ota", b"", True)  # the retained offer is cleared
    st = decode_status(
        json.dumps({"v": 1, "online": True, "fw": "0.2.0", "set": offer["set"], "trial": True}).encode()
    )
    srv.on_status("box-1", st)
    t, p, retain = sent.msgs.pop()
    assert (t, retain) == ("pfx/box-1/ota", False) and json.loads(p) == {
        "v": 1,
        "op": "confirm",
        "set": offer["set"],
    }
    srv.on_reply("box-1", json.dumps({"v": 1, "op": "updated", "id": offer["id"]}).encode())
    assert pending.read_progress(tmp_path / "ota", "box-1")["state"] == "done"
    assert pending.pending(tmp_path / "ota", "box-1") is None


def test_a_config_offer_goes_out_partial_and_its_trial_is_confirmed_by_its_own_set(tmp_path):
    root = tmp_path / "ota"
    cfg = json.dumps({"device_id": "box-1", "wifi": {"ssid": "home", "password": "x"}}).encode()
    m = manifest.config_update("box-1", cfg)
    offer = pending.write_offer(root, "box-1", m, from_version="0.1.0", trial_s=60, trial_boots=3, chunk=4096)
    sent = _Sent()
    srv = OtaServer(root, "pfx", sent.publish, sent.reject, clock=lambda: 1.0)
    srv.tick()
    wire = fw_protocol.decode_ota(sent.msgs.pop()[1])  # the box accepts it: partial, config.json
    assert wire["partial"] is True and wire["files"][0][0] == "config.json"
    st = decode_status(
        json.dumps(
            {"v": 1, "online": True, "set": "c" * 64, "trial": True, "trial_set": offer["set"]}
        ).encode()
    )
    srv.on_status("box-1", st)
    assert json.loads(sent.msgs.pop()[1])["set"] == offer["set"]  # not the app set "ccc..."
    for bad, why in ((b"{", "not JSON"), (json.dumps({"device_id": "box-2"}).encode(), "not 'box-1'")):
        with pytest.raises(manifest.UpdateRefused, match=why):
            manifest.config_update("box-1", bad)


def test_all_queues_every_box_that_can_take_it_and_says_why_not_for_the_rest(env, tmp_path, capsys):
    fw = _fw(tmp_path)
    m = manifest.from_board_files(
        "0.1.0", [(f"/{p.name}", p.read_bytes()) for p in sorted(fw.glob("*.py"))]
    )  # what --no-compile sends: the box running exactly this is up to date
    boxes = {
        "box-1": {"online": False, "fw": "0.0.9", "set": "a" * 64, "flash_free": 2_000_000},
        "box-2": {"online": True, "fw": "0.1.0", "set": m.set_sha, "flash_free": 2_000_000},
        "box-3": {"online": True, "fw": "0.0.1", "set": None},
    }
    (env / "status.json").write_text(json.dumps({"ota": boxes}))
    assert cli.main(["device", "update", "--all", "--no-compile", "--firmware-dir", str(fw)]) == 1
    out, err = capsys.readouterr()
    assert "box-1: queued" in out and "box-2 already runs this firmware (0.1.0" in out, out
    assert "box-3 has not reported a firmware that updates over the air" in err, err
    assert sorted(pending.devices(env / "ota")) == ["box-1"]


def test_dry_run_says_update_available_and_sends_nothing(env, tmp_path, capsys):
    _box_reported(env)
    assert (
        cli.main(
            ["device", "update", "box-1", "--dry-run", "--no-compile", "--firmware-dir", str(_fw(tmp_path))]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "box-1: runs 0.1.0 (set aaaaaaaaaaaa); this checkout: 0.1.0" in out and "update available" in out
    ), out
    assert pending.devices(env / "ota") == []


def test_checkout_firmware_is_built_once_and_again_when_a_file_changes(tmp_path):
    from gateway.ota.offers import CheckoutFirmware

    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "main.py").write_text("print(1)\n")
    builds: list[int] = []

    def build(d: Path) -> manifest.Manifest:
        builds.append(1)
        body = (d / "main.py").read_bytes()
        if b"broken" in body:
            raise manifest.UpdateRefused("the firmware does not build: main.py")
        return manifest.from_board_files("0.1.0", [("/main.py", body)])

    cf = CheckoutFirmware(fw, build=build)
    first = cf.get()
    assert cf.get() is first and len(builds) == 1  # mpy-cross is not run again for nothing
    (fw / "main.py").write_text("print(2)  # longer\n")
    assert cf.get().set_sha != first.set_sha and len(builds) == 2
    (fw / "main.py").write_text("broken and longer still\n")
    for _ in range(2):  # the error is kept too: shown, not rebuilt at every look
        with pytest.raises(manifest.UpdateRefused, match="does not build"):
            cf.get()
    assert len(builds) == 3


def test_a_gateway_killed_right_after_a_chunk_went_out_still_counts_it(tmp_path):
    """Field: `device update` printed no "app.py ... sent" line after the gateway died mid-transfer.
    The file's last chunk had gone out but the progress write after it had not happened; the box,
    having the chunk, never asked again, so the file never showed as sent."""
    srv, sent, offer = _server(tmp_path)
    sent.msgs.clear()

    class Killed(BaseException):
        pass

    def publish_then_die(t: str, p: bytes, retain: bool) -> None:
        sent.msgs.append((t, p, retain))
        raise Killed  # SIGKILL between the chunk leaving and anything after it

    srv._publish = publish_then_die
    need = {"v": 1, "op": "need", "id": offer["id"], "f": 1, "o": 4096, "n": 904}
    with pytest.raises(Killed):
        srv.on_reply("box-1", json.dumps(need).encode())
    assert len(sent.msgs) == 1  # the box got the chunk
    prog = pending.read_progress(tmp_path / "ota", "box-1")
    assert prog["sent"] == {"main.py": 5000} and prog["bytes"] == 5000


def test_a_chunk_goes_out_even_when_its_progress_cannot_be_written(tmp_path):
    """Progress is written before the chunk (above), but it is only what `device update` shows: at a
    full disk the box still gets its chunk (the update goes on, as it did when the chunk went first),
    and the write error still reaches the worker, which counts and warns about it."""
    with tmpfs(tmp_path / "ota"):
        srv, sent, offer = _server(tmp_path)
        sent.msgs.clear()
        fill(tmp_path / "ota")
        need = {"v": 1, "op": "need", "id": offer["id"], "f": 1, "o": 4096, "n": 904}
        with pytest.raises(OSError):
            srv.on_reply("box-1", json.dumps(need).encode())
        [(t, p, retain)] = sent.msgs
        assert t == "pfx/box-1/ota/data" and not retain and p.partition(b"\n")[2] == b"m" * 904
