"""Wiring: which notifiers and components run with the gateway, and `parcelbox run` itself.

To plug a component in (web server, WhatsApp supervisor, Home Assistant bridge),
add a few lines to `build_components`: anything with `start()` / `stop()` works;
it gets the running `GatewayService` (a `gateway.ports.GatewayPort`) and the config.
Components start after the gateway core and stop before it. A component may set
`summary` (a line for the startup summary, e.g. "dashboard: http://127.0.0.1:8080").
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from gateway.config import Config, default_config_path
from gateway.notify.base import Notifier
from gateway.ports import Component
from gateway.service import GatewayService

log = logging.getLogger("gateway")


def build_notifiers(config: Config) -> list[Notifier]:
    """The alert sinks the config turns on."""
    out: list[Notifier] = []
    folder = config.folder_sink_path
    if folder is not None:
        from gateway.notify.folder import FolderNotifier

        out.append(FolderNotifier(folder))
    if config.notify.webhook.url:
        from gateway.notify.webhook import WebhookNotifier

        w = config.notify.webhook
        out.append(
            WebhookNotifier(
                w.url,
                fmt=w.format,
                timeout_s=w.timeout_s,
                headers=w.headers,
                rate_per_minute=w.rate_per_minute,
                secret=w.signing_key,
                events=w.events,
            )
        )
    a = config.notify.apprise
    if a.urls or a.urls_by_box:
        from gateway.notify.apprise import AppriseNotifier

        out.append(
            AppriseNotifier(
                a.urls,
                urls_by_box=dict(a.urls_by_box),
                title=a.title,
                timeout_s=a.timeout_s,
                rate_per_minute=a.rate_per_minute,
            )
        )
    return out


def build_components(service: GatewayService, config: Config) -> list[Component]:
    """Everything else that runs inside `parcelbox run`. Other engineers add theirs here."""
    components: list[Component] = []
    from gateway.web.server import web_component

    web = web_component(service, config)
    if web is not None:
        components.append(web)
    from gateway.homeassistant import homeassistant_component

    ha = homeassistant_component(service, config)
    if ha is not None:
        components.append(ha)
    from gateway.whatsapp.component import whatsapp_component

    wa = whatsapp_component(service, config)  # also registers the `whatsapp` notifier
    if wa is not None:
        components.append(wa)
    return components


def build_service(config: Config) -> GatewayService:
    service = GatewayService(config, notifiers=build_notifiers(config))
    for c in build_components(service, config):
        service.add_component(c)
    return service


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("gateway.mqtt").setLevel(logging.WARNING)
    from gateway import logfilter

    logfilter.install(logging.getLogger().handlers)  # a flood of one line becomes a count


def whatsapp_install_warning(config: Config) -> str | None:
    """The banner's flag for `[whatsapp] enabled` without neonize installed (alerts would only queue)."""
    import importlib.util

    wa = config.whatsapp
    if not wa.enabled or getattr(wa, "transport", "neonize") != "neonize":
        return None
    if importlib.util.find_spec("neonize") is not None:
        return None
    from gateway.cli import command

    return (
        f"WARNING: [whatsapp] enabled but neonize is not installed: {command('pip')} install -e '.[whatsapp]'"
        " then restart; WhatsApp alerts wait in the outbox until then"
    )


def summary(service: GatewayService, config: Config) -> str:
    """What is where and what to do next, printed once the gateway is up."""
    h: dict[str, Any] = service.health()
    broker = h["broker"]
    from gateway.cli import command
    from gateway.config import demo_data_dir

    pb, py = command("parcelbox"), command("python")
    demo = Path(service.data_dir) == demo_data_dir()
    lines = ["", "parcelbox gateway is running" + (" (TRIAL: --demo)" if demo else ""), ""]
    lines.append(f"  data folder   {service.data_dir}")
    if demo:
        lines.append(
            "                the trial's own folder, apart from a real install's; delete it to start over"
        )
    if config.source:
        lines.append(f"  config        {config.source}")
    else:
        lines.append(
            f"  config        none (all defaults); to change settings create {default_config_path()}"
        )
    if service.broker is not None:
        listen = service.broker.listen
        lines.append(
            f"  broker        managed {service.broker.kind} on {listen} (gateway connects to {broker['url']})"
        )
        from gateway.broker import BROKER_FILE

        live_file = Path(service.data_dir) / BROKER_FILE
        if live_file.is_file():
            lines.append(f"                address written to {live_file} (`{pb} flash provision` reads it)")
        if service.broker.kind == "amqtt":
            lines.append("                WARNING: pure-Python amqtt fallback, for trying things out only")
            lines.append("                (no logins: it listens on 127.0.0.1 only)")
        else:
            lines.append(f"                boxes log in on {listen} (`{pb} device add <name>`)")
            if config.broker.allow_anonymous:
                lines.append(
                    f"                anonymous clients (the simulator) on {service.broker.local_url} only;"
                    " set broker.allow_anonymous = false to turn that off"
                )
    else:
        lines.append(f"  broker        external {broker['url']}")
    folder = config.folder_sink_path
    if folder is not None:
        lines.append(f"  folder sink   {folder}  (one <alert id>.json + .jpg per alert)")
    if config.notify.webhook.url:
        lines.append("  webhook sink  on")
    apprise_sink = service.notifiers.get("apprise")
    if apprise_sink is not None:
        # Only the Apprise sink has all_recipients (gateway/notify/apprise.py); Notifier does not.
        ids = ", ".join(apprise_sink.all_recipients())  # type: ignore[attr-defined]
        lines.append(f"  apprise sink  {ids}")
    for c in service.components:
        line = getattr(c, "summary", None)
        if line:
            lines.append(f"  {line}")
    wa_warning = whatsapp_install_warning(config)
    if wa_warning:
        lines.append(f"                {wa_warning}")
    # Commands as they work when pasted into a plain shell (no activated venv): `.venv/bin/parcelbox`.
    cfg_arg = " --demo" if demo else f" --config {config.source}" if config.source else ""
    cmds = [
        (f"{pb} device add <name>{cfg_arg}", "register a box and print the settings to flash"),
        (f"{pb} status{cfg_arg}", "boxes, recent events, alerts"),
    ]
    if Path("tools/simulate.py").is_file():
        # An anonymous simulated box: the managed broker takes those on its local listener only.
        sim_url = getattr(service.broker, "local_url", "") or broker["url"]
        if service.broker is None or config.broker.allow_anonymous:
            cmds.append((f"{py} tools/simulate.py --broker {sim_url}", "a simulated box"))
    width = max(len(c) for c, _ in cmds) + 3
    lines += ["", "  next:", *(f"    {c:<{width}}{what}" for c, what in cmds)]
    lines += ["    Ctrl-C (or SIGTERM) stops the gateway cleanly", ""]
    return "\n".join(lines)


def run(config: Config) -> int:
    """Run until SIGTERM / SIGINT, then drain and stop. Returns the exit code."""
    setup_logging(config.log_level)
    from gateway.fdlimit import raise_nofile_limit

    raise_nofile_limit()  # before anything opens files; the dashboard's share is sized from it
    service = build_service(config)
    stop = threading.Event()
    service.start()  # raises DataDirLocked before anything else happens if another gateway owns the folder
    log.debug("config: %s", config.redacted())

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: draining and stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    print(summary(service, config), file=sys.stderr, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0
