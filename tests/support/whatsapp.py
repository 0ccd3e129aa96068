"""Helpers for WhatsApp tests: the fake transport's "server" folder and fast settings.

The fake transport (`gateway.whatsapp.fake`) runs inside the real, spawned child
process; these helpers play WhatsApp's side of it from the test through files.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.whatsapp.settings import WhatsAppSettings
from gateway.whatsapp.supervisor import WhatsAppSupervisor
from tests.support.polling import poll


class FakeWhatsApp:
    """The folder the fake transport reads events from and writes what it sent to."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def script(self, **kw: Any) -> None:
        path = self.dir / "script.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(kw)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def inject(self, kind: str, **fields: Any) -> None:
        """Deliver an event to the child (written atomically, delivered in order)."""
        self._seq += 1
        name = f"{time.time_ns():020d}-{self._seq:04d}"
        tmp = self.dir / "inbox" / f"{name}.tmp"
        tmp.write_text(json.dumps({"kind": kind, **fields}))
        os.replace(tmp, self.dir / "inbox" / f"{name}.json")

    def _jsonl(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def sent(self) -> list[dict[str, Any]]:
        return self._jsonl("sent.jsonl")

    def sending(self) -> list[dict[str, Any]]:
        return self._jsonl("sending.jsonl")

    def logouts(self) -> list[dict[str, Any]]:
        return self._jsonl("logouts.jsonl")

    def pair_requests(self) -> list[dict[str, Any]]:
        return self._jsonl("pair_requests.jsonl")

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """While inside, sends block in the child (so a test can kill it mid-send)."""
        (self.dir / "hold").write_text("1")
        try:
            yield
        finally:
            (self.dir / "hold").unlink(missing_ok=True)

    def release(self) -> None:
        (self.dir / "hold").unlink(missing_ok=True)


def fake_settings(tmp_path: Path, **overrides: Any) -> WhatsAppSettings:
    """Settings for a child with the fake transport and quick backoffs (no timing is asserted)."""
    base: dict[str, Any] = {
        "session_dir": tmp_path / "data" / "whatsapp",
        "transport": "fake",
        "fake_dir": tmp_path / "fakewa",
        "restart_backoff_s": (0.2, 1.0),
        "reconnect_backoff_s": (0.2, 1.0),
        "send_timeout_s": 30.0,
        "snapshot_timeout_s": 10.0,
        "language": "en",
    }
    base.update(overrides)
    return WhatsAppSettings(**base)


def pair_fake(settings: WhatsAppSettings, jid_user: str = "6281100000000") -> None:
    """Write a paired fake session, as if `parcelbox whatsapp pair` had run."""
    settings.session_dir.mkdir(parents=True, exist_ok=True)
    (settings.session_dir / "fake-session.json").write_text(json.dumps({"jid": f"{jid_user}@s.whatsapp.net"}))


def paired_fake(tmp_path: Path, **overrides: Any) -> tuple[WhatsAppSettings, FakeWhatsApp]:
    """`fake_settings` with its fake WhatsApp folder and a paired session: what most child tests start from."""
    settings = fake_settings(tmp_path, **overrides)
    fake = FakeWhatsApp(settings.fake_dir)
    pair_fake(settings)
    return settings, fake


def wait_state(
    sup: WhatsAppSupervisor, want: str | Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """Wait for a state (name or predicate); fails the test with the last state seen."""
    pred = (lambda st: st.get("state") == want) if isinstance(want, str) else want
    st = sup.wait_for(pred, timeout)  # type: ignore[arg-type]
    assert st is not None, f"WhatsApp never reached {want!r}; last state {sup.state()!r}"
    return dict(st)


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    return poll(cond, timeout, 0.05, what, AssertionError)


@contextlib.contextmanager
def running(settings: WhatsAppSettings, **kw: Any) -> Iterator[WhatsAppSupervisor]:
    sup = WhatsAppSupervisor(settings, **kw)
    sup.start()
    try:
        yield sup
    finally:
        sup.stop()


@dataclass
class WhatsAppGateway:
    svc: Any  # gateway.service.GatewayService
    comp: Any  # gateway.whatsapp.component.WhatsAppComponent
    fake: FakeWhatsApp
    settings: WhatsAppSettings


@contextlib.contextmanager
def gateway_with_fake_whatsapp(
    cfg: Any,
    tmp_path: Path,
    *,
    notifiers: Iterable[Any] = (),
    script: dict[str, Any] | None = None,
    **settings_overrides: Any,
) -> Iterator[WhatsAppGateway]:
    """The real gateway core (`GatewayService(cfg)`) with WhatsApp as its `whatsapp` notifier and
    component: a real spawned child on the fake transport, already paired, no rate limit in the way.

    `script`: the fake's behaviour, written before the child starts (`FakeWhatsApp.script`).
    Started on entry; stopped on exit (after releasing a held send, so the stop never waits on it).
    """
    from gateway.service import GatewayService
    from gateway.whatsapp.component import WhatsAppComponent

    fast = {"rate_per_minute": 1000, "rate_per_minute_overall": 1000}
    settings, fake = paired_fake(tmp_path, **{**fast, **settings_overrides})
    if script:
        fake.script(**script)
    svc = GatewayService(cfg, notifiers=list(notifiers))
    comp = WhatsAppComponent(svc, settings)
    svc.add_notifier(comp.notifier)
    svc.add_component(comp)
    svc.start()
    try:
        yield WhatsAppGateway(svc, comp, fake, settings)
    finally:
        fake.release()
        svc.stop()
