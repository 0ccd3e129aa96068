# firmware/link.py's Mqtt on the real umqtt.simple (tests/mp/umqtt/simple.py, 1.8.0) over the
# faithful socket fake (tools/sim/fake_net.py): a healthy broker, then a half-open link that
# accepts writes and never answers. Runs under CPython (tests/test_firmware_link.py) and real
# MicroPython. The clock is injected: a socket wait advances it, nothing sleeps.
import sys

try:
    import fake_net  # MicroPython: tools/sim at /sim
except ImportError:
    from tools.sim import fake_net

try:
    import socket as _socket  # noqa: F401
except ImportError:
    # The WASI MicroPython has no socket module: umqtt.simple's `import socket` gets a
    # placeholder, replaced per case below.
    sys.modules["socket"] = fake_net.SocketModule()

try:
    from umqtt import simple
except ImportError:
    from tests.mp.umqtt import simple

import link
import protocol

WDT_MS = 60000  # the box's default watchdog (settings wdt_s)


class Rig:
    def __init__(self, keepalive_s=60, client_cls=None):
        self.net = fake_net.SocketModule()
        simple.socket = self.net  # umqtt.simple's `socket` is the fake's
        self.clock = self.net.clock
        self.lines = []
        cls = client_cls or simple.MQTTClient
        self.client = cls("box-1", "broker.local", 1883, None, None, keepalive_s)
        self.topics = protocol.Topics("box-1", "pb")
        self.mqtt = link.Mqtt(
            self.client, self.topics, keepalive_s, link.Backoff(1000, 8000), log=self.lines.append
        )

    def poll_for(self, ms, step=20):
        """Poll like the app's loop; the longest single poll is returned (ms of fake time)."""
        end = self.clock.now + ms
        longest = 0
        while self.clock.now < end:
            t0 = self.clock.now
            self.mqtt.poll(self.clock.now)
            longest = max(longest, self.clock.now - t0)
            self.clock.now += step
        return longest


def case_connect_sets_a_socket_timeout_and_pingresps_are_counted():
    r = Rig()
    assert r.mqtt.poll(0) and r.net.broker.connects == 1
    sock = r.net.made[0]
    assert sock.timeouts[0] == 10, sock.timeouts  # umqtt >= 1.5 connect(timeout); was None
    r.poll_for(65000)
    assert r.net.broker.pings == 2 and r.mqtt.pings == 2, (r.net.broker.pings, r.mqtt.pings)
    assert r.mqtt.pingresps == 2 and r.mqtt.missed_pings == 0 and r.mqtt.connects == 1
    # check_msg() leaves umqtt's socket "blocking": with the guard that means the timeout
    assert sock.timeout_ms == r.mqtt.timeout_s * 1000


def case_half_open_link_is_found_by_the_missing_pingresp_and_reconnected():
    r = Rig()
    r.mqtt.poll(0)
    r.net.broker.half_open()
    longest = r.poll_for(120000)
    # was: pings written into the void for ever, no reconnect (until a publish hung the board)
    assert r.mqtt.connects >= 2 and r.net.broker.connects >= 2 and r.mqtt.connected, r.lines
    assert r.mqtt.missed_pings >= 1, r.lines
    assert longest < WDT_MS, longest  # no call ever waited long enough for the watchdog
    assert any("no PINGRESP" in x for x in r.lines), r.lines


def case_publish_on_a_half_open_link_times_out_instead_of_hanging():
    r = Rig()
    r.mqtt.poll(0)
    r.mqtt.poll(20)  # a check_msg(): umqtt set the socket blocking again
    r.net.broker.half_open()
    t0 = r.clock.now
    ok = r.mqtt.publish(r.topics.event, b'{"v":1}', False, 1, r.clock.now)  # waits for a PUBACK
    assert ok is False and not r.mqtt.connected
    assert r.clock.now - t0 <= r.mqtt.timeout_s * 1000 < WDT_MS
    r.poll_for(3000)
    assert r.mqtt.connected and r.mqtt.connects == 2


def case_a_big_photo_on_a_half_open_link_stops_at_the_send_buffer():
    import sender

    r = Rig()
    r.mqtt.poll(0)
    r.net.broker.half_open()
    frame = memoryview(bytearray(40000))
    try:
        sender.publish_frame(r.client, r.topics, "a1b2c3d4-000001", frame, 8192, 0)
    except OSError:
        pass
    else:
        raise AssertionError("writes beyond the send buffer did not time out")


class OldClient(simple.MQTTClient):
    """umqtt.simple 1.4 and older: connect() takes no timeout."""

    def connect(self, clean_session=True):
        return simple.MQTTClient.connect(self, clean_session)


def case_old_umqtt_without_connect_timeout_still_gets_bounded_waits():
    r = Rig(client_cls=OldClient)
    assert r.mqtt.poll(0), r.lines
    assert any("no connect timeout" in x for x in r.lines)
    r.net.broker.half_open()
    r.poll_for(120000)
    assert r.mqtt.missed_pings >= 1 and r.mqtt.connects >= 2


class WifiRig:
    def __init__(self, password="secret", ap=("home", "secret")):
        self.clock = fake_net.Clock()
        self.wlan = fake_net.WLAN(self.clock, ap=ap)
        self.lines = []
        self.wifi = link.Wifi(
            self.wlan, "home", password, 20000, link.Backoff(2000, 60000), log=self.lines.append,
            network=fake_net.Network,
        )  # fmt: skip

    def poll_for(self, ms, step=50):
        end = self.clock.now + ms
        while self.clock.now < end:
            self.wifi.poll(self.clock.now)
            self.clock.now += step


def case_wifi_wrong_password_is_named_and_never_trips_an_internal_error():
    r = WifiRig(password="wrong")
    r.poll_for(90000)
    assert not r.wifi.up and r.wifi.last_error == "wrong_password", r.lines
    assert any("join failed: wrong_password (status 202)" in x for x in r.lines), r.lines
    assert r.wlan.internal_errors == 0 and r.wlan.connect_calls >= 2


def case_wifi_joins_when_the_access_point_appears_and_rejoins_after_a_drop():
    r = WifiRig(ap=None)
    r.poll_for(30000)
    assert not r.wifi.up and r.wifi.last_error == "no_ap_found", r.lines
    r.wlan.ap = ("home", "secret")
    r.poll_for(90000)
    assert r.wifi.up and r.wifi.rssi() == -61, r.lines
    r.wlan.drop()
    r.poll_for(10000)
    assert r.wifi.up and r.wifi.connects == 2 and r.wlan.internal_errors == 0, r.lines


CASES = [(n, f) for n, f in sorted(globals().items()) if n.startswith("case_") and callable(f)]


def run_all():
    for name, fn in CASES:
        fn()
        print("PASS", name)
    print("DONE", len(CASES))
