"""Run a study: every cell is an ordinary `bacon-zoo train --resume` in its own run dir, as a subprocess.

Subprocesses keep cells independent (a crash, an OOM or a leaked CUDA context stays in its cell) and let
`--launcher "accelerate launch ..."` scale each cell exactly like a hand-launched run. Because every cell
is launched with `--resume`, a study is restartable: finished cells (summary.json complete) are skipped
without starting Python, interrupted ones continue from their last checkpoint, failed ones are retried.

Layout of STUDY_DIR: `study.json` (grid, seeds, recipe, sets, cells), `recipe.yaml` (the settings every
cell shares: the recipe chain without `study:`, plus --set), `cells/<name>/` (a run dir, plus
`stdout.log`, `stderr.log` and, when the cell failed, `error.log`: the error line, then the stderr tail).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bacon_zoo.config import (
    TrainConfig,
    apply_overrides,
    deep_merge,
    fingerprint,
    load_recipe,
    load_run_config,
    parse_set,
    resolve_recipe_path,
    validate,
)
from bacon_zoo.errors import UserError
from bacon_zoo.study.grid import (
    FORBIDDEN,
    Cell,
    StudySpec,
    axis_keys,
    expand,
    merge_cli,
    select_shard,
    spec_from_recipe,
)

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
ERROR_TAIL_LINES = 40


@dataclass
class Study:
    """A planned study: where it lives, what every cell shares, and its cells in run order."""

    dir: Path
    recipe: str | None
    base: str | None
    sets: list[str]
    spec: StudySpec
    common: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)

    @property
    def recipe_path(self) -> Path:
        return self.dir / "recipe.yaml"

    def cell_dir(self, cell: Cell | str) -> Path:
        return self.dir / "cells" / (cell if isinstance(cell, str) else cell.name)


# ---------------------------------------------------------------------------------------------
# planning


def load_study_recipe(recipe: str | None, base: str | None = None) -> tuple[dict[str, Any], Any]:
    """(settings shared by every cell, the `study:` block). `base` replaces the recipe's own `base:`."""
    if recipe is None:
        common = load_recipe(base) if base else {}
        return common, common.pop("study", None)
    merged = load_recipe(recipe)  # validates the YAML and the base chain
    if base is not None:
        path = resolve_recipe_path(recipe).resolve()
        own = yaml.safe_load(path.read_text()) or {}
        own.pop("base", None)
        merged = deep_merge(load_recipe(str(resolve_recipe_path(base, path.parent))), own)
    return merged, merged.pop("study", None)


def cell_config(common: dict[str, Any], cell: Cell, run_dir: Path) -> TrainConfig:
    """The config the trainer will resolve for this cell (recipe.yaml < --seed/--output-dir < --set)."""
    cfg = TrainConfig()
    try:
        apply_overrides(cfg, common)
        apply_overrides(cfg, {"seed": cell.seed, "output_dir": str(run_dir)})
        apply_overrides(cfg, parse_set(cell.sets))
        return validate(cfg)
    except UserError as e:
        raise UserError(f"cell {cell.name}: {e}") from None


def plan_study(
    out: str | Path,
    recipe: str | None = None,
    grid: dict[str, list[Any]] | None = None,
    seeds: list[int] | None = None,
    sets: list[str] | None = None,
    exclude: list[dict[str, Any]] | None = None,
    base: str | None = None,
) -> Study:
    """Resolve recipe + command line into cells, and check every cell's config before anything runs."""
    common, block = load_study_recipe(recipe, base)
    spec = merge_cli(spec_from_recipe(block, where=f"recipe '{recipe}'"), grid, seeds, exclude)
    cells = expand(spec)
    varied = {k for axis in spec.grid for k in axis_keys(axis)}
    varied |= {k for bundle in spec.variants.values() for k in bundle}
    for key in _dotted(parse_set(sets or [])):
        if key.split(".")[0] in FORBIDDEN:
            raise UserError(f"--set {key}: {FORBIDDEN[key.split('.')[0]]}")
        if key in varied:
            raise UserError(
                f"'{key}' is varied by the study; narrow it with --grid {key}=... instead of --set"
            )
    deep_merge(common, parse_set(sets or []))
    study = Study(Path(out).resolve(), recipe, base, list(sets or []), spec, common, cells)
    for cell in cells:
        cell_config(common, cell, study.cell_dir(cell))
    return study


def _dotted(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in d.items():
        keys += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # shards on a shared file system may write the same file at once


def check_shared_settings(study: Study) -> None:
    """Refuse a study dir whose cells were planned with other shared settings (runtime keys aside)."""
    if not study.recipe_path.is_file():
        return
    old, new = TrainConfig(), TrainConfig()
    try:
        apply_overrides(old, yaml.safe_load(study.recipe_path.read_text()) or {})
    except (UserError, yaml.YAMLError):
        return  # unreadable: the per-cell config check still guards every run dir
    apply_overrides(new, study.common)
    a, b = json.loads(fingerprint(old)), json.loads(fingerprint(new))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise UserError(
            f"{study.dir} holds a study with different shared settings (differs in: "
            f"{', '.join(diff)}); use another --out or repeat the original recipe and --set"
        )


def write_study(study: Study) -> None:
    """`study.json` and `recipe.yaml`: the same content from every shard of the same command."""
    (study.dir / "cells").mkdir(parents=True, exist_ok=True)
    header = (
        f"# Written by `bacon-zoo study run` from recipe {study.recipe or '(defaults)'}"
        f"{f' with base {study.base}' if study.base else ''}"
        f"{' and --set ' + ' '.join(study.sets) if study.sets else ''}.\n"
        "# The settings every cell shares; each cell adds its grid values and seed.\n"
    )
    _write_atomic(study.recipe_path, header + yaml.safe_dump(study.common, sort_keys=False))
    record = {
        "version": 1,
        "recipe": study.recipe,
        "recipe_path": str(resolve_recipe_path(study.recipe).resolve()) if study.recipe else None,
        "base": study.base,
        "sets": study.sets,
        **study.spec.to_dict(),
        "cells": [c.to_dict() for c in study.cells],
    }
    _write_atomic(study.dir / "study.json", json.dumps(record, indent=2) + "\n")


def read_study(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        raise UserError(
            f"'{study_dir}' is not a study directory (no study.json); "
            "create it with `bacon-zoo study run ... --out DIR`"
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# one cell


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def cell_status(run_dir: Path) -> str:
    """complete | failed | incomplete (started, or running elsewhere) | missing (never started)."""
    if (run_dir / "error.log").is_file():
        return "failed"
    summary = read_summary(run_dir)
    if summary and summary.get("status") == "complete":
        return "complete"
    return "incomplete" if (run_dir / "config.yaml").is_file() else "missing"


def error_line(stderr: str, returncode: int | None = None) -> str:
    """The one line that says why a cell failed: the CLI's `error:` line, else the last traceback line."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ": error: " in ln:
            return ln.split(": error: ", 1)[1]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~")) and "it/s]" not in ln and "s/it]" not in ln:
            return ln
    if returncode is not None and returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name} (out of memory?)"
    return f"exited with status {returncode} and no error message"


def _write_error(run_dir: Path, line: str, tail: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = line + "\n"
    if tail:
        text += "\n--- stderr tail ---\n" + tail
    (run_dir / "error.log").write_text(text)


def check_run_dir(study: Study, cell: Cell) -> str | None:
    """An error line when the cell's run dir holds a run of another config (else None)."""
    run_dir = study.cell_dir(cell)
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        saved = load_run_config(run_dir)
    except UserError as e:
        return str(e)
    expected = cell_config(study.common, cell, run_dir)
    if fingerprint(saved) == fingerprint(expected):
        return None
    a, b = json.loads(fingerprint(saved)), json.loads(fingerprint(expected))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return (
        f"{run_dir} holds a run with a different config (differs in: {', '.join(diff)}); "
        "delete the cell dir to retrain it, or use another --out"
    )


def cell_command(study: Study, cell: Cell, launcher: str | None = None) -> list[str]:
    """`python -m bacon_zoo.cli train ...`, or `<launcher> train.py ...` (e.g. accelerate launch)."""
    if launcher:
        entry = [str(TRAIN_PY)] if TRAIN_PY.is_file() else ["-m", "bacon_zoo.cli", "train"]
        prefix = [*shlex.split(launcher), *entry]
    else:
        prefix = [sys.executable, "-m", "bacon_zoo.cli", "train"]
    args = ["--recipe", str(study.recipe_path), "--seed", str(cell.seed)]
    args += ["--output-dir", str(study.cell_dir(cell))]
    for item in cell.sets:
        args += ["--set", item]
    return [*prefix, *args, "--resume"]


class _Stopper:
    """SIGINT/SIGTERM: pass the signal to the running cell (it checkpoints) and stop after it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _Stopper:
        self.stopping = False
        self.proc: subprocess.Popen | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)


def launch_cell(cmd: list[str], run_dir: Path, stopper: _Stopper) -> tuple[int, str]:
    """Run one cell to the end; (return code, the stderr it wrote)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.log").unlink(missing_ok=True)
    err_path = run_dir / "stderr.log"
    start = err_path.stat().st_size if err_path.is_file() else 0
    with open(run_dir / "stdout.log", "a") as out, open(err_path, "a") as err:
        stamp = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n"
        out.write(stamp)
        err.write(stamp)
        out.flush()
        err.flush()
        # a session of its own: a terminal's Ctrl-C reaches only the study, which passes it on once
        try:
            stopper.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as e:  # the launcher itself is wrong: every cell would fail the same way
            raise UserError(f"can't start `{cmd[0]}` ({e.strerror}); check --launcher") from None
        try:
            code = stopper.proc.wait()
        finally:
            if (
                stopper.proc.poll() is None
            ):  # the study itself is dying: don't leave the cell behind
                stopper.proc.terminate()
            stopper.proc = None
    with open(err_path, errors="replace") as f:
        f.seek(start)
        return code, f.read()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _best(run_dir: Path) -> str:
    summary = read_summary(run_dir) or {}
    best = summary.get("best_top1")
    return f"best top-1 {best:.2f}" if isinstance(best, (int, float)) else "no evaluation"


# ---------------------------------------------------------------------------------------------
# the study


def run_study(
    study: Study,
    shard: tuple[int, int] = (0, 1),
    launcher: str | None = None,
    dry_run: bool = False,
    log=print,
) -> dict[str, list[str]]:
    """Run this shard's cells in order; returns cell names by outcome (trained/skipped/failed/...)."""
    cells = select_shard(study.cells, *shard)
    where = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    log(f"study {study.dir}: {where}{len(cells)} of {len(study.cells)} cells")
    outcome: dict[str, list[str]] = {
        "trained": [], "skipped": [], "failed": [], "interrupted": [], "pending": [],
    }  # fmt: skip
    if dry_run:
        for cell in cells:
            status = cell_status(study.cell_dir(cell))
            log(f"[{status}] {shlex.join(cell_command(study, cell, launcher))}")
            outcome["pending"].append(cell.name)
        return outcome
    check_shared_settings(study)
    write_study(study)
    width = len(str(len(cells)))
    with _Stopper() as stopper:
        for i, cell in enumerate(cells, 1):
            run_dir, tag = study.cell_dir(cell), f"[{i:>{width}}/{len(cells)}] {cell.name}"
            if stopper.stopping:
                outcome["pending"].append(cell.name)
                continue
            stale = check_run_dir(study, cell)
            if stale:
                _write_error(run_dir, stale)
                outcome["failed"].append(cell.name)
                log(f"{tag}: FAILED: {stale}")
                continue
            summary = read_summary(run_dir)
            if summary and summary.get("status") == "complete":
                (run_dir / "error.log").unlink(missing_ok=True)
                outcome["skipped"].append(cell.name)
                log(f"{tag}: complete (skipped), {_best(run_dir)}")
                continue
            log(f"{tag}: running (log: {run_dir / 'stdout.log'})")
            t0 = time.perf_counter()
            code, stderr = launch_cell(cell_command(study, cell, launcher), run_dir, stopper)
            took = _duration(time.perf_counter() - t0)
            summary = read_summary(run_dir)
            if code == 0 and summary and summary.get("status") == "complete":
                outcome["trained"].append(cell.name)
                log(f"{tag}: complete in {took}, {_best(run_dir)}")
            elif stopper.stopping:
                outcome["interrupted"].append(cell.name)
                log(f"{tag}: interrupted after {took} (checkpointed; rerun to resume)")
            else:
                line = error_line(stderr, code) if code else "exited 0 without summary.json"
                tail = "\n".join(stderr.replace("\r", "\n").splitlines()[-ERROR_TAIL_LINES:])
                _write_error(run_dir, line, tail + "\n")
                outcome["failed"].append(cell.name)
                log(f"{tag}: FAILED after {took}: {line} (see {run_dir / 'error.log'})")
    counts = ", ".join(f"{len(v)} {k}" for k, v in outcome.items() if v)
    log(f"study {study.dir}: {where}{counts or 'nothing to do'}")
    return outcome


__all__ = [
    "Study",
    "cell_command",
    "cell_config",
    "cell_status",
    "error_line",
    "load_study_recipe",
    "plan_study",
    "read_study",
    "read_summary",
    "run_study",
    "write_study",
]
