"""Launched by tests/test_remixmatch.py under `accelerate launch --multi_gpu --num_processes 2` (CPU):
`bacon-zoo train ...`, and at every checkpoint both ranks compare their whole state (model, EMA, the
algorithm's buffers: DA's running mean, BaCon's banks) bit for bit, so a rank that drifted fails the run.
Prints REMIXMATCH_RANKS_OK <checks> <checksum> on rank 0 at the end."""

from __future__ import annotations

import os
import sys

import torch

import bacon_zoo.algorithms.remixmatch  # noqa: F401  (registers the plug-in)
import bacon_zoo.train.trainer as trainer
from bacon_zoo.cli import main

_save = trainer.save_checkpoint
checks = []


def _flat(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}


def save_and_compare(accelerator, ckpt_root, step, keep, objects=None, run=None):
    state = _flat("model", accelerator.unwrap_model(accelerator._models[0]).state_dict())
    for name in ("ema", "algorithm"):
        state |= _flat(name, objects[name].state_dict())
    for key, value in state.items():
        both = accelerator.gather(value.detach().double().reshape(1, -1).contiguous())
        assert torch.equal(both[0], both[1]), f"rank mismatch at step {step} in {key}"
    checks.append((step, sum(float(v.double().sum()) for v in state.values())))
    assert any(k.startswith("algorithm.") for k in state)
    return _save(accelerator, ckpt_root, step, keep, objects, run)


trainer.save_checkpoint = save_and_compare

if __name__ == "__main__":
    code = main(["train", *sys.argv[1:]])
    if code == 0 and int(os.environ.get("RANK", "0")) == 0:
        print(f"REMIXMATCH_RANKS_OK {len(checks)} {checks[-1][1]:.6f}", flush=True)
    sys.exit(code)
