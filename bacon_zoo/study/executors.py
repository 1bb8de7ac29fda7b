"""Run a study's cells through submitit: a SLURM job array, or submitit's local executor.

`submit_study` hands `map_array` one cell name per array task; each task runs `CellTask(name)`, which runs
the cell exactly as the subprocess runner does (`bacon-zoo train --resume` in STUDY_DIR/cells/<name>).

Requeue on preemption and timeout follows submitit's checkpointing protocol. `CellTask` is a
`submitit.helpers.Checkpointable`: when SLURM (or the local executor) sends submitit's signal (USR2,
`signal_delay_s` before the time limit, or on preemption), submitit calls `checkpoint()`, which sends
SIGTERM to the training process, waits until it has saved its checkpoint and exited, and returns a
DelayedSubmission of the same task; submitit then requeues the job, and the requeued task's
`train --resume` continues from that checkpoint. SLURM sends USR2 to every process of the job, so the
trainer stops on USR2 too (exit 140). A cell stopped by a SIGTERM that did not come through submitit is
told apart by asking slurmctld about the job (`scontrol show job`, which needs no accounting database):
  - SLURM requeued the job itself (`scontrol requeue`, preemption): its restart count went up; the task
    exits without a result and the requeued job resumes the cell.
  - SLURM is ending the job (`scancel`, the time limit, a node failure): the task reports the cell stopped
    and does not requeue it; `wait_jobs` reports the job's final state (a cancelled cell as cancelled).
  - the job runs on (someone signalled the process, or the local executor): submitit's requeue path.
Only other exit codes make the array task fail.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
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
    mark_cancelled,
    read_summary,
    write_error,
    write_study,
)

EXECUTORS = ("subprocess", "local", "slurm")
# SLURM job states of a job that is not over yet (it may still run, or run again).
SLURM_ACTIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD",
})  # fmt: skip
# SLURM may send the --signal warning up to this long before the time it was asked for (sbatch(1)).
SLURM_SIGNAL_SLACK_S = 60
# Time a job should have before its warning: start-up, data loading, and some training to checkpoint.
MIN_WORK_S = 120
LOST_AFTER_S = 300.0  # wait_jobs: SLURM has no record of a job and it left no result


class CellFailed(RuntimeError):
    """A cell ended with an error (its error.log says why); the array task fails with this line."""


class CellStopped(CellFailed):
    """SLURM ended the cell's job (cancelled, time limit, node failure) after the cell checkpointed."""


# ---------------------------------------------------------------------------------------------
# asking SLURM


def _run(cmd: list[str]) -> str | None:
    """stdout of a SLURM command, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def scontrol_job(job_id: str) -> tuple[str, int] | None:
    """(state, restart count) of a job as slurmctld holds it (jobs it still remembers: MinJobAge)."""
    out = _run(["scontrol", "show", "job", "-o", str(job_id)]) or ""
    state = re.search(r"\bJobState=(\S+)", out)
    restarts = re.search(r"\bRestarts=(\d+)", out)
    if not state:
        return None
    return state.group(1), int(restarts.group(1)) if restarts else 0


def slurm_state(job_id: str) -> str | None:
    """A job's state: slurmctld's, else accounting's (sacct; a job slurmctld forgot); None if unknown."""
    info = scontrol_job(job_id)
    if info:
        return info[0]
    lines = (_run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)]) or "").split()
    return lines[-1].split()[0] if lines else None  # "CANCELLED by 0" -> CANCELLED


def partition_gpus(partition: str) -> int | None:
    """The most GPUs a node of `partition` has (`sinfo -o %G`); None when sinfo can't tell."""
    out = _run(["sinfo", "-h", "-p", partition, "-o", "%G"])
    if not out or not out.strip():
        return None
    counts = [int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:(,\s]+)?:(\d+)", out, re.M)]
    return max(counts, default=0)


def check_partition(partition: str) -> None:
    """A partition SLURM doesn't have is one line naming the ones it has (not sbatch's three)."""
    out = _run(["sinfo", "-h", "-o", "%R"])
    names = sorted(set(out.split())) if out else []
    if names and partition not in names:
        raise UserError(f"no SLURM partition '{partition}'; sinfo lists: {', '.join(names)}")


def resolve_gpus(partition: str, requested: int | None) -> tuple[int, str | None]:
    """(GPUs per cell, a note for the log): the default is 1 where the partition has GPUs, else 0; a
    request the partition can never give is one clear line instead of sbatch's gres error."""
    if requested is not None and requested < 0:
        raise UserError(f"--gpus-per-cell must be 0 or more, got {requested}")
    if requested == 0:
        return 0, None
    have = partition_gpus(partition)
    if have is None:  # no sinfo answer: the old default, and sbatch's own error if it is wrong
        return (1 if requested is None else requested), None
    if requested is None:
        if have:
            return 1, None
        return (
            0,
            f"partition '{partition}' has no GPUs (sinfo -o %G): cells run on CPUs (--gpus-per-cell 0)",
        )
    if have == 0:
        raise UserError(
            f"partition '{partition}' has no GPUs (sinfo -o %G shows none); "
            "use --gpus-per-cell 0 to run the cells on CPUs, or a GPU --partition"
        )
    if requested > have:
        raise UserError(
            f"--gpus-per-cell {requested}: the nodes of partition '{partition}' have at most {have} "
            "GPUs (sinfo -o %G); ask for fewer"
        )
    return requested, None


def timeout_warning(timeout_min: int, signal_delay_s: int) -> str | None:
    """A warning when the time limit leaves too little time before SLURM's USR2: it can come before
    submitit and the trainer are ready for it (the job then dies or restarts with nothing saved)."""
    earliest = timeout_min * 60 - signal_delay_s - SLURM_SIGNAL_SLACK_S
    if earliest >= MIN_WORK_S:
        return None
    need = math.ceil((signal_delay_s + SLURM_SIGNAL_SLACK_S + MIN_WORK_S) / 60)
    return (
        f"--timeout-min {timeout_min} with --signal-delay-s {signal_delay_s}: SLURM may send its "
        f"warning signal {max(earliest, 0)} s into each job (up to {SLURM_SIGNAL_SLACK_S} s early), "
        f"before a cell can checkpoint; use --timeout-min {need} or more, or a smaller --signal-delay-s"
    )


def _slurm_took_over() -> str | None:
    """Inside a SLURM job whose cell was stopped by a signal: "requeued" (SLURM requeues the job: its
    restart count went up), "ending" (cancelled, time limit, node failure), or None (the job runs on)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    if os.environ.get("SLURM_ARRAY_TASK_ID"):  # an array's first task shares the array's own id
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    info = scontrol_job(job_id)
    if info is None:  # can't ask; `scontrol requeue` would fail too
        return "ending"
    state, restarts = info
    if restarts > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        return "requeued"
    return None if state == "RUNNING" else "ending"


def _say(line: str) -> None:
    """A line in the task's log (submitit's *_log.err)."""
    print(f"bacon-zoo: {line}", file=sys.stderr, flush=True)


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
        # SIGINT/SIGTERM are passed on to the cell; USR2 stays with submitit's handler (checkpoint())
        with _Stopper((signal.SIGINT, signal.SIGTERM)) as stopper:
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
        if status == "stopped":
            self._stopped(name, code, cancelled=stopper.signum == signal.SIGINT)
        raise CellFailed(f"{name}: {line} (see {RunDir(run_dir).error_log})")

    def _stopped(self, name: str, code: int, cancelled: bool) -> None:
        """The cell stopped at a checkpoint without submitit's signal: exit the way that resumes it."""
        took_over = _slurm_took_over()
        if took_over == "requeued":  # no result: the requeued job runs this task again
            _say(f"{name}: stopped (exit {code}); SLURM requeued the job, which resumes the cell")
            raise SystemExit(128 + signal.SIGTERM)
        if took_over == "ending":
            raise CellStopped(
                f"{name}: stopped by SLURM (exit {code}, job not requeued); its last checkpoint is "
                "kept: rerun the study to resume it"
            )
        if os.environ.get("SUBMITIT_EXECUTOR") and not cancelled:  # cancelled: submitit's cancel()
            # the job runs on (a signal from elsewhere): take submitit's requeue path; its handler
            # calls checkpoint() and exits this task to be requeued
            os.kill(os.getpid(), _usr_signal())
            time.sleep(5.0)  # the handler runs at the next bytecode; this is only a fallback
            raise CellFailed(f"{name}: stopped (exit {code}) and submitit did not requeue it")
        raise CellStopped(f"{name}: stopped (exit {code}); checkpointed, rerun to resume")

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
    if not gpus_per_cell:  # no GPU request at all (local: CUDA_VISIBLE_DEVICES stays empty)
        params.pop("gpus_per_node")
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
    """Submit the given cells (not yet complete) as one job array; returns submitit's jobs.

    slurm: `gpus_per_cell=None` picks 1 where the partition has GPUs and 0 where it has none, and a
    time limit too short for `signal_delay_s` is warned about in one line."""
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
    if executor == "slurm" and executor_kw.get("partition"):
        check_partition(executor_kw["partition"])
        gpus, note = resolve_gpus(executor_kw["partition"], executor_kw.get("gpus_per_cell"))
        executor_kw["gpus_per_cell"] = gpus
        if note:
            log(note)
        warning = timeout_warning(
            int(executor_kw.get("timeout_min", 60 * 24)),
            int(executor_kw.get("signal_delay_s", 120)),
        )
        if warning:
            log(f"warning: {warning}")
    elif executor_kw.get("gpus_per_cell") is None:
        executor_kw["gpus_per_cell"] = 1
    ex = submitit_executor(study, executor, **executor_kw)
    grace = max(10.0, float(executor_kw.get("signal_delay_s", 120)) - 30.0)
    task = CellTask(study, launcher=launcher, stop_grace_s=grace)
    import submitit

    try:
        jobs = ex.map_array(task, todo)
    except submitit.core.utils.FailedJobError as e:  # sbatch refused it: its own error line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        line = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else str(e))
        raise UserError(
            f"sbatch refused the cells: {line.split('error:', 1)[-1].strip()}"
        ) from None
    log(
        f"study {study.dir}: submitted {len(jobs)} cells to {executor} "
        f"(job {jobs[0].job_id.split('_')[0]}; logs in {study.dir / 'submitit'})"
    )
    return jobs


def _error_line(error: Exception) -> str:
    """The task's one line out of submitit's re-raised traceback (a CellFailed's message)."""
    text = str(error).strip().splitlines()
    line = next((ln for ln in reversed(text) if re.search(r"Cell(Failed|Stopped): ", ln)), None)
    return re.sub(r"^.*?Cell(Failed|Stopped): ", "", line or (text[-1] if text else str(error)))


def _task_result(job) -> tuple[bool, Any]:
    """(True, the task's result) or (False, its error line; None when it left no result)."""
    if isinstance(job, _slurm_job_type()) and not job.paths.result_pickle.exists():
        return False, None
    try:
        return True, job.result()
    except Exception as e:
        return False, _error_line(e)


def _slurm_job_type() -> type:
    import submitit

    return submitit.SlurmJob


def _wait_slurm(job, poll_s: float) -> str | None:
    """Wait until SLURM says the job is over; its final state (None: SLURM doesn't know the job and
    it left a result, or LOST_AFTER_S passed without either)."""
    lost = None
    while True:
        state = slurm_state(job.job_id)
        if state is not None and state.split("+")[0] not in SLURM_ACTIVE:
            return state.split("+")[0]
        if state is None:
            if job.paths.result_pickle.exists():
                return None
            lost = lost or time.monotonic()
            if time.monotonic() - lost > LOST_AFTER_S:
                return None
        else:
            lost = None
        time.sleep(poll_s)


def wait_jobs(jobs: list, log=print, poll_s: float = 2.0) -> dict[str, list[str]]:
    """Wait for every job; cell names by outcome (trained/failed/cancelled).

    SLURM jobs are followed through slurmctld (`scontrol`, which works without accounting; sacct for a
    job it forgot), so a cancelled job, or one SLURM ended before its task wrote a result, is reported
    with its state instead of being waited on forever; a cancelled cell gets its `cancelled.log`."""
    outcome: dict[str, list[str]] = {"trained": [], "failed": [], "cancelled": []}
    for job in jobs:
        submission = job.submission()
        name = submission.args[0]
        state = _wait_slurm(job, poll_s) if isinstance(job, _slurm_job_type()) else None
        ok, value = _task_result(job)
        if ok:
            outcome["trained"].append(name)
            log(f"{name}: complete, best top-1 {value.get('best_top1')}")
        elif state == "CANCELLED":
            job_id = job.job_id
            line = f"cancelled (SLURM job {job_id}); rerun the study to resume it from its last checkpoint"
            mark_cancelled(submission.function.study.cell_dir(name), line)
            outcome["cancelled"].append(name)
            log(f"{name}: CANCELLED: {line}")
        else:
            if not value:
                value = (
                    f"SLURM job {job.job_id} ended {state or 'without a trace'} before the cell "
                    "finished; rerun the study to resume it from its last checkpoint"
                )
            elif state and state not in ("COMPLETED", "FAILED"):
                value = f"{value} (SLURM job {job.job_id}: {state})"
            outcome["failed"].append(name)
            log(f"{name}: FAILED: {value}")
    return outcome


__all__ = [
    "EXECUTORS",
    "STOP_CODES",
    "SLURM_ACTIVE",
    "CellFailed",
    "CellStopped",
    "CellTask",
    "check_partition",
    "partition_gpus",
    "resolve_gpus",
    "scontrol_job",
    "slurm_state",
    "submit_study",
    "submitit_executor",
    "timeout_warning",
    "wait_jobs",
]
