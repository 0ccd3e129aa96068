"""A failed Wi-Fi join is reported with its cause, read from wlan.status() with the port's own
STAT_* names (ESP32, ESP8266 and rp2 number them differently), under CPython and MicroPython.

The printed line is a contract with the flash tool: the last test feeds it to the tool's parser.
"""

from __future__ import annotations

import types

import link
import pytest

from gateway.flash.online import classify_console_line

# The ESP32 port's values (ports/esp32/modnetwork_globals.h: ESP-IDF reason codes for failures).
ESP32 = types.SimpleNamespace(
    STA_IF=0,
    STAT_IDLE=1000,
    STAT_CONNECTING=1001,
    STAT_GOT_IP=1010,
    STAT_BEACON_TIMEOUT=200,
    STAT_NO_AP_FOUND=201,
    STAT_WRONG_PASSWORD=202,
    STAT_ASSOC_FAIL=203,
    STAT_HANDSHAKE_TIMEOUT=204,
)
# The ESP8266 port's (station status enum) and the rp2's (CYW43 link status).
ESP8266 = types.SimpleNamespace(
    STAT_IDLE=0,
    STAT_CONNECTING=1,
    STAT_WRONG_PASSWORD=2,
    STAT_NO_AP_FOUND=3,
    STAT_CONNECT_FAIL=4,
    STAT_GOT_IP=5,
)
RP2 = types.SimpleNamespace(
    STAT_IDLE=0,
    STAT_CONNECTING=1,
    STAT_WRONG_PASSWORD=-3,
    STAT_NO_AP_FOUND=-2,
    STAT_CONNECT_FAIL=-1,
    STAT_GOT_IP=3,
)


class FailingWlan:
    """A station that never connects and reports `code` from status() until disconnect() clears it
    (what MicroPython on the ESP32 does: disconnect() turns the reason into STAT_IDLE)."""

    def __init__(self, code, idle=1000):
        self.code = code
        self.idle = idle
        self.configured = {}
        self.calls = []

    def active(self, *a):
        return True

    def isconnected(self):
        return False

    def connect(self, ssid, password):
        self.calls.append("connect")

    def disconnect(self):
        self.calls.append("disconnect")
        self.code = self.idle

    def status(self, what=None):
        if what == "rssi":
            raise OSError(1)
        return self.code

    def config(self, **kw):
        self.configured.update(kw)


@pytest.mark.parametrize(
    "network, code, cause",
    [
        (ESP32, 202, "wrong_password"),
        (ESP32, 201, "no_ap_found"),
        (ESP32, 204, "handshake_timeout"),
        (ESP32, 15, "handshake_timeout"),  # 4-way handshake timeout, passed through by older MicroPython
        (ESP32, 210, "no_ap_found"),  # ESP-IDF 5.2+: no AP with compatible security
        (ESP32, 203, "connect_fail"),
        (ESP32, 1001, "timeout"),  # still "connecting": no verdict
        (ESP32, 2, "connect_fail"),  # a failure code without a STAT_ name
        (ESP8266, 2, "wrong_password"),
        (ESP8266, 3, "no_ap_found"),
        (ESP8266, 4, "connect_fail"),
        (ESP8266, 201, "connect_fail"),  # the ESP-IDF extras apply to the ESP32's numbering only
        (RP2, -3, "wrong_password"),
        (RP2, -2, "no_ap_found"),
        (RP2, 1, "timeout"),
        (None, 202, "timeout"),  # no network module given: no names, no guessing
    ],
)
def test_join_failure_names_its_cause(network, code, cause):
    wlan = FailingWlan(code, idle=getattr(network, "STAT_IDLE", 0))
    lines = []
    wifi = link.Wifi(wlan, "home", "pw", 1000, link.Backoff(2000, 60000), log=lines.append, network=network)
    assert wifi.poll(0) is False and wlan.calls == ["disconnect", "connect"]
    assert wifi.poll(999) is False and lines == []
    wlan.code = code  # the attempt's verdict (the disconnect before connect cleared the old one)
    assert wifi.poll(1000) is False
    assert lines == [f"wifi: join failed: {cause} (status {code}) ssid='home', retry in 2000 ms"]
    assert wifi.last_error == cause and wifi.failures == 1
    assert wlan.calls[-1] == "disconnect"  # status was read before this cleared it


def test_status_that_raises_or_is_not_a_number_reads_as_timeout():
    wlan = FailingWlan(None)
    lines = []
    wifi = link.Wifi(wlan, "home", "pw", 1000, link.Backoff(2000, 60000), log=lines.append, network=ESP32)
    wifi.poll(0)
    wlan.code = "connecting"  # not a number
    wifi.poll(1000)
    assert lines[-1] == "wifi: join failed: timeout (status ?) ssid='home', retry in 2000 ms"

    def boom(what=None):
        raise OSError(5)

    wlan.status = boom
    wifi.poll(3000)
    wifi.poll(4000)
    assert lines[-1].startswith("wifi: join failed: timeout (status ?)")


def test_bounded_reconnects_are_asked_for_once_and_ports_without_them_are_fine():
    wlan = FailingWlan(202)
    wifi = link.Wifi(wlan, "home", "pw", 1000, link.Backoff(10, 10), log=lambda m: None, network=ESP32)
    for now in range(0, 5000, 100):
        wifi.poll(now)
    assert wlan.configured == {"reconnects": 2} and wlan.calls.count("connect") > 1

    class NoConfig(FailingWlan):
        def config(self, **kw):
            raise ValueError("unknown config param")

    wifi = link.Wifi(NoConfig(202), "home", "pw", 1000, log=lambda m: None, network=ESP32)
    assert wifi.poll(0) is False and wifi._connecting  # the join still started


def test_last_error_is_kept_after_a_later_success():
    wlan = FailingWlan(202)
    wifi = link.Wifi(wlan, "home", "pw", 1000, link.Backoff(100, 100), log=lambda m: None, network=ESP32)
    wifi.poll(0)
    wlan.code = 202
    wifi.poll(1000)
    wlan.isconnected = lambda: True
    assert wifi.poll(2000) is True and wifi.last_error == "wrong_password"


def test_join_failure_cases_under_micropython(micropython):
    script = """
import link

class Net:
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    STAT_HANDSHAKE_TIMEOUT = 204

class Wlan:
    def __init__(self):
        self.code = 1000
    def active(self, *a):
        return True
    def isconnected(self):
        return False
    def connect(self, s, p):
        pass
    def disconnect(self):
        self.code = 1000
    def status(self, *a):
        return self.code
    def config(self, **kw):
        raise ValueError('unknown config param')

for code in (202, 201, 204, 15, 1001, 7):
    w = Wlan()
    wifi = link.Wifi(w, 'home', 'pw', 1000, link.Backoff(2000, 60000), log=print, network=Net)
    wifi.poll(0)
    w.code = code
    wifi.poll(1000)
print(sorted(link.join_failure_codes(Net).items()))
"""
    out = micropython(script).check().stdout.splitlines()
    assert out[:6] == [
        "wifi: join failed: wrong_password (status 202) ssid='home', retry in 2000 ms",
        "wifi: join failed: no_ap_found (status 201) ssid='home', retry in 2000 ms",
        "wifi: join failed: handshake_timeout (status 204) ssid='home', retry in 2000 ms",
        "wifi: join failed: handshake_timeout (status 15) ssid='home', retry in 2000 ms",
        "wifi: join failed: timeout (status 1001) ssid='home', retry in 2000 ms",
        "wifi: join failed: connect_fail (status 7) ssid='home', retry in 2000 ms",
    ]
    same_names = types.SimpleNamespace(
        STAT_IDLE=1000,
        STAT_CONNECTING=1001,
        STAT_NO_AP_FOUND=201,
        STAT_WRONG_PASSWORD=202,
        STAT_HANDSHAKE_TIMEOUT=204,
    )
    assert out[6] == str(sorted(link.join_failure_codes(same_names).items()))


@pytest.mark.parametrize(
    "code, words",
    [
        (202, "wrong password"),
        (201, "no network with that name"),
        (204, "the Wi-Fi handshake timed out"),
        (1001, "no answer from the network"),
    ],
)
def test_the_printed_line_is_what_the_flash_tool_understands(code, words):
    """The contract between firmware/link.py and gateway/flash/online.py, on the exact line."""
    wlan = FailingWlan(code)
    lines = []
    wifi = link.Wifi(
        wlan, "Home 'Net'", "pw", 1000, link.Backoff(2000, 60000), log=lines.append, network=ESP32
    )
    wifi.poll(0)
    wlan.code = code
    wifi.poll(1000)
    err = classify_console_line(lines[0])
    assert err is not None and err.step == "wifi"
    assert f"the box could not join Wi-Fi \"Home 'Net'\": {words}" in err.message
    assert f"status {code}" in err.message
