"""Atomic, verifiable checkpoints on top of `accelerator.save_state`.

A checkpoint is written to `checkpoints/.tmp-step_XXXXXXX`; when every process has finished writing,
`manifest.json` (every file's size and sha256) is written last and the folder is renamed to
`checkpoints/step_XXXXXXX`. A crash therefore never leaves a half-written "latest", and a checkpoint
damaged afterwards (a truncated copy, a deleted file, a full disk) is recognised by
`verify_checkpoint` and skipped on resume in favour of the newest one that is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
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


MANIFEST = "manifest.json"


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """The `step_N` folders (renamed into place, not yet verified), oldest first; `.tmp-*` never."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in ckpt_root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(ckpt_dir: Path) -> Path:
    """Record every file of a written checkpoint (size, sha256); atomic, and the last file written."""
    ckpt_dir = Path(ckpt_dir)
    files = {
        p.relative_to(ckpt_dir).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(ckpt_dir.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".tmp")
    }
    tmp = ckpt_dir / (MANIFEST + ".tmp")
    with tmp.open("w") as f:
        json.dump({"version": 1, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / MANIFEST)
    return ckpt_dir / MANIFEST


def verify_checkpoint(path: Path, hashes: bool = True) -> str | None:
    """None if the checkpoint is complete, else why not (one short phrase).

    Every file in the manifest must exist with its recorded size (and sha256 unless `hashes=False`),
    and every registered custom object must be there, so `accelerator.load_state` cannot fail on it.
    """
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        return f"missing {MANIFEST} (an interrupted write, or a checkpoint of an older version)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for i in range(len(CUSTOM_OBJECTS)):
        if f"custom_checkpoint_{i}.pkl" not in files:
            return f"custom_checkpoint_{i}.pkl is not in the manifest (written by another version?)"
    for name, meta in sorted(files.items()):
        if not isinstance(meta, dict):
            return f"{MANIFEST} is unreadable"
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        size = f.stat().st_size
        if size != meta.get("size"):
            return f"{name} is {size} bytes, manifest says {meta.get('size')}"
        if hashes and _sha256(f) != meta.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None


def _log(msg: str) -> None:
    """One line on stderr from the main process only (RANK is set by every distributed launcher)."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, file=sys.stderr, flush=True)


def _newest_verified(ckpt_root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    skipped = []
    for ckpt in reversed(list_checkpoints(ckpt_root)):
        reason = verify_checkpoint(ckpt)
        if reason is None:
            return ckpt, skipped
        skipped.append((ckpt, reason))
    return None, skipped


def _rel(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def latest_complete(ckpt_root: Path) -> Path | None:
    """The newest checkpoint in `ckpt_root` that verifies (for export / analysis), naming skipped ones."""
    found, skipped = _newest_verified(Path(ckpt_root))
    _report_skipped(skipped, found, "using")
    return found


def find_resume_dir(resume: str, ckpt_root: Path) -> Path | None:
    """The checkpoint to resume from: the newest one that verifies.

    `auto`: in `ckpt_root` (the run's checkpoints/); None (start from step 0, said on stderr) when
    there is none or none is complete. Otherwise `resume` is a RUN_DIR (its newest complete
    checkpoint) or a RUN_DIR/checkpoints/step_N, which must verify. Every checkpoint skipped because
    it is damaged is named with the reason, one line each.
    """
    if resume == "auto":
        found, skipped = _newest_verified(Path(ckpt_root))
        _report_skipped(skipped, found)
        if found is None:
            what = "no complete checkpoint" if skipped else "no checkpoint"
            _log(f"--resume: {what} in {ckpt_root}; starting from step 0")
        return found
    path = Path(resume)
    if path.name.startswith(".tmp-") and path.is_dir():
        raise UserError(
            f"--resume {resume}: a half-written checkpoint (its write was interrupted); "
            f"resume from a step_N folder beside it, or pass --resume alone for the newest complete one"
        )
    if path.is_dir() and _STEP_DIR.match(path.name):
        reason = verify_checkpoint(path)
        if reason is not None:
            raise UserError(
                f"--resume {resume}: damaged checkpoint ({reason}); "
                "resume from an earlier step_N, or pass --resume alone for the newest complete one"
            )
        return path
    if path.is_dir() and list_checkpoints(path / "checkpoints"):
        found, skipped = _newest_verified(path / "checkpoints")
        if found is None:
            reasons = "; ".join(f"{c.name}: {r}" for c, r in skipped)
            raise UserError(f"--resume {resume}: no complete checkpoint ({reasons})")
        _report_skipped(skipped, found)
        return found
    if not path.exists():
        problem = "no such directory"
    elif path.is_dir():
        problem = "no checkpoints in it"
    else:
        problem = "not a directory"
    raise UserError(
        f"--resume {resume}: {problem} (expected RUN_DIR or RUN_DIR/checkpoints/step_N); "
        "use --resume without a value to continue the run in --output-dir"
    )


def _report_skipped(
    skipped: list[tuple[Path, str]], found: Path | None, verb: str = "resuming from"
) -> None:
    for i, (ckpt, reason) in enumerate(skipped):
        then = ""
        if i == len(skipped) - 1:
            then = f"; {verb} {found.name}" if found is not None else ""
        _log(f"skipping {_rel(ckpt)}: {reason}{then}")


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
        write_manifest(tmp)  # last: a checkpoint without a manifest is never resumed from
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
    if (Path(ckpt_dir) / MANIFEST).is_file():  # checkpoints of older versions have none
        reason = verify_checkpoint(ckpt_dir)
        if reason is not None:
            raise UserError(f"{ckpt_dir} is damaged ({reason}); use an earlier checkpoint")
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
