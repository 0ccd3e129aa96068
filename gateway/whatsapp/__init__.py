"""WhatsApp for parcelbox: a supervised child process that owns the neonize session.

Layout (only `neonize_adapter` imports neonize, and only inside the child):

- `settings`     the `[whatsapp]` config as the pieces below use it
- `addresses`    phone numbers / group ids -> JIDs
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
