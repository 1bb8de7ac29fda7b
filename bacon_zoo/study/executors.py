"""Run a study's cells through submitit: a SLURM job array (one GPU per cell), or submitit's local executor.

`submit_study` hands `map_array` one cell name per array task; each task runs `CellTask(name)`, which runs
the cell exactly as the subprocess runner does (`bacon-zoo train --resume` in STUDY_DIR/cells/<name>).

Requeue on preemption and timeout follows submitit's checkpointing protocol. `CellTask` is a
`submitit.helpers.Checkpointable`: when SLURM (or the local executor) sends submitit's signal (USR2,
`signal_delay_s` before the time limit, or on preemption), submitit calls `checkpoint()`, which sends
SIGTERM to the training process, waits until it has saved its checkpoint and exited (130/143), and
returns a DelayedSubmission of the same task; submitit then requeues the job, and the requeued task's
`train --resume` continues from that checkpoint. A cell stopped by a SIGTERM that did not come through
submitit (the scheduler signalling every process of the job) is requeued by the same path: the task
raises submitit's signal on itself. Only other exit codes make the array task fail.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from bacon_zoo.errors import UserError
from bacon_zoo.run import RunDir
from bacon_zoo.study.runner import (
    STOP_CODES,
    Study,
    _Stopper,
    cell_command,
    cell_outcome,
    check_run_dir,
    launch_cell,
    read_summary,
    write_error,
    write_study,
)

EXECUTORS = ("subprocess", "local", "slurm")


class CellFailed(RuntimeError):
    """A cell ended with an error (its error.log says why); the array task fails with this line."""


def _usr_signal() -> signal.Signals:
    """The signal submitit checkpoints and requeues on (SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    import submitit

    return getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")


def _exited(pid: int) -> bool:
    """Has `pid` exited? Without reaping it, so the Popen waiting on it still gets its exit code."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _checkpointable_base() -> type:
    import submitit

    return submitit.helpers.Checkpointable


try:  # submitit is an optional extra (`pip install bacon-zoo[slurm]`)
    _Base: type = _checkpointable_base()
except ImportError:  # pragma: no cover - only without the extra
    _Base = object


@dataclass
class CellTask(_Base):  # type: ignore[misc, valid-type]
    """One array task: run cell `name` of `study` to completion; requeued (not failed) when stopped."""

    study: Study
    launcher: str | None = None
    stop_grace_s: float = 60.0  # how long checkpoint() waits for the cell to save and exit
    _stopper: Any = field(default=None, init=False, repr=False, compare=False)
    _requested: bool = field(default=False, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # the running process is not part of the state
        return {k: v for k, v in self.__dict__.items() if k not in ("_stopper", "_requested")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _stopper=None, _requested=False)

    def __call__(self, name: str) -> dict[str, Any]:
        cell = next((c for c in self.study.cells if c.name == name), None)
        if cell is None:
            raise CellFailed(f"no cell named '{name}' in {self.study.dir}")
        run_dir = self.study.cell_dir(cell)
        summary = read_summary(run_dir)
        if summary and summary.get("status") == "complete":
            return {"cell": name, "status": "complete", "best_top1": summary.get("best_top1")}
        stale = check_run_dir(self.study, cell)
        if stale:
            write_error(run_dir, stale)
            raise CellFailed(f"{name}: {stale}")
        with _Stopper() as stopper:  # replaced by submitit's own handlers where they are installed
            self._stopper = stopper
            try:
                code, stderr = launch_cell(
                    cell_command(self.study, cell, self.launcher), run_dir, stopper
                )
            finally:
                self._stopper = None
        status, line = cell_outcome(run_dir, code, stderr)
        if status == "complete":
            return {
                "cell": name,
                "status": "complete",
                "best_top1": read_summary(run_dir)["best_top1"],
            }
        cancelled = stopper.signum == signal.SIGINT  # submitit's cancel(); a Ctrl-C
        if status == "stopped" and os.environ.get("SUBMITIT_EXECUTOR") and not cancelled:
            # stopped from outside submitit (e.g. the scheduler's SIGTERM to every process): take
            # submitit's requeue path; its handler calls checkpoint() and exits this task to be requeued
            os.kill(os.getpid(), _usr_signal())
            time.sleep(5.0)  # the handler runs at the next bytecode; this is only a fallback
            raise CellFailed(f"{name}: stopped (exit {code}) and submitit did not requeue it")
        if status == "stopped":
            raise CellFailed(f"{name}: stopped (exit {code}); checkpointed, rerun to resume")
        raise CellFailed(f"{name}: {line} (see {RunDir(run_dir).error_log})")

    def checkpoint(self, name: str) -> Any:
        """submitit's preemption/timeout hook: stop the cell (it checkpoints), then requeue this task."""
        stopper = self._stopper
        procs = list(stopper.procs) if stopper is not None else []
        for proc in procs:
            if not _exited(proc.pid):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for proc in procs:
            while not _exited(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _exited(proc.pid):  # too slow: resume from its last periodic checkpoint
                proc.kill()
        return super().checkpoint(name)


def submitit_executor(
    study: Study,
    executor: str,
    partition: str | None = None,
    gpus_per_cell: int = 1,
    timeout_min: int = 60 * 24,
    array_parallelism: int | None = None,
    cpus_per_cell: int | None = None,
    mem_gb: float | None = None,
    signal_delay_s: int = 120,
    max_num_timeout: int = 20,
    extra: dict[str, Any] | None = None,
):
    """A configured `submitit.AutoExecutor` (logs in STUDY_DIR/submitit/)."""
    try:
        import submitit
    except ImportError:
        raise UserError(
            "--executor slurm/local needs submitit: pip install 'bacon-zoo[slurm]'"
        ) from None
    if executor not in ("local", "slurm"):
        raise UserError(f"unknown executor '{executor}'; choose one of {', '.join(EXECUTORS)}")
    if executor == "slurm" and not partition:
        raise UserError("--executor slurm needs --partition (the SLURM partition to submit to)")
    try:
        ex = submitit.AutoExecutor(
            folder=study.dir / "submitit" / "%j",
            cluster=executor,
            **{f"{executor}_max_num_timeout": max_num_timeout},
        )
    except RuntimeError as e:  # no srun/sbatch on this machine
        raise UserError(
            f"can't submit to SLURM here ({e}); --executor local runs the same path"
        ) from None
    params: dict[str, Any] = {
        "name": f"study-{study.dir.name}",
        "timeout_min": int(timeout_min),
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": int(gpus_per_cell),
        "cpus_per_task": cpus_per_cell,
        "mem_gb": mem_gb,
    }
    if executor == "slurm":  # USR2 this long before the time limit: checkpoint and requeue
        params["slurm_signal_delay_s"] = int(signal_delay_s)
        params["slurm_partition"] = partition
        if array_parallelism:
            params["slurm_array_parallelism"] = int(array_parallelism)
    elif gpus_per_cell == 0:
        params.pop("gpus_per_node")  # local: CUDA_VISIBLE_DEVICES stays empty
    params.update(extra or {})
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def submit_study(
    study: Study,
    cells: list,
    executor: str = "slurm",
    launcher: str | None = None,
    log=print,
    **executor_kw: Any,
) -> list:
    """Submit the given cells (not yet complete) as one job array; returns submitit's jobs."""
    write_study(study)
    todo = []
    for cell in cells:
        summary = read_summary(study.cell_dir(cell))
        if summary and summary.get("status") == "complete":
            log(f"{cell.name}: complete (skipped)")
        else:
            todo.append(cell.name)
    if not todo:
        log(f"study {study.dir}: every selected cell is complete; nothing to submit")
        return []
    ex = submitit_executor(study, executor, **executor_kw)
    grace = max(10.0, float(executor_kw.get("signal_delay_s", 120)) - 30.0)
    task = CellTask(study, launcher=launcher, stop_grace_s=grace)
    jobs = ex.map_array(task, todo)
    log(
        f"study {study.dir}: submitted {len(jobs)} cells to {executor} "
        f"(job {jobs[0].job_id.split('_')[0]}; logs in {study.dir / 'submitit'})"
    )
    return jobs


def wait_jobs(jobs: list, log=print) -> dict[str, list[str]]:
    """Wait for every job; cell names by outcome (trained/failed)."""
    outcome: dict[str, list[str]] = {"trained": [], "failed": []}
    for job in jobs:
        name = job.submission().args[0]
        try:
            result = job.result()
            outcome["trained"].append(name)
            log(f"{name}: complete, best top-1 {result.get('best_top1')}")
        except Exception as e:  # submitit re-raises the task's error with its traceback
            text = str(e).strip().splitlines()
            line = next(
                (ln for ln in reversed(text) if "CellFailed" in ln), text[-1] if text else ""
            )
            outcome["failed"].append(name)
            log(f"{name}: FAILED: {line.split('CellFailed: ', 1)[-1]}")
    return outcome


__all__ = [
    "EXECUTORS",
    "STOP_CODES",
    "CellFailed",
    "CellTask",
    "submit_study",
    "submitit_executor",
    "wait_jobs",
]
