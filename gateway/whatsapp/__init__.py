"""WhatsApp for parcelbox: a supervised child process that owns the neonize session.

Layout (only `neonize_adapter` imports neonize, and only inside the child):

- `settings`     the `[whatsapp]` config as the pieces below use it
- `addresses`    phone numbers / group ids -> JIDs
- `incoming`     a neonize MessageEv's fields -> `IncomingMessage` (both transports; Status, channels dropped)
- `session_db`   reads the linked device from whatsmeow's SQLite (no neonize import)
- `lock`         one owner per session (flock + pid)
- `transport`    the seam: `Transport`, its events, `IncomingMessage`
- `neonize_adapter` the real transport; `fake` a file-driven stand-in for tests
- `child`        the process entry point and pipe protocol
- `supervisor`   starts/restarts the child with backoff, relays sends, exposes `.state()`
- (`gateway.ratelimit`: the overall and per-recipient send windows, shared with the outbox)
- `commands`     allowlisted two-way commands (photo/foto, status, help/bantuan)
- `texts`        replies and help in English and Bahasa Indonesia
- `component`    wires all of it into the gateway (`attach_whatsapp`)
- `cli`          `parcelbox whatsapp pair|status|unlink`

The alert sink itself is `gateway.notify.whatsapp.WhatsAppNotifier`.
"""

# The neonize versions the adapter is tested against (tests/test_whatsapp_neonize.py: the contract
# tests with the real library). The `whatsapp` extra in pyproject.toml says the same (a test checks).
# Policy (README "neonize versions"): patch releases inside the range are taken as they come - they
# carry whatsmeow's new client version, the cure for "client outdated"; the next minor is allowed
# by a parcelbox release once the contract tests pass against it.
NEONIZE_REQUIREMENT = "neonize>=0.5.2,<0.6"
