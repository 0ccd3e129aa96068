"""Whether a command from Home Assistant is acted on: the snapshot button and the update entity's install.

Why: a press reaches a battery-powered box (a photo costs it a wake-up), and an install starts an
over-the-air update, so each is checked before the gateway is asked: the exact payload, a box Home
Assistant is shown, and for the button a minimum interval per box. Pure: the bridge passes the clock
reading and how to list the boxes shown, and counts and logs the refusal returned.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.homeassistant import discovery as d


@dataclass(frozen=True)
class Refusal:
    """Why a command was ignored: `reason` names the counter (`press_rejected.<reason>`), `detail` the log."""

    reason: str
    detail: str


def _check(payload: bytes, word: str, device: str, shown: Callable[[], Collection[str]]) -> Refusal | None:
    if payload.strip() != word.encode():
        return Refusal("bad_payload", repr(payload[:32]))
    if device not in shown():  # asked only for a well-formed command: it reads the gateway
        return Refusal("unknown_device", device)
    return None


def press_refusal(
    payload: bytes,
    device: str,
    shown: Callable[[], Collection[str]],
    *,
    now: float,
    last_press: float | None,
    min_interval_s: float,
) -> Refusal | None:
    """None when the snapshot button press of `device` is to become a `snapshot` command."""
    refused = _check(payload, d.PAYLOAD_PRESS, device, shown)
    if refused is None and last_press is not None and now - last_press < min_interval_s:
        return Refusal("too_soon", f"{now - last_press:.1f} s after the previous one")
    return refused


def install_refusal(
    payload: bytes, device: str, shown: Callable[[], Collection[str]], *, supported: bool
) -> Refusal | None:
    """None when the install action for `device` is to become the gateway's update offer (`supported`:
    this gateway sends over-the-air updates)."""
    refused = _check(payload, d.PAYLOAD_INSTALL, device, shown)
    if refused is None and not supported:
        return Refusal("unsupported", "this gateway does not send updates")
    return refused
