"""`bacon-zoo` command line: one subcommand per job, each defined next to the code it drives.

Each command module exposes `add_parser(subparsers)`, which registers its options and sets `func`.
Command modules import heavy libraries inside `func`, so `bacon-zoo --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from bacon_zoo import __version__
from bacon_zoo.errors import UserError

EXIT_USER_ERROR = 2  # bad input: fix the command; retrying it unchanged fails again

COMMAND_MODULES = [
    "bacon_zoo.train.cli",
    "bacon_zoo.data.cli",
    "bacon_zoo.hub.cli",
    "bacon_zoo.study.cli",
    "bacon_zoo.analysis.cli",
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage of `train` is a screen of flags),
    and `--weight-decay -1e-4` / `--lr -.5` are values (argparse's own pattern misses exponents)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def one_line(message: str) -> str:
    """A message on one line, whatever the code that raised it put in it."""
    return re.sub(r"\s*\n\s*", " ", str(message).strip())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bacon-zoo",
        description="BaCon, FixMatch and ABC on any timm backbone, for class-imbalanced semi-supervised learning.",
    )
    parser.add_argument("--version", action="version", version=f"bacon-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 2 bad input (one `error:` line on stderr, no traceback),
    143 / 130 stopped by SIGTERM / SIGINT after a checkpoint (requeue with --resume), and a traceback
    for anything else, which is a bug in bacon-zoo and must stay visible.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: SystemExit(2) with one line
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"bacon-zoo {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # TrainingStopped carries the signal's conventional code
        code = getattr(e, "exit_code", 130)
        print(one_line(e) or "interrupted", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
