"""The app loop with in-memory fakes at every edge: under CPython, then under real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_app_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_app_case_cpython(name, fn, tmp_path):
    base = tmp_path / "box"
    base.mkdir()
    fn(str(base))


def test_app_cases_under_micropython(micropython, tmp_path):
    res = micropython("import fw_app_cases\nfw_app_cases.run_all('/data')\n", data_dir=tmp_path).check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
