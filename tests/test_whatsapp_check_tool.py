"""tools/whatsapp_check.py (the one-off check of a real account) run against the fake transport."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.whatsapp import FakeWhatsApp, wait_until

ROOT = Path(__file__).resolve().parents[1]
ME = "628123456789"


def test_the_check_walks_pair_lookup_photo_receipt_and_command(tmp_path: Path) -> None:
    fake = FakeWhatsApp(tmp_path / "fakewa")
    fake.script(not_on_whatsapp=[])
    proc = subprocess.Popen(
        [
            sys.executable,
            "tools/whatsapp_check.py",
            "--to",
            f"+{ME}",
            "--data-dir",
            str(tmp_path / "data"),
            "--transport",
            "fake",
            "--fake-dir",
            str(fake.dir),
            "--timeout",
            "60",
            "--receipt-timeout",
            "30",
            "--command-timeout",
            "30",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (tmp_path / "data" / "whatsapp" / "session.lock").exists(), what="the child")
        fake.inject("scan")
        [sent] = wait_until(lambda: fake.sent(), what="the test photo")
        assert sent["to"] == f"{ME}@s.whatsapp.net" and sent["image_bytes"] > 0
        fake.inject("receipt", id=sent["id"], type="DELIVERED")
        fake.inject("message", sender=ME, text="status")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    for step in ("pair", "lookup", "photo", "receipt", "command"):
        assert f"  {step:<8} worked" in out, out
    assert "the phone confirmed: delivered" in out
    assert len(fake.sent()) == 2 and "commands work" in fake.sent()[1]["text"]
