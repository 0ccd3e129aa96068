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


def test_main_rolls_back_a_new_set_that_crashes_in_its_trial(tmp_path, capsys):
    """main.py's last-resort handler: in a trial, record the crash and reset (boot.py rolls back);
    outside a trial, do nothing (the box idles with its diagnostics, as before)."""
    import main
    import ota
    import otaboot

    base = str(tmp_path)
    resets: list[int] = []
    cases.install(base, cases.OLD)
    assert main.give_up_trial(ValueError("x"), lambda: resets.append(1), base) is False and resets == []
    fl = cases.flash(base, cases.Power())
    cases.transfer(ota.Updater(fl, "0.1.0", cases.quiet), cases.offer_for(cases.NEW))
    otaboot.at_boot(fl, cases.quiet)
    assert main.give_up_trial(ImportError("boom"), lambda: resets.append(1), base) is True and resets == [1]
    otaboot.at_boot(fl, cases.quiet)
    assert cases.which_set(base) == "old"
    assert ota.Updater(fl, "0.1.0", cases.quiet).result["reason"] == "crashed: ImportError('boom')"
