"""Atomic, verifiable checkpoints that never run code when they are read.

A checkpoint is written to `checkpoints/.tmp-step_XXXXXXX`; when every process has finished writing,
`manifest.json` (every file's size and sha256) is written last and the folder is renamed to
`checkpoints/step_XXXXXXX`. A crash therefore never leaves a half-written "latest", and a checkpoint
damaged afterwards (a truncated copy, a deleted file, a full disk) is recognised by
`verify_checkpoint` and skipped on resume in favour of the newest one that is complete.

What is in one, and how each part is read back (run folders are passed between people: a file in one
may be hostile, and `manifest.json` is a checksum its sender can recompute, not a defence):

    model.safetensors        the model (accelerate's `save_state`; safetensors holds no code)
    optimizer.bin            accelerate's torch pickles: read only with `torch.load(weights_only=True)`
    random_states_N.pkl      (accelerate's loader), after `refuse_code` has checked that they name no
                             global beyond the numpy ones an RNG state needs
    train_state.safetensors  our own state: EMA, the algorithm's banks, schedule, loop position and
    train_state.json         diagnostics, as tensors + a JSON tree (`write_state` / `read_state`), and
                             the run's config fingerprint (`foreign_keys` refuses another run's)

Checkpoints of older versions hold our state as accelerate's `custom_checkpoint_N.pkl` pickles; they
are read with `weights_only=True` too, so a pickle that asks to run code is refused, never executed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

from accelerate import Accelerator

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write_text, sha256_file, umask_modes
from bacon_zoo.run import manifest
from bacon_zoo.run.layout import CHECKPOINTS, MANIFEST, TMP_PREFIX, step_dir_name, step_of

# our objects, by name: what `save_checkpoint` stores in train_state.* (and, in checkpoints of older
# versions, the order of accelerate's `custom_checkpoint_{i}.pkl`)
CUSTOM_OBJECTS = ("scheduler", "ema", "algorithm", "state", "diagnostics")
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
STATE_FORMAT = 1
# the files of `accelerator.save_state` that `accelerator.load_state` reads (nothing else is shown to it)
_ACCELERATE_FILE = re.compile(
    r"^(model(_\d+)?\.safetensors|optimizer(_\d+)?\.bin|scaler\.pt|random_states_\d+\.pkl)$"
)
REFUSED = "refused: the file asks to run code"


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


class TrainState:
    """The loop position (also the data-stream position: one batch per step) and eval history."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------
# our state: a JSON tree whose tensors live in one safetensors file


def _encode(obj: Any, tensors: dict[str, Any], path: str) -> Any:
    """`obj` as JSON, each tensor replaced by {"__tensor__": key} and stored in `tensors[key]`."""
    import torch

    if isinstance(obj, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors of the checkpoint state are both named {path}")
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {
            "__items__": [
                [_encode(k, tensors, f"{path}.{i}k"), _encode(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state {path} is a {type(obj).__name__}; store tensors and numbers")


def _decode(tree: Any, tensor: Any) -> Any:
    """The inverse of `_encode`; `tensor(key)` returns a stored tensor."""
    if isinstance(tree, list):
        return [_decode(v, tensor) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"__tensor__"}:
        return tensor(tree["__tensor__"])
    if set(tree) == {"__tuple__"}:
        return tuple(_decode(v, tensor) for v in tree["__tuple__"])
    if set(tree) == {"__items__"}:
        return {_decode(k, tensor): _decode(v, tensor) for k, v in tree["__items__"]}
    return {k: _decode(v, tensor) for k, v in tree.items()}


def write_state(folder: Path, objects: dict[str, Stateful], run: dict[str, Any] | None) -> None:
    """train_state.safetensors + train_state.json: every object's `state_dict()` and `run` (what
    identifies the run: its config fingerprint), fsynced; the caller renames the folder into place."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    tree = {name: _encode(obj.state_dict(), tensors, name) for name, obj in objects.items()}
    save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": "pt"})
    meta = {"format": STATE_FORMAT, "run": run, "objects": tree}
    atomic_write_text(folder / STATE_JSON, json.dumps(meta, indent=1))


def _state_json(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / STATE_JSON).read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("objects"), dict):
            raise ValueError
    except (OSError, ValueError):
        raise UserError(
            f"{folder / STATE_JSON} is unreadable; the checkpoint is damaged, use an earlier one"
        ) from None
    return meta


def is_legacy(folder: Path) -> bool:
    """A checkpoint of an older version: our state in accelerate's `custom_checkpoint_N.pkl`."""
    return not (folder / STATE_JSON).is_file() and (folder / "custom_checkpoint_0.pkl").is_file()


def read_state(folder: Path, names: tuple[str, ...] = CUSTOM_OBJECTS) -> dict[str, Any]:
    """{name: state dict} of the objects `names` of a checkpoint, on the CPU; no code runs."""
    folder = Path(folder)
    if is_legacy(folder):
        return {n: _load_legacy(folder, n) for n in names}
    from safetensors import safe_open

    meta = _state_json(folder)
    missing = [n for n in names if n not in meta["objects"]]
    if missing:
        raise UserError(
            f"{folder / STATE_JSON} has no '{missing[0]}' state; use another checkpoint"
        )
    try:
        with safe_open(str(folder / STATE_TENSORS), framework="pt", device="cpu") as f:
            return {n: _decode(meta["objects"][n], f.get_tensor) for n in names}
    except UserError:
        raise
    except Exception as e:  # SafetensorError, a key named in the JSON that is not stored, OSError
        raise UserError(
            f"cannot read {folder / STATE_TENSORS} ({type(e).__name__}: {_first_line(e)}); "
            "the checkpoint is damaged, use an earlier one"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# pickles: accelerate's optimizer and RNG files, and our state in checkpoints of older versions


def _accelerate_safe_globals() -> frozenset[str]:
    """The globals accelerate's `load` allows with weights_only=True (numpy arrays of RNG states)."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    return frozenset(f"{g.__module__}.{g.__qualname__}" for g in TORCH_SAFE_GLOBALS)


def refuse_code(path: Path, allowed: frozenset[str] = frozenset()) -> None:
    """A one-line UserError unless the torch pickle `path` names only globals that
    `torch.load(weights_only=True)` (and `allowed`) accept: tensors, containers, numbers, strings.

    Only the pickle's opcodes are read (`get_unsafe_globals_in_checkpoint`); nothing is loaded. The
    load that follows uses weights_only=True anyway: this check is what names the file and says why.
    """
    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # not a torch zip file (a raw pickle, garbage, truncated)
        raise UserError(
            f"{path} is not a torch checkpoint file ({_first_line(e)}); it was not loaded: "
            "use an earlier checkpoint"
        ) from None
    bad = [g for g in unsafe if g not in allowed]
    if bad:
        raise UserError(
            f"{path}: {REFUSED} ({bad[0]}) and was not loaded; a checkpoint holds only tensors "
            "and numbers: this one was changed by someone else, do not use it"
        )


def _load_legacy(folder: Path, name: str) -> dict:
    import torch

    path = folder / f"custom_checkpoint_{CUSTOM_OBJECTS.index(name)}.pkl"
    if not path.is_file():
        raise UserError(
            f"{folder} is not a complete checkpoint (missing {path.name}); use an earlier one"
        )
    refuse_code(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals the opcode scan missed, truncated files
        raise UserError(
            f"cannot read {path} ({type(e).__name__}: {_first_line(e)}); it was not loaded, use "
            "an earlier checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"{path} holds a {type(state).__name__}, not a state dict; use an earlier checkpoint"
        )
    return state


# ---------------------------------------------------------------------------------------------
# listing and verifying


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """The `step_N` folders (renamed into place, not yet verified), oldest first; `.tmp-*` never."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [(step, p) for p in ckpt_root.iterdir() if (step := step_of(p)) is not None]
    return [p for _, p in sorted(found) if p.is_dir()]


def write_manifest(ckpt_dir: Path) -> Path:
    """Record every file of a written checkpoint (sha256 and size, `bacon_zoo.run.manifest`'s one
    format); atomic, and the last file written."""
    return manifest.write_manifest(ckpt_dir, MANIFEST, sizes=True)


def verify_checkpoint(path: Path, hashes: bool = True) -> str | None:
    """None if the checkpoint is complete, else why not (one short phrase).

    Every file in the manifest must exist with its recorded size (and sha256 unless `hashes=False`),
    and our state must be there (train_state.*, or every `custom_checkpoint_N.pkl` of an older
    version), so loading cannot fail on a missing part. Integrity only: see `refuse_code` for safety.
    """
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    try:
        recorded = manifest.read_manifest(path, MANIFEST)
    except FileNotFoundError:
        return f"missing {MANIFEST} (an interrupted write, or a checkpoint of an older version)"
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    files = recorded.files
    legacy = [f"custom_checkpoint_{i}.pkl" for i in range(len(CUSTOM_OBJECTS))]
    if not any(f in files for f in (STATE_JSON, *legacy)):
        return f"{STATE_JSON} is not in the manifest (written by another version?)"
    needed = legacy if STATE_JSON not in files else [STATE_TENSORS]
    for f in needed:
        if f not in files:
            return f"{f} is not in the manifest (written by another version?)"
    for name, sha in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        size = f.stat().st_size
        if name in recorded.sizes and size != recorded.sizes[name]:
            return f"{name} is {size} bytes, manifest says {recorded.sizes[name]}"
        if hashes and sha256_file(f) != sha:
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
    if path.name.startswith(TMP_PREFIX) and path.is_dir():
        raise UserError(
            f"--resume {resume}: a half-written checkpoint (its write was interrupted); "
            f"resume from a step_N folder beside it, or pass --resume alone for the newest complete one"
        )
    if path.is_dir() and step_of(path) is not None:
        reason = verify_checkpoint(path)
        if reason is not None:
            raise UserError(
                f"--resume {resume}: damaged checkpoint ({reason}); "
                "resume from an earlier step_N, or pass --resume alone for the newest complete one"
            )
        return path
    if path.is_dir() and list_checkpoints(path / CHECKPOINTS):
        found, skipped = _newest_verified(path / CHECKPOINTS)
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


# ---------------------------------------------------------------------------------------------
# saving and loading


def _disk_full(e: BaseException) -> bool:
    """A write that failed for lack of space (torch's zip writer says only "unexpected pos")."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(
        s in text for s in ("unexpected pos", "No space left", "os error 28", "file write failed")
    )


def save_checkpoint(
    accelerator: Accelerator,
    ckpt_root: Path,
    step: int,
    keep: int,
    objects: dict[str, Stateful] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write the model, optimizer and RNG states (accelerate) and `objects` (ours, `write_state`)
    atomically, then prune to the newest `keep` checkpoints. `run` identifies the run (its config
    fingerprint), so that export can refuse another run's checkpoint."""
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process and objects:
            write_state(tmp, objects, run)
    except Exception as e:  # OSError, torch's RuntimeError, safetensors' SafetensorError
        if not _disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = list_checkpoints(ckpt_root)
        previous = (
            f"the previous checkpoint ({kept[-1].name}) is intact"
            if kept
            else "no checkpoint was kept"
        )
        raise UserError(
            f"no space left on the device while writing checkpoint {final.name} in {ckpt_root}; "
            f"{previous}: free some space and resume with --resume"
        ) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        umask_modes(tmp)  # accelerate's safetensors files are written 0600
        write_manifest(tmp)  # last: a checkpoint without a manifest is never resumed from
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, ckpt: Path, objects: dict[str, Stateful]) -> None:
    """Restore a (verified) checkpoint without running code from it.

    Our state is read by `read_state`. `accelerator.load_state` is shown only accelerate's own files
    (model.safetensors, optimizer.bin, random_states_N.pkl, ...: symlinked into a private folder),
    each pickle first checked by `refuse_code`; it reads them with weights_only=True. It never sees a
    `custom_checkpoint_N.pkl`, which it would unpickle without the weights-only guard.
    """
    ckpt = Path(ckpt)
    states = read_state(ckpt, tuple(objects))
    allowed = _accelerate_safe_globals()
    with tempfile.TemporaryDirectory(prefix="bacon-zoo-load-") as view:
        for f in sorted(ckpt.iterdir()):
            if f.is_file() and _ACCELERATE_FILE.match(f.name):
                if f.suffix != ".safetensors":
                    refuse_code(f, allowed)
                os.symlink(f.resolve(), Path(view) / f.name)
        accelerator.load_state(view)
    for name, obj in objects.items():
        obj.load_state_dict(states[name])


def load_custom_object(ckpt_dir: Path, name: str) -> dict:
    """The state dict of one of our objects (e.g. "ema": ModelEmaV3, keys prefixed `module.`),
    from a checkpoint that verifies; no code in the checkpoint runs."""
    if (Path(ckpt_dir) / MANIFEST).is_file():  # checkpoints of older versions have none
        reason = verify_checkpoint(ckpt_dir)
        if reason is not None:
            raise UserError(f"{ckpt_dir} is damaged ({reason}); use an earlier checkpoint")
    elif not is_legacy(Path(ckpt_dir)) and not (Path(ckpt_dir) / STATE_JSON).is_file():
        raise UserError(
            f"{ckpt_dir} is not a complete checkpoint (no {STATE_JSON}); use an earlier one"
        )
    return read_state(Path(ckpt_dir), (name,))[name]


def load_ema_weights(ckpt_dir: Path) -> dict:
    """The EMA BaconNet's state dict from a checkpoint (the weights that are evaluated and exported)."""
    state = load_custom_object(ckpt_dir, "ema")
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}


# ---------------------------------------------------------------------------------------------
# whose checkpoint is it


def run_record(fingerprint: str) -> dict[str, Any]:
    """What a checkpoint records about its run: the config fingerprint (`config.fingerprint` with
    `steps` ignored, since a resume may raise it), as JSON."""
    return {"config": json.loads(fingerprint)}


def foreign_keys(ckpt: Path, fingerprint: str) -> list[str] | None:
    """Config keys in which the run that wrote `ckpt` differs from the run of `fingerprint` (empty:
    the same experiment); None when the checkpoint records no run (an older version). Keys that only
    one side has (added or removed by another version) are not counted."""
    if is_legacy(Path(ckpt)):
        return None
    saved = (_state_json(Path(ckpt)).get("run") or {}).get("config")
    if not isinstance(saved, dict):
        return None

    def walk(a: dict, b: dict, prefix: str) -> list[str]:
        out = []
        for k in sorted(set(a) & set(b)):
            if isinstance(a[k], dict) and isinstance(b[k], dict) and k != "backbone_kwargs":
                out += walk(a[k], b[k], f"{prefix}{k}.")
            elif a[k] != b[k]:
                out.append(prefix + k)
        return out

    return walk(saved, json.loads(fingerprint), "")


def check_same_run(ckpt: Path, fingerprint: str, run_dir: Path, flag: str = "--checkpoint") -> None:
    """Refuse a checkpoint of another run (its recorded config differs from this run's); one of an
    older version, which records none, only from this run's own checkpoints/ folder."""
    diff = foreign_keys(ckpt, fingerprint)
    if diff:
        raise UserError(
            f"{flag} {ckpt} belongs to another run (its config differs in: {', '.join(diff[:5])}); "
            f"give a checkpoint of {run_dir}, or export that checkpoint's own run"
        )
    if diff is None:
        own = (Path(run_dir) / CHECKPOINTS).resolve()
        if not Path(ckpt).resolve().is_relative_to(own):
            raise UserError(
                f"{flag} {ckpt} records no run (an older version) and is not in {own}; "
                "export it from its own run directory"
            )
