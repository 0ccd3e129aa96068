"""One MicroPython board on a serial port, driven through mpremote's `SerialTransport`.

Every failure leaves here as a `FlashError` naming the step and what to do, so the command
layer never has to understand pyserial or raw-REPL details.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace

from gateway.flash.errors import FlashError
from gateway.flash.serialports import esp32_ports, why_unopenable

RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
# What the handshake sends until the board answers: Ctrl-C stops a running program (the app or the
# REPL's input line), Ctrl-A enters the raw REPL. The same two mpremote sends once.
_INTERRUPT = b"\r\x03\r\x01"
# How long one interrupt waits for the raw REPL banner before it is sent again. A booting ESP32
# discards what arrives (see Board.wait_for_repl), so the interrupt must be repeated, not waited on.
PROBE_INTERVAL_S = 0.25
_POLL_S = 0.01
_ROM_DOWNLOAD_MODE = b"waiting for download"
_ROM_BOOT = (b"ets ", b"rst:0x")


class Clock:
    """time.monotonic and time.sleep. Tests swap in the fake board's clock (`CLOCK`), so waiting for a
    simulated boot costs no real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


CLOCK: Clock = Clock()


def clock() -> Clock:
    """The clock the flash tool waits with (looked up at call time, so a test can replace it)."""
    return CLOCK


# Runs on the board in the raw REPL: sha256 of each path, or "-" when it does not exist.
# One script for all files, so comparing 20 files costs one round trip, not 20.
_HASH_SCRIPT = """\
import hashlib, binascii
_b = bytearray(512)
_m = memoryview(_b)
for _p in {paths!r}:
    try:
        _f = open(_p, 'rb')
    except OSError:
        print(_p, '-')
        continue
    _h = hashlib.sha256()
    while True:
        _n = _f.readinto(_b)
        if not _n:
            break
        _h.update(_m[:_n])
    _f.close()
    print(_p, binascii.hexlify(_h.digest()).decode())
"""

# LittleFS (the ESP32 default) replaces the target on rename; FAT refuses, so remove it first there.
_RENAME_SCRIPT = """\
import os
try:
    os.rename({tmp!r}, {path!r})
except OSError:
    os.remove({path!r})
    os.rename({tmp!r}, {path!r})
"""

_EXISTS_SCRIPT = """\
import os
for _p in {paths!r}:
    try:
        os.stat(_p)
        print(_p)
    except OSError:
        pass
"""

# Where the board imports each module from: MicroPython sets a frozen module's __file__ to its path
# inside the frozen set ("umqtt/simple.py") and a filesystem one's to the file ("/lib/umqtt/simple.mpy")
# (py/builtinimport.c, do_load).
_IMPORT_SCRIPT = """\
for _n in {names!r}:
    try:
        _m = __import__(_n)
        for _a in _n.split('.')[1:]:
            _m = getattr(_m, _a)
        print(_n, 'ok', getattr(_m, '__file__', ''))
    except ImportError:
        print(_n, 'missing')
    except Exception as _e:
        print(_n, 'error', repr(_e))
"""

_INFO_SCRIPT = """\
import sys, os
try:
    _u = os.uname()
    _m = _u.machine
    _r = _u.release
except Exception:
    _m = '?'
    _r = '?'
print(repr((sys.implementation.name, _r, _m, sys.platform, getattr(sys.implementation, '_mpy', 0) & 0xFF)))
"""


def resolve_port(port: str | None) -> str:
    """The port to use: the one given, else the only ESP32-looking port connected."""
    if port:
        return port
    candidates = esp32_ports()
    if not candidates:
        raise FlashError(
            "connect",
            "no board found: no USB serial port that looks like an ESP32 (CP210x, CH340, FTDI, Espressif)",
            "plug the ESP32-CAM in through its programmer board with a data USB cable, or pass --port",
        )
    if len(candidates) > 1:
        names = ", ".join(p.device for p in candidates)
        raise FlashError("connect", f"several boards found ({names})", "choose one with --port")
    return candidates[0].device


def open_transport(port: str, baudrate: int = 115200):
    """mpremote's `SerialTransport` on `port`, opened with DTR and RTS released.

    pyserial drives DTR and RTS to the states set before `open()`, asserted by default
    (pyserial 3.5 `serialposix.Serial.open` -> `_update_dtr_state`/`_update_rts_state`), and
    mpremote 1.27 keeps that default everywhere but on Windows with a CP210x
    (`mpremote/transport_serial.py`, `SerialTransport.__init__`). The ESP32-CAM-MB wires its
    CH340's RTS# to the ESP32's EN and DTR# to IO0 with no transistor pair (ampy#103,
    micropython#17532, ESP32-MPY-Jama#41): asserted RTS holds the board in reset, so the tool,
    `logs` and `shell` would see nothing. Releasing both before `open()` leaves only the pulse
    Linux gives on every open (`tty_port_open` raises DTR/RTS), which resets the board once; the
    handshake (`Board.wait_for_repl`) waits that boot out. Boards with the two-transistor
    auto-reset circuit (DevKitC) run with both lines released as well.
    """
    return _released_lines_transport()(port, baudrate)


@functools.cache
def _released_lines_transport():
    import serial
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    class ReleasedLinesTransport(SerialTransport):
        """`SerialTransport.__init__` of mpremote 1.27 for one device and no wait, but with
        DTR/RTS set False before the port opens. Everything after the open is mpremote's own;
        tests/test_flash_serial.py checks the attributes still match mpremote's constructor."""

        def __init__(self, device: str, baudrate: int = 115200) -> None:
            self.in_raw_repl = False
            self.use_raw_paste = True
            self.device_name = device
            self.mounted = False
            try:
                port = serial.serial_for_url(
                    device,
                    do_not_open=True,
                    baudrate=baudrate,
                    timeout=None,
                    interCharTimeout=1,
                    exclusive=True,
                )
                port.dtr = False
                port.rts = False
                port.open()
            except (OSError, ValueError) as e:
                raise TransportError("failed to access " + device) from e
            self.serial = port

    return ReleasedLinesTransport


class Board:
    """A connected board. Use `Board.connect(port)`; close with `.close()` or a `with` block."""

    def __init__(self, transport, port: str, clock: Clock | None = None) -> None:
        self.transport = transport
        self.port = port
        self.clock = clock if clock is not None else CLOCK

    @classmethod
    def connect(cls, port: str) -> Board:
        from mpremote.transport import TransportError

        try:
            transport = open_transport(port)
        except TransportError:
            kind, message, hint = why_unopenable(port)
            raise FlashError("connect", message, hint) from None
        return cls(transport, port)

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.transport.in_raw_repl:
                self.transport.exit_raw_repl()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.transport.close()

    # -- raw REPL ---------------------------------------------------------------------------

    def wait_for_repl(self, timeout: float = 10.0) -> None:
        """Interrupt the board until its raw REPL answers, for at most `timeout` seconds.

        A board that was just reset (by the tool, by its watchdog, or by the port opening on an
        MB programmer) is still booting: with PSRAM an ESP32 takes 1-1.5 s before MicroPython
        starts, and MicroPython then empties the UART's receive FIFO (ports/esp32/uart.c,
        `uart_stdout_init` -> `uart_hal_rxfifo_rst`, v1.21-v1.27), so an interrupt sent during the boot is
        lost without a trace. One interrupt and a wait (mpremote's `enter_raw_repl`) fails every
        time there; repeating it every PROBE_INTERVAL_S until the banner comes does not.
        """
        serial = self.transport.serial
        deadline = self.clock.monotonic() + timeout
        heard = b""
        tries = 0
        while True:
            tries += 1
            try:
                serial.write(_INTERRUPT)
                probe_end = min(deadline, self.clock.monotonic() + PROBE_INTERVAL_S)
                while True:
                    waiting = serial.in_waiting
                    if waiting:
                        heard = (heard + serial.read(waiting))[-2048:]
                        if RAW_REPL_BANNER in heard:
                            return
                        continue
                    if self.clock.monotonic() >= probe_end:
                        break
                    self.clock.sleep(_POLL_S)
            except OSError as e:
                raise FlashError(
                    "handshake", f"lost the board on {self.port}: {e}", "re-plug it and retry"
                ) from None
            if self.clock.monotonic() >= deadline:
                raise self._no_repl(heard, tries, timeout)

    def _no_repl(self, heard: bytes, tries: int, timeout: float) -> FlashError:
        said = heard.decode("utf-8", "replace").strip()
        if _ROM_DOWNLOAD_MODE in heard:
            return FlashError(
                "handshake",
                f"the board on {self.port} is in its ROM bootloader (download mode), not running MicroPython",
                "release IO0 (take off the IO0-GND jumper, or let go of the MB board's IO0 button) and press RST",
            )
        if not said:
            return FlashError(
                "handshake",
                f"the board on {self.port} does not answer: no MicroPython prompt after {tries} interrupts "
                f"in {timeout:.0f} s",
                "it may be asleep (battery mode: press RST), held in the bootloader (remove the IO0-GND jumper "
                "and press RST), held in reset by another program that left RTS asserted, or have no "
                "MicroPython yet: parcelbox flash install-micropython --firmware FILE.bin",
            )
        hint = "flash MicroPython first: parcelbox flash install-micropython --firmware FILE.bin"
        if any(mark in heard for mark in _ROM_BOOT):
            hint = (
                "if it keeps rebooting (a boot loop, a brown-out), `parcelbox flash logs` shows why; else "
                + hint
            )
        return FlashError(
            "handshake",
            f"the board on {self.port} is not running MicroPython (no raw REPL after {tries} interrupts; "
            f"it said {said[:120]!r})",
            hint,
        )

    def enter_raw_repl(self, timeout: float = 10.0) -> None:
        """Wait until the board answers, then enter the raw REPL with a soft reset, like mpremote does."""
        from mpremote.transport import TransportError

        self.wait_for_repl(timeout)
        seen = io.StringIO()
        try:
            # mpremote prints what it received when the handshake fails; keep it for our message.
            with contextlib.redirect_stdout(seen):
                self.transport.enter_raw_repl(soft_reset=True, timeout_overall=timeout)
        except TransportError:
            got = seen.getvalue().strip()
            if got in ("", "b''"):
                raise FlashError(
                    "handshake",
                    f"the board on {self.port} does not answer (no MicroPython raw REPL)",
                    "it may be asleep (battery mode: press RST), held in the bootloader (remove the IO0-GND "
                    "jumper and press RST), or have no MicroPython yet: "
                    "parcelbox flash install-micropython --firmware FILE.bin",
                ) from None
            raise FlashError(
                "handshake",
                f"the board on {self.port} is not running MicroPython (raw REPL handshake failed; it said {got[:120]})",
                "flash MicroPython first: parcelbox flash install-micropython --firmware FILE.bin",
            ) from None
        except OSError as e:
            raise FlashError(
                "handshake", f"lost the board on {self.port}: {e}", "re-plug it and retry"
            ) from None

    def exec(self, code: str, step: str) -> str:
        """Run code in the raw REPL; a device traceback becomes a FlashError for `step`."""
        from mpremote.transport import TransportError, TransportExecError

        try:
            return self.transport.exec(code).decode("utf-8", "replace")
        except TransportExecError as e:
            raise FlashError(step, f"the board raised: {_last_line(e.error_output)}") from None
        except (TransportError, OSError) as e:
            raise FlashError(
                step, f"lost contact with the board: {e}", "press RST or re-plug, then rerun"
            ) from None

    def info(self) -> SimpleNamespace:
        """implementation, release, machine, platform and .mpy major version of the running firmware."""
        import ast

        out = self.exec(_INFO_SCRIPT, "handshake").strip()
        impl, release, machine, platform, mpy = ast.literal_eval(out)
        return SimpleNamespace(
            implementation=impl, release=release, machine=machine, platform=platform, mpy=mpy
        )

    def camera_error(self) -> str | None:
        """None when `import camera` works on the board, else the board's error line."""
        from mpremote.transport import TransportError, TransportExecError

        try:
            self.transport.exec("import camera")
        except TransportExecError as e:
            return _last_line(e.error_output)
        except (TransportError, OSError) as e:
            raise _lost("camera", e) from None
        return None

    # -- files --------------------------------------------------------------------------------

    def sha256(self, paths: Iterable[str]) -> dict[str, str | None]:
        """sha256 (hex) of each path, computed on the board; None where the file is missing."""
        paths = list(paths)
        if not paths:
            return {}
        out = self.exec(_HASH_SCRIPT.format(paths=paths), "compare")
        result: dict[str, str | None] = {}
        for line in out.splitlines():
            path, _, digest = line.strip().rpartition(" ")
            if path:
                result[path] = None if digest == "-" else digest
        missing = [p for p in paths if p not in result]
        if missing:
            raise FlashError("compare", f"the board did not report hashes for {missing}")
        return result

    def read_text(self, path: str) -> str | None:
        """A small text file from the board, or None when it is missing."""
        from mpremote.transport import TransportError, TransportExecError

        try:
            data = self.transport.fs_readfile(path)
        except (OSError, TransportExecError):
            return None  # mpremote turns the board's ENOENT into an OSError
        except TransportError as e:
            raise _lost("copy", e) from None
        return bytes(data).decode("utf-8", "replace")

    def makedirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        current = ""
        for part in parts:
            current += "/" + part
            if not self.transport.fs_exists(current):
                self.transport.fs_mkdir(current)

    def write_file(
        self, path: str, data: bytes, on_progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Write via a temporary name, then rename: a reset mid-copy never leaves half a module."""
        from mpremote.transport import TransportError

        parent = path.rsplit("/", 1)[0]
        tmp = path + ".tmp"
        try:
            if parent:
                self.makedirs(parent)
            self.transport.fs_writefile(tmp, data, progress_callback=on_progress)
            self.exec(_RENAME_SCRIPT.format(tmp=tmp, path=path), "copy")
        except (TransportError, OSError) as e:
            raise _lost("copy", e, f"writing {path} failed") from None

    def remove(self, path: str) -> None:
        self.exec(f"import os\nos.remove({path!r})", "copy")

    def exists(self, paths: Iterable[str], step: str) -> dict[str, bool]:
        """Which of `paths` exist on the board, in one round trip."""
        paths = list(paths)
        out = self.exec(_EXISTS_SCRIPT.format(paths=paths), step)
        found = {line.strip() for line in out.splitlines()}
        return {p: p in found for p in paths}

    # -- packages, reset, console -------------------------------------------------------------

    def find_modules(self, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        """For each module name, how `import NAME` fares on the board: ("ok", its __file__),
        ("missing", "") or ("error", the exception), in one round trip."""
        names = list(names)
        out = self.exec(_IMPORT_SCRIPT.format(names=names), "libraries")
        found: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            name, _, rest = line.strip().partition(" ")
            status, _, detail = rest.partition(" ")
            if name in names and status in ("ok", "missing", "error"):
                found[name] = (status, detail.strip())
        for name in names:
            found.setdefault(name, ("error", "the board did not report on it"))
        return found

    def mip_install(
        self, package: str, index: str, target: str = "/lib", on_output: Callable[[str], None] | None = None
    ) -> None:
        """Install a micropython-lib package with mpremote's own `mip` (downloads on the host)."""
        from mpremote.commands import CommandError
        from mpremote.main import State
        from mpremote.mip import do_mip
        from mpremote.transport import TransportError

        state = State()
        state.transport = self.transport
        state._auto_soft_reset = False  # already in the raw REPL; a soft reset here gains nothing
        args = SimpleNamespace(command=["install"], packages=[package], index=index, target=target, mpy=True)
        said = io.StringIO()
        try:
            # mip prints as it goes; keep it and hand it to the caller's progress output.
            with contextlib.redirect_stdout(said):
                do_mip(state, args)
        except CommandError as e:
            raise FlashError(
                "libraries",
                f"installing {package} failed: {e}",
                "check this computer's internet connection (mip downloads on this computer, not on the board), "
                "or pass --mip-index with a local copy of the index",
            ) from None
        except (TransportError, OSError) as e:
            raise _lost("libraries", e, f"installing {package} failed") from None
        finally:
            if on_output:
                for line in said.getvalue().splitlines():
                    if line.strip():
                        on_output(line.strip())

    def hard_reset(self) -> None:
        """machine.reset() without waiting for an answer (the board reboots mid-reply)."""
        from mpremote.transport import TransportError

        try:
            self.transport.exec_raw_no_follow("import time, machine\ntime.sleep_ms(100)\nmachine.reset()")
        except (TransportError, OSError) as e:
            raise FlashError("reset", f"could not reset the board: {e}", "press its RST button") from None
        self.transport.in_raw_repl = False

    def console_lines(self, deadline: float) -> Iterator[str]:
        """Lines the board prints, until `deadline` (time.monotonic()); yields "" when idle."""
        serial = self.transport.serial
        pending = b""
        while time.monotonic() < deadline:
            try:
                n = serial.in_waiting
                chunk = serial.read(n) if n else b""
            except OSError:
                return
            if not chunk:
                yield ""
                time.sleep(0.05)
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")


def _lost(step: str, error: Exception, what: str = "lost contact with the board") -> FlashError:
    return FlashError(
        step,
        f"{what}: {error}",
        "the board reset or went away (its watchdog, a loose cable, a brown-out); rerun: copied files are kept",
        retryable=True,
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text.strip()
