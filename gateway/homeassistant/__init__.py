"""Home Assistant integration: MQTT discovery so every box appears in Home Assistant without YAML.

`bridge` does the MQTT I/O; the pure modules beside it decide what it publishes (`discovery`,
`messages`, `image`, `roster`) and what it acts on (`inbound`, `commands`, `pending`); `component`
and `clear` are the wiring for `parcelbox run` and `parcelbox device remove`. See docs/homeassistant.md.
"""

from gateway.homeassistant.bridge import HomeAssistantBridge
from gateway.homeassistant.clear import clear_device
from gateway.homeassistant.component import clear_removed_box, homeassistant_component
from gateway.homeassistant.discovery import HAConfig

__all__ = ["HAConfig", "HomeAssistantBridge", "clear_device", "clear_removed_box", "homeassistant_component"]
