"""`parcelbox flash` (also `python tools/flash.py`): put MicroPython and the parcelbox firmware on a box.

Built on mpremote's Python API (its serial transport, raw REPL and `mip`) and on esptool. The modules:

- `cli`: the command table (`ports`, `install-micropython`, `provision`, `logs`, `shell`) and `register`.
- `board`: one connected board, opened with DTR/RTS released; a handshake that waits out a boot; turns
  transport failures into `FlashError`s a person can act on.
- `serialports`: which serial ports look like an ESP32 board.
- `bundle`: which firmware files go to the board, compiled with mpy-cross.
- `devconfig`: the box's `config.json`, built from the gateway's settings and the device registry.
- `online`: broker checks and waiting for the box's retained `online` status.
- `image`: checking a full MicroPython image (esptool's parser), erasing and writing it with esptool.
"""

from gateway.flash.cli import main, register

__all__ = ["main", "register"]
