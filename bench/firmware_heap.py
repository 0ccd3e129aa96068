"""Heap allocated on real MicroPython (WASI build) while publishing a 150 KB frame.

Runs tests/mp/fw_heap.py under MicroPython, prints a table and writes
bench/results/firmware_heap.json. Usage: python bench/firmware_heap.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.micropython import run_micropython  # noqa: E402

ROWS = [
    ("publish_frame", "fresh frame, memoryview chunks (firmware/sender.py)"),
    ("publish_spooled_file", "spooled photo, readinto one 8 KB buffer"),
    ("bytes_copy", "reference: one bytes(frame) copy"),
    ("publish_copied_frame", "reference: publishing a copied frame"),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        res = run_micropython("import fw_heap\nfw_heap.run('/data')\n", data_dir=Path(d)).check()
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("HEAP "))
    r = json.loads(line[5:])
    print(f"frame {r['frame_bytes']} bytes, {r['chunks']} chunks of {r['chunk_size']}")
    print(f"{'case':<24} {'heap bytes':>11}  what")
    for key, what in ROWS:
        print(f"{key:<24} {r[key]:>11}  {what}")
    out = ROOT / "bench" / "results" / "firmware_heap.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"micropython": "wasi", **r}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
