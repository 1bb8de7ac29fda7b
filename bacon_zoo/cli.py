"""`bacon-zoo` command line: one subcommand per job, each defined next to the code it drives.

Each command module exposes `add_parser(subparsers)`, which registers its options and sets `func`.
Command modules import heavy libraries inside `func`, so `bacon-zoo --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bacon_zoo import __version__
from bacon_zoo.errors import UserError

COMMAND_MODULES = [
    "bacon_zoo.train.cli",
    "bacon_zoo.data.cli",
    "bacon_zoo.hub.cli",
    "bacon_zoo.study.cli",
    "bacon_zoo.analysis.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bacon-zoo",
        description="BaCon, FixMatch and ABC on any timm backbone, for class-imbalanced semi-supervised learning.",
    )
    parser.add_argument("--version", action="version", version=f"bacon-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"bacon-zoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
