"""`bacon-zoo train` (and `accelerate launch train.py`): flags, recipes, then the trainer."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from bacon_zoo.config import add_config_args

    parser = subparsers.add_parser(
        "train",
        help="train FixMatch, ABC or BaCon on a long-tailed split (run under `accelerate launch` to scale)",
        description="Defaults reproduce the paper's CIFAR-10-LT BaCon setting; a recipe and flags override them.",
    )
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bacon_zoo.config import config_from_args, dumps

    cfg = config_from_args(args)
    if args.print_config:
        print(dumps(cfg), end="")
        return 0
    from bacon_zoo.train.trainer import train

    train(cfg)
    return 0
