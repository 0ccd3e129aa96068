"""The edge of the board, faked: what `tools/simulate.py` runs the real firmware on, shared with the tests.

- `fake_camera`, `fake_net`: faithful fakes of the ESP32 camera drivers and of MicroPython's
  socket + station interface, plain Python that also runs under real MicroPython (the tests mount
  this folder at /sim; tests/support/micropython.py). Sources cited in each file.
- `board`: the one fake of the board's `machine`, `esp32` and `network` modules, for
  `firmware/main.py` in the simulator and the tests (CPython and MicroPython): pins that keep their
  level across a reboot (the wiring), the watchdog, deep sleep and wake reasons, a virtual clock.
- `paho_umqtt`: umqtt.simple's `MQTTClient` on paho-mqtt (a real broker on the far end).
- `lens`: what the camera sees (JPEG files or generated ones, lit by the flash or dark) and the
  driver fake built over it.

Names here must not be those of board modules (`camera`, `machine`, `network`, `umqtt`): under
MicroPython this folder is on `sys.path`.
"""
