"""Heap used while publishing a 150 KB frame, measured under real MicroPython.

The figure is gc.mem_alloc() growth with the collector disabled. The same run shows
what one copy of the frame costs, so the bound below would fail if the publisher
(or protocol.iter_chunks) ever copied the frame.
"""

from __future__ import annotations

import json

LIMIT = 8 * 1024


def _heap(micropython, tmp_path) -> dict:
    res = micropython("import fw_heap\nfw_heap.run('/data')\n", data_dir=tmp_path).check()
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("HEAP "))
    return json.loads(line[5:])


def test_publishing_a_150kb_frame_allocates_a_few_kb(micropython, tmp_path):
    r = _heap(micropython, tmp_path)
    print(f"heap while publishing 150 KB in {r['chunks']} chunks: {r['publish_frame']} bytes")
    assert r["frame_bytes"] == 150 * 1024 and r["chunks"] == 19
    assert 0 < r["publish_frame"] < LIMIT
    assert 0 < r["publish_spooled_file"] < LIMIT
    # The measurement can see a copy: one bytes(frame) is the whole frame.
    assert r["bytes_copy"] >= r["frame_bytes"]
    assert r["publish_copied_frame"] >= r["frame_bytes"] > LIMIT
