"""Gateway configuration: defaults in code, a TOML file, then environment variables.

Where the file comes from: `--config FILE`, else `$PARCELBOX_CONFIG`, else
`<user config dir>/parcelbox/config.toml` if it exists, else no file (all defaults).

Every key can be overridden from the environment with `PARCELBOX_<SECTION>_<KEY>`
in upper case, dots in section names becoming underscores:
`PARCELBOX_DATA_DIR`, `PARCELBOX_BROKER_URL`, `PARCELBOX_NOTIFY_FOLDER_PATH`,
`PARCELBOX_WEB_PORT`. Values are parsed by the type of the default (bool accepts
1/0/true/false/yes/no/on/off; lists are comma separated). Secrets (passwords,
tokens, webhook headers) never appear in logs: use `Config.redacted()`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from gateway.brokeraddr import parse_broker_url

ENV_PREFIX = "PARCELBOX_"
SECRET_KEYS = frozenset({"password", "token", "headers", "secret", "signing_key"})
# Apprise URLs hold bot tokens and passwords: shown as their recipient ids (gateway.notify.apprise).
SECRET_URL_LISTS = frozenset({"urls", "urls_by_box"})


class ConfigError(ValueError):
    """A config file or environment value that cannot be used; the message says which key."""


@dataclass
class BrokerConfig:
    url: str = ""  # empty: the gateway starts and supervises its own broker
    username: str = ""
    password: str = ""
    prefix: str = "parcelbox"
    client_id: str = ""  # empty: derived from the data folder, stable across restarts
    keepalive_s: int = 30
    # Managed broker only:
    listen_host: str = "0.0.0.0"  # the box listener: registered logins only, client id = login
    listen_port: int = 1883  # if busy, a free port is used and printed
    local_port: int = 1884  # 127.0.0.1 listener for anonymous trying-out clients (tools/simulate.py)
    allow_anonymous: bool = True  # anonymous clients on the local listener only, never on listen_host
    prefer: str = "mosquitto"  # mosquitto | amqtt


@dataclass
class WebConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    # Dashboard login (gateway/web): always required when `host` is not a loopback address.
    require_login: bool = False  # true: also require it on loopback
    cookie_secure: bool = False  # true when served behind https (a TLS reverse proxy)
    session_hours: float = 168.0
    # Host names accepted besides loopback ones (a reverse proxy's name); any such name turns the login on
    allowed_hosts: list[str] = field(default_factory=list)
    # LAN hygiene (gateway/web/connections.py): open connections at most (capped at a quarter of the
    # file-descriptor limit), and how long one may sit without a request in progress.
    max_connections: int = 100
    idle_timeout_s: float = 10.0
    # The dashboard's language when the browser neither picked one in the page nor asks for en/id
    # (Accept-Language): en | id; empty follows whatsapp.language.
    language: str = ""
    # Requests per API token per minute (`parcelbox web token create`; the send API, docs in README).
    api_rate_per_minute: int = 30


@dataclass
class FolderSinkConfig:
    enabled: bool = True
    path: str = ""  # empty: <data_dir>/alerts


@dataclass
class WebhookSinkConfig:
    url: str = ""  # empty: off
    format: str = "json"  # json (photo as base64) | multipart
    timeout_s: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    rate_per_minute: int = 0  # 0: unlimited
    signing_key: str = (
        ""  # shared secret; non-empty: each body signed, X-Parcelbox-Signature-256 (docs/webhooks.md)
    )
    events: str = "all"  # all: every stored event and status change | alerts: only alerts.kinds


@dataclass
class AppriseSinkConfig:
    # Apprise URLs (https://github.com/caronc/apprise/wiki): each one a recipient in the outbox.
    # Secrets: shown only as "<scheme>-<hash>" ids in logs, `status` and the dashboard.
    urls: list[str] = field(default_factory=list)
    # box id -> its URLs (TOML list or one string), replacing `urls` for that box
    urls_by_box: dict[str, str] = field(default_factory=dict)
    title: str = "parcelbox"  # title prefix (e-mail subject, bold line): "parcelbox: Front gate"
    timeout_s: float = 30.0  # one send to one URL, attachment upload included
    rate_per_minute: int = 0  # per URL; 0: unlimited


@dataclass
class NotifyConfig:
    folder: FolderSinkConfig = field(default_factory=FolderSinkConfig)
    webhook: WebhookSinkConfig = field(default_factory=WebhookSinkConfig)
    apprise: AppriseSinkConfig = field(default_factory=AppriseSinkConfig)


@dataclass
class WhatsAppConfig:
    enabled: bool = False
    language: str = "en"  # en | id
    recipients: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)  # numbers allowed to send commands
    rate_per_minute: int = 10  # per recipient
    rate_per_minute_overall: int = 20
    # box id -> its recipients, replacing `recipients` for that box (TOML list or "a, b" string)
    recipients_by_box: dict[str, str] = field(default_factory=dict)
    commands_per_minute: int = 6  # per allowed sender; more are ignored (and counted)
    session_dir: Path | None = None  # neonize session, lock and state; default <data_dir>/whatsapp
    transport: str = "neonize"  # neonize | fake (file-driven stand-in for WhatsApp: tests, demos)
    fake_dir: Path | None = None  # the fake transport's folder
    command_groups: list[str] = field(default_factory=list)  # group ids where `!commands` are answered
    group_prefix: str = "!"  # in groups (and on a personal number) only words with this prefix count
    personal_number: bool = False  # the gateway uses someone's own number: never chat back
    command_max_age_s: float = 300.0  # older commands (the backlog after a reconnect) are ignored
    push_name: str = ""  # the sender name recipients see; "" leaves the account's name alone
    down_notice_after_s: float = 300.0  # not connected this long: tell the other sinks; 0: off


@dataclass
class HomeAssistantConfig:
    # On by default, but it only runs with an external broker (broker.url: the one Home Assistant uses).
    enabled: bool = True
    prefix: str = "homeassistant"  # Home Assistant's discovery prefix
    status_topic: str = ""  # empty: <prefix>/status (Home Assistant's birth / last will)
    state_prefix: str = ""  # empty: <broker.prefix>/_ha (state, availability, image topics)
    gateway_id: str = "parcelbox"  # part of every unique id: one per gateway sharing a Home Assistant
    gateway_name: str = "parcelbox gateway"
    dashboard_url: str = ""  # http(s) link shown on each device in Home Assistant
    snapshot_min_interval_s: float = 5.0  # "Take snapshot" presses closer than this are ignored
    image_max_px: int = 1280  # long edge of an image made from the original (no alert copy)
    # Entity and device names: en | id. Entity ids and unique ids are the same in both, so switching
    # never breaks an automation.
    language: str = "en"


@dataclass
class PhotosConfig:
    alert_long_edge: int = 1280
    thumb_long_edge: int = 320
    alert_quality: int = 80
    thumb_quality: int = 70
    max_pixels: int = 20_000_000
    caption_strip: bool = True
    keep_original: bool = True
    workers: int = 0  # 0: one per core


@dataclass
class StoreConfig:
    partition: str = "month"  # month | day: events files per month or per day, in segments
    segment_records: int = 0  # records per segment file (bounds RAM and rewrite cost); 0: the store's 512
    retention_days: int = 0  # event records; 0 keeps them forever
    photo_retention_days: int = 0  # photo files; 0 keeps them forever
    # Warn (log, status, dashboard, Home Assistant) when the data folder's disk has less free than
    # this many MB or this % of its size, whichever is more (gateway.diskspace); 0 turns a test off.
    min_free_mb: int = 500
    min_free_percent: float = 5.0


@dataclass
class OutboxConfig:
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    dead_after_s: float = 86_400.0
    poll_s: float = 0.5


@dataclass
class AlertsConfig:
    kinds: list[str] = field(default_factory=lambda: ["delivery", "pickup", "lid_left_open"])
    language: str = "en"  # en | id, for sinks without their own language
    timezone: str = ""  # empty: the host's local time
    offline_after_s: float = 600.0
    # A box that disconnects cleanly (battery boxes sleeping) sends no last will; if it is not heard from
    # for this long it counts as offline too. 0: off. For battery boxes: about 2 x their heartbeat_s.
    silent_after_s: float = 0.0
    online_alert: bool = True
    low_battery_mv: int = 3400  # 0: off
    group_window_s: float = 0.0  # >0: deliveries of one box within this window become one alert


@dataclass
class DevicesConfig:
    registration_required: bool = False
    names: dict[str, str] = field(default_factory=dict)  # device id -> human name


@dataclass
class IngestConfig:
    reassembly_timeout_s: float = 60.0
    reassembly_max_bytes: int = 64 * 1024 * 1024
    # Per-box bounds on unfinished photos and on the ingest queue (issue 14 item 5); defaults from
    # gateway.reassembly and gateway.fairqueue, which say why.
    reassembly_max_partials: int = 1024
    reassembly_device_max_partials: int = 32
    reassembly_device_max_bytes: int = 16 * 1024 * 1024
    # Complete photos waiting for the photo pool: per box (the firmware's max_inflight is 4), and bytes
    # in total (per box: reassembly_device_max_bytes; count in total: reassembly_max_partials).
    device_photos_in_progress: int = 8
    photos_in_progress_bytes: int = 128 * 1024 * 1024
    queue_size: int = 10_000
    device_queue_size: int = 2_000
    device_queue_bytes: int = 32 * 1024 * 1024


@dataclass
class Config:
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("parcelbox")))
    log_level: str = "INFO"
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    web: WebConfig = field(default_factory=WebConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    whatsapp: WhatsAppConfig = field(default_factory=WhatsAppConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    photos: PhotosConfig = field(default_factory=PhotosConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    source: Path | None = None  # the file this came from, if any

    @property
    def folder_sink_path(self) -> Path | None:
        f = self.notify.folder
        if not f.enabled:
            return None
        return Path(f.path).expanduser() if f.path else self.data_dir / "alerts"

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with every secret replaced by '***' (for logs and `status`)."""
        return _redact(_to_dict(self))


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("parcelbox")) / "config.toml"


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list):
        return [_to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj


def _redact(d: Any) -> Any:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            if k in SECRET_KEYS and v:
                out[k] = "***"
            elif k in SECRET_URL_LISTS and v:
                out[k] = _redact_url_list(v)
            elif k == "url" and isinstance(v, str) and "@" in v:
                out[k] = _redact_url(v)
            else:
                out[k] = _redact(v)
        return out
    return d


def _redact_url_list(v: Any) -> Any:
    from gateway.notify.apprise import recipient_id, split_urls

    if isinstance(v, dict):
        return {k: [recipient_id(u) for u in split_urls(x)] for k, x in v.items()}
    return [recipient_id(u) for u in split_urls(v)]


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"not a boolean: {value!r}")
        if typ is int:
            if isinstance(value, bool):
                raise ValueError("not an integer")
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        if typ is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(f"not a string: {value!r}")
            return str(value)
        if typ is Path or typ == (Path | None):
            return Path(str(value)).expanduser()
        if origin is list:
            if isinstance(value, str):
                return [x.strip() for x in value.split(",") if x.strip()]
            if not isinstance(value, list):
                raise ValueError("not a list")
            return [str(x) for x in value]
        if origin is dict:
            if isinstance(value, str):
                pairs = [p.split("=", 1) for p in value.split(",") if "=" in p]
                return {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, dict):
                raise ValueError("not a table")
            # A list value (box = ["a", "b"]) becomes "a, b": the consumers split on commas.
            return {
                str(k): ", ".join(str(x) for x in v) if isinstance(v, list) else str(v)
                for k, v in value.items()
            }
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return value


def _apply(obj: Any, data: dict[str, Any], path: str) -> None:
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    for key, value in data.items():
        full = f"{path}{key}"
        if key not in known or key == "source":
            raise ConfigError(f"unknown key {full!r} (see docs/configuration.md)")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a table")
            _apply(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _apply_env(obj: Any, env: dict[str, str], prefix: str, path: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if f.name == "source":
            continue
        name = f"{prefix}{f.name.upper()}"
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            _apply_env(current, env, name + "_", f"{path}{f.name}.")
        elif name in env:
            setattr(obj, f.name, _coerce(env[name], hints[f.name], f"{path}{f.name} (${name})"))


def _validate(cfg: Config) -> None:
    if cfg.web.api_rate_per_minute < 1:
        raise ConfigError("web.api_rate_per_minute must be at least 1")
    if cfg.web.max_connections < 1 or not cfg.web.idle_timeout_s > 0:
        raise ConfigError("web.max_connections must be >= 1 and web.idle_timeout_s > 0")
    for lang_key, lang in (
        ("whatsapp.language", cfg.whatsapp.language),
        ("alerts.language", cfg.alerts.language),
        ("homeassistant.language", cfg.homeassistant.language),
        ("web.language", cfg.web.language or "en"),
    ):
        if lang not in ("en", "id"):
            raise ConfigError(f"{lang_key} must be 'en' or 'id', not {lang!r}")
    if cfg.store.partition not in ("month", "day"):
        raise ConfigError("store.partition must be 'month' or 'day'")
    if cfg.store.segment_records and not 8 <= cfg.store.segment_records <= 1_000_000:
        raise ConfigError("store.segment_records must be 0 (default) or between 8 and 1000000")
    if cfg.store.min_free_mb < 0 or not 0 <= cfg.store.min_free_percent <= 50:
        raise ConfigError("store.min_free_mb must be >= 0 and store.min_free_percent between 0 and 50")
    if cfg.notify.apprise.timeout_s <= 0 or cfg.notify.apprise.rate_per_minute < 0:
        raise ConfigError("notify.apprise.timeout_s must be > 0 and rate_per_minute >= 0")
    if cfg.notify.webhook.events not in ("all", "alerts"):
        raise ConfigError("notify.webhook.events must be 'all' or 'alerts'")
    if cfg.notify.webhook.format not in ("json", "multipart"):
        raise ConfigError("notify.webhook.format must be 'json' or 'multipart'")
    ing = cfg.ingest
    for key in (
        "reassembly_max_bytes",
        "reassembly_max_partials",
        "reassembly_device_max_partials",
        "reassembly_device_max_bytes",
        "device_photos_in_progress",
        "photos_in_progress_bytes",
        "queue_size",
        "device_queue_size",
        "device_queue_bytes",
    ):
        if getattr(ing, key) < 1:
            raise ConfigError(f"ingest.{key} must be at least 1")
    if cfg.broker.prefer not in ("mosquitto", "amqtt"):
        raise ConfigError("broker.prefer must be 'mosquitto' or 'amqtt'")
    if cfg.broker.url:
        try:
            parse_broker_url(cfg.broker.url)
        except ValueError as e:
            raise ConfigError(f"broker.url: {e}") from None
    if cfg.alerts.timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(cfg.alerts.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"alerts.timezone: unknown time zone {cfg.alerts.timezone!r}") from None


def demo_data_dir() -> Path:
    """The trial's own data folder, next to (never inside) a real install's."""
    return Path(platformdirs.user_data_dir("parcelbox-demo"))


def demo_config(env: dict[str, str] | None = None) -> Config:
    """`parcelbox run --demo`: defaults only, in `demo_data_dir()`. No config file is read and
    `PARCELBOX_DATA_DIR` / `PARCELBOX_CONFIG` are ignored, so simulated boxes never land in a real
    install's folder or meet its broker; other `PARCELBOX_*` overrides (ports) still apply."""
    env = dict(os.environ) if env is None else env
    env = {k: v for k, v in env.items() if k not in (ENV_PREFIX + "DATA_DIR", ENV_PREFIX + "CONFIG")}
    cfg = Config()
    _apply_env(cfg, env, ENV_PREFIX, "")
    cfg.data_dir = demo_data_dir()
    _validate(cfg)
    return cfg


def load_config(path: Path | str | None = None, env: dict[str, str] | None = None) -> Config:
    """Build the config: defaults, then the TOML file (see module doc), then environment overrides."""
    env = dict(os.environ) if env is None else env
    cfg = Config()
    source: Path | None = None
    if path is not None:
        source = Path(path).expanduser()
        if not source.is_file():
            raise ConfigError(f"config file not found: {source}")
    elif env.get(ENV_PREFIX + "CONFIG"):
        source = Path(env[ENV_PREFIX + "CONFIG"]).expanduser()
        if not source.is_file():
            raise ConfigError(f"config file not found: {source} (from $PARCELBOX_CONFIG)")
    elif default_config_path().is_file():
        source = default_config_path()
    if source is not None:
        try:
            data = tomllib.loads(source.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
        _apply(cfg, data, "")
        cfg.source = source
    _apply_env(cfg, env, ENV_PREFIX, "")
    cfg.data_dir = Path(cfg.data_dir).expanduser()
    if source is not None and not cfg.data_dir.is_absolute():
        cfg.data_dir = (source.parent / cfg.data_dir).resolve()
    _validate(cfg)
    return cfg
