"""The dashboard's WhatsApp buttons (pairing code, test message, unlink) on a running gateway.

The gateway port only reports WhatsApp state; the actions belong to the WhatsApp
component (`gateway.whatsapp.component.WhatsAppComponent`) that the gateway runs
when `[whatsapp] enabled`. It is looked up on each call, so the order in which
components are built does not matter, and with WhatsApp off every action simply
reports that it is unavailable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

PAIR_CODE_WAIT_S = 20.0
UNLINK_WAIT_S = 60.0
TEST_TEXT = {
    "en": "parcelbox: test message. WhatsApp alerts from your parcel box gateway work.",
    "id": "parcelbox: pesan uji. Notifikasi WhatsApp dari gateway kotak paket Anda berfungsi.",
}


class WhatsAppActions:
    """Adapter from the dashboard's actions to the WhatsApp component found by `find_component()`."""

    def __init__(self, find_component: Callable[[], Any]) -> None:
        self._find = find_component
        self._unlinking = threading.Lock()

    @classmethod
    def for_service(cls, service: Any) -> WhatsAppActions:
        def find() -> Any:
            for c in getattr(service, "components", []):
                if hasattr(c, "supervisor") and hasattr(c, "settings") and hasattr(c, "notifier"):
                    return c
            return None

        return cls(find)

    def available(self) -> bool:
        return self._find() is not None

    def pair_code(self, phone_digits: str) -> dict[str, Any]:
        comp = self._require()
        st = comp.supervisor.state()
        if st.get("state") == "connected":
            return {"ok": False, "error": "already linked; unlink first to pair another phone"}
        comp.supervisor.pair_phone(phone_digits)
        st = comp.supervisor.wait_for(
            lambda s: bool(s.get("pair_code")) or s.get("state") in ("connected", "error", "banned"),
            PAIR_CODE_WAIT_S,
        )
        if st is None or not st.get("pair_code"):
            detail = (st or comp.supervisor.state()).get("detail") or "WhatsApp gave no code"
            return {"ok": False, "error": f"no pairing code yet: {detail}"}
        return {"ok": True, "pair_code": st["pair_code"]}

    def needs_confirmation(self, recipient: str) -> bool:
        """True when `recipient` is a valid number or group that is not one of the configured
        alert recipients: the dashboard asks before it messages a stranger from this account.
        A malformed one is False: the send reports what is wrong with it."""
        from gateway.whatsapp.addresses import BadRecipient, to_jid

        comp = self._require()
        try:
            jid = to_jid(recipient)
        except BadRecipient:
            return False
        s = comp.settings
        configured = [*s.recipients, *(r for rs in getattr(s, "recipients_by_box", {}).values() for r in rs)]
        known = set()
        for r in configured:
            try:
                known.add(to_jid(r))
            except BadRecipient:
                continue
        return jid not in known

    def test_message(self, recipient: str | None) -> dict[str, Any]:
        from gateway.whatsapp.addresses import BadRecipient, to_jid

        comp = self._require()
        targets = [recipient] if recipient else list(comp.settings.recipients)
        if not targets:
            return {"ok": False, "error": "no recipients configured; set [whatsapp] recipients or type one"}
        text = TEST_TEXT.get(getattr(comp.settings, "language", "en"), TEST_TEXT["en"])
        results = []
        for r in targets:
            try:
                jid = to_jid(r)
                missing = self._not_on_whatsapp(comp, r, jid)
                if missing:
                    results.append({"recipient": r, "ok": False, "error": missing})
                    continue
                out = comp.supervisor.send(jid, text)
                results.append({"recipient": r, "ok": out.ok, "error": out.error})
            except BadRecipient as e:
                results.append({"recipient": r, "ok": False, "error": str(e)})
        failed = [x for x in results if not x["ok"]]
        if failed:
            return {
                "ok": False,
                "error": "; ".join(f"{x['recipient']}: {x['error']}" for x in failed),
                "results": results,
            }
        return {"ok": True, "results": results}

    def _not_on_whatsapp(self, comp: Any, recipient: str, jid: str) -> str | None:
        """Why a number outside the recipients cannot get the test message, or None to send it.

        Configured recipients were looked up once when WhatsApp connected; a stranger is looked up
        now (one usync query, like the start-up check), because a send to a number that is not on
        WhatsApp is a look-up too, and repeated look-ups of non-users are a known ban signal.
        Groups are not looked up."""
        if not jid.endswith("@s.whatsapp.net") or not self.needs_confirmation(recipient):
            return None
        digits = jid.split("@", 1)[0]
        found = comp.supervisor.check_numbers([digits])
        if isinstance(found, str):
            return f"could not check the number: {found}"
        if found.get(digits) is False:
            return "this number is not on WhatsApp"
        return None

    def unlink(self) -> dict[str, Any]:
        """Log out in the background: stop the running link, run the unlink, start again (to pair anew)."""
        comp = self._require()
        if not self._unlinking.acquire(blocking=False):
            return {"ok": False, "error": "already unlinking"}

        def work() -> None:
            from gateway.whatsapp.supervisor import WhatsAppSupervisor

            try:
                comp.supervisor.stop()
                sup = WhatsAppSupervisor(comp.settings, mode="unlink")
                sup.start()
                sup.finished.wait(UNLINK_WAIT_S)
                sup.stop()
                log.info("web: WhatsApp unlink finished: %s", sup.state().get("state"))
            except Exception:
                log.exception("web: WhatsApp unlink failed")
            finally:
                comp.supervisor.start()  # back to pairing (or connected, if the unlink failed)
                self._unlinking.release()

        threading.Thread(target=work, name="web-whatsapp-unlink", daemon=True).start()
        return {"ok": True, "detail": "Unlinking; a new QR code appears here when it is done."}

    def _require(self) -> Any:
        comp = self._find()
        if comp is None:
            raise LookupError("WhatsApp is not enabled on this gateway ([whatsapp] enabled = true)")
        return comp
