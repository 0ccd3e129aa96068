"""Wires WhatsApp into a running gateway: supervisor + notifier + command handler.

`whatsapp_component(service, config)` is what `gateway.app.build_components` calls; when
`[whatsapp] enabled` it registers the `whatsapp` notifier with the outbox and a component that the
service starts and stops with itself. The gateway reads the pairing state from
`service.whatsapp_state()`, fed by the supervisor's `bus.WHATSAPP_STATE` messages.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.notify.whatsapp import WhatsAppNotifier
from gateway.whatsapp.commands import CommandHandler
from gateway.whatsapp.settings import WhatsAppSettings, settings_from_config
from gateway.whatsapp.supervisor import WhatsAppSupervisor

log = logging.getLogger(__name__)


class WhatsAppComponent:
    """Started and stopped with the gateway (`gateway.ports.Component`)."""

    def __init__(self, port: Any, settings: WhatsAppSettings, *, tz: str = "") -> None:
        self.settings = settings
        self.supervisor = WhatsAppSupervisor(settings, bus=port.bus)
        self.notifier = WhatsAppNotifier(settings, self.supervisor)
        self.commands = CommandHandler(port, self.supervisor.send, settings, tz=tz)
        self.supervisor.on_message = self.commands.submit

    @property
    def summary(self) -> str:
        st = self.supervisor.state()
        return f"whatsapp      {st.get('state')}: {st.get('detail', '')}  (parcelbox whatsapp status)"

    def start(self) -> None:
        self.commands.start()
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()
        self.commands.stop()

    def state(self):
        return self.supervisor.state()

    def counters(self) -> dict[str, int]:
        return {
            **{f"whatsapp.{k}": v for k, v in self.notifier.counters.items()},
            **{f"whatsapp.commands.{k}": v for k, v in self.commands.counters.items()},
            "whatsapp.restarts": self.supervisor.restarts,
            "whatsapp.crashes": self.supervisor.crashes,
        }


def whatsapp_component(service: Any, config: Any = None) -> WhatsAppComponent | None:
    """For `gateway.app.build_components`: registers the `whatsapp` notifier on `service` and
    returns the component to start with it; None when `[whatsapp] enabled` is false."""
    config = config if config is not None else service.config
    wa = config.whatsapp
    if not getattr(wa, "enabled", False):
        return None
    settings = settings_from_config(wa, service.data_dir)
    tz = getattr(getattr(config, "alerts", None), "timezone", "") or ""
    comp = WhatsAppComponent(service, settings, tz=tz)
    service.add_notifier(comp.notifier)
    log.info(
        "WhatsApp enabled: session in %s, %d recipient(s)", settings.session_dir, len(settings.recipients)
    )
    return comp
