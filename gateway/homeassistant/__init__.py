"""Home Assistant integration: MQTT discovery so every box appears in Home Assistant without YAML.

`discovery` builds the payloads (pure); `bridge` does the MQTT I/O. See docs/homeassistant.md.
"""

from gateway.homeassistant.bridge import (
    HomeAssistantBridge,
    clear_device,
    clear_removed_box,
    homeassistant_component,
)
from gateway.homeassistant.discovery import HAConfig

__all__ = ["HAConfig", "HomeAssistantBridge", "clear_device", "clear_removed_box", "homeassistant_component"]
