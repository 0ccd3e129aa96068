"""Over-the-air update over the loopback broker: time and bytes, only the changed files vs the whole set.

    .venv/bin/python bench/ota.py              # 3 rounds per case
    .venv/bin/python bench/ota.py --rounds 1   # smoke run

A real Mosquitto (gateway/mosquitto.py), the gateway service in this process with its OtaServer, and a
simulated box (`tools/simulate.py` `SimulatedBox(flash_dir=...)`: the real firmware modules running from
the box's app folder, switch and trial included) stepped every ~1 ms. The offer is queued the way
`parcelbox device update --no-compile` queues it (gateway/ota/pending.py) and timed from there:

- transfer: queued -> the box says `staged` (every wanted file received and its sha256 checked);
- total: queued -> the box, rebooted into the new set and confirmed by the gateway, says `updated`.

Cases: `changed`: a new FW_VERSION (app.py is the only file that differs); `whole set`: every module
differs (a comment appended to each). Bytes are file bytes sent (chunk headers not counted: ~110 B per
4 KiB chunk). The gateway picks a queued offer up at its next once-a-second tick, so up to 1 s of every
total is that wait.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import simulate as sim  # noqa: E402
from common import machine_info, median, print_table, write_json  # noqa: E402

from gateway.mosquitto import Mosquitto  # noqa: E402
from gateway.ota import pending  # noqa: E402
from gateway.ota.cli import build_manifest  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from tests.support.gateway_core import gateway_config  # noqa: E402

FIRMWARE = ROOT / "firmware"


def _new_firmware(tmp: Path, whole: bool) -> Path:
    d = tmp / f"fw-{'whole' if whole else 'changed'}"
    shutil.copytree(FIRMWARE, d, ignore=shutil.ignore_patterns("__pycache__"))
    app = d / "app.py"
    app.write_text(app.read_text().replace('FW_VERSION = "0.1.0"', 'FW_VERSION = "0.2.0"'))
    if whole:
        for p in d.glob("*.py"):
            if p.name not in ("boot.py", "otaboot.py"):
                p.write_text(p.read_text() + "# rebuilt\n")
    return d


def _one(svc: GatewayService, url: str, prefix: str, tmp: Path, fw: Path, tag: str) -> dict:
    box = sim.SimulatedBox(
        url, "box-1", prefix=prefix, spool_dir=tmp / f"spool-{tag}", flash_dir=tmp / f"flash-{tag}"
    )
    try:
        deadline = time.monotonic() + 60
        while not (svc.ota.boxes.get("box-1") or {}).get("set"):
            box.step()
            time.sleep(0.001)
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway never saw the box")
        m = build_manifest(fw, compile=False)
        root = pending.ota_root(svc.data_dir)
        offer = pending.write_offer(
            root, "box-1", m, from_version="0.1.0", trial_s=300, trial_boots=3, chunk=4096
        )
        t0 = time.perf_counter()
        staged = None
        deadline = time.monotonic() + 120
        while True:
            box.step()
            prog = pending.read_progress(root, "box-1") or {}
            if prog.get("id") == offer["id"]:
                if staged is None and prog.get("state") in ("staged", "done"):
                    staged = time.perf_counter() - t0
                if prog.get("state") in pending.FINAL_STATES:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no outcome: {prog}")
            time.sleep(0.001)
        total = time.perf_counter() - t0
        assert prog["state"] == "done", prog
        assert box.fw_version == "0.2.0"
        return {"files": len(prog["sent"]), "bytes": prog["bytes"], "chunks": prog["chunks"],
                "set_files": len(m.files), "set_bytes": m.total_bytes, "transfer_s": staged, "total_s": total}  # fmt: skip
    finally:
        box.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    results: dict[str, list[dict]] = {"changed": [], "whole set": []}
    with tempfile.TemporaryDirectory(prefix="parcelbox-bench-ota-") as t:
        tmp = Path(t)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        svc = GatewayService(gateway_config(tmp / "data", broker.url, prefix))
        svc.start()
        try:
            fws = {"changed": _new_firmware(tmp, False), "whole set": _new_firmware(tmp, True)}
            for r in range(a.rounds):
                for case, fw in fws.items():
                    tag = f"{case.replace(' ', '')}-{r}"
                    results[case].append(_one(svc, broker.url, prefix, tmp, fw, tag))
        finally:
            svc.stop()
            broker.stop()
            broker.release_port()
    rows = []
    for case, runs in results.items():
        r0 = runs[0]
        rows.append([case, f"{r0['files']} of {r0['set_files']}", f"{r0['bytes'] / 1024:.1f} KiB", r0["chunks"],
                     f"{median([x['transfer_s'] for x in runs]):.2f} s", f"{median([x['total_s'] for x in runs]):.2f} s"])  # fmt: skip
    print_table(["case", "files sent", "bytes sent", "chunks", "transfer (median)", "total (median)"], rows)
    path = write_json("ota", {"machine": machine_info(), "rounds": a.rounds, "results": results})
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
