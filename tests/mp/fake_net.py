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
#   comes back; once the send buffer (lwIP TCP_SND_BUF, 5744 bytes by default in ESP-IDF) is
#   full, a write waits too.
import errno

try:
    ETIMEDOUT = errno.ETIMEDOUT
except AttributeError:  # pragma: no cover
    ETIMEDOUT = 110

SEND_BUFFER = 5744


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
