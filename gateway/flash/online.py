"""Broker checks from this computer, and waiting for the box's retained `online` status.

While waiting, the board's serial console is read too: the firmware prints what goes wrong
(Wi-Fi refused, broker unreachable, a crash) long before a status would time out.
"""

from __future__ import annotations

import ast
import json
import queue
import re
import time
import uuid
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt

from gateway.brokeraddr import BrokerAddress
from gateway.flash.errors import FlashError

# Console lines that end the wait early, with the step that failed and a hint. They match what
# firmware/link.py prints ("wifi: ...", "mqtt: connect failed: <repr of the exception>, retry ...");
# its Wi-Fi join-failure line, which names the cause, is read by _wifi_join_failure below.
# umqtt.simple raises MQTTException(4) / (5) when the broker refuses the login.
CONSOLE_FAILURES: list[tuple[re.Pattern[str], str, str, str]] = [
    (
        re.compile(
            r"(?i)wi-?fi.*(wrong.?password|auth\w*.?fail|STAT_WRONG_PASSWORD|handshake.?timeout|bad.?password)"
        ),
        "wifi",
        "the box reports the Wi-Fi password is wrong",
        "rerun provision with the right --wifi-password",
    ),
    (
        re.compile(r"(?i)wi-?fi.*(no.?ap.?found|STAT_NO_AP_FOUND|no such network)"),
        "wifi",
        "the box cannot find the Wi-Fi network",
        "check --wifi-ssid (2.4 GHz networks only; the ESP32 has no 5 GHz radio) and the box's distance to the router",
    ),
    (
        re.compile(r"(?i)wi-?fi: (no connection after|connect failed)"),
        "wifi",
        "the box could not join the Wi-Fi network (wrong password, wrong network name, or out of range)",
        "check --wifi-ssid and --wifi-password (2.4 GHz only) and rerun provision",
    ),
    (
        re.compile(r"(?i)mqtt.*(MQTTException\(\s*[45]\b|not.?authori[sz]ed|bad user|auth\w* fail)"),
        "broker",
        "the broker refused the box's MQTT username/password",
        "re-create the credentials with `parcelbox device add NAME` and provision again",
    ),
    (
        re.compile(r"(?i)mqtt: connect failed|mqtt.*(ECONNREFUSED|EHOSTUNREACH|ETIMEDOUT|unreachable)"),
        "broker",
        "the box cannot reach the broker",
        "check --broker-host is this computer's LAN address and the broker listens on it (not only 127.0.0.1); "
        "check the firewall allows the MQTT port",
    ),
    (
        re.compile(r"parcelbox: quiet window: (\S+) is present"),
        "firmware",
        "the box booted in its quiet window (the marker file is still on it), so its app did not start",
        "rerun provision (it removes the marker), or in `parcelbox flash shell` type "
        "import os; os.remove('/noapp') and press RST",
    ),
    (
        re.compile(r'^Type "help\(\)" for more information'),
        "firmware",
        "main.py ended and the board is sitting at the MicroPython prompt",
        "run `parcelbox flash logs --reset` to see the error it printed on the way",
    ),
]

# firmware/main.py's safe_idle(): a header, one "  - problem" line each, then a rule of "=".
_CANNOT_START = "parcelbox: the box cannot start"


# firmware/link.py's documented join-failure line:
#   wifi: join failed: <cause> (status <n>) ssid=<python repr of the SSID>, retry in <ms> ms
WIFI_JOIN_FAILED = re.compile(
    r"wifi: join failed: (?P<cause>[a-z_]+) \(status (?P<status>-?\d+|\?)\)(?: ssid=(?P<ssid>.*?))?, retry in"
)
_RERUN = "parcelbox flash provision --device NAME"
WIFI_CAUSES: dict[str, tuple[str, str]] = {
    "wrong_password": (
        "wrong password",
        f"re-run provision with the right password: {_RERUN} --wifi-password '...'",
    ),
    "handshake_timeout": (
        "the Wi-Fi handshake timed out, which on the ESP32 almost always means a wrong password",
        f"re-run provision with the right password: {_RERUN} --wifi-password '...'",
    ),
    "no_ap_found": (
        "no network with that name in reach",
        "check the name (case matters; 2.4 GHz networks only, the ESP32 has no 5 GHz radio) and the box's "
        f"distance to the router, then re-run {_RERUN} --wifi-ssid '...'",
    ),
    "connect_fail": (
        "the access point refused the connection",
        "check --wifi-ssid and --wifi-password, that the router accepts new devices (MAC filter, "
        "WPA3-only mode), then re-run provision",
    ),
    "timeout": (
        "no answer from the network before the box's join timeout (wrong password, wrong network name, or out "
        "of range)",
        "check --wifi-ssid and --wifi-password (2.4 GHz only) and the box's distance to the router, then re-run "
        "provision",
    ),
}


def _wifi_join_failure(line: str) -> FlashError | None:
    m = WIFI_JOIN_FAILED.search(line)
    if m is None:
        return None
    reason, hint = WIFI_CAUSES.get(m["cause"], WIFI_CAUSES["connect_fail"])
    ssid = m["ssid"]
    if ssid:
        try:
            ssid = str(ast.literal_eval(ssid))
        except (ValueError, SyntaxError):
            pass  # shown as printed
    network = f"Wi-Fi {ssid!r}" if ssid else "Wi-Fi"
    return FlashError(
        "wifi", f"the box could not join {network}: {reason} (it reported status {m['status']})", hint
    )


def classify_console_line(line: str) -> FlashError | None:
    joined = _wifi_join_failure(line)
    if joined is not None:
        return joined
    for pattern, step, message, hint in CONSOLE_FAILURES:
        if pattern.search(line):
            return FlashError(step, f"{message}: {line.strip()}", hint)
    return None


class ConsoleJudge:
    """Reads the box's console line by line and returns a FlashError once it has seen a failure.

    One-line failures come from CONSOLE_FAILURES; the firmware's "cannot start" block (bad config,
    missing library, crash) is collected whole so the error lists every problem it printed.
    """

    def __init__(self) -> None:
        self._problems: list[str] | None = None

    def feed(self, line: str) -> FlashError | None:
        text = line.strip()
        if self._problems is not None:
            if text.startswith("- "):
                self._problems.append(text[2:])
                return None
            return self._cannot_start()
        if _CANNOT_START in text:
            self._problems = []
            return None
        return classify_console_line(line)

    def finish(self) -> FlashError | None:
        """A block still open when the console went quiet."""
        return self._cannot_start() if self._problems is not None else None

    def _cannot_start(self) -> FlashError:
        problems = self._problems or ["(no reason printed)"]
        self._problems = None
        return FlashError(
            "firmware",
            "the box cannot start: " + "; ".join(problems),
            "fix these settings (provision --set KEY=VALUE, or firmware/config.example.json) and provision again",
        )


def _client(addr: BrokerAddress, on_message=None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"parcelbox-flash-{uuid.uuid4().hex[:8]}")
    if addr.username:
        c.username_pw_set(addr.username, addr.password)
    c.on_message = on_message
    return c


def connect(addr: BrokerAddress, timeout: float = 5.0, on_message=None) -> mqtt.Client:
    """A connected client with its loop running, or a FlashError saying why not."""
    result: queue.Queue[tuple[bool, str]] = queue.Queue()
    c = _client(addr, on_message)
    c.on_connect = lambda _c, _u, _f, rc, _p=None: result.put((rc.is_failure, str(rc)))
    try:
        c.connect(addr.host, addr.port, keepalive=30)
    except OSError as e:
        raise FlashError(
            "broker",
            f"broker unreachable at {addr.host}:{addr.port}: {e.strerror or e}",
            "start the gateway (`parcelbox run`) or your broker, and check --broker-host/--broker-port",
        ) from None
    c.loop_start()
    try:
        failed, reason = result.get(timeout=timeout)
    except queue.Empty:
        c.loop_stop()
        raise FlashError(
            "broker",
            f"broker at {addr.host}:{addr.port} did not answer the MQTT handshake in {timeout:.0f} s",
            "is that port really an MQTT broker?",
        ) from None
    if failed:
        c.loop_stop()
        raise FlashError(
            "broker",
            f"broker at {addr.host}:{addr.port} refused the box's credentials ({reason})",
            "re-create them with `parcelbox device add NAME`, or check --mqtt-user/--mqtt-password",
        )
    return c


def check_broker(addr: BrokerAddress, timeout: float = 5.0) -> None:
    """Connect and disconnect once: the broker is reachable at the box's address with its credentials."""
    c = connect(addr, timeout)
    c.disconnect()
    c.loop_stop()


def status_is_fresh(payload: bytes, retained: bool, seconds_since_reset: float) -> bool:
    """An `online: true` status that the box published after our reset.

    A retained status from before the reset would fool us: accept a retained one only if its
    uptime fits inside the time since the reset. Live (non-retained) ones are always new.
    """
    try:
        status = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(status, dict) or status.get("online") is not True:
        return False
    if not retained:
        return True
    uptime = status.get("uptime_s")
    return isinstance(uptime, int | float) and uptime <= seconds_since_reset + 5


def wait_online(
    watch: BrokerAddress,
    topic: str,
    reset_at: float,
    timeout: float,
    console: Iterator[str] | None = None,
    on_console: Callable[[str], None] | None = None,
) -> dict:
    """Block until a fresh online status arrives on `topic`; returns it. Fails early on console errors."""
    messages: queue.Queue[tuple[bytes, bool]] = queue.Queue()
    c = connect(watch, on_message=lambda _c, _u, m: messages.put((bytes(m.payload), bool(m.retain))))

    judge = ConsoleJudge()

    def drain_console() -> None:
        """Show (and judge) every console line that has arrived, without waiting for more."""
        nonlocal console
        while console is not None:
            line = next(console, None)
            if line is None:
                console = None
            elif not line:
                failure = judge.finish()  # quiet after a "cannot start" block: it is complete
                if failure:
                    raise failure
                return
            else:
                if on_console:
                    on_console(line)
                failure = judge.feed(line)
                if failure:
                    raise failure

    try:
        c.subscribe(topic, 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            drain_console()
            try:
                payload, retained = messages.get(timeout=0.05)
            except queue.Empty:
                continue
            if status_is_fresh(payload, retained, time.monotonic() - reset_at):
                drain_console()  # what the box printed on its way up belongs to the story
                return json.loads(payload)
        raise FlashError(
            "online",
            f"no online status on {topic} within {timeout:.0f} s",
            "watch the box with `parcelbox flash logs`; check Wi-Fi reach and that --broker-host is reachable from the box",
        )
    finally:
        c.disconnect()
        c.loop_stop()
