"""Chunk publisher: byte-exact topics and payloads, under CPython and real MicroPython."""

from __future__ import annotations

import inspect

import pytest

from tests.mp import fw_sender_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_sender_case_cpython(name, fn, tmp_path):
    if inspect.signature(fn).parameters:
        fn(str(tmp_path / "photo.bin"))
    else:
        fn()


def test_sender_cases_under_micropython(micropython, tmp_path):
    res = micropython("import fw_sender_cases\nfw_sender_cases.run_all('/data')\n", data_dir=tmp_path).check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
