"""A broker URL as host, port, TLS and login: the one parser every MQTT client of the gateway uses.

The ingest link, the Home Assistant bridge, `parcelbox flash` and tools/simulate.py each had their
own, and they had drifted: which schemes were accepted, whether a bare `host:port` was, the TLS
port, whether `%40` in a URL's password was decoded, and whether an empty `--username` overrode
the URL's. The rules, once (table-tested in tests/test_brokeraddr.py):

- `mqtt://` and `tcp://` are plain MQTT, default port 1883; `mqtts://` and `ssl://` are MQTT over
  TLS, default port 8883. A URL without a scheme (`host`, `host:port`) is `mqtt://`.
- No host means this computer (127.0.0.1).
- Login: a username or password given on its own (config, command line) wins over the URL's, field
  by field; an empty string counts as not given. The URL's are percent-decoded. None = no login.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")
MQTT_PORT = 1883
MQTTS_PORT = 8883
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The address without the login, for logs and status pages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str, username: str | None = None, password: str | None = None) -> BrokerAddress:
    """`[mqtt|mqtts|tcp|ssl://][user[:password]@]host[:port]`; ValueError saying what is wrong."""
    text = url.strip()
    u = urlsplit(text if "://" in text else "mqtt://" + text)
    scheme = u.scheme.lower()
    if scheme not in PLAIN_SCHEMES + TLS_SCHEMES:
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {scheme or 'no scheme'}://")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError("a broker URL has no path, query or fragment: mqtt://host:port")
    try:
        port = u.port
    except ValueError:
        raise ValueError("broker URL port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("broker URL port must be a number from 1 to 65535")
    tls = scheme in TLS_SCHEMES
    return BrokerAddress(
        host=u.hostname or DEFAULT_HOST,
        port=port or (MQTTS_PORT if tls else MQTT_PORT),
        tls=tls,
        username=username or (unquote(u.username) if u.username else None),
        password=password or (unquote(u.password) if u.password else None),
    )
