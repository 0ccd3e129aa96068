"""The serial link to the board: how the port is opened (DTR/RTS on an ESP32-CAM-MB programmer) and how the
handshake waits out a boot. Real mpremote and pyserial talk to the fake board over a pty; the fake's
programmer port (tests/support/fakeboard.py, ProgrammerPort) wires DTR/RTS to the board's EN and IO0."""

from __future__ import annotations

import re

import pytest
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from gateway.flash.board import Board, open_transport
from gateway.flash.cli import main
from gateway.flash.errors import FlashError
from tests.support.fakeboard import BOOT_TIME_S, CLOCK, FakeBoard, skip_boot_waits  # noqa: F401


def _app(flash, on_boot_line: str = "parcelbox 0.1.0 starting"):
    flash.mkdir(parents=True, exist_ok=True)
    (flash / "main.py").write_text("import app\n")
    return lambda board: board.console(on_boot_line)


# -- the fake's model, checked against the real mpremote and pyserial --------------------------------


def test_the_fake_board_drops_input_while_it_boots(tmp_path):
    with FakeBoard(tmp_path / "flash", programmer="none") as board:
        assert board.boot_time == BOOT_TIME_S > 0.6  # longer than the 0.5 s the tool used to wait
        assert board.accepts_input()  # powered up long ago
        board.press_reset()
        assert board.pin_resets == 1 and not board.accepts_input()
        CLOCK.sleep(BOOT_TIME_S / 2)
        assert not board.accepts_input()
        CLOCK.sleep(BOOT_TIME_S / 2)
        assert board.accepts_input()


def test_mpremotes_default_open_holds_an_mb_board_in_reset(tmp_path):
    """mpremote 1.27 on Linux leaves pyserial's default (DTR and RTS asserted): on the MB's RTS -> EN wiring
    the board stays in reset and never answers; mpremote's close lowers RTS before DTR, so EN rises with
    IO0 still low and the board starts its ROM download mode (what the MB does on the bench)."""
    with FakeBoard(tmp_path / "flash", programmer="mb") as board:
        transport = SerialTransport(board.url)
        assert board.lines == {"dtr": True, "rts": True}
        assert not board.accepts_input()
        with pytest.raises(TransportError):
            transport.enter_raw_repl(timeout_overall=0.5)
        assert board.executed == [] and board.dropped > 0
        transport.close()
        assert board.download_boots == 1


def test_mpremotes_default_open_is_harmless_with_a_two_transistor_auto_reset(tmp_path):
    """DevKitC-style boards: EN is pulled low only for RTS without DTR, so both asserted is no reset."""
    with FakeBoard(tmp_path / "flash", programmer="autoreset") as board:
        transport = SerialTransport(board.url)
        transport.enter_raw_repl(soft_reset=True, timeout_overall=5)
        transport.exit_raw_repl()
        transport.close()
        assert board.pin_resets == 0 and board.download_boots == 0


def test_released_lines_transport_is_mpremotes_serial_transport(tmp_path):
    """The subclass sets exactly the attributes mpremote's constructor sets, so mpremote's methods work on it."""
    with FakeBoard(tmp_path / "flash") as board:
        real = SerialTransport(board.port)
        expected = set(vars(real))
        real.close()
        ours = open_transport(board.port)
        try:
            assert isinstance(ours, SerialTransport)
            assert set(vars(ours)) == expected
            assert ours.serial.dtr is False and ours.serial.rts is False
        finally:
            ours.close()


# -- item 5: the MB programmer ------------------------------------------------------------------------


def test_the_tool_opens_an_mb_board_with_dtr_and_rts_released(tmp_path):
    """Issue 13 item 5. Fails on the old code: Board.connect opened with pyserial's defaults (both lines
    asserted), which holds an ESP32-CAM-MB's board in reset, so the handshake got nothing."""
    with FakeBoard(tmp_path / "flash", programmer="mb") as board:
        with Board.connect(board.url) as b:
            assert board.lines == {"dtr": False, "rts": False}
            # Linux raises both lines on open before pyserial lowers them: one reset, into MicroPython.
            assert board.pin_resets == 1 and board.download_boots == 0
            b.enter_raw_repl(timeout=5)
            assert b.exec("print(6 * 7)", "test").strip() == "42"
        assert board.download_boots == 0  # and closing does not leave it in the ROM loader


def test_logs_shows_an_mb_board_booting(tmp_path, capsys):
    """`logs` on an MB board: the open resets the board (Linux pulses the lines), the boot shows.
    Fails on the old code: the board stayed in reset and `logs` printed nothing."""
    flash = tmp_path / "flash"
    with FakeBoard(flash, programmer="mb", on_boot=_app(flash)) as board:
        assert main(["logs", "--port", board.url, "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "rst:0x1 (POWERON_RESET)" in out and "parcelbox 0.1.0 starting" in out


# -- item 4: waiting out the boot -----------------------------------------------------------------------


def test_handshake_repeats_the_interrupt_until_the_boot_is_over(tmp_path):
    """Every interrupt sent while the board boots is lost; the handshake repeats it until the REPL answers."""
    with FakeBoard(tmp_path / "flash", programmer="none") as board:
        with Board.connect(board.url) as b:
            board.press_reset()
            started = CLOCK.monotonic()
            b.enter_raw_repl(timeout=10)
            assert CLOCK.monotonic() - started >= BOOT_TIME_S  # waited on the clock, not in real time
            assert board.dropped >= 2 * 4  # at least two interrupts (\r\x03\r\x01) were lost
            assert b.exec("print('up')", "test").strip() == "up"


def test_a_board_that_never_finishes_booting_is_a_clear_error(tmp_path):
    with FakeBoard(tmp_path / "flash", programmer="none", boot_time=1e9) as board:
        with Board.connect(board.url) as b:
            board.press_reset()
            with pytest.raises(FlashError) as caught:
                b.enter_raw_repl(timeout=3)
    e = caught.value
    assert e.step == "handshake" and "is not running MicroPython" in e.message
    tries = int(re.search(r"after (\d+) interrupts", e.message)[1])
    assert tries > 1  # it kept trying for the whole timeout
    assert "POWERON_RESET" in e.message and "parcelbox flash logs" in e.hint


def test_a_board_in_download_mode_is_named(tmp_path):
    """IO0 jumper left on: the reset at open starts the ROM loader, which the handshake names."""
    with FakeBoard(tmp_path / "flash", programmer="mb") as board:
        board.io0_jumper = True
        with Board.connect(board.url) as b, pytest.raises(FlashError) as caught:
            b.enter_raw_repl(timeout=1)
        assert board.download_boots == 1
    assert "in its ROM bootloader (download mode)" in caught.value.message
    assert "IO0" in caught.value.hint
