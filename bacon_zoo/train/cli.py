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
    check_tracker(cfg.log_with)
    from bacon_zoo.train.trainer import train

    train(cfg)
    return 0


# the package each `--log-with` tracker needs (accelerate only warns and trains without it)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
}


def check_tracker(log_with: str) -> None:
    """Refuse a tracker whose package is missing before anything runs or is written."""
    import importlib.util

    from bacon_zoo.errors import UserError

    packages = TRACKER_PACKAGES.get(log_with, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise UserError(
            f"--log-with {log_with} needs the '{packages[0]}' package (pip install {packages[0]}); "
            "or use --log-with none"
        )
