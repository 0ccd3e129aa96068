"""pyserial URL handler for `fakeboard://N` (pyserial looks up `<package>.protocol_<scheme>` in
`serial.protocol_handler_packages`): the fake board behind its programmer, see fakeboard.ProgrammerPort."""

from tests.support.fakeboard import serial_class_for_url

__all__ = ["serial_class_for_url"]
