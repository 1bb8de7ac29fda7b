"""Launched by tests/test_train.py under `accelerate launch --multi_gpu --num_processes 2` (CPU):
`bacon-zoo train ...`, but rank 1 alone sends itself SIGTERM after step STOP_AT (0-based), as a
scheduler that signals one task of a job would. Both ranks must stop at the same step, checkpointed."""

from __future__ import annotations

import os
import signal
import sys

from bacon_zoo.algorithms.bacon import BaCon
from bacon_zoo.cli import main

STOP_AT = int(os.environ["STOP_AT"])
_after_step = BaCon.after_step


def after_step(self, step: int, total_steps: int) -> None:
    _after_step(self, step, total_steps)
    if step == STOP_AT and int(os.environ.get("RANK", "0")) == 1:
        signal.raise_signal(signal.SIGTERM)


BaCon.after_step = after_step

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
