"""`flash provision`: firmware, libraries and config.json onto a board, then wait until the box is online.

Steps (numbered in the output): settings, broker check, compile, connect + handshake, camera check,
libraries (the firmware's frozen umqtt.simple, mip only if missing), copy changed files (sha256 computed on the board), reset, online. Everything before
the reset is idempotent, so a board that resets mid-way is reconnected and the run carries on.

Quiet window: a box running its app has a watchdog that cannot be stopped (on the ESP32 it is the
ESP-IDF task watchdog; mpremote's Ctrl-C / soft reset leave it running, only a hard reset clears it).
So right after the handshake the tool writes `/noapp` and, if the board has an app, hard-resets it:
firmware/main.py then boots without app or watchdog. The marker is removed just before the final
reset, and on failure too (best effort, saying so when it could not be).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path

from gateway.brokeraddr import BrokerAddress, parse_broker_url
from gateway.flash.board import Board, clock, resolve_port
from gateway.flash.bundle import MPY_MAJOR, BoardFile, build_bundle, mpy_cross_version, planned_bundle
from gateway.flash.devconfig import (
    BoxSettings,
    build_config,
    check_template,
    config_bytes,
    key_path,
    lan_address,
    load_template,
    masked,
    parse_overrides,
    read_path,
    valid_device_id,
)
from gateway.flash.errors import FlashError
from gateway.flash.online import check_broker, wait_online
from gateway.flash.progress import Progress
from gateway.flash.settings import box_credentials, gateway_view

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware"
MIP_PACKAGES = ("umqtt.simple",)
MIP_TARGET = "/lib"
DEFAULT_MIP_INDEX = "https://micropython.org/pi/v2"  # mpremote's own default, named so --dry-run can show it
# A board may still reset mid-copy (firmware from before the quiet window, a brown-out); every step
# is idempotent (hash-compared, temp file + rename), so reconnect and carry on.
BOARD_ATTEMPTS = 3
QUIET_MARKER = "/noapp"  # firmware/main.py: present at boot -> no app, no watchdog

PROVISION_STEPS = (
    "settings",
    "broker",
    "compile",
    "connect",
    "camera",
    "libraries",
    "copy",
    "reset",
    "online",
)


def _box_settings(args: argparse.Namespace, progress: Progress) -> tuple[BoxSettings, BrokerAddress]:
    if not valid_device_id(args.device):
        raise FlashError(
            "settings", f"bad device name {args.device!r}", "use a-z, 0-9 and '-', at most 32 characters"
        )
    view = gateway_view(args.config, args.data_dir)
    if args.mqtt_user is not None:
        user, password = args.mqtt_user, args.mqtt_password or ""
        progress.detail(f"MQTT user {user} (from --mqtt-user)")
    else:
        user, password = box_credentials(args.device, view.data_dir)
        progress.detail(f"MQTT user {user} (from the device registry in {view.data_dir})")
    host: str
    if args.broker_host:
        host = str(args.broker_host)
        progress.detail(f"broker {host} (from --broker-host)")
    elif view.broker_host:
        host = view.broker_host
        progress.detail(f"broker {host} (the gateway's broker.url)")
    else:
        lan = lan_address()
        if lan is None:
            raise FlashError(
                "settings",
                "could not find this computer's LAN address for the box to reach the broker",
                "pass --broker-host with the gateway's address on your Wi-Fi network",
            )
        host = lan
        progress.detail(f"broker {host} (this computer's LAN address; override with --broker-host)")
        if view.managed_listen_host and view.managed_listen_host not in ("0.0.0.0", "::", host):
            progress.detail(
                f"warning: the gateway's broker listens on {view.managed_listen_host} only; "
                'set broker.listen_host = "0.0.0.0" so the box can reach it'
            )
    port = args.broker_port or view.broker_port
    if args.broker_port:
        progress.detail(f"broker port {port} (from --broker-port)")
    elif view.live_broker_file is not None:
        progress.detail(f"broker port {port} (the running gateway's broker, from {view.live_broker_file})")
    settings = BoxSettings(
        device=args.device,
        prefix=args.prefix or view.prefix,
        wifi_ssid=args.wifi_ssid or "",
        wifi_password=args.wifi_password or "",
        broker_host=host,
        broker_port=port,
        mqtt_user=user,
        mqtt_password=password,
    )
    # The broker's ACL lets a box read its own topics, so its login can watch for its status
    # (with another client id, so the box is never kicked off). The managed broker's box listener makes
    # a login its client id (the watcher and the box would kick each other off): watch through its
    # local listener, where logins keep their own client ids.
    watch = BrokerAddress(host, port, username=user, password=password)
    if view.watch_url and not args.broker_port:
        w = parse_broker_url(view.watch_url, user, password)
        watch = BrokerAddress(w.host, w.port, username=user, password=password)
    return settings, watch


def _board_config(board: Board, progress: Progress) -> dict | None:
    """The board's current config.json, if it has a readable one."""
    current = board.read_text("/config.json")
    if not current:
        return None
    try:
        old = json.loads(current)
    except ValueError:
        progress.detail("the board's config.json is not valid JSON: it is replaced")
        return None
    return old if isinstance(old, dict) else None


def _wifi_from_board_or_prompt(
    old: dict | None, template: dict, settings: BoxSettings, progress: Progress, interactive: bool
) -> None:
    if settings.wifi_ssid and settings.wifi_password:
        return
    if old:
        ssid = read_path(old, template, "wifi_ssid")
        pw = read_path(old, template, "wifi_password")
        if not settings.wifi_ssid and ssid:
            settings.wifi_ssid = ssid
            progress.detail(f"Wi-Fi {ssid} (kept from the board's config.json)")
        if not settings.wifi_password and pw and settings.wifi_ssid == ssid:
            settings.wifi_password = pw
    if not settings.wifi_ssid:
        if not interactive:
            raise FlashError("settings", "no Wi-Fi network given", "pass --wifi-ssid and --wifi-password")
        settings.wifi_ssid = input("Wi-Fi network name (2.4 GHz): ").strip()
    if not settings.wifi_password:
        if not interactive:
            raise FlashError(
                "settings", f"no Wi-Fi password given for {settings.wifi_ssid}", "pass --wifi-password"
            )
        settings.wifi_password = getpass.getpass(f"Wi-Fi password for {settings.wifi_ssid}: ")


def _dry_run(args: argparse.Namespace, firmware_dir: Path, settings: BoxSettings, progress: Progress) -> int:
    """Steps 2-9 as they would run, from the settings alone: no port is opened."""
    template = load_template(firmware_dir)
    check_template(template)
    overrides = parse_overrides(template, args.set)
    progress.detail(f"device {settings.device}, prefix {settings.prefix}")
    progress.step(
        "broker: not checked (--no-wait)"
        if args.no_wait
        else f"broker: would check {settings.broker_host}:{settings.broker_port} with the box's login"
    )
    progress.step(
        "compile: " + ("off (--no-compile)" if args.no_compile else "mpy-cross " + mpy_cross_version())
    )
    for source, remote in planned_bundle(firmware_dir, compile=not args.no_compile):
        progress.detail(f"{source.relative_to(firmware_dir)} -> {remote}")
    progress.step(f"connect: {args.port or 'auto-detect an ESP32 serial port'}, raw REPL handshake")
    progress.detail(
        f"quiet window: write {QUIET_MARKER}, and hard-reset a board that has an app, so it boots without "
        "its app and watchdog; removed again before the final reset"
    )
    progress.step(
        "camera: " + ("skipped (--no-camera-check)" if args.no_camera_check else "check `import camera`")
    )
    index = args.mip_index or DEFAULT_MIP_INDEX
    progress.step(
        f"libraries: use the firmware's frozen {', '.join(MIP_PACKAGES)}; mip install from {index} to "
        f"{MIP_TARGET} only if `import` fails on the board"
    )
    progress.step("copy: only files whose sha256 on the board differs, then config.json:")
    progress.detail("config.json = firmware/config.example.json, with the board's current values kept, and:")
    shown = masked(build_config(template, settings, None, overrides), template)
    tool_keys = [key_path(template, name) for name in vars(settings)] + [key for key, _ in overrides]
    asked = {
        key_path(template, "wifi_ssid"): not settings.wifi_ssid,
        key_path(template, "wifi_password"): not settings.wifi_password,
    }
    for key in tool_keys:
        shown_value = "(kept from the board, else asked)" if asked.get(key) else json.dumps(_get(shown, key))
        progress.detail(f"  {key} = {shown_value}")
    progress.step(f"reset: remove {QUIET_MARKER}, machine.reset()")
    topic = f"{settings.prefix}/{settings.device}/status"
    progress.step(
        "online: skipped (--no-wait)"
        if args.no_wait
        else f"online: wait up to {args.online_timeout:.0f} s for {topic}"
    )
    progress.done("dry run: the board was not touched")
    return 0


def _get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def do_provision(args: argparse.Namespace) -> int:
    firmware_dir = Path(args.firmware_dir) if args.firmware_dir else FIRMWARE_DIR
    interactive = sys.stdin.isatty() and not args.dry_run
    if args.dry_run:
        progress = Progress(len(PROVISION_STEPS))
        progress.step(f"settings for {args.device} (dry run)")
        settings, _ = _box_settings(args, progress)
        return _dry_run(args, firmware_dir, settings, progress)

    progress = Progress(len(PROVISION_STEPS))
    progress.step(f"settings for {args.device}")
    settings, watch = _box_settings(args, progress)
    template = load_template(firmware_dir)
    check_template(template)  # a firmware/tool key mismatch fails before the board is touched
    overrides = parse_overrides(template, args.set)

    box_login = BrokerAddress(
        settings.broker_host,
        settings.broker_port,
        username=settings.mqtt_user,
        password=settings.mqtt_password,
    )
    if args.no_wait:
        progress.step("broker: not checked (--no-wait)")
    else:
        progress.step(f"broker: check {settings.broker_host}:{settings.broker_port} with the box's login")
        check_broker(box_login)
        progress.detail("reachable, credentials accepted")

    progress.step("compile firmware" + (" (off: copying sources)" if args.no_compile else " with mpy-cross"))
    files = build_bundle(firmware_dir, compile=not args.no_compile)
    progress.detail(f"{len(files)} files, {sum(len(f.data) for f in files)} bytes")

    port = resolve_port(args.port)
    config_file = None
    first_board_step = progress.n
    quiet = False  # the marker may be on the board: remove it if we give up
    for attempt in range(1, BOARD_ATTEMPTS + 1):
        progress.n = first_board_step  # a retry repeats the same numbered steps
        board = Board.connect(port) if attempt == 1 else _reconnect(port)
        try:
            progress.step(f"connect to {port}")
            board.enter_raw_repl(timeout=args.handshake_timeout)
            quiet = True
            board = _enter_quiet_window(board, port, args, progress)
            _prepare_board(board, args, progress)
            progress.step("copy changed files")
            if config_file is None:
                old = _board_config(board, progress)
                _wifi_from_board_or_prompt(old, template, settings, progress, interactive)
                config = build_config(template, settings, old, overrides)
                config_file = BoardFile(None, "/config.json", config_bytes(config))
            _copy_changed(board, [*files, config_file], progress)
            progress.step("reset the board")
            _leave_quiet_window(board)
            quiet = False
            progress.detail(f"removed {QUIET_MARKER}: the box starts its app and watchdog after this reset")
            board.hard_reset()
        except BaseException as e:  # FlashError, Ctrl-C at the Wi-Fi prompt, anything: never strand the box
            board.close()
            retry = isinstance(e, FlashError) and e.retryable and attempt < BOARD_ATTEMPTS
            if not retry:
                if quiet:
                    _cleanup_quiet_window(port, args, progress)
                raise
            assert isinstance(e, FlashError)
            progress.detail(
                f"lost the board during {e.step} ({e.message}); it may have been reset by its watchdog. "
                f"Reconnecting, attempt {attempt + 1} of {BOARD_ATTEMPTS}; files already copied are kept"
            )
            continue
        break
    reset_at = time.monotonic()
    progress.detail("machine.reset() sent")

    with board:
        if args.no_wait:
            progress.step("online: not waiting (--no-wait)")
            progress.done(f"provisioned {args.device}")
            return 0
        topic = f"{settings.prefix}/{settings.device}/status"
        progress.step(f"online: waiting up to {args.online_timeout:.0f} s for {topic}")
        console = board.console_lines(time.monotonic() + args.online_timeout)
        status = wait_online(
            watch,
            topic,
            reset_at,
            args.online_timeout,
            console,
            on_console=lambda s: progress.detail("box | " + s),
        )
    fw = status.get("fw", "?")
    rssi = status.get("rssi")
    progress.done(
        f"{args.device} is online (firmware {fw}"
        + (f", Wi-Fi signal {rssi} dBm" if rssi is not None else "")
        + ")"
    )
    return 0


def _reconnect(port: str, timeout: float = 10.0) -> Board:
    """Open the port again after the board dropped it (a USB-native board re-enumerates on reset)."""
    deadline = clock().monotonic() + timeout
    while True:
        try:
            return Board.connect(port)
        except FlashError:
            if clock().monotonic() > deadline:
                raise
            clock().sleep(0.5)


def _enter_quiet_window(board: Board, port: str, args: argparse.Namespace, progress: Progress) -> Board:
    """Make sure the board runs neither its app nor its watchdog while we work; returns the board to use."""
    state = board.exists([QUIET_MARKER, "/main.py", "/main.mpy"], "connect")
    if state[QUIET_MARKER]:
        progress.detail(f"quiet window: {QUIET_MARKER} is on the board, its app and watchdog are not running")
        return board
    board.exec(f"open({QUIET_MARKER!r}, 'w').close()", "connect")
    if not (state["/main.py"] or state["/main.mpy"]):
        progress.detail(f"quiet window: {QUIET_MARKER} written (no app on the board yet, so no watchdog)")
        return board
    # The app's watchdog is running and nothing can stop it but a hard reset.
    progress.detail(
        f"quiet window: {QUIET_MARKER} written; resetting so the box boots without its app and watchdog"
    )
    board.hard_reset()
    board.close()
    board = _reconnect(port)
    try:
        # It is booting now and drops what it receives until MicroPython is up: the handshake
        # repeats its interrupt until the REPL answers (Board.wait_for_repl).
        board.enter_raw_repl(timeout=args.handshake_timeout)
        if not board.exists([QUIET_MARKER], "connect")[QUIET_MARKER]:
            raise FlashError(
                "connect", f"{QUIET_MARKER} vanished from the board across its reset", "rerun provision"
            )
    except BaseException:
        board.close()  # the caller only knows the board it passed in
        raise
    return board


def _leave_quiet_window(board: Board) -> None:
    board.exec(f"import os\ntry:\n    os.remove({QUIET_MARKER!r})\nexcept OSError:\n    pass", "reset")
    if board.exists([QUIET_MARKER], "reset")[QUIET_MARKER]:
        raise FlashError(
            "reset",
            f"could not remove {QUIET_MARKER} from the board, so the box would not start its app",
            "rerun provision",
        )


def _cleanup_quiet_window(port: str, args: argparse.Namespace, progress: Progress) -> None:
    """Best effort after a failure: take the marker away so the box runs its app at its next reset."""
    try:
        with _reconnect(port, timeout=3.0) as board:
            board.enter_raw_repl(timeout=args.handshake_timeout)
            _leave_quiet_window(board)
    except (FlashError, OSError) as e:
        progress.detail(
            f"could not remove {QUIET_MARKER} from the board ({e}): the box will not start its app until it is "
            f"removed. Rerun provision, or in `parcelbox flash shell --port {port}` type "
            f"import os; os.remove({QUIET_MARKER!r}) and press RST (plain mpremote holds an ESP32-CAM-MB in reset "
            "on Linux)"
        )
        return
    progress.detail(
        f"removed {QUIET_MARKER} from the board: the box starts its app at its next reset (press RST)"
    )


def _prepare_board(board: Board, args: argparse.Namespace, progress: Progress) -> None:
    """Firmware checks and libraries: everything between the handshake and the copy."""
    info = board.info()
    if info.implementation != "micropython":
        raise FlashError("handshake", f"the board runs {info.implementation}, not MicroPython")
    progress.detail(f"MicroPython {info.release} on {info.machine}")
    if not args.no_compile and info.mpy != MPY_MAJOR:
        raise FlashError(
            "compile",
            f"this MicroPython loads .mpy version {info.mpy or 'unknown'}, mpy-cross makes version {MPY_MAJOR}",
            "flash MicroPython 1.19 or newer, or pass --no-compile to copy sources",
        )
    if args.no_camera_check:
        progress.step("camera: not checked (--no-camera-check)")
    else:
        progress.step("camera: check the firmware has camera support")
        error = board.camera_error()
        if error:
            raise FlashError(
                "camera",
                f"this MicroPython build has no camera support ({error})",
                "flash an ESP32-CAM build that includes the camera module (see hardware/README.md), "
                "or pass --no-camera-check for a test board without a camera",
            )
        progress.detail("import camera: ok")
    progress.step(f"libraries: {', '.join(MIP_PACKAGES)}")
    _install_libraries(board, args, progress)


def _install_libraries(board: Board, args: argparse.Namespace, progress: Progress) -> None:
    """mip-install a library only when the board cannot import it.

    umqtt.simple is frozen into every MicroPython ESP32 build (ports/esp32/boards/manifest.py:
    `require("umqtt.simple")`, v1.20-v1.27; in v1.19 only release builds, manifest_release.py), and
    `.frozen` comes before `/lib` on the ESP32's sys.path (py/runtime.c, ports/esp32/main.c), so a
    /lib copy would never even be imported.
    Downloading it anyway made provision fail on a host without internet for nothing. Builds made
    from a trimmed manifest (some camera builds) may lack it: then mip installs it.
    """
    found = board.find_modules(MIP_PACKAGES)
    for package in MIP_PACKAGES:
        status, where = found[package]
        in_lib = status == "ok" and where.startswith(MIP_TARGET + "/")
        if status == "ok" and not in_lib:
            progress.detail(
                f"{package}: frozen into this MicroPython build (import {package} works), nothing to install"
            )
            if args.reinstall_libs:
                progress.detail(
                    f"{package}: not reinstalled: the frozen copy comes before {MIP_TARGET} on the board's sys.path, "
                    f"so a copy in {MIP_TARGET} would never be imported"
                )
            continue
        if in_lib and not args.reinstall_libs:
            progress.detail(f"{package}: already on the board in {where} (--reinstall-libs to update)")
            continue
        if status == "error":
            progress.detail(f"{package}: import {package} fails on the board ({where}): installing it again")
        index = args.mip_index or DEFAULT_MIP_INDEX
        progress.detail(f"{package}: not in this MicroPython build: mip install from {index}")
        board.mip_install(package, index, MIP_TARGET, on_output=lambda line: progress.detail("mip: " + line))


def _copy_changed(board: Board, files: list[BoardFile], progress: Progress) -> None:
    twins = [f.stale_twin for f in files if f.stale_twin]
    on_board = board.sha256([f.remote for f in files] + twins)
    copied = 0
    for f in files:
        if on_board.get(f.remote) == f.sha256:
            progress.detail(f"unchanged {f.remote}")
            continue
        progress.detail(f"copy {f.remote} ({len(f.data)} bytes)")
        board.write_file(f.remote, f.data)
        copied += 1
    for twin in twins:
        if on_board.get(twin):
            progress.detail(f"remove stale {twin}")
            board.remove(twin)
    after = board.sha256([f.remote for f in files])
    wrong = [f.remote for f in files if after.get(f.remote) != f.sha256]
    if wrong:
        raise FlashError("copy", f"verification failed for {', '.join(wrong)}", "rerun provision")
    progress.detail(f"{copied} copied, {len(files) - copied} unchanged, all verified by sha256")
