"""firmware/link.py on the real umqtt.simple over a faithful half-open socket: CPython, then MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_link_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_link_case_cpython(name, fn):
    fn()


def test_link_cases_under_micropython(micropython):
    res = micropython("import fw_link_cases\nfw_link_cases.run_all()\n").check()
    passed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PASS ")]
    assert passed == [n for n, _ in cases.CASES]
