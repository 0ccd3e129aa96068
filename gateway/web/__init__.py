"""The dashboard: an installable web app and JSON API served by the gateway (see `WebServer`)."""

from gateway.web.app import create_app
from gateway.web.server import WebServer
from gateway.web.settings import WebSettings

__all__ = ["WebServer", "WebSettings", "create_app"]
