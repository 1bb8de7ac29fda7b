"""Run a study: every cell is an ordinary `bacon-zoo train --resume` in its own run dir, as a subprocess.

Subprocesses keep cells independent (a crash, an OOM or a leaked CUDA context stays in its cell) and let
`--launcher "accelerate launch ..."` scale each cell exactly like a hand-launched run. Because every cell
is launched with `--resume`, a study is restartable: finished cells (summary.json complete) are skipped
without starting Python, interrupted ones continue from their last checkpoint, failed ones are retried.
`--devices 0,1,2,3` runs that many cells at once, each with CUDA_VISIBLE_DEVICES set to its own device;
`--executor slurm|local` hands the cells to submitit instead (`bacon_zoo.study.executors`).

Layout of STUDY_DIR: `study.json` (grid, seeds, recipe, sets, cells), `recipe.yaml` (the settings every
cell shares: the recipe chain without `study:`, plus --set), `cells/<name>/` (a run dir, plus
`stdout.log`, `stderr.log` and, when the cell failed, `error.log`: the error line, then the stderr tail).

Exit codes of a cell this module relies on: 0 with a complete summary.json = done; 130 (SIGINT), 143
(SIGTERM) or 140 (SIGUSR2, SLURM's warning before the time limit), or death by one of those signals
before the trainer's handler was installed = stopped with its progress checkpointed (resumable, never
"failed"); anything else = failed (error.log). A cell whose SLURM job was cancelled holds
`cancelled.log` (written by `study run --executor slurm --wait`) until it runs again.
"""

from __future__ import annotations

import functools
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
    config_diff,
    deep_merge,
    fingerprint,
    load_recipe,
    parse_set,
    resolve_recipe_path,
    validate,
    yaml_load,
)
from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write_text, read_json, write_json
from bacon_zoo.run import SUMMARY, RunDir
from bacon_zoo.study.grid import (
    FORBIDDEN,
    Cell,
    StudySpec,
    axis_keys,
    expand,
    merge_cli,
    spec_from_recipe,
)

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
ERROR_TAIL_LINES = 40
# The trainer checkpoints and exits 128 + the signal on these (bacon_zoo.train.trainer.STOP_SIGNALS).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
# A cell that exits with one of these was stopped and saved a checkpoint: resume it, don't call it failed.
STOP_CODES = frozenset({c for sig in STOP_SIGNALS for c in (128 + sig, -sig)})


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
        own = yaml_load(path.read_text()) or {}
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


def check_shared_settings(study: Study) -> None:
    """Refuse a study dir whose cells were planned with other shared settings (runtime keys aside)."""
    if not study.recipe_path.is_file():
        return
    old, new = TrainConfig(), TrainConfig()
    try:
        apply_overrides(old, yaml_load(study.recipe_path.read_text()) or {})
    except (UserError, yaml.YAMLError):
        return  # unreadable: the per-cell config check still guards every run dir
    apply_overrides(new, study.common)
    diff = config_diff(old, new)
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
    # atomic: shards on a shared file system may write the same file at once
    atomic_write_text(study.recipe_path, header + yaml.safe_dump(study.common, sort_keys=False))
    record = {
        "version": 1,
        "recipe": study.recipe,
        "recipe_path": str(resolve_recipe_path(study.recipe).resolve()) if study.recipe else None,
        "base": study.base,
        "sets": study.sets,
        **study.spec.to_dict(),
        "cells": [c.to_dict() for c in study.cells],
    }
    write_json(study.dir / "study.json", record)


def read_study(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        raise UserError(
            f"'{study_dir}' is not a study directory (no study.json); "
            "create it with `bacon-zoo study run ... --out DIR`"
        )
    return read_json(path, "the study's grid and cells", "rerun the `bacon-zoo study run` command")


# ---------------------------------------------------------------------------------------------
# choosing cells: --cell, --shard (cost-balanced)


def cell_configs(study: Study) -> list[TrainConfig]:
    return [cell_config(study.common, c, study.cell_dir(c)) for c in study.cells]


def select_cells(
    study: Study,
    shard: tuple[int, int] = (0, 1),
    cell: str | None = None,
    measured: dict[tuple[str, int], float] | None = None,
) -> list[Cell]:
    """`--cell NAME`: that cell; `--shard i/n`: shard i of a longest-processing-time-first split by cost.

    The split uses the static cost model (FLOPs x images, or `measured` images/s from a finished study
    that every shard is given alike), never this study's own progress, so all shards agree.
    """
    if cell is not None:
        if shard[1] > 1:
            raise UserError("--cell runs exactly one cell; drop --shard")
        found = [c for c in study.cells if c.name == cell]
        if not found:
            import difflib

            close = difflib.get_close_matches(cell, [c.name for c in study.cells], n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "see `study run --dry-run`"
            raise UserError(
                f"no cell named '{cell}' in this study ({len(study.cells)} cells); {hint}"
            )
        return found
    if shard[1] == 1:
        return list(study.cells)
    from bacon_zoo.study.cost import estimate_cell, shard_cells

    cfgs = cell_configs(study)
    costs = [estimate_cell(c.name, cfg, measured).work for c, cfg in zip(study.cells, cfgs)]
    if measured:  # measured throughput: balance device-seconds instead of FLOP-weighted images
        costs = [
            estimate_cell(c.name, cfg, measured).device_hours for c, cfg in zip(study.cells, cfgs)
        ]
    return [study.cells[i] for i in shard_cells(costs, *shard)]


def parse_devices(raw: str | None) -> list[str] | None:
    """`"0,1,2,3"` (or MIG / GPU UUIDs) -> ["0", "1", "2", "3"]; None -> None (one cell at a time)."""
    if raw is None:
        return None
    devices = [d.strip() for d in str(raw).split(",")]
    if not devices or not all(devices) or len(set(devices)) != len(devices):
        raise UserError(
            f"--devices expects distinct device ids like 0,1,2,3, got '{raw}' (one cell runs per device)"
        )
    return devices


# ---------------------------------------------------------------------------------------------
# one cell


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The cell's summary.json, or None (absent, or unreadable: the cell is then rerun)."""
    try:
        return RunDir(run_dir).read_summary()
    except UserError:
        return None


def cell_status(run_dir: Path) -> str:
    """complete | failed | cancelled (its SLURM job was) | incomplete (started, or running elsewhere) |
    missing (never started)."""
    if RunDir(run_dir).failed():
        return "failed"
    if RunDir(run_dir).cancelled():
        return "cancelled"
    summary = read_summary(run_dir)
    if summary and summary.get("status") == "complete":
        return "complete"
    return "incomplete" if RunDir(run_dir).is_run() else "missing"


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


def write_error(run_dir: Path, line: str, tail: str = "") -> None:
    """Mark the cell failed: its error.log (`RunDir.write_error`)."""
    RunDir(run_dir).write_error(line, tail)


def mark_cancelled(run_dir: Path, line: str) -> None:
    """Record that the cell's job was cancelled (`cell_status` reports it until the cell runs again)."""
    RunDir(run_dir).mark_cancelled(line)


def check_run_dir(study: Study, cell: Cell) -> str | None:
    """An error line when the cell's run dir holds a run of another config (else None)."""
    run = RunDir(study.cell_dir(cell))
    if not run.is_run():
        return None
    try:
        saved = run.read_config()
    except UserError as e:
        return str(e)
    expected = cell_config(study.common, cell, run.path)
    if fingerprint(saved) == fingerprint(expected):
        return None
    return (
        f"{run.path} holds a run with a different config (differs in: "
        f"{', '.join(config_diff(saved, expected))}); delete the cell dir to retrain it, or use another --out"
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


def cell_outcome(run_dir: Path, code: int, stderr: str) -> tuple[str, str]:
    """(complete | stopped | failed, the failure line); writes error.log for a failure."""
    summary = read_summary(run_dir)
    if code == 0 and summary and summary.get("status") == "complete":
        return "complete", ""
    if code in STOP_CODES:
        return "stopped", ""
    line = error_line(stderr, code) if code else f"exited 0 without {SUMMARY}"
    tail = "\n".join(stderr.replace("\r", "\n").splitlines()[-ERROR_TAIL_LINES:])
    write_error(run_dir, line, tail + "\n")
    return "failed", line


class _Stopper:
    """SIGINT/SIGTERM (and SLURM's USR2 where `signals` holds it): pass the signal to the running cells
    (they checkpoint) and start no more. A submitit task leaves USR2 to submitit's own handler."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals

    def __enter__(self) -> _Stopper:
        self.stopping = False
        self.signum: int | None = None
        self.procs: set[subprocess.Popen] = set()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame) -> None:
        self.stopping = True
        self.signum = self.signum or signum
        for proc in list(self.procs):
            if proc.poll() is None:
                proc.send_signal(signum)


@dataclass
class _Running:
    """A started cell: its process, log files and where its stderr of this attempt begins."""

    cell: Cell
    proc: subprocess.Popen
    files: list[Any]
    err_path: Path
    err_start: int
    t0: float

    def finish(self) -> tuple[int, str]:
        for f in self.files:
            f.close()
        with open(self.err_path, errors="replace") as f:
            f.seek(self.err_start)
            return self.proc.returncode, f.read()


def _die_with_parent(prctl: Any, parent: int) -> None:
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the parent dies
    if os.getppid() != parent:  # the study died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _die_with_study() -> Any:
    """The `preexec_fn` of a cell on Linux (None elsewhere): the cell gets SIGTERM when the study
    process dies, even by SIGKILL, so no cell trains on as an orphan beside a re-run (it checkpoints
    and exits 143). libc is looked up here, in the study, not in the forked child."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return functools.partial(_die_with_parent, ctypes.CDLL(None).prctl, os.getpid())


def start_cell(
    cell: Cell, cmd: list[str], run_dir: Path, env: dict[str, str] | None = None
) -> _Running:
    """Start one cell, appending to its stdout.log / stderr.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    run.clear_status()
    err_path = run.stderr_path
    start = err_path.stat().st_size if err_path.is_file() else 0
    out, err = open(run.stdout_path, "a"), open(err_path, "a")  # noqa: SIM115 (closed by finish)
    where = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if env else ""
    stamp = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {where}{shlex.join(cmd)}\n"
    for f in (out, err):
        f.write(stamp)
        f.flush()
    # a session of its own: a terminal's Ctrl-C reaches only the study, which passes it on once
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_study(),
            env={**os.environ, **env} if env else None,
        )
    except OSError as e:  # the launcher itself is wrong: every cell would fail the same way
        out.close()
        err.close()
        raise UserError(f"can't start `{cmd[0]}` ({e.strerror}); check --launcher") from None
    return _Running(cell, proc, [out, err], err_path, start, time.perf_counter())


def launch_cell(
    cmd: list[str], run_dir: Path, stopper: _Stopper, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run one cell to the end; (return code, the stderr it wrote)."""
    running = start_cell(Cell(run_dir.name, {}, 0, []), cmd, run_dir, env)
    stopper.procs.add(running.proc)
    try:
        running.proc.wait()
    finally:
        if running.proc.poll() is None:  # the caller itself is dying: don't leave the cell behind
            running.proc.terminate()
        stopper.procs.discard(running.proc)
    return running.finish()


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
    cell: str | None = None,
    devices: list[str] | None = None,
    measured: dict[tuple[str, int], float] | None = None,
    poll_s: float = 0.2,
) -> dict[str, list[str]]:
    """Run the selected cells (all, `--shard`, or `--cell`), one per device at a time; returns cell
    names by outcome (trained/skipped/failed/interrupted/pending) and `stopped_by` (the signal's name)."""
    cells = select_cells(study, shard, cell, measured)
    where = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    on = f" on devices {','.join(devices)}" if devices else ""
    log(f"study {study.dir}: {where}{len(cells)} of {len(study.cells)} cells{on}")
    outcome: dict[str, list[str]] = {
        "trained": [], "skipped": [], "failed": [], "interrupted": [], "pending": [], "stopped_by": [],
    }  # fmt: skip
    if dry_run:
        for c in cells:
            status = cell_status(study.cell_dir(c))
            log(f"[{status}] {shlex.join(cell_command(study, c, launcher))}")
            outcome["pending"].append(c.name)
        return outcome
    check_shared_settings(study)
    write_study(study)
    width = len(str(len(cells)))
    tags = {c.name: f"[{i:>{width}}/{len(cells)}] {c.name}" for i, c in enumerate(cells, 1)}
    slots: list[str | None] = list(devices) if devices else [None]
    running: dict[str | None, _Running] = {}
    queue = list(cells)
    with _Stopper() as stopper:
        try:
            while queue or running:
                while queue and not stopper.stopping and len(running) < len(slots):
                    c = queue.pop(0)
                    run_dir, tag = study.cell_dir(c), tags[c.name]
                    stale = check_run_dir(study, c)
                    if stale:
                        write_error(run_dir, stale)
                        outcome["failed"].append(c.name)
                        log(f"{tag}: FAILED: {stale}")
                        continue
                    summary = read_summary(run_dir)
                    if summary and summary.get("status") == "complete":
                        RunDir(run_dir).clear_status(cancelled=False)
                        outcome["skipped"].append(c.name)
                        log(f"{tag}: complete (skipped), {_best(run_dir)}")
                        continue
                    slot = next(s for s in slots if s not in running)
                    env = {"CUDA_VISIBLE_DEVICES": slot} if slot is not None else None
                    on = f" on device {slot}" if slot is not None else ""
                    log(f"{tag}: running{on} (log: {RunDir(run_dir).stdout_path})")
                    running[slot] = start_cell(c, cell_command(study, c, launcher), run_dir, env)
                    stopper.procs.add(running[slot].proc)
                if stopper.stopping:
                    outcome["pending"] += [c.name for c in queue]
                    queue = []
                for slot, r in list(running.items()):
                    if r.proc.poll() is None:
                        continue
                    del running[slot]
                    stopper.procs.discard(r.proc)
                    code, stderr = r.finish()
                    run_dir, tag = study.cell_dir(r.cell), tags[r.cell.name]
                    took = _duration(time.perf_counter() - r.t0)
                    status, line = cell_outcome(run_dir, code, stderr)
                    if status == "complete":
                        outcome["trained"].append(r.cell.name)
                        log(f"{tag}: complete in {took}, {_best(run_dir)}")
                    elif status == "stopped":
                        outcome["interrupted"].append(r.cell.name)
                        log(f"{tag}: stopped after {took} (checkpointed; rerun to resume)")
                    else:
                        outcome["failed"].append(r.cell.name)
                        log(f"{tag}: FAILED after {took}: {line} (see {RunDir(run_dir).error_log})")
                if running:
                    time.sleep(poll_s)
        finally:
            for r in running.values():  # the study itself is dying: don't leave cells behind
                if r.proc.poll() is None:
                    r.proc.terminate()
        if stopper.signum is not None:
            outcome["stopped_by"].append(signal.Signals(stopper.signum).name)
    counts = ", ".join(f"{len(v)} {k}" for k, v in outcome.items() if v and k != "stopped_by")
    log(f"study {study.dir}: {where}{counts or 'nothing to do'}")
    return outcome


__all__ = [
    "STOP_CODES",
    "Study",
    "cell_command",
    "cell_config",
    "cell_outcome",
    "cell_status",
    "error_line",
    "launch_cell",
    "load_study_recipe",
    "mark_cancelled",
    "parse_devices",
    "plan_study",
    "read_study",
    "read_summary",
    "run_study",
    "select_cells",
    "write_study",
]
