"""firmware/cam.py with the faithful camera driver fakes: under CPython, then real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_camera_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_camera_case_cpython(name, fn):
    fn()


def test_camera_cases_under_micropython(micropython):
    res = micropython("import fw_camera_cases\nfw_camera_cases.run_all()\n").check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
