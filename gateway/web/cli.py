"""`parcelbox web ...` commands (registered by the gateway CLI)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from gateway.web.auth import MAX_PASSWORD_BYTES, set_password

MIN_PASSWORD_LEN = 8


def register(subparsers: Any) -> None:
    """Add `web set-password` to the `parcelbox` command line (`gateway.cli.COMMAND_MODULES`)."""
    web = subparsers.add_parser("web", help="dashboard settings")
    wsub = web.add_subparsers(dest="web_command", required=True)
    sp = wsub.add_parser(
        "set-password", help="set the dashboard login password (needed when [web] host is not loopback)"
    )
    sp.add_argument(
        "--config", metavar="FILE", help="TOML config (default: $PARCELBOX_CONFIG, then the user config dir)"
    )
    sp.add_argument(
        "--stdin", action="store_true", help="read the password from standard input (for scripts)"
    )
    sp.set_defaults(func=do_set_password)


def do_set_password(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.web.settings import WebSettings

    config = load_config(getattr(args, "config", None))
    settings = WebSettings.from_config(config.web, config.data_dir)
    assert settings.password_file is not None
    return set_password_command(settings.password_file, from_stdin=args.stdin)


def _too_short_or_long(pw: str) -> bool:
    return len(pw) < MIN_PASSWORD_LEN or len(pw.encode()) > MAX_PASSWORD_BYTES


def set_password_command(password_file: Path, *, from_stdin: bool = False) -> int:
    """Ask for a password twice (or read one line from stdin) and store its scrypt hash."""
    rule = (
        f"Use at least {MIN_PASSWORD_LEN} characters (at most {MAX_PASSWORD_BYTES} bytes); nothing changed."
    )
    if from_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            # getpass would fall back to reading an echoed line from the pipe, or fail with EOFError.
            print(
                "No terminal to ask for the password on. Pipe it in instead:\n"
                "  printf '%s\\n' \"$PASSWORD\" | parcelbox web set-password --stdin",
                file=sys.stderr,
            )
            return 1
        try:
            pw = getpass.getpass("New dashboard password: ")
            if _too_short_or_long(pw):  # say so now, not after typing it twice
                print(rule, file=sys.stderr)
                return 1
            again = getpass.getpass("Again: ")
        except EOFError:  # Ctrl-D at the prompt
            print("\nCancelled; nothing changed.", file=sys.stderr)
            return 1
        if again != pw:
            print("The two passwords differ; nothing changed.", file=sys.stderr)
            return 1
    if _too_short_or_long(pw):
        print(rule, file=sys.stderr)
        return 1
    set_password(password_file, pw)
    print(f"Password saved (scrypt hash) in {password_file}. Existing dashboard sessions are logged out.")
    return 0
