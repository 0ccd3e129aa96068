"""Notifiers: where alerts go. Each sink is one module with one class implementing `Notifier`."""

from gateway.notify.base import Alert, Notifier, RateLimit, SendResult

__all__ = ["Alert", "Notifier", "RateLimit", "SendResult"]
