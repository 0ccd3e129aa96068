"""The gateway's own Mosquitto never outlives it (issue 14, item 13).

Outside systemd nothing else cleans up after a SIGKILLed gateway: its broker used to keep running,
holding the port, so the restarted gateway moved to a random port the boxes did not know and they got
0 of 3000 acks. Now the broker dies with the gateway (parent-death signal), the restarted gateway
comes back on the same port, and the boxes' acks flow again.
"""

from __future__ import annotations

import os

from gateway.devices import DeviceRegistry
from gateway.mosquitto import hold_port
from tests.support.e2e import GatewayProc, wait_for
from tests.support.gateway_core import Box, new_event_id


def _brokers(data_dir) -> set[int]:
    """Pids of every mosquitto running this data folder's config (from /proc, no pid file needed)."""
    conf = str(data_dir / "broker" / "mosquitto.conf").encode()
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                args = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if args[0].endswith(b"mosquitto") and conf in args:
                out.add(int(d))
    return out


def _gone(pid: int) -> bool:
    try:
        return not open(f"/proc/{pid}/cmdline", "rb").read()  # a zombie has an empty command line
    except OSError:
        return True


def test_sigkill_of_the_gateway_takes_its_broker_down_and_the_restart_keeps_the_port(tmp_path, prefix):
    def gateway(port: int) -> GatewayProc:
        return GatewayProc(
            tmp_path / "gw",
            "",  # the gateway's own broker
            prefix,
            extra={
                "broker": {
                    "listen_host": "127.0.0.1",
                    "listen_port": port,  # fixed, as a box is flashed with it
                    "local_port": 0,
                    "allow_anonymous": False,
                }
            },  # fmt: skip
        )

    password = DeviceRegistry(tmp_path / "gw" / "data").add("box-1").password
    # The port must be known before the gateway starts (it is the "flashed" one). This test holds it
    # (a bound socket that never listens, which Mosquitto can still listen beside) for its whole run:
    # another test worker's process can then take it neither before the first start nor while no
    # gateway runs between the SIGKILL and the restart (that lost the port: the gateway moved).
    hold = hold_port("127.0.0.1")
    assert hold is not None
    port = hold.getsockname()[1]
    gw = gateway(port)
    gw.start()
    assert gw.broker_address()["port"] == port, gw.tail()
    box = Box(f"mqtt://127.0.0.1:{port}", prefix, "box-1", username="box-1", password=password)
    try:
        for _ in range(3):
            eid = new_event_id()
            box.send(eid, None)
            assert box.wait_ack(eid)["ok"]
        (broker_pid,) = _brokers(gw.data_dir)
        gw.kill()
        wait_for(lambda: _gone(broker_pid), 15, what="the broker to die with the gateway")
        gw.start()
        live = gw.data_dir / "broker.json"
        import json

        assert json.loads(live.read_text())["port"] == port, (  # where the box was flashed to connect
            f"the restarted gateway moved off port {port}; if its log says the port was in use, another "
            "process took it while no gateway ran:\n" + gw.tail()
        )
        assert len(_brokers(gw.data_dir) - {broker_pid}) == 1
        # the box (paho's own reconnect) is acked again on the same address
        wait_for(box.c.is_connected, 30, what="the box to reconnect to the same address")
        for _ in range(3):
            eid = new_event_id()
            box.send(eid, None)
            assert box.wait_ack(eid, timeout=30)["ok"]
        assert gw.stop() == 0
        assert not os.path.exists(gw.data_dir / "broker" / "mosquitto.pid")  # clean stop: nothing left
    finally:
        box.close()
        gw.kill()
        hold.close()
