"""`parcelbox` command line."""

from __future__ import annotations

import argparse
import sys

from gateway import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parcelbox", description="parcelbox gateway")
    parser.add_argument("--version", action="version", version=f"parcelbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the gateway")
    args = parser.parse_args(argv)
    if args.command == "run":
        print("parcelbox run: the gateway core is not built yet (see the gateway issue)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
