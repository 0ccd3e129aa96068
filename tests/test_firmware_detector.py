"""Detection state machine: every case under CPython, then all of them under real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_detector_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_detector_case_cpython(name, fn):
    fn()


def test_detector_cases_under_micropython(micropython):
    res = micropython("import fw_detector_cases\nfw_detector_cases.run_all()\n").check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
    assert f"DONE {len(cases.CASES)}" in res.stdout
