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

    tk = wsub.add_parser("token", help="API tokens for the send API and scripts (Authorization: Bearer ...)")
    tsub = tk.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", help="create a token and print it (once)")
    tc.add_argument("name", help="who uses it, e.g. homeassistant")
    tc.add_argument(
        "--scope",
        choices=("send", "read"),
        default="send",
        help="send: POST /api/notify and GET /api/alerts/<id>; read: every GET of the API (default: send)",
    )
    tl = tsub.add_parser("list", help="the tokens (names, scopes, dates; never the tokens)")
    tr = tsub.add_parser("revoke", help="revoke a token (takes effect on the running gateway at once)")
    tr.add_argument("name")
    for p in (tc, tl, tr):
        p.add_argument("--config", metavar="FILE", help="TOML config (default: $PARCELBOX_CONFIG, ...)")
    tc.set_defaults(func=do_token)
    tl.set_defaults(func=do_token)
    tr.set_defaults(func=do_token)


def do_set_password(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.web.settings import WebSettings

    config = load_config(getattr(args, "config", None))
    settings = WebSettings.from_config(config.web, config.data_dir)
    assert settings.password_file is not None
    return set_password_command(settings.password_file, from_stdin=args.stdin)


def do_token(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.web.settings import WebSettings
    from gateway.web.tokens import TokenStore

    config = load_config(getattr(args, "config", None))
    settings = WebSettings.from_config(config.web, config.data_dir)
    return token_command(TokenStore(settings.tokens_file), args.token_command, args)


def token_command(store: Any, command: str, args: Any) -> int:
    """`create` / `list` / `revoke` on a `gateway.web.tokens.TokenStore`."""
    import time as _time

    from gateway.web.tokens import TokenError

    if command == "create":
        try:
            token = store.create(args.name, args.scope)
        except TokenError as e:
            print(f"Not created: {e}", file=sys.stderr)
            return 1
        print(token)
        print(
            f"Token {args.name!r} ({args.scope}) created. It is shown only now: keep it in the caller's\n"
            f"secrets (Home Assistant: secrets.yaml). Send it as: Authorization: Bearer <token>",
            file=sys.stderr,
        )
        return 0
    if command == "list":
        rows = store.list()
        if not rows:
            print("No API tokens. Create one: parcelbox web token create NAME [--scope send|read]")
        for t in rows:
            made = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(t.created_at))
            state = (
                f"revoked {_time.strftime('%Y-%m-%d %H:%M', _time.localtime(t.revoked_at))}"
                if t.revoked_at
                else "active"
            )
            print(f"{t.name:<24} {t.scope:<5} created {made}  {state}")
        return 0
    if command == "revoke":
        if store.revoke(args.name):
            print(f"Token {args.name!r} revoked.")
            return 0
        print(f"No active token named {args.name!r}.", file=sys.stderr)
        return 1
    raise ValueError(command)


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
