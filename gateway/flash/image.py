"""Erase the ESP32 and write a MicroPython image with esptool (never downloads one)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.flash.errors import FlashError

# Classic ESP32 images start with the second-stage bootloader, which lives at 0x1000.
ESP32_IMAGE_OFFSET = 0x1000
ESP_IMAGE_MAGIC = 0xE9

EsptoolRunner = Callable[[Sequence[str]], None]


def check_image(path: Path) -> int:
    """Size of a plausible ESP32 firmware image, or a FlashError saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError("image", f"cannot read {path}: {e.strerror or e}") from None
    if len(data) < 64 * 1024:
        raise FlashError("image", f"{path} is {len(data)} bytes: too small for a MicroPython image")
    if data[0] != ESP_IMAGE_MAGIC:
        raise FlashError(
            "image",
            f"{path} does not start with the ESP image magic byte 0xE9",
            "use the .bin for ESP32 that includes the bootloader (written at 0x1000), not a .uf2/.dfu/.elf",
        )
    return len(data)


def esptool_commands(
    port: str, image: Path, baud: int, connect_attempts: int | None = None
) -> list[list[str]]:
    common = ["--chip", "esp32", "--port", port, "--baud", str(baud)]
    if connect_attempts:
        common += ["--connect-attempts", str(connect_attempts)]
    return [
        [*common, "erase-flash"],
        [*common, "write-flash", "-z", hex(ESP32_IMAGE_OFFSET), str(image)],
    ]


def run_esptool(argv: Sequence[str]) -> None:
    """esptool in this process; its errors become FlashErrors."""
    try:
        import esptool
    except ImportError:
        raise FlashError("esptool", "esptool is not installed", "pip install 'parcelbox[flash]'") from None
    import serial

    try:
        esptool.main(list(argv))
    except esptool.FatalError as e:
        hint = "check the port and cable"
        if "connect" in str(e).lower():
            hint = (
                "put the board in download mode: on the ESP32-CAM-MB hold IO0 while pressing RST; "
                "on a plain USB-serial adapter bridge IO0 to GND and power-cycle"
            )
        raise FlashError("esptool", str(e), hint) from None
    except serial.SerialException as e:
        raise FlashError("esptool", f"serial error: {e}", "close other programs using the port") from None
    except SystemExit as e:
        raise FlashError("esptool", f"esptool stopped with exit code {e.code}") from None
