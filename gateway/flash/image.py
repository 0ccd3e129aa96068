"""Erase the ESP32 and write a MicroPython image with esptool (never downloads one)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.flash.errors import FlashError

# Classic ESP32 images start with the second-stage bootloader, which lives at 0x1000.
ESP32_IMAGE_OFFSET = 0x1000
ESP_IMAGE_MAGIC = 0xE9
# ESP-IDF's default partition table offset (CONFIG_PARTITION_TABLE_OFFSET, "Partition Tables" in the
# ESP-IDF guide) and its entry magic ESP_PARTITION_MAGIC 0x50AA, stored little-endian: AA 50. A
# MicroPython "firmware.bin" for the ESP32 is bootloader + partition table + app, written at 0x1000, so
# the table sits 0x7000 into the file and the app (flash 0x10000) 0xF000 into it.
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_MAGIC = b"\xaa\x50"
APP_OFFSET = 0x10000
# The chip id in the image's extended header (esptool bin_image: EXTENDED_HEADER_STRUCT_FMT, field 4,
# at byte 12); the ESP32-CAM's classic ESP32 is 0.
CHIP_IDS = {0: "ESP32", 2: "ESP32-S2", 5: "ESP32-C3", 9: "ESP32-S3", 12: "ESP32-C2", 13: "ESP32-C6",
            16: "ESP32-H2", 18: "ESP32-P4"}  # fmt: skip

EsptoolRunner = Callable[[Sequence[str]], None]

_DOWNLOAD_HINT = (
    "use the camera build's full firmware .bin, the one flashed at 0x1000 (a release's firmware .bin; built "
    "yourself: build-ESP32_GENERIC-SPIRAM/firmware.bin; hardware/README.md step 3), not micropython.bin, "
    "which is the app alone"
)


def check_image(path: Path) -> int:
    """Size of a full ESP32 firmware image, or a FlashError saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError("image", f"cannot read {path}: {e.strerror or e}") from None
    check_image_bytes(data, str(path))
    return len(data)


def check_image_bytes(data: bytes, name: str) -> None:
    """Raise a FlashError unless `data` is bootloader + partition table + app for a classic ESP32.

    The first byte alone (0xE9) cannot tell a full image from the app image a MicroPython build also
    produces (micropython.bin, meant for 0x10000): both start with it. Written at 0x1000, an app-only
    image leaves the board without bootloader or partition table, so it never boots again. esptool
    parses the images (its own loader, esptool 5.1 `bin_image.LoadFirmwareImage`).
    """
    if len(data) < 64 * 1024:
        raise FlashError("image", f"{name} is {len(data)} bytes: too small for a MicroPython image")
    if data[0] != ESP_IMAGE_MAGIC:
        raise FlashError(
            "image",
            f"{name} does not start with the ESP image magic byte 0xE9",
            "use the .bin for ESP32 that includes the bootloader (written at 0x1000), not a .uf2/.dfu/.elf",
        )
    chip_id = int.from_bytes(data[12:14], "little")
    if chip_id != 0:
        chip = CHIP_IDS.get(chip_id, f"chip id {chip_id}")
        raise FlashError(
            "image",
            f"{name} is built for the {chip}; the ESP32-CAM has a classic ESP32",
            "download the ESP32_GENERIC build (or an ESP32-CAM camera build), not one for another chip",
        )
    first = _parse(data, 0, name, "at its start")
    table_at = PARTITION_TABLE_OFFSET - ESP32_IMAGE_OFFSET
    if data[table_at : table_at + 2] != PARTITION_MAGIC:
        if any(first.is_flash_addr(segment.addr) for segment in first.segments):
            raise FlashError(
                "image",
                f"{name} is an app-only image (the MicroPython app without bootloader and partition table, "
                f"meant for {hex(APP_OFFSET)}); written at {hex(ESP32_IMAGE_OFFSET)} it would leave the board "
                "unable to boot",
                _DOWNLOAD_HINT,
            )
        raise FlashError(
            "image",
            f"{name} has no partition table at flash {hex(PARTITION_TABLE_OFFSET)} (file offset {hex(table_at)}): "
            "not a full MicroPython image for the ESP32",
            _DOWNLOAD_HINT,
        )
    app = _parse(data, APP_OFFSET - ESP32_IMAGE_OFFSET, name, f"at flash {hex(APP_OFFSET)}")
    if not any(app.is_flash_addr(segment.addr) for segment in app.segments):
        raise FlashError(
            "image",
            f"{name} has no application at flash {hex(APP_OFFSET)}: not a full MicroPython image",
            _DOWNLOAD_HINT,
        )


def _parse(data: bytes, offset: int, name: str, where: str):
    try:
        from esptool.bin_image import LoadFirmwareImage
    except ImportError:
        raise FlashError("esptool", "esptool is not installed", "pip install 'parcelbox[flash]'") from None
    if data[offset : offset + 1] != bytes([ESP_IMAGE_MAGIC]):
        raise FlashError(
            "image", f"{name} has no ESP image {where}: not a full MicroPython image", _DOWNLOAD_HINT
        )
    try:
        return LoadFirmwareImage("esp32", data[offset:])
    except Exception as e:  # esptool raises FatalError, struct.error or RuntimeError on a broken header
        raise FlashError("image", f"{name} has a broken ESP image {where}: {e}", _DOWNLOAD_HINT) from None


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
