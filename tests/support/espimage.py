"""ESP32 firmware image files shaped like MicroPython's, built with esptool's own image writer.

A MicroPython ESP32 `firmware.bin` (the ESP32_GENERIC download, or a camera build's firmware.bin) is
what `idf.py` merges for a flash write at 0x1000: the second-stage bootloader (an image whose segments
load into RAM), the partition table at flash 0x8000 (32-byte entries starting AA 50, ESP-IDF
"Partition Tables"; an MD5 entry starting EB EB; 0xFF after), and the app at flash 0x10000 (an image
with flash-mapped DROM/IROM segments). The build also leaves the app alone as `micropython.bin`,
which is the file people pick by mistake. Segment contents are filler: only the layout matters here.
"""

from __future__ import annotations

import hashlib
import struct

from esptool.bin_image import ELFSection, ESP32FirmwareImage, ESP32S3FirmwareImage

IMAGE_CLASSES = {"esp32": ESP32FirmwareImage, "esp32s3": ESP32S3FirmwareImage}

PARTITION_TABLE_AT = 0x8000 - 0x1000  # file offsets: the file is written at 0x1000
APP_AT = 0x10000 - 0x1000


def _image(segments: list[tuple[str, int, bytes]], entry: int, chip: str = "esp32") -> bytes:
    """An image as `esptool elf2image` writes it from the sections of an ELF file."""
    image = IMAGE_CLASSES[chip]()
    image.entrypoint = entry
    image.segments = [ELFSection(name.encode(), addr, data, flags=0) for name, addr, data in segments]
    data = image.save(None)
    assert isinstance(data, bytes)
    return data


def bootloader(chip: str = "esp32") -> bytes:
    sections = [(".dram0.rodata", 0x3FFF0030, bytes(0x400)), (".iram_loader.text", 0x40078000, bytes(0x3000))]
    return _image(sections, 0x40080400, chip)


def app(chip: str = "esp32") -> bytes:
    """The app alone (`micropython.bin`): DROM and IROM segments mapped from flash, plus RAM ones."""
    return _image(
        [
            (".flash.rodata", 0x3F400020, b"\x11" * 0x6000),  # DROM: constants
            (".dram0.data", 0x3FFB0000, b"\x33" * 0x200),
            (".iram0.text", 0x40080000, b"\x44" * 0x400),
            (".flash.text", 0x400D0020, b"\x22" * 0x12000),  # IROM: code
        ],
        0x40081000,
        chip,
    )


def partition_table() -> bytes:
    """nvs, phy_init, factory app, vfs: MicroPython's ports/esp32/partitions-4MiB.csv."""
    rows = [
        (1, 0x02, 0x9000, 0x6000, b"nvs"),
        (1, 0x01, 0xF000, 0x1000, b"phy_init"),
        (0, 0x00, 0x10000, 0x1F0000, b"factory"),
        (1, 0x81, 0x200000, 0x200000, b"vfs"),
    ]
    table = b"".join(
        b"\xaa\x50" + struct.pack("<BBII16sI", kind, sub, off, size, label, 0)
        for kind, sub, off, size, label in rows
    )
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table + b"\xff" * (0xC00 - len(table))


def full_image(chip: str = "esp32") -> bytes:
    """What `install-micropython` wants: bootloader, partition table and app, to be written at 0x1000."""
    data = bytearray(b"\xff" * APP_AT)
    boot = bootloader(chip)
    data[: len(boot)] = boot
    table = partition_table()
    data[PARTITION_TABLE_AT : PARTITION_TABLE_AT + len(table)] = table
    return bytes(data) + app(chip)
