# Faithful fakes of the ESP32's TCP socket (as MicroPython exposes it) and a tiny MQTT 3.1.1
# broker behind it, for running the real umqtt.simple (tests/mp/umqtt/simple.py) and
# firmware/link.py under CPython and MicroPython. Time is an injected clock: a read that
# would wait advances it instead of sleeping.
#
# Sources (read, not guessed):
# - micropython ports/esp32/modsocket.c (v1.29.0-preview, 1c3c201): setblocking(True) sets the
#   timeout to UINT64_MAX (wait forever), setblocking(False) to 0; settimeout(None) = forever;
#   a read with a timeout that expires raises OSError(ETIMEDOUT); a non-blocking read with
#   nothing to read fails with EWOULDBLOCK, which py/stream.c turns into `None`; read(n) on a
#   blocking socket waits until n bytes (or EOF, b"") arrived.
# - micropython-lib umqtt.simple 1.8.0 (simple.py): uses socket.socket(), settimeout(timeout)
#   in connect (since 1.5.0, d6faaf84), socket.getaddrinfo(host, port)[0][-1], sock.write(buf
#   [, n]), sock.read(n), setblocking(); check_msg() sets non-blocking and wait_msg() sets
#   blocking again (forever) after its first read; a PINGRESP (D0 00) is consumed inside
#   wait_msg, which returns None for it, exactly as for "nothing to read".
# - A half-open TCP connection (the router rebooted, the broker's host vanished, NAT state
#   expired): the ESP32's stack still accepts writes into its send buffer and no byte ever
#   comes back; once the send buffer is full (lwIP TCP_SND_BUF: ESP-IDF's Kconfig default
#   CONFIG_LWIP_TCP_SND_BUF_DEFAULT is 5760, as esp-idf-sys exports it), a write waits too.
import errno

try:
    ETIMEDOUT = errno.ETIMEDOUT
except AttributeError:  # pragma: no cover
    ETIMEDOUT = 110

SEND_BUFFER = 5760


class BlockedForever(Exception):
    """A blocking read or write with no timeout on a link that will never answer: on the
    board the task hangs here until the watchdog resets the chip. Not an OSError, so no
    `except OSError` in the firmware can swallow it."""


class Clock:
    def __init__(self):
        self.now = 0  # ms

    def ticks_ms(self):
        return self.now


class Broker:
    """The far end: parses what the box writes and answers CONNACK, SUBACK, PUBACK, PINGRESP.
    `half_open = True` silences the connections open now (they accept writes and never
    answer) while new connections are answered again, like a broker reached over a fresh
    TCP connection after the old one died."""

    def __init__(self, clock):
        self.clock = clock
        self.sockets = []
        self.connects = 0
        self.pings = 0
        self.published = []  # (topic, payload)
        self.refuse = False  # refuse TCP connects (broker down)

    def half_open(self):
        for s in self.sockets:
            s.dead = True

    def _packet(self, sock, ptype, flags, body):
        if ptype == 1:  # CONNECT
            self.connects += 1
            sock.rx += b"\x20\x02\x00\x00"
        elif ptype == 8:  # SUBSCRIBE: pid, then (topic, qos)...
            sock.rx += b"\x90\x03" + body[0:2] + b"\x01"
        elif ptype == 3:  # PUBLISH
            qos = (flags >> 1) & 3
            tlen = body[0] << 8 | body[1]
            topic = bytes(body[2 : 2 + tlen])
            rest = body[2 + tlen :]
            if qos:
                pid = rest[0:2]
                rest = rest[2:]
                sock.rx += b"\x40\x02" + pid
            self.published.append((topic, bytes(rest)))
        elif ptype == 12:  # PINGREQ
            self.pings += 1
            sock.rx += b"\xd0\x00"

    def feed(self, sock, data):
        sock.txbuf += data
        while True:
            b = sock.txbuf
            if len(b) < 2:
                return
            n = 0
            sh = 0
            i = 1
            while True:
                if i >= len(b):
                    return
                c = b[i]
                n |= (c & 0x7F) << sh
                i += 1
                if not c & 0x80:
                    break
                sh += 7
            if len(b) < i + n:
                return
            self._packet(sock, b[0] >> 4, b[0] & 15, bytes(b[i : i + n]))
            sock.txbuf = b[i + n :]


class Socket:
    """One MicroPython TCP socket to the Broker (see the sources at the top)."""

    def __init__(self, net):
        self.net = net
        self.timeout_ms = None  # None: block forever (a new socket is blocking)
        self.rx = bytearray()  # bytes the broker sent, not read yet
        self.txbuf = bytearray()
        self.unacked = 0  # bytes written on a dead link (the send buffer fills)
        self.dead = False
        self.closed = False
        self.timeouts = []  # every settimeout/setblocking value, for the cases

    def settimeout(self, t):
        self.timeout_ms = None if t is None else int(t * 1000)
        self.timeouts.append(t)

    def setblocking(self, flag):
        self.timeout_ms = None if flag else 0
        self.timeouts.append("blocking" if flag else "nonblocking")

    def connect(self, addr):
        if self.net.broker.refuse:
            raise OSError(113)  # ECONNABORTED/EHOSTUNREACH: the box sees an OSError
        self.net.broker.sockets.append(self)

    def _wait(self, what):
        # Nothing will come: wait as the socket's mode says.
        if self.timeout_ms is None:
            raise BlockedForever("blocking %s with no timeout on a half-open link" % what)
        if self.timeout_ms == 0:
            return None
        self.net.clock.now += self.timeout_ms
        raise OSError(ETIMEDOUT)

    def write(self, buf, n=None):
        if self.closed:
            raise OSError(9)  # EBADF
        if isinstance(buf, str):
            buf = buf.encode()  # MicroPython's str has the buffer protocol: write() takes it
        data = bytes(buf) if n is None else bytes(buf[:n])
        if self.dead:
            if self.unacked + len(data) > SEND_BUFFER:
                if self._wait("write") is None:
                    return None
            self.unacked += len(data)
            return len(data)
        self.net.broker.feed(self, data)
        return len(data)

    def read(self, n):
        if self.closed:
            raise OSError(9)
        if not self.dead and self.rx and (len(self.rx) >= n or self.timeout_ms == 0):
            out = bytes(self.rx[:n])  # all n, or (non-blocking) what is there
            self.rx = self.rx[n:]
            return out
        return self._wait("read")  # None when non-blocking; else a timeout, or forever

    def close(self):
        self.closed = True


class SocketModule:
    """Stands in for `socket` in umqtt.simple's namespace."""

    def __init__(self, clock=None):
        self.clock = clock or Clock()
        self.broker = Broker(self.clock)
        self.made = []

    def socket(self, *a):
        s = Socket(self)
        self.made.append(s)
        return s

    def getaddrinfo(self, host, port, *a):
        return [(2, 1, 0, "", (host, port))]


# --- Wi-Fi -------------------------------------------------------------------------------
#
# micropython ports/esp32/network_wlan.c (v1.29.0-preview, 1c3c201) and network_common.c:
# - connect() calls esp_wifi_connect(); while an earlier attempt is still running ESP-IDF
#   returns ESP_ERR_WIFI_CONN, raised as OSError("Wifi Internal Error"); before active(True)
#   ESP_ERR_WIFI_NOT_STARTED -> OSError("Wifi Not Started").
# - a failed join or a lost link (WIFI_EVENT_STA_DISCONNECTED) records the reason and, while
#   a connect is requested, retries by itself; config(reconnects=n) bounds the retries.
# - status(): STAT_GOT_IP (1010) when connected; else the recorded reason for NO_AP_FOUND
#   (201) and friends; AUTH_FAIL / CONNECTION_FAIL -> 202 (wrong password); after
#   disconnect() (ASSOC_LEAVE) STAT_IDLE (1000); a requested connect with retries left ->
#   STAT_CONNECTING (1001); no activity -> STAT_IDLE; any other reason passed through.
# - status("rssi"): esp_wifi_sta_get_ap_info, which fails when not associated (an OSError).

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
REASON_BEACON_TIMEOUT = 200
REASON_NO_AP_FOUND = 201
REASON_AUTH_FAIL = 202
REASON_ASSOC_LEAVE = 8


class Network:
    """The `network` module's constants the firmware reads (ESP32 numbering)."""

    STA_IF = 0
    STAT_IDLE = STAT_IDLE
    STAT_CONNECTING = STAT_CONNECTING
    STAT_GOT_IP = STAT_GOT_IP
    STAT_BEACON_TIMEOUT = REASON_BEACON_TIMEOUT
    STAT_NO_AP_FOUND = REASON_NO_AP_FOUND
    STAT_WRONG_PASSWORD = REASON_AUTH_FAIL
    STAT_ASSOC_FAIL = 203
    STAT_HANDSHAKE_TIMEOUT = 204


class WLAN:
    """The ESP32 station interface against an access point the case controls: `ap` is
    (ssid, password) or None (out of reach); a join takes `join_ms` of the injected clock."""

    def __init__(self, clock, ap=("home", "secret"), join_ms=1500, rssi=-61):
        self.clock = clock
        self.ap = ap
        self.join_ms = join_ms
        self.rssi = rssi
        self._active = False
        self._requested = False
        self._connected = False
        self._reason = 0
        self._since = None  # ticks of the attempt in flight
        self._creds = None
        self._reconnects_max = 0
        self._reconnects = 0
        self.connect_calls = 0
        self.internal_errors = 0

    def active(self, flag=None):
        if flag is None:
            return self._active
        self._active = bool(flag)
        if not flag:
            self._connected = False
            self._requested = False
        return None

    def config(self, **kw):
        if "reconnects" in kw:
            self._reconnects_max = kw["reconnects"]

    def _advance(self):
        # The ESP-IDF event task: an attempt in flight finishes after join_ms.
        while self._requested and not self._connected and self._since is not None:
            if self.clock.now - self._since < self.join_ms:
                return
            ok = self.ap is not None and self._creds[0] == self.ap[0]
            if ok and self._creds[1] == self.ap[1]:
                self._connected = True
                self._reason = 0
                self._since = None
                return
            self._reason = REASON_AUTH_FAIL if ok else REASON_NO_AP_FOUND
            if self._reconnects_max:
                self._reconnects += 1
                if self._reconnects >= self._reconnects_max:
                    self._since = None  # retries used up: status() reports the reason
                    return
            self._since += self.join_ms  # esp_wifi_connect() again, by itself

    def connect(self, ssid, password):
        if not self._active:
            raise OSError("Wifi Not Started")
        self._advance()
        if self._requested and not self._connected and self._since is not None:
            self.internal_errors += 1
            raise OSError("Wifi Internal Error")  # ESP_ERR_WIFI_CONN: an attempt is running
        self.connect_calls += 1
        self._creds = (ssid, password)
        self._reconnects = 0
        self._requested = True
        self._connected = False
        self._since = self.clock.now

    def disconnect(self):
        self._requested = False
        self._connected = False
        self._since = None
        self._reason = REASON_ASSOC_LEAVE

    def isconnected(self):
        self._advance()
        return self._connected

    def drop(self, reason=REASON_BEACON_TIMEOUT):
        """The access point went away (or rebooted): the station retries by itself."""
        self._connected = False
        self._reason = reason
        if self._requested:
            self._since = self.clock.now

    def status(self, what=None):
        self._advance()
        if what == "rssi":
            if not self._connected:
                raise OSError("Wifi Not Connected")
            return self.rssi
        if self._connected:
            return STAT_GOT_IP
        r = self._reason
        if r in (REASON_NO_AP_FOUND, 210, 211, 212):
            return r
        if r in (REASON_AUTH_FAIL, 205):
            return REASON_AUTH_FAIL
        if r == REASON_ASSOC_LEAVE:
            return STAT_IDLE
        if self._requested and (self._reconnects_max == 0 or self._reconnects < self._reconnects_max):
            return STAT_CONNECTING
        if r == 0:
            return STAT_IDLE
        return r
