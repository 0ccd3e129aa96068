"""Wi-Fi and MQTT connection keeping, with bounded timeouts and backoff.

Non-blocking state machines polled from the app's loop; they take the WLAN
object, the umqtt.simple-compatible client and the clock as arguments, so the
simulator drives them with a paho-backed client and a simulated WLAN.

- `Wifi`: connect with a timeout; on failure back off exponentially; always
  `disconnect()` before `connect()` (the ESP32 raises "Wifi Internal Error"
  when asked to connect while a previous attempt is still active).
- `Mqtt`: persistent session (clean_session=False) so acks and commands sent
  while the box was away are queued by the broker; last will = retained
  `{"online": false}` on the status topic; subscribes to its `ack` and `cmd`.
  Any OSError from the client marks the link down and schedules a reconnect
  with backoff. Incoming messages only go into a bounded inbox: umqtt calls
  the callback from inside `publish()` (while waiting for a PUBACK), so the
  app must never publish from it.
"""

import protocol

# What umqtt.simple raises when the connection breaks: OSError from the socket, and
# AssertionError / IndexError / TypeError when a read comes back short or None while
# it parses a packet. All of them mean "reconnect", never "crash".
LINK_ERRORS = (OSError, AssertionError, IndexError, TypeError)


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
    def __init__(self, wlan, ssid, password, timeout_ms=20000, backoff=None, ticks_diff=_diff, log=print):
        self.wlan = wlan
        self.ssid = ssid
        self.password = password
        self.timeout_ms = timeout_ms
        self.backoff = backoff or Backoff(2000, 60000, ticks_diff)
        self._diff = ticks_diff
        self.log = log
        self._connecting = False
        self._t0 = 0
        self.up = False
        self.connects = 0
        self.failures = 0

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
            self.log(
                "wifi: no connection after %d ms, retry in %d ms" % (self.timeout_ms, self.backoff.delay)
            )
            self._quiet_disconnect()
            return False
        if not self.backoff.ready(now):
            return False
        try:
            self.wlan.active(True)
            self._quiet_disconnect()
            self.wlan.connect(self.ssid, self.password)
            self._connecting = True
            self._t0 = now
        except OSError as e:
            self.failures += 1
            self.backoff.fail(now)
            self.log("wifi: connect failed: %r, retry in %d ms" % (e, self.backoff.delay))
        return False

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


class Mqtt:
    def __init__(
        self, client, topics, keepalive_s=60, backoff=None, ticks_diff=_diff, log=print, inbox_max=32
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
            if self.keepalive_ms and self._diff(now, self._last_io) >= self.keepalive_ms // 2:
                self.client.ping()
                self._last_io = now
        except LINK_ERRORS as e:
            self.lost(now, e)
        return self.connected

    def _connect(self, now):
        c = self.client
        try:
            c.set_callback(self._on_msg)
            c.set_last_will(self.topics.status, protocol.will_payload(), True, 1)
            self.session_present = bool(c.connect(False))
            c.subscribe(self.topics.ack, 1)
            c.subscribe(self.topics.cmd, 1)
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
