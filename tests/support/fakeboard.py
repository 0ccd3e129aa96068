"""A simulated ESP32-CAM running MicroPython, on the far end of a pseudo-terminal, behind a programmer.

mpremote opens the pty's slave side like a USB serial port. A thread serves the master side and
speaks the MicroPython REPL protocols the way `pyexec.c` does: the friendly REPL, the raw REPL
(Ctrl-A; code ends with Ctrl-D; reply "OK" + stdout + \\x04 + stderr + \\x04 + ">"), raw-paste mode
(\\x05A\\x01 with flow-control windows, or "R\\x00" = unsupported, so mpremote falls back), soft reset
(Ctrl-D on an empty raw line) and `machine.reset()`.

What a real board does and this one copies (docs/field-fidelity.md, "Board and serial port"):
- Boot time. After any reset the ESP32 runs its ROM, the second-stage bootloader and, with PSRAM, a
  memory test before MicroPython starts (1-1.5 s on an ESP32-CAM; micropython#17532: "more than
  1s"). MicroPython then resets the UART's receive FIFO (micropython ports/esp32/uart.c,
  `uart_stdout_init`: `uart_hal_rxfifo_rst`, v1.21-v1.27), so everything that arrived during the
  boot is gone. The board discards input for `boot_time` seconds (default BOOT_TIME_S) of its
  injected clock after each reset.
- The programmer's DTR/RTS wiring (`url`, a pyserial URL: `ProgrammerPort`). The ESP32-CAM-MB's
  CH340 drives the ESP32's EN from RTS# and IO0 from DTR# with no transistor pair (ampy#103,
  micropython#17532, ESP32-MPY-Jama#41): asserted RTS holds the chip in reset; EN released while
  DTR is asserted boots the ROM download mode instead of MicroPython. Linux raises both lines on
  every open (drivers/tty/tty_port.c, `tty_port_block_til_ready` -> `tty_port_raise_dtr_rts`) and
  lowers them on the last close (HUPCL); pyserial 3.5 then drives them to the states set before
  `open()`, asserted by default (`serialposix.Serial.open`). The port models exactly that, so a
  program that opens with the defaults holds this board in reset, as on the real bench.
- Frozen modules. Every MicroPython ESP32 build freezes umqtt.simple (micropython
  ports/esp32/boards/manifest.py: `require("umqtt.simple")`, v1.20-v1.27) and `.frozen` precedes
  `/lib` on sys.path (py/runtime.c `mp_init` adds '' and '.frozen', ports/esp32/main.c then '/lib'); `import` looks in `frozen`, then in /lib on the simulated flash. A frozen
  module's `__file__` is its path inside the frozen set, a /lib one's the file path
  (py/builtinimport.c, `do_load`).

Code that arrives is executed by CPython in a namespace whose `open`, `os`, `sys`, `machine`,
`time` and `camera` stand in for the board's: file calls land in a temporary folder that plays the
board's flash, so tests can look at exactly what a provisioning run wrote.

This is the edge of the system (real hardware); everything on the host side, mpremote included,
runs for real.
"""

from __future__ import annotations

import builtins
import errno
import io
import itertools
import os
import select
import struct
import threading
import time
import traceback
import tty
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import serial
from serial import serialposix

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_BANNER = b'MicroPython v1.25.0 on 2025-04-15; ESP32 CAM module with ESP32\r\nType "help()" for more information.\r\n>>> '
ROM_BOOT = b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
ROM_BOOT_POWERON = (
    b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
)
ROM_DOWNLOAD = (
    b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))"
    b"\r\nwaiting for download\r\n"
)
# Reset to MicroPython reading its UART: ROM + bootloader + PSRAM test on an ESP32-CAM. Well above the
# 0.5 s the flash tool used to wait.
BOOT_TIME_S = 1.5
# Modules frozen into every MicroPython ESP32 build that the firmware or the flash tool use.
FROZEN = ("umqtt.simple",)
QUIET_MARKER = "/noapp"  # firmware/main.py: present at boot -> no app, no watchdog
MPY_ABI = 6 | (3 << 8) | (10 << 10)  # .mpy v6.3, xtensawin: what sys.implementation._mpy says on an ESP32

# Modules the board has; anything else raises ImportError like a missing module on the board.
_REAL_MODULES = {"hashlib", "binascii", "json", "gc", "struct", "errno", "micropython"}


class _HardReset(BaseException):
    """machine.reset(): abandons the running code, like the chip rebooting."""


class SkipClock:
    """Real time, except that waiting through a fake board's boot costs none.

    The fake boards note when their boots end (`boot_ends_at`); `sleep()` skips at once over the
    part of its wait that falls inside a boot and sleeps the rest in real time. The flash tool waits
    on this clock (`gateway.flash.board.CLOCK`, swapped in by `skip_boot_waits`), so no test waits a
    simulated boot out, while a board that has booted gets real time to answer, as on the bench:
    a loaded test machine cannot make the tool give up early.
    """

    def __init__(self) -> None:
        self._skipped = 0.0
        self._boot_ends: dict[str, float] = {}  # board url -> end of its current boot
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return time.monotonic() + self._skipped

    def boot_ends_at(self, board: str, t: float | None) -> None:
        """`board` boots until `t` (None: it stopped)."""
        with self._lock:
            if t is None:
                self._boot_ends.pop(board, None)
            else:
                self._boot_ends[board] = t

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            now = self.monotonic()
            booting = [t for t in self._boot_ends.values() if t > now]
            skip = min(seconds, min(booting) - now) if booting else 0.0
            self._skipped += skip
        time.sleep(seconds - skip if seconds > skip else 0)  # 0: still lets the board's thread run


CLOCK = SkipClock()  # shared by every fake board and, in tests, the flash tool


@pytest.fixture(autouse=True)
def skip_boot_waits(monkeypatch):
    """The flash tool waits on the fake board's clock: import this fixture into a test module."""
    from gateway.flash import board as board_mod

    monkeypatch.setattr(board_mod, "CLOCK", CLOCK, raising=False)  # raising=False: runs on older tools too
    return CLOCK


_BOARDS: dict[str, FakeBoard] = {}
_next_id = itertools.count(1)


class FakeBoard:
    """One simulated board. `port` is the path to give to mpremote / the flash tool.

    mode: "micropython" (normal), "silent" (answers and prints nothing: asleep, unpowered), or
    "garbage" (prints something that is not a MicroPython REPL, like another firmware).
    camera: whether `import camera` works. raw_paste: whether raw-paste mode is offered.
    mpy_abi: what sys.implementation._mpy reports (the .mpy version the firmware loads).
    watchdog_on(code): once it returns True for a received code block, the board resets instead of
    running it, as the firmware's still-running watchdog does to a board held in the raw REPL.
    fat: a FAT filesystem, whose rename refuses an existing target (LittleFS replaces it).
    on_boot(board): called in a thread after machine.reset(), as the firmware's main.py would run;
    it may call board.console() to print and publish MQTT like a real box. Like firmware/main.py,
    a board with /noapp on its flash prints the quiet-window message instead.
    app_watchdog: the app's machine.WDT, as on the ESP32. Armed at start and at every hard reset
    when the board has an app (/main.py or /main.mpy) and no /noapp; soft resets leave it armed
    and nothing feeds it in the raw REPL, so the Nth code block received after it was armed
    resets the board instead of running. `wdt_resets` counts those.
    boot_time: seconds (on `clock`) after a reset during which UART input is discarded.
    programmer: how `url`'s DTR/RTS reach the chip: "mb" (ESP32-CAM-MB: RTS -> EN, DTR -> IO0),
    "autoreset" (DevKitC two-transistor circuit: EN low only for RTS without DTR, IO0 low only for
    DTR without RTS) or "none" (a plain adapter, TX/RX only).
    frozen: modules frozen into the firmware.

    `port` is the bare pty (no modem lines, never reset by opening it); `url` is the same board
    behind the programmer, what the flash tool's tests use. Counters: `resets` (software:
    machine.reset, watchdogs), `pin_resets` (EN released), `download_boots` (EN released with IO0 low).
    """

    def __init__(
        self,
        flash: Path,
        *,
        mode: str = "micropython",
        camera: bool = True,
        raw_paste: bool = True,
        on_boot: Callable[[FakeBoard], None] | None = None,
        mpy_abi: int = MPY_ABI,
        watchdog_on: Callable[[str], bool] | None = None,
        fat: bool = False,
        app_watchdog: int | None = None,
        boot_time: float = BOOT_TIME_S,
        programmer: str = "mb",
        frozen: tuple[str, ...] = FROZEN,
        clock: SkipClock | None = None,
    ) -> None:
        if programmer not in ("mb", "autoreset", "none"):
            raise ValueError(f"unknown programmer {programmer!r}")
        self.flash = Path(flash)
        self.flash.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.camera = camera
        self.raw_paste = raw_paste
        self.on_boot = on_boot
        self.mpy_abi = mpy_abi
        self.watchdog_on = watchdog_on
        self.fat = fat
        self.app_watchdog = app_watchdog
        self.wdt_resets = 0
        self._wdt_left: int | None = None
        self.boot_time = boot_time
        self.programmer = programmer
        self.frozen = tuple(frozen)
        self.clock = clock if clock is not None else CLOCK
        self.pin_resets = 0
        self.download_boots = 0
        self.lines = {"dtr": False, "rts": False}  # as the programmer drives them, True = asserted
        self._in_reset = False
        self._download = False
        self._rst_held = False
        self.io0_jumper = False  # IO0 bridged to GND (or the MB's IO0 button held): download mode at reset
        self.dropped = 0  # bytes that arrived while the board was in reset or booting
        self._boot_until = float("-inf")  # powered up long ago: MicroPython is running
        self._open_ports = 0  # ProgrammerPorts open now: they drop input during the boot themselves
        self._lock = threading.RLock()  # one board: input, resets and line changes one at a time
        self.url = f"fakeboard://{next(_next_id)}"
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        # Never block the serving thread on a full pty buffer when the host has stopped reading.
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self.executed: list[str] = []  # every code block received, for tests that look at the protocol
        self.resets = 0
        self.soft_resets = 0
        self._state = "friendly"
        self._buf = bytearray()
        self._paste_window = 128
        self._paste_seen = 0
        self._cwd = "/"
        self._globals: dict = {}
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="fakeboard", daemon=True)
        self._boot_threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeBoard:
        self._new_namespace()
        self._arm_watchdog()
        _BOARDS[self.url] = self
        self._thread.start()
        return self

    def stop(self) -> None:
        _BOARDS.pop(self.url, None)
        self.clock.boot_ends_at(self.url, None)
        self._stop.set()
        self._thread.join(5)
        for t in self._boot_threads:
            t.join(5)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> FakeBoard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def console(self, text: str) -> None:
        """Print a line on the board's serial console (what the firmware prints)."""
        if self._in_reset or self._download:
            return  # a chip held in reset or in its ROM loader runs no firmware
        self._write(text.encode() + b"\r\n")

    def accepts_input(self, now: float | None = None) -> bool:
        """Whether a byte arriving now reaches MicroPython: not in reset, not booting."""
        now = self.clock.monotonic() if now is None else now
        return not self._in_reset and not self._download and now >= self._boot_until

    # -- the programmer's DTR/RTS -------------------------------------------------------------

    def _pins(self) -> tuple[bool, bool]:
        """(EN held low, IO0 held low) for the current DTR/RTS, the RST button and the IO0 jumper."""
        dtr, rts = self.lines["dtr"], self.lines["rts"]
        if self.programmer == "mb":
            en, io0 = rts, dtr
        elif self.programmer == "autoreset":
            en, io0 = rts and not dtr, dtr and not rts
        else:
            en, io0 = False, False
        return en or self._rst_held, io0 or self.io0_jumper

    def press_reset(self) -> None:
        """The RST button: EN low, then released (IO0 is sampled as it rises)."""
        with self._lock:
            self._rst_held = True
            self._apply_pins()
            self._rst_held = False
            self._apply_pins()

    def set_line(self, name: str, asserted: bool) -> None:
        with self._lock:
            self.lines[name] = bool(asserted)
            self._apply_pins()

    def _port_opened(self) -> None:
        with self._lock:
            self._open_ports += 1
            self.lines.update(dtr=True, rts=True)  # Linux raises both on open
            self._apply_pins()

    def _port_closed(self) -> None:
        with self._lock:
            self._open_ports = max(0, self._open_ports - 1)
            self.lines.update(dtr=False, rts=False)  # HUPCL: both dropped on the last close
            self._apply_pins()

    def _apply_pins(self) -> None:
        en_low, io0_low = self._pins()
        if en_low and not self._in_reset:
            self._in_reset = True
            self._state = "reset"
            self._buf.clear()
        elif not en_low and self._in_reset:
            # EN released: the chip starts; IO0 is sampled now (a strapping pin).
            self._in_reset = False
            self.pin_resets += 1
            if io0_low:
                self._download = True
                self.download_boots += 1
                self._write(ROM_DOWNLOAD)
            else:
                self._download = False
                self._boot(ROM_BOOT_POWERON)

    def path(self, board_path: str) -> Path:
        return self._host_path(board_path)

    # -- serial side --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            view = memoryview(data)
            give_up = time.monotonic() + 2.0
            while view:
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        return  # nobody reads the port: drop it, as a UART does
                    time.sleep(0.001)
                    continue
                except OSError:
                    return
                view = view[n:]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                # EIO: nobody has the port open right now; wait for the next open.
                time.sleep(0.02)
                continue
            with self._lock:
                if self._in_reset or self._download:
                    continue
                if not self._open_ports and not self.accepts_input():
                    self.dropped += len(data)
                    continue  # the bare pty: judged on arrival here (a ProgrammerPort drops it on write)
                if self.mode == "silent":
                    continue
                if self.mode == "garbage":
                    self._write(b"\x00\xff garbage at 115200 baud: rst:0x10 (RTCWDT_RTC_RESET)\r\n")
                    continue
                for byte in data:
                    self._feed(bytes([byte]))

    def _feed(self, c: bytes) -> None:
        state = self._state
        if state == "friendly":
            if c == b"\x01":
                self._buf.clear()
                self._state = "raw"
                self._write(b"\r\n" + RAW_BANNER)
            elif c == b"\x03":
                self._buf.clear()
                self._write(b"\r\nKeyboardInterrupt: \r\n>>> ")
            elif c == b"\x04":
                self._soft_reset(friendly=True)
            elif c == b"\r":
                line = self._buf.decode()
                self._buf.clear()
                self._write(b"\r\n")
                if line.strip():
                    out, err = self._run(line, echo_value=True)
                    self._write(out.replace(b"\n", b"\r\n") + err.replace(b"\n", b"\r\n"))
                self._write(b">>> ")
            elif c in (b"\x02", b"\n"):
                pass
            else:
                self._buf += c
                self._write(c)
        elif state == "raw":
            if c == b"\x01":
                self._buf.clear()
                self._write(b"\r\n" + RAW_BANNER)
            elif c == b"\x02":
                self._buf.clear()
                self._state = "friendly"
                self._write(b"\r\n" + FRIENDLY_BANNER)
            elif c == b"\x03":
                self._buf.clear()
            elif c == b"\x05" and not self._buf:
                self._state = "paste-request"
            elif c == b"\x04":
                if not self._buf:
                    self._write(b"OK\r\n")
                    self._soft_reset(friendly=False)
                    return
                code = bytes(self._buf)
                self._buf.clear()
                self._write(b"OK")
                self._execute_and_reply(code)
            else:
                self._buf += c
        elif state == "paste-request":
            self._buf += c
            if len(self._buf) == 2:
                if bytes(self._buf) == b"A\x01" and self.raw_paste:
                    self._buf.clear()
                    self._paste_seen = 0
                    self._state = "paste"
                    self._write(b"R\x01" + struct.pack("<H", self._paste_window))
                else:
                    self._buf.clear()
                    self._state = "raw"
                    # What MicroPython before raw-paste support does: treat it as input, then
                    # answer with the raw REPL prompt again. mpremote then uses plain raw mode.
                    self._write(b"R\x00")
        elif state == "paste":
            if c == b"\x04":
                code = bytes(self._buf)
                self._buf.clear()
                self._state = "raw"
                self._write(b"\x04")
                self._execute_and_reply(code)
                return
            self._buf += c
            self._paste_seen += 1
            if self._paste_seen % self._paste_window == 0:
                self._write(b"\x01")  # the next window may be sent

    def _execute_and_reply(self, code: bytes) -> None:
        text = code.decode("utf-8", "replace")
        self.executed.append(text)
        if self.watchdog_on is not None and self.watchdog_on(text):
            self.watchdog_on = None
            self._hard_reset()
            return
        if self._wdt_left is not None:
            self._wdt_left -= 1
            if self._wdt_left <= 0:
                self.wdt_resets += 1
                self._hard_reset()
                return
        try:
            out, err = self._run(text)
        except _HardReset:
            self._hard_reset()
            return
        self._write(out + b"\x04" + err + b"\x04>")

    # -- resets -------------------------------------------------------------------------------

    def _soft_reset(self, friendly: bool) -> None:
        self.soft_resets += 1
        self._new_namespace()
        self._write(b"MPY: soft reboot\r\n")
        if friendly:
            self._write(FRIENDLY_BANNER)
        else:
            self._write(RAW_BANNER)

    def _hard_reset(self) -> None:
        self.resets += 1
        self._boot(ROM_BOOT)

    def _boot(self, rom_banner: bytes) -> None:
        """The chip starts: input is dropped for `boot_time`, then firmware/main.py runs.

        The app's console output (on_boot) is not held back until the boot ends: only the input
        side of the boot is modelled (docs/field-fidelity.md)."""
        self._new_namespace()
        self._state = "friendly"
        self._buf.clear()
        self._cwd = "/"
        self._boot_until = self.clock.monotonic() + self.boot_time
        self.clock.boot_ends_at(self.url, self._boot_until)
        if self.mode != "silent":
            self._write(rom_banner)
        self._arm_watchdog()
        if self.quiet():
            # firmware/main.py's quiet_window()
            self.console(
                f"parcelbox: quiet window: {QUIET_MARKER} is present, so the app and the watchdog are not started."
            )
            return
        if self.on_boot is not None and self._has_app():
            t = threading.Thread(target=self.on_boot, args=(self,), name="fakeboard-main", daemon=True)
            self._boot_threads.append(t)
            t.start()

    def quiet(self) -> bool:
        return self._host_path(QUIET_MARKER).exists()

    def _has_app(self) -> bool:
        return self._host_path("/main.py").exists() or self._host_path("/main.mpy").exists()

    def _arm_watchdog(self) -> None:
        armed = self.app_watchdog is not None and self._has_app() and not self.quiet()
        self._wdt_left = self.app_watchdog if armed else None

    # -- execution ----------------------------------------------------------------------------

    def _new_namespace(self) -> None:
        self._globals = {"__name__": "__main__", "__builtins__": self._builtins()}

    def _run(self, code: str, echo_value: bool = False) -> tuple[bytes, bytes]:
        out = io.StringIO()
        self._out = out
        try:
            if echo_value:
                try:
                    value = eval(compile(code, "<stdin>", "eval"), self._globals)
                    if value is not None:
                        out.write(repr(value) + "\n")
                    return out.getvalue().encode(), b""
                except SyntaxError:
                    pass
            exec(compile(code, "<stdin>", "exec"), self._globals)
        except _HardReset:
            raise
        except BaseException as e:  # everything the board would print as a traceback
            return out.getvalue().encode(), _mp_traceback(e).encode()
        return out.getvalue().encode(), b""

    def _builtins(self) -> dict:
        b = dict(vars(builtins))
        b["print"] = self._print
        b["open"] = self._open
        b["__import__"] = self._import
        return b

    def _print(self, *args, sep=" ", end="\n", file=None) -> None:
        self._out.write(sep.join(str(a) for a in args) + end)

    def _host_path(self, board_path: str) -> Path:
        if not board_path.startswith("/"):
            board_path = self._cwd.rstrip("/") + "/" + board_path
        parts = []
        for part in board_path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        return self.flash.joinpath(*parts) if parts else self.flash

    def _open(self, path, mode="r", *args, **kwargs):
        return _board_errors(lambda: open(self._host_path(path), mode))

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if name == "os":
            return self._os_module()
        if name == "sys":
            return self._sys_module()
        if name == "machine":
            return self._machine_module()
        if name == "time":
            return self._time_module()
        if name == "camera":
            if not self.camera:
                raise ImportError("no module named 'camera'")
            return types.SimpleNamespace(init=lambda *a, **k: True, capture=lambda: b"\xff\xd8\xff\xd9")
        if name == "micropython":
            return types.SimpleNamespace(const=lambda x: x, kbd_intr=lambda x: None)
        if name in _REAL_MODULES:
            return __import__(name, globals, locals, fromlist, level)
        module = self._frozen_or_lib(name)
        if fromlist or "." not in name:
            return module
        # `import a.b` binds the top package, with the submodule as its attribute.
        parts = name.split(".")
        top = node = types.SimpleNamespace(__name__=parts[0])
        for i, part in enumerate(parts[1:-1], start=1):
            child = types.SimpleNamespace(__name__=".".join(parts[: i + 1]))
            setattr(node, part, child)
            node = child
        setattr(node, parts[-1], module)
        return top

    def _frozen_or_lib(self, name: str):
        """sys.path on the ESP32 is ['', '.frozen', '/lib']: frozen modules first, then /lib."""
        rel = name.replace(".", "/")
        if name in self.frozen:
            where = rel + ".py"  # __file__ of a frozen module: its path inside the frozen set
        else:
            for candidate in (f"/lib/{rel}.mpy", f"/lib/{rel}.py"):
                if self._host_path(candidate).is_file():
                    where = candidate
                    break
            else:
                raise ImportError(f"no module named '{name}'")
        return types.SimpleNamespace(__name__=name, __file__=where, MQTTClient=type("MQTTClient", (), {}))

    def _os_module(self):
        board = self

        def ilistdir(path="."):
            host = board._host_path(path)
            entries = _board_errors(lambda: sorted(os.listdir(host)))
            for name in entries:
                st = os.stat(host / name)
                kind = 0x4000 if (host / name).is_dir() else 0x8000
                yield (name, kind, 0, st.st_size)

        def stat(path):
            st = _board_errors(lambda: os.stat(board._host_path(path)))
            mode = 0x4000 if os.path.isdir(board._host_path(path)) else 0x8000
            return (mode, 0, 0, 0, 0, 0, st.st_size, int(st.st_mtime), int(st.st_mtime), int(st.st_mtime))

        def chdir(path):
            if not board._host_path(path).is_dir():
                raise OSError(errno.ENOENT, "ENOENT")
            board._cwd = "/" + str(board._host_path(path).relative_to(board.flash)).strip(".")

        def rename(a, b):
            if board.fat and board._host_path(b).exists():
                raise OSError(errno.EEXIST, "EEXIST")
            _board_errors(lambda: os.replace(board._host_path(a), board._host_path(b)))

        return types.SimpleNamespace(
            listdir=lambda path=".": _board_errors(lambda: sorted(os.listdir(board._host_path(path)))),
            ilistdir=ilistdir,
            stat=stat,
            remove=lambda p: _board_errors(lambda: os.remove(board._host_path(p))),
            mkdir=lambda p: _board_errors(lambda: os.mkdir(board._host_path(p))),
            rmdir=lambda p: _board_errors(lambda: os.rmdir(board._host_path(p))),
            rename=rename,
            getcwd=lambda: board._cwd,
            chdir=chdir,
            uname=lambda: types.SimpleNamespace(
                sysname="esp32",
                nodename="esp32",
                release="1.25.0",
                version="v1.25.0",
                machine="ESP32 CAM module with ESP32",
            ),
            statvfs=lambda p: (4096, 4096, 512, 400, 400, 0, 0, 0, 0, 255),
        )

    def _sys_module(self):
        return types.SimpleNamespace(
            implementation=types.SimpleNamespace(
                name="micropython", version=(1, 25, 0, ""), _mpy=self.mpy_abi
            ),
            platform="esp32",
            path=["", ".frozen", "/lib"],
            version="3.4.0; MicroPython v1.25.0",
            byteorder="little",
            maxsize=2**31 - 1,
            modules={},
            stdout=types.SimpleNamespace(write=lambda s: self._out.write(s)),
        )

    def _machine_module(self):
        def reset():
            raise _HardReset()

        return types.SimpleNamespace(reset=reset, soft_reset=reset, freq=lambda *a: 240_000_000)

    def _time_module(self):
        return types.SimpleNamespace(
            sleep_ms=lambda ms: None,
            sleep=lambda s: None,
            ticks_ms=lambda: int(time.monotonic() * 1000) & 0x3FFFFFFF,
            time=lambda: int(time.time()),
        )


class ProgrammerPort(serialposix.Serial):
    """pyserial's POSIX Serial on the board's pty, with the modem lines wired to the board.

    A pty has no DTR/RTS (the ioctls fail with ENOTTY), so the two places pyserial 3.5 drives them,
    `_update_dtr_state`/`_update_rts_state` (called by `open()` with the states set before it, and by
    the `dtr`/`rts` setters), go to the board instead. `open()` first raises both, as Linux does
    on every open; `close()` lowers both, as HUPCL does. `write()` drops what the board would lose
    while it is in reset or booting, at the moment it is written (the UART delivers within
    microseconds), so the result does not depend on thread timing.
    """

    board: FakeBoard
    _opening = False

    def open(self) -> None:
        self.board._port_opened()
        self._opening = True
        try:
            super().open()
        except BaseException:
            self.board._port_closed()
            raise
        finally:
            self._opening = False
        # pyserial drove DTR, then RTS, inside open(), before it flushed the input buffer. The board
        # sees them here, after that flush, in the same order: a real ESP32's first bytes come
        # milliseconds after EN rises, after the host's flush, so its boot messages are not lost.
        if not self._dsrdtr:
            self.board.set_line("dtr", self._dtr_state)
        if not self._rtscts:
            self.board.set_line("rts", self._rts_state)

    def close(self) -> None:
        was_open = self.is_open
        super().close()
        if was_open:
            self.board._port_closed()

    def _update_dtr_state(self) -> None:
        if not self._opening:
            self.board.set_line("dtr", self._dtr_state)

    def _update_rts_state(self) -> None:
        if not self._opening:
            self.board.set_line("rts", self._rts_state)

    def write(self, data) -> int:
        if self.board.accepts_input():
            return super().write(data)
        n = len(memoryview(data))
        self.board.dropped += n
        return n  # sent, and lost on the board's side


def serial_class_for_url(url: str):
    """pyserial's URL hook (tests/support/protocol_fakeboard.py): fakeboard://N -> (pty, port class)."""
    board = _BOARDS.get(url)
    if board is None:
        raise serial.SerialException(f"could not open port {url}: no such fake board")
    return board.port, type("ProgrammerPort", (ProgrammerPort,), {"board": board})


if "tests.support" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("tests.support")


def _board_errors(fn):
    """Run a host file operation; OSErrors come out the way MicroPython words them."""
    try:
        return fn()
    except OSError as e:
        code = e.errno if e.errno is not None else errno.EIO
        raise OSError(code, errno.errorcode.get(code, "EIO")) from None


def _mp_traceback(e: BaseException) -> str:
    """A MicroPython-style traceback: mpremote matches on 'OSError: [Errno 2] ENOENT' and such."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<stdin>"]
    lines = ["Traceback (most recent call last):"]
    for f in frames[-3:]:
        lines.append(f'  File "<stdin>", line {f.lineno}, in {f.name}')
    if isinstance(e, OSError) and e.errno is not None:
        lines.append(f"OSError: [Errno {e.errno}] {errno.errorcode.get(e.errno, e.strerror)}")
    else:
        lines.append(f"{type(e).__name__}: {e}")
    return "\r\n".join(lines) + "\r\n"


# -- the other edges a provisioning run touches ------------------------------------------------


class MipIndex:
    """A micropython-lib package index (the layout mip reads) served over HTTP on 127.0.0.1.

    mpremote's `mip` fetches `<index>/package/<mpy>/<name>/latest.json`, then each file by its
    short sha256 from `<index>/file/<xx>/<hash>`; this serves exactly that from a temp folder,
    so the real download-and-copy code runs without the internet.
    """

    def __init__(self, root: Path, packages: dict[str, dict[str, bytes]], mpy: int = MPY_ABI & 0xFF) -> None:
        import hashlib
        import json

        self.root = Path(root)
        self.requests: list[str] = []
        for name, files in packages.items():
            hashes = []
            for target, data in files.items():
                short = hashlib.sha256(data).hexdigest()[:8]
                blob = self.root / "file" / short[:2] / short
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
                hashes.append([target, short])
            meta = self.root / "package" / str(mpy) / name / "latest.json"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"hashes": hashes, "version": "1.6.0", "deps": []}))
        self._server = None
        self._thread = None

    def __enter__(self) -> MipIndex:
        import functools
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        index = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                index.requests.append(self.path)

        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(self.root))
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="mip-index", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def write_firmware_tree(root: Path, config_example: dict) -> Path:
    """A small firmware folder shaped like firmware/: entry points, modules, a package, host-only files."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text("import app\napp.run()\n")
    (root / "boot.py").write_text("# boot\n")
    (root / "app.py").write_text("def run():\n    print('parcelbox up')\n")
    (root / "detector.py").write_text("THRESHOLD = 3\n\ndef settle(x):\n    return x * 2\n")
    (root / "drivers").mkdir(exist_ok=True)
    (root / "drivers" / "__init__.py").write_text("")
    (root / "drivers" / "reed.py").write_text(
        "class Reed:\n    def __init__(self, pin):\n        self.pin = pin\n"
    )
    (root / "sim_board.py").write_text("# CPython simulator: never copied to the board\n")
    (root / "config.example.json").write_text(json.dumps(config_example, indent=2))
    return root
