"""Atomic checkpoints on top of `accelerator.save_state`.

A checkpoint is written to `checkpoints/.tmp-step_XXXXXXX` and renamed to `checkpoints/step_XXXXXXX`
only when every process has finished writing, so a crash never leaves a half-written "latest".
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from bacon_zoo.errors import UserError

_STEP_DIR = re.compile(r"^step_(\d+)$")
# the order in which the trainer registers objects with `accelerator.register_for_checkpointing`;
# accelerate stores object i as `custom_checkpoint_{i}.pkl`
CUSTOM_OBJECTS = ("scheduler", "ema", "algorithm", "state", "diagnostics")


class TrainState:
    """The loop position (also the data-stream position: one batch per step) and eval history."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def find_resume_dir(resume: str, ckpt_root: Path) -> Path | None:
    """`auto` -> the latest complete checkpoint (None if there is none); else the given directory."""
    if resume == "auto":
        ckpts = list_checkpoints(ckpt_root)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if path.is_dir() and _STEP_DIR.match(path.name):
        return path
    if path.is_dir() and list_checkpoints(path / "checkpoints"):
        return list_checkpoints(path / "checkpoints")[-1]
    raise UserError(
        f"--resume {resume}: not a checkpoint directory (expected RUN_DIR or RUN_DIR/checkpoints/step_N); "
        "use --resume without a value to continue the run in --output-dir"
    )


def save_checkpoint(accelerator: Accelerator, ckpt_root: Path, step: int, keep: int) -> Path:
    """Write all registered state atomically, then prune to the newest `keep` checkpoints."""
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_custom_object(ckpt_dir: Path, name: str) -> dict:
    """The state dict of one registered object (e.g. "ema": ModelEmaV3, keys prefixed `module.`)."""
    import torch

    path = Path(ckpt_dir) / f"custom_checkpoint_{CUSTOM_OBJECTS.index(name)}.pkl"
    if not path.is_file():
        raise UserError(
            f"{ckpt_dir} is not a complete checkpoint (missing {path.name}); use an earlier one"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(
            f"cannot read {path} ({type(e).__name__}); the checkpoint is corrupt, use an earlier one"
        ) from None


def load_ema_weights(ckpt_dir: Path) -> dict:
    """The EMA BaconNet's state dict from a checkpoint (the weights that are evaluated and exported)."""
    state = load_custom_object(ckpt_dir, "ema")
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
