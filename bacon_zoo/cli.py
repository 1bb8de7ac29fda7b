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
    _add_train_parser(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bacon-zoo train` (and `accelerate launch train.py`): it lives here, at the top layer, because
    it drives both the trainer and the export that follows it."""
    from bacon_zoo.config import add_config_args

    parser = subparsers.add_parser(
        "train",
        help="train FixMatch, ABC or BaCon on a long-tailed split (run under `accelerate launch` to scale)",
        description="Defaults reproduce the paper's CIFAR-10-LT BaCon setting; a recipe and flags override them.",
    )
    add_config_args(parser)
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    """Train (or resume), then export a complete run: exit 0, or 128 + signal after a stop."""
    from bacon_zoo.config import config_from_args, dumps

    cfg = config_from_args(args)
    if args.print_config:
        print(dumps(cfg), end="")
        return 0
    from accelerate import PartialState

    from bacon_zoo.hub.weights import resolve_init_from
    from bacon_zoo.run import RunDir
    from bacon_zoo.train.trainer import train

    # --init-from hf-hub:ORG/NAME is downloaded (cached) now: the trainer reads a local folder
    result = train(cfg, init_from=resolve_init_from(cfg.init_from))
    if result.status != "complete":
        return result.exit_code
    if cfg.export and PartialState().is_main_process:
        from bacon_zoo.hub.export import export_run

        export = RunDir(result.run_dir).export_dir
        if result.trained or not export.is_dir():
            try:
                print(f"exported to {export_run(result.run_dir)}", file=sys.stderr)
            except UserError as e:  # e.g. an export edited by hand: the run itself is complete
                print(f"export skipped: {one_line(e)}", file=sys.stderr)
        else:  # a finished run that was only reported keeps the export it has
            print(f"its export is {export}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 2 bad input (one `error:` line on stderr, no traceback),
    143 / 130 / 140 stopped by SIGTERM / SIGINT / SIGUSR2 (SLURM's time-limit warning) after a
    checkpoint (requeue with --resume), and a traceback
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
    except KeyboardInterrupt:  # Ctrl-C outside training (the trainer itself stops cleanly)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
