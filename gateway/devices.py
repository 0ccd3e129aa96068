"""Registered boxes and their broker credentials (`<data>/devices.json`, mode 0600).

`parcelbox device add <name>` creates a box's MQTT username and password; the
managed Mosquitto's password file and ACL are generated from this registry, the
flashing tool reads a box's credentials with `DeviceRegistry(data_dir).get(name)`,
and the ingest refuses unregistered boxes when `devices.registration_required` is on.

`parcelbox device remove` also notes when each box was removed: the gateway (often running when the
command is) hides a removed box from its box list and never raises "offline" for it, unless the box is
heard from again after that moment.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.privatedir import ensure_private_dir
from gateway.protocol import valid_device_id
from gateway.storage import atomic_write_bytes

# The gateway's own broker user (the managed broker adds a random suffix); no box may take these names.
GATEWAY_USER = "parcelbox-gateway"


class DeviceError(ValueError):
    pass


@dataclass(frozen=True)
class DeviceCredentials:
    device: str
    username: str
    password: str
    name: str = ""
    created_at: float = 0.0


class DeviceRegistry:
    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / "devices.json"
        self._lock = threading.Lock()

    def _read_all(self) -> tuple[dict[str, dict], dict[str, float]]:
        """(registered boxes, removed box -> when it was removed)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, {}
        data = json.loads(raw) if raw.strip() else {}
        removed = data.get("removed", {})
        return data.get("devices", {}), {
            k: float(v) for k, v in removed.items() if isinstance(v, (int, float))
        }

    def _read(self) -> dict[str, dict]:
        return self._read_all()[0]

    def _write(self, devices: dict[str, dict], removed: dict[str, float] | None = None) -> None:
        ensure_private_dir(self.path.parent)  # `device add` often runs before the first `run`
        if removed is None:
            removed = self._read_all()[1]
        body = json.dumps({"v": 1, "devices": devices, "removed": removed}, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.path, body, mode=0o600)
        os.chmod(self.path, 0o600)

    def add(self, device: str, name: str | None = None) -> DeviceCredentials:
        """Register a box (or return its existing credentials): username = device id, random password."""
        if not valid_device_id(device):
            raise DeviceError(
                f"bad device id {device!r}: use 1-32 of a-z, 0-9 and '-', starting with a letter or digit"
            )
        if device == GATEWAY_USER or device.startswith(GATEWAY_USER + "-"):
            # The gateway's broker login is `parcelbox-gateway-<random>` (gateway/broker.py).
            raise DeviceError(
                f"{GATEWAY_USER!r} and names starting with it are reserved for the gateway itself"
            )
        with self._lock:
            devices, removed = self._read_all()
            if device in devices:
                return DeviceCredentials(**devices[device])
            removed.pop(device, None)  # registered again: no longer hidden
            cred = DeviceCredentials(
                device=device,
                username=device,
                password=secrets.token_urlsafe(18),
                name=name or device,
                created_at=time.time(),
            )
            devices[device] = asdict(cred)
            self._write(devices, removed)
            return cred

    def get(self, device: str) -> DeviceCredentials | None:
        with self._lock:
            d = self._read().get(device)
        return DeviceCredentials(**d) if d else None

    def remove(self, device: str) -> bool:
        with self._lock:
            devices, removed = self._read_all()
            if device not in devices:
                return False
            del devices[device]
            removed[device] = time.time()
            self._write(devices, removed)
            return True

    def forget(self, device: str) -> bool:
        """Hide a box that was never registered (seen only): noted as removed now, like `remove`."""
        if not valid_device_id(device):
            return False
        with self._lock:
            devices, removed = self._read_all()
            if device in devices:
                return False
            removed[device] = time.time()
            self._write(devices, removed)
            return True

    def removed(self) -> dict[str, float]:
        """Boxes removed (and not added again), with the time each was removed."""
        with self._lock:
            return self._read_all()[1]

    def list(self) -> list[DeviceCredentials]:
        with self._lock:
            return [DeviceCredentials(**d) for _, d in sorted(self._read().items())]

    def is_registered(self, device: str) -> bool:
        return self.get(device) is not None

    def mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
