"""Re-provisioning a running box: its watchdog cannot be stopped (on the ESP32 only a hard reset clears
it), so the tool writes /noapp, hard-resets the box into its quiet window (firmware/main.py then starts
neither app nor watchdog), copies in peace and removes the marker right before the final reset."""

from __future__ import annotations

import json
import time

from gateway.flash.cli import main
from tests.support.fakeboard import FakeBoard, skip_boot_waits  # noqa: F401
from tests.test_flash_errors import _box_prints, run
from tests.test_flash_provision import env, provision_argv, publish_status_on_boot  # noqa: F401 (fixture)

# Few enough code blocks that the old flow (handshake, info, camera, mip, hashes, copies) is always
# reset by the watchdog before it is done.
WDT_BLOCKS = 4


def _running_box(flash) -> None:
    """A box that already runs an app (main.py present), as after an earlier provisioning."""
    flash.mkdir(parents=True, exist_ok=True)
    (flash / "main.py").write_text("import app\napp.run()\n")


def test_reprovisioning_a_running_box_is_not_reset_by_its_watchdog(env, capsys):  # noqa: F811
    _running_box(env.flash)
    with FakeBoard(env.flash, app_watchdog=WDT_BLOCKS, on_boot=publish_status_on_boot) as board:
        assert main(provision_argv(env, board)) == 0
        assert board.wdt_resets == 0  # the watchdog never fired: no reconnect dance
        assert board.resets == 2  # into the quiet window, then the final one
    out = capsys.readouterr().out
    assert "quiet window: /noapp written; resetting so the box boots without its app and watchdog" in out
    assert "box | parcelbox: quiet window: /noapp is present" not in out  # that boot was before the wait
    assert "lost the board" not in out
    assert "removed /noapp: the box starts its app and watchdog after this reset" in out
    assert not (env.flash / "noapp").exists()
    assert json.loads((env.flash / "config.json").read_text())["device_id"] == "box1"
    assert "box1 is online" in out  # the final boot ran the app


def test_fresh_board_needs_no_extra_reset(env, capsys):  # noqa: F811
    with FakeBoard(env.flash, app_watchdog=WDT_BLOCKS) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        assert board.wdt_resets == 0
    out = capsys.readouterr().out
    assert "quiet window: /noapp written (no app on the board yet, so no watchdog)" in out
    assert not (env.flash / "noapp").exists()


def test_marker_left_by_an_earlier_run_is_used_without_a_reset(env, capsys):  # noqa: F811
    _running_box(env.flash)
    (env.flash / "noapp").write_text("")  # the box booted with it: no app, no watchdog
    with FakeBoard(env.flash, app_watchdog=WDT_BLOCKS) as board:
        assert main(provision_argv(env, board, "--no-wait")) == 0
        deadline = time.monotonic() + 10
        while board.resets < 1 and time.monotonic() < deadline:  # the final reset is sent without waiting
            time.sleep(0.02)
        time.sleep(0.2)  # a second reset, if there were one, would have landed by now
        assert board.wdt_resets == 0 and board.resets == 1  # only the final reset
    out = capsys.readouterr().out
    assert "quiet window: /noapp is on the board, its app and watchdog are not running" in out
    assert not (env.flash / "noapp").exists()


def test_a_failed_run_removes_the_marker(env, capsys):  # noqa: F811
    _running_box(env.flash)
    with FakeBoard(env.flash, app_watchdog=WDT_BLOCKS, camera=False) as board:
        code, out, err = run(provision_argv(env, board), capsys)
    assert code == 1 and "camera: this MicroPython build has no camera support" in err
    assert "removed /noapp from the board: the box starts its app at its next reset (press RST)" in out
    assert not (env.flash / "noapp").exists()


def test_a_marker_that_cannot_be_removed_is_reported(env, capsys):  # noqa: F811
    _running_box(env.flash)
    board = FakeBoard(env.flash, app_watchdog=WDT_BLOCKS, camera=False)

    def board_goes_away(code: str) -> bool:
        # The board stops answering right after the camera check fails (a loose cable, a brown-out).
        if "import camera" in code:
            board.mode = "silent"
        return False

    board.watchdog_on = board_goes_away
    with board:
        code, out, err = run(provision_argv(env, board), capsys)
    assert code == 1 and "no camera support" in err
    assert "could not remove /noapp from the board" in out
    assert "the box will not start its app until it is removed" in out
    assert (
        f"`parcelbox flash shell --port {board.url}` type import os; os.remove('/noapp') and press RST" in out
    )
    assert (env.flash / "noapp").exists()  # honestly reported, not pretended away


def test_dry_run_shows_the_quiet_window(env, capsys):  # noqa: F811
    with FakeBoard(env.flash) as board:
        assert main(provision_argv(env, board, "--dry-run")) == 0
        assert board.executed == []
    out = capsys.readouterr().out
    assert "quiet window: write /noapp, and hard-reset a board that has an app" in out
    assert "reset: remove /noapp, machine.reset()" in out


def test_a_box_that_boots_quiet_after_the_final_reset_is_a_clear_error(env, capsys):  # noqa: F811
    line = "parcelbox: quiet window: /noapp is present, so the app and the watchdog are not started."
    with FakeBoard(env.flash, on_boot=_box_prints(line)) as board:
        code, _, err = run(provision_argv(env, board), capsys)
    assert code == 1
    assert "firmware: the box booted in its quiet window" in err and "os.remove('/noapp')" in err


def test_reprovisioning_waits_out_the_boot_after_the_quiet_window_reset(env, capsys):  # noqa: F811
    """Issue 13 item 4. After the reset into the quiet window the board boots for BOOT_TIME_S and drops
    what it receives meanwhile (MicroPython resets the UART's RX FIFO when it starts). Fails on the old
    code: it waited 0.5 s and sent one Ctrl-C/Ctrl-A, which the booting board lost, so every run ended in
    "does not answer". A plain adapter (no DTR/RTS wiring) keeps this apart from item 5."""
    _running_box(env.flash)
    with FakeBoard(env.flash, programmer="none", app_watchdog=WDT_BLOCKS) as board:
        assert board.boot_time > 0.6
        code, out, err = run(provision_argv(env, board, "--no-wait"), capsys)
        assert code == 0, err
        assert board.wdt_resets == 0 and board.dropped > 0  # interrupts were lost, and repeated
    assert "quiet window: /noapp written; resetting so the box boots without its app and watchdog" in out
    assert json.loads((env.flash / "config.json").read_text())["device_id"] == "box1"
