"""Serial ports that look like an ESP32 board, and why a port cannot be opened."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

# USB-to-serial bridges found on ESP32-CAM programmer boards (ESP32-CAM-MB, FTDI adapters) and
# Espressif's own USB interface. A port with one of these ids is very likely our board.
ESP32_USB_IDS: dict[int, str] = {
    0x10C4: "Silicon Labs CP210x",
    0x1A86: "WCH CH340/CH9102",
    0x0403: "FTDI",
    0x303A: "Espressif USB",
}


@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str
    vid: int | None
    pid: int | None

    @property
    def looks_like_esp32(self) -> bool:
        return self.vid in ESP32_USB_IDS

    def label(self) -> str:
        ids = f"{self.vid:04x}:{self.pid or 0:04x}" if self.vid is not None else "----:----"
        chip = ESP32_USB_IDS.get(self.vid or -1, "")
        return f"{self.device}  {ids}  {chip or self.description}"


def list_ports() -> list[PortInfo]:
    """All USB serial ports pyserial can see (built-in UARTs without a USB id are left out)."""
    from serial.tools import list_ports as lp

    found = [
        PortInfo(p.device, p.description or "", p.vid, p.pid) for p in lp.comports() if p.vid is not None
    ]
    return sorted(found, key=lambda p: p.device)


def esp32_ports() -> list[PortInfo]:
    return [p for p in list_ports() if p.looks_like_esp32]


def holders_of(path: str) -> list[int]:
    """Pids of processes that have `path` open (Linux /proc; empty where it cannot be read)."""
    target = os.path.realpath(path)
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.path.realpath(os.readlink(fd)) == target:
                        pids.append(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return sorted(pids)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def why_unopenable(port: str) -> tuple[str, str, str]:
    """Classify a port that mpremote could not open: (kind, message, hint).

    kind is "missing", "busy", "permission" or "other". pyserial hides the cause behind one
    generic error, so open the port once more ourselves to learn it.
    """
    if not os.path.exists(port):
        return (
            "missing",
            f"no board found at {port} (the port does not exist)",
            "plug the board in with a data-capable USB cable; `parcelbox flash ports` lists what is connected",
        )
    import serial

    try:
        s = serial.Serial(port, exclusive=True)
        s.close()
    except serial.SerialException as e:
        text = str(e)
        err = e.errno if isinstance(e.errno, int) else None
        if "exclusively lock" in text or err in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
            others = [p for p in holders_of(port) if p != os.getpid()]
            who = ", ".join(f"{process_name(p)} (pid {p})" for p in others) or "another program"
            return (
                "busy",
                f"port {port} is busy: {who} has it open",
                "close the serial monitor / other flash or logs session (or ModemManager, Thonny, screen) and retry",
            )
        if err in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
            return (
                "permission",
                f"no permission to open {port}",
                "add yourself to the serial group and log in again: sudo usermod -aG dialout $USER",
            )
        return ("other", f"cannot open {port}: {text}", "unplug and re-plug the board, then retry")
    return ("other", f"cannot open {port} through mpremote", "retry; if it persists, re-plug the board")
