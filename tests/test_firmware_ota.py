"""Over-the-air update on the box (firmware/ota.py, otaboot.py) on real files, with the power cut
after every write: every case under CPython, then all of them under real MicroPython."""

from __future__ import annotations

import pytest

from tests.mp import fw_ota_cases as cases


@pytest.mark.parametrize("name,fn", cases.CASES, ids=[n for n, _ in cases.CASES])
def test_ota_case_cpython(name, fn, tmp_path):
    base = tmp_path / "flash"
    base.mkdir()
    fn(str(base))


@pytest.mark.parametrize("name", [n for n, _ in cases.CASES])
def test_ota_case_under_micropython(name, micropython, tmp_path):
    res = micropython(
        f"import fw_ota_cases\nfw_ota_cases.run_one('/data', {name!r})\n", data_dir=tmp_path
    ).check()
    assert f"PASS {name}" in res.stdout
