"""Wi-Fi and MQTT connection keeping, with bounded timeouts and backoff.

Non-blocking state machines polled from the app's loop; they take the WLAN
object, the umqtt.simple-compatible client and the clock as arguments, so the
simulator drives them with a paho-backed client and a simulated WLAN.

- `Wifi`: connect with a timeout; on failure back off exponentially; always
  `disconnect()` before `connect()` (the ESP32 raises "Wifi Internal Error"
  when asked to connect while a previous attempt is still active). A join that
  fails prints one line naming the cause, read from `wlan.status()`:

      wifi: join failed: <cause> (status <n>) ssid=<repr>, retry in <ms> ms

  <cause> is one of JOIN_CAUSES. The flash tool (gateway/flash/online.py) reads
  this line from the console while it waits for the box: keep it stable.
- `Mqtt`: persistent session (clean_session=False) so acks and commands sent
  while the box was away are queued by the broker; last will = retained
  `{"online": false}` on the status topic; subscribes to its `ack` and `cmd`.
  Any OSError from the client marks the link down and schedules a reconnect
  with backoff. Incoming messages only go into a bounded inbox: umqtt calls
  the callback from inside `publish()` (while waiting for a PUBACK), so the
  app must never publish from it.

A silently dead link (half-open TCP: the router rebooted, the broker's host vanished) accepts
writes and never answers. umqtt.simple (micropython-lib simple.py) would then wait forever:
its `check_msg()` sets the socket non-blocking and `wait_msg()` sets it blocking again - with
no timeout - after the first byte, and the PUBACK wait of a QoS 1 publish reads the same way;
it also swallows PINGRESP (wait_msg returns None for it, as for "nothing"). So `Mqtt` passes
a connect timeout (umqtt.simple >= 1.5 takes one) and wraps the client's socket in
`TimeoutSocket`, which turns every "blocking" into "blocking for at most timeout_s" and counts
the PINGRESPs going through it. A ping unanswered for `ping_timeout_ms` means the link is
dead: it is closed and reconnected with backoff, well before the watchdog would reset the board.
"""

import protocol

# What umqtt.simple raises when the connection breaks: OSError from the socket, and
# AssertionError / IndexError / TypeError when a read comes back short or None while
# it parses a packet. All of them mean "reconnect", never "crash".
LINK_ERRORS = (OSError, AssertionError, IndexError, TypeError)

# Why a Wi-Fi join failed, as printed in "wifi: join failed: <cause> ...":
# - wrong_password: the access point refused the password.
# - handshake_timeout: the WPA handshake timed out; on the ESP32 this is usually a wrong password.
# - no_ap_found: no network with that name in reach (or only on 5 GHz, which the ESP32 lacks).
# - connect_fail: the join failed for another reason the port reported.
# - timeout: no answer either way within the timeout (the port still says "connecting").
JOIN_CAUSES = ("wrong_password", "handshake_timeout", "no_ap_found", "connect_fail", "timeout")

# wlan.status() codes are not portable: the ESP32 passes ESP-IDF reason codes through
# (STAT_NO_AP_FOUND 201, STAT_WRONG_PASSWORD 202, STAT_BEACON_TIMEOUT 200, STAT_ASSOC_FAIL 203,
# STAT_HANDSHAKE_TIMEOUT 204; STAT_IDLE 1000, STAT_CONNECTING 1001, STAT_GOT_IP 1010), the
# ESP8266 uses 0-5 and the rp2 negative numbers. So the names are looked up on the board's own
# `network` module, and a port that lacks a name simply does not report that cause.
_STATUS_NAMES = (
    ("STAT_WRONG_PASSWORD", "wrong_password"),
    ("STAT_NO_AP_FOUND", "no_ap_found"),
    ("STAT_HANDSHAKE_TIMEOUT", "handshake_timeout"),
    ("STAT_CONNECT_FAIL", "connect_fail"),
    ("STAT_ASSOC_FAIL", "connect_fail"),
    ("STAT_BEACON_TIMEOUT", "connect_fail"),
)
# ESP-IDF reason codes MicroPython passes through without a STAT_ name: 15 = 4-way handshake
# timeout (older MicroPython reports it for a wrong WPA2 password), 205 = connection failed,
# 210-212 = no AP with compatible security / in the authmode / in the RSSI threshold (IDF 5.2+).
_ESP_IDF_EXTRA = ((15, "handshake_timeout"), (205, "connect_fail"), (210, "no_ap_found"),
                  (211, "no_ap_found"), (212, "no_ap_found"))  # fmt: skip


def join_failure_codes(network):
    """{wlan.status() code: cause} for the join failures this port's `network` module names."""
    codes = {}
    if network is None:
        return codes
    for name, cause in _STATUS_NAMES:
        code = getattr(network, name, None)
        if isinstance(code, int) and code not in codes:
            codes[code] = cause
    if getattr(network, "STAT_NO_AP_FOUND", None) == 201:  # the ESP32's ESP-IDF numbering
        for code, cause in _ESP_IDF_EXTRA:
            if code not in codes:
                codes[code] = cause
    return codes


def _diff(a, b):
    return a - b


def _add(a, b):
    return a + b


class Backoff:
    def __init__(self, min_ms=1000, max_ms=60000, ticks_diff=_diff, ticks_add=_add):
        self.min_ms = min_ms
        self.max_ms = max_ms
        self._diff = ticks_diff
        self._add = ticks_add
        self.delay = 0
        self._next = None

    def ready(self, now):
        return self._next is None or self._diff(now, self._next) >= 0

    def fail(self, now):
        self.delay = self.min_ms if self.delay == 0 else min(self.max_ms, self.delay * 2)
        self._next = self._add(now, self.delay)

    def reset(self):
        self.delay = 0
        self._next = None


class Wifi:
    def __init__(
        self, wlan, ssid, password, timeout_ms=20000, backoff=None, ticks_diff=_diff, log=print, network=None
    ):
        self.wlan = wlan
        self.ssid = ssid
        self.password = password
        self.timeout_ms = timeout_ms
        self.backoff = backoff or Backoff(2000, 60000, ticks_diff)
        self._diff = ticks_diff
        self.log = log
        self._codes = join_failure_codes(network)
        # Codes that mean "no verdict yet" rather than a failure.
        self._pending = [getattr(network, "STAT_CONNECTING", None), getattr(network, "STAT_IDLE", None)]
        self._connecting = False
        self._t0 = 0
        self._reconnects_set = False
        self.up = False
        self.connects = 0
        self.failures = 0
        self.last_error = None  # the cause of the last failed join (JOIN_CAUSES), kept after a later success

    def poll(self, now):
        """True while connected; otherwise advances the connect attempt."""
        try:
            if self.wlan.isconnected():
                if not self.up:
                    self.up = True
                    self._connecting = False
                    self.connects += 1
                    self.backoff.reset()
                    self.log("wifi: connected")
                return True
            if self.up:
                self.up = False
                self.log("wifi: connection lost")
        except OSError as e:
            self.log("wifi: status failed: %r" % (e,))
        if self._connecting:
            if self._diff(now, self._t0) < self.timeout_ms:
                return False
            self._connecting = False
            self.failures += 1
            self.backoff.fail(now)
            # Read the cause before disconnect(): that clears it (the ESP32 then says STAT_IDLE).
            code = self._status()
            cause = self._cause(code)
            self.last_error = cause
            self.log(
                "wifi: join failed: %s (status %s) ssid=%r, retry in %d ms"
                % (cause, "?" if code is None else code, self.ssid, self.backoff.delay)
            )
            self._quiet_disconnect()
            return False
        if not self.backoff.ready(now):
            return False
        try:
            self.wlan.active(True)
            self._limit_reconnects()
            self._quiet_disconnect()
            self.wlan.connect(self.ssid, self.password)
            self._connecting = True
            self._t0 = now
        except OSError as e:
            self.failures += 1
            self.backoff.fail(now)
            self.log("wifi: connect failed: %r, retry in %d ms" % (e, self.backoff.delay))
        return False

    def _status(self):
        try:
            code = self.wlan.status()
        except Exception:  # a port without status(), or an OSError from the driver
            return None
        return code if isinstance(code, int) else None

    def _cause(self, code):
        if code in self._codes:
            return self._codes[code]
        if code is None or code in self._pending or not self._codes:
            return "timeout"
        return "connect_fail"  # a failure code this port has no name for

    def _limit_reconnects(self):
        # The ESP32 retries a failed join by itself, and older MicroPython reports STAT_CONNECTING
        # for as long as it does, hiding the reason; a bounded count lets status() report the
        # reason once the retries are used up. This class reconnects on its own after a timeout,
        # so nothing is lost. Ports without the `reconnects` setting raise: ignored.
        if self._reconnects_set:
            return
        self._reconnects_set = True
        try:
            self.wlan.config(reconnects=2)
        except Exception:
            pass

    def _quiet_disconnect(self):
        try:
            self.wlan.disconnect()
        except OSError:
            pass

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except Exception:
            return None


class TimeoutSocket:
    """umqtt.simple's socket with a deadline on every wait, and a PINGRESP counter.

    `setblocking(True)` / `settimeout(None)` (what umqtt asks for) become
    `settimeout(timeout_s)`: a read or write that gets no answer raises OSError(ETIMEDOUT)
    instead of hanging. A PINGRESP is the two single-byte reads D0 00 umqtt's wait_msg makes
    (a broker never sends D0 00 otherwise: 0x00 is no packet type, and D0 00 is no valid
    length encoding)."""

    def __init__(self, sock, timeout_s):
        self.sock = sock
        self.timeout_s = timeout_s
        self.pingresps = 0
        self._d0 = False
        sock.settimeout(timeout_s)

    def setblocking(self, flag):
        if flag:
            self.sock.settimeout(self.timeout_s)
        else:
            self.sock.setblocking(False)

    def settimeout(self, t):
        self.sock.settimeout(self.timeout_s if t is None else t)

    def read(self, n):
        data = self.sock.read(n)
        if n == 1 and data:
            b = data[0]
            if self._d0 and b == 0:
                self.pingresps += 1
            self._d0 = b == 0xD0
        elif data:
            self._d0 = False
        return data

    def write(self, buf, n=None):
        if n is None:
            return self.sock.write(buf)
        return self.sock.write(buf, n)

    def close(self):
        self.sock.close()


class Mqtt:
    def __init__(
        self,
        client,
        topics,
        keepalive_s=60,
        backoff=None,
        ticks_diff=_diff,
        log=print,
        inbox_max=32,
        timeout_s=10,
        ping_timeout_ms=None,
    ):
        self.client = client
        self.topics = topics
        self.keepalive_ms = keepalive_s * 1000
        self.backoff = backoff or Backoff(1000, 60000, ticks_diff)
        self._diff = ticks_diff
        self.log = log
        self.inbox = []
        self.inbox_max = inbox_max
        self.connected = False
        self.connects = 0
        self.failures = 0
        self.dropped_inbox = 0
        self.session_present = False
        self._last_io = 0
        # No socket call may wait longer than this: far below the watchdog (wdt_s).
        self.timeout_s = timeout_s
        self.ping_timeout_ms = ping_timeout_ms if ping_timeout_ms is not None else timeout_s * 1000
        self.pings = 0
        self.pingresps = 0
        self.missed_pings = 0
        self._ping_sent = None  # ticks of the unanswered PINGREQ
        self._ping_base = 0
        self._connect_timeout = True  # False once umqtt said it takes no connect timeout

    def _on_msg(self, topic, msg):
        if len(self.inbox) >= self.inbox_max:
            # The sender re-sends unacked events after a timeout, so a lost ack
            # costs a duplicate, never an event.
            self.dropped_inbox += 1
            return
        self.inbox.append((bytes(topic), bytes(msg)))

    def poll(self, now, network_up=True):
        """Connect when due; read what the broker sent. True while connected."""
        if not self.connected:
            if not network_up or not self.backoff.ready(now):
                return False
            return self._connect(now)
        try:
            for _ in range(16):  # bounded: a flood of commands cannot starve the loop
                if self.client.check_msg() is None:
                    break
            if not self._ping_answered(now):
                self.missed_pings += 1
                self.lost(now, OSError(110, "no PINGRESP within %d ms" % self.ping_timeout_ms))
                return False
            if self.keepalive_ms and self._diff(now, self._last_io) >= self.keepalive_ms // 2:
                sock = self.client.sock
                self.client.ping()
                self.pings += 1
                self._last_io = now
                if isinstance(sock, TimeoutSocket) and self._ping_sent is None:
                    self._ping_sent = now
                    self._ping_base = sock.pingresps
        except LINK_ERRORS as e:
            self.lost(now, e)
        return self.connected

    def _ping_answered(self, now):
        """False when a PINGREQ went unanswered for ping_timeout_ms (a dead link)."""
        if self._ping_sent is None:
            return True
        sock = self.client.sock
        got = sock.pingresps - self._ping_base if isinstance(sock, TimeoutSocket) else 1
        if got > 0:
            self.pingresps += got
            self._ping_sent = None
            return True
        return self._diff(now, self._ping_sent) < self.ping_timeout_ms

    def _guard_socket(self):
        sock = getattr(self.client, "sock", None)
        # Only a MicroPython-style stream socket (read/write) is wrapped: that is umqtt's.
        if (
            sock is not None
            and hasattr(sock, "read")
            and hasattr(sock, "settimeout")  # a TLS socket may lack it: then left as it is
            and not isinstance(sock, TimeoutSocket)
        ):
            self.client.sock = TimeoutSocket(sock, self.timeout_s)

    def _connect_client(self, c):
        if self._connect_timeout:
            try:
                return c.connect(False, self.timeout_s)
            except TypeError as e:
                if "positional argument" not in str(e):
                    raise  # a short read while parsing CONNACK, not the signature
                # umqtt.simple < 1.5: no connect timeout (the CONNACK wait can hang until the
                # watchdog); every later wait is bounded by TimeoutSocket.
                self._connect_timeout = False
                self.log("mqtt: this umqtt.simple takes no connect timeout; install >= 1.5")
        return c.connect(False)

    def _connect(self, now):
        c = self.client
        try:
            c.set_callback(self._on_msg)
            c.set_last_will(self.topics.status, protocol.will_payload(), True, 1)
            self.session_present = bool(self._connect_client(c))
            self._guard_socket()
            c.subscribe(self.topics.ack, 1)
            c.subscribe(self.topics.cmd, 1)
            c.subscribe(self.topics.ota, 1)  # retained offer: a sleeping box finds it at its wake
            c.subscribe(self.topics.ota_data, 1)
        except Exception as e:  # refused, auth failure, DNS, timeout: all retried
            self.failures += 1
            self.backoff.fail(now)
            self.log("mqtt: connect failed: %r, retry in %d ms" % (e, self.backoff.delay))
            self._close()
            return False
        self.connected = True
        self.connects += 1
        self.backoff.reset()
        self._last_io = now
        self._ping_sent = None
        self.log("mqtt: connected (session present: %s)" % self.session_present)
        return True

    def publish(self, topic, msg, retain=False, qos=1, now=0):
        """Publish; False (and the link marked down) when the connection broke."""
        if not self.connected:
            return False
        try:
            self.client.publish(topic, msg, retain, qos)
            self._last_io = now
            return True
        except LINK_ERRORS as e:
            self.lost(now, e)
            return False

    def lost(self, now, err):
        if self.connected:
            self.log("mqtt: connection lost: %r" % (err,))
        self.connected = False
        self.failures += 1
        self.backoff.fail(now)
        self._close()

    def _close(self):
        sock = getattr(self.client, "sock", None)
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass

    def disconnect(self, offline_status=True):
        """Clean goodbye: retained offline status first (a clean DISCONNECT does
        not fire the last will), then DISCONNECT."""
        if not self.connected:
            return
        try:
            if offline_status:
                self.client.publish(self.topics.status, protocol.will_payload(), True, 1)
            self.client.disconnect()
        except LINK_ERRORS:
            pass
        self.connected = False
