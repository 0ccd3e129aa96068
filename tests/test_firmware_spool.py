"""Spool policy on real files: every case under CPython, then all of them under real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_spool_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_spool_case_cpython(name, fn, tmp_path):
    base = tmp_path / "spool"
    base.mkdir()
    fn(str(base))


def test_spool_cases_under_micropython(micropython, tmp_path):
    res = micropython("import fw_spool_cases\nfw_spool_cases.run_all('/data')\n", data_dir=tmp_path).check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
    assert f"DONE {len(cases.CASES)}" in res.stdout
