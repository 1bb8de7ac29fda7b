"""Studies through a real SLURM (`--executor slurm`): requeue, the time limit's warning, scancel and a
CPU-only partition, each on real tiny cells. `make test-slurm` starts a one-node SLURM
(tools/slurm_up.sh) and runs these; without sbatch or a live node they are skipped.

Every cell trains the digits data for 100 steps with no periodic checkpoint (checkpoint_every above
steps), so a checkpoint before the end can only come from a stop signal. To stop a cell mid-run on any
machine speed, the test freezes its trainer (SIGSTOP) after the first evaluation; SLURM sends SIGCONT
with every signal it delivers to the job, so the frozen trainer wakes up to the requeue, the warning or
the cancel. Results are compared with the subprocess executor's on the same cells (timings aside).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
psutil = pytest.importorskip("psutil")
pytest.importorskip("submitit")

from bacon_zoo.study.executors import partition_gpus, slurm_state  # noqa: E402
from bacon_zoo.study.report import TIMING_COLUMNS  # noqa: E402

STEPS = 100
CELL = [
    "dataset=digits", "n1=20", "m1=40", "imb_ratio_l=5", "imb_ratio_u=5", "image_size=8",
    "batch_size=4", "mu=2", "eval_every=25", "checkpoint_every=1000", "num_workers=0",
    "max_eval_samples=40", "cpu=true", "mixed_precision=no", "export=false", "channels_last=false",
    f"steps={STEPS}",
]  # fmt: skip
SETS = [a for item in CELL for a in ("--set", item)]


def _partition() -> str | None:
    """The default partition of a live cluster (its node up), or None."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [ln.split() for ln in out.splitlines() if len(ln.split()) == 2]
    up = [p for p, state in rows if state.rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated")]
    default = [p.rstrip("*") for p in up if p.endswith("*")]
    return (default or [p.rstrip("*") for p in up] or [None])[0]


PARTITION = os.environ.get("SLURM_TEST_PARTITION") or _partition()
if shutil.which("sbatch") is None:
    pytest.skip(
        "sbatch not found: `make test-slurm` installs and starts SLURM", allow_module_level=True
    )
if PARTITION is None:
    pytest.skip(
        "no SLURM node is up (sinfo): run tools/slurm_up.sh (make test-slurm)",
        allow_module_level=True,
    )


def _env() -> dict[str, str]:
    """Cells inherit it through sbatch: offline, one thread (a busy 2-core machine)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def study_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bacon_zoo.cli", "study", "run", "--out", str(out), *SETS, *extra]


def slurm_cmd(out: Path, *extra: str) -> list[str]:
    return study_cmd(out, "--executor", "slurm", "--partition", PARTITION, "--wait", *extra)


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def trainer_of(run_dir: Path) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--output-dir" in cmd and cmd[cmd.index("--output-dir") + 1] == str(run_dir):
            return p
    return None


def job_of(run_dir: Path) -> str:
    """The SLURM job id of the task running `run_dir`, from its trainer's environment (ARRAY_TASK: an
    array's first task has the array's own SLURM_JOB_ID, which scancel takes for the whole array)."""
    env = wait_for(lambda: trainer_of(run_dir), 30, "the trainer process").environ()
    if env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def freeze_after_first_eval(run_dir: Path, study: subprocess.Popen) -> psutil.Process:
    """SIGSTOP the cell's trainer once it has evaluated (mid-run); SLURM's SIGCONT wakes it."""
    metrics = run_dir / "metrics.jsonl"

    def evaluated() -> bool:
        if study.poll() is not None:  # the study ended first (a failed cell): say why
            raise AssertionError(f"study ended ({study.returncode}): {study.communicate()[0]}")
        return metrics.is_file() and metrics.stat().st_size > 0

    wait_for(evaluated, 300, f"{metrics}")
    trainer = wait_for(lambda: trainer_of(run_dir), 30, "the trainer process")
    trainer.suspend()
    return trainer


def starts(run_dir: Path) -> int:
    """How many times the cell was started (the runner stamps `=== ` into stdout.log per start)."""
    return (run_dir / "stdout.log").read_text().count("=== ")


def task_logs(study_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (study_dir / "submitit").rglob("*_log.*"))


def results(study_dir: Path) -> list[dict]:
    with (study_dir / "results.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def stop_step(run_dir: Path) -> int:
    """The step the cell stopped and checkpointed at (its stdout's 'stopped at step N')."""
    found = re.findall(r"stopped at step (\d+)", (run_dir / "stdout.log").read_text())
    assert len(found) == 1, (run_dir / "stdout.log").read_text()[-3000:]
    return int(found[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The same cell through the subprocess executor: the results every SLURM path must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "study"
    code, text = finish(start(study_cmd(out)))
    assert code == 0, text
    return results(out)


def assert_same_results(study_dir: Path, reference: list[dict]) -> None:
    rows = results(study_dir)
    assert [r["status"] for r in rows] == ["complete"] * len(reference), rows
    diff = [
        (a["cell"], k, a[k], b.get(k))
        for a, b in zip(reference, rows)
        for k in a
        if a[k] != b.get(k)
    ]
    assert not diff, diff


def test_cpu_partition_gpus_default_to_zero_and_a_gpu_request_is_one_line(tmp_path):
    """Item 6: a partition without GPUs: --gpus-per-cell 1 is one clear line before anything is
    submitted; by default the cells ask for no GPU (covered end to end by the tests below)."""
    if partition_gpus(PARTITION):
        pytest.skip(f"partition {PARTITION} has GPUs")
    code, out = finish(start(slurm_cmd(tmp_path / "s", "--gpus-per-cell", "1")), timeout=120)
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "has no GPUs" in lines[0] and "--gpus-per-cell 0" in lines[0], out
    assert not (tmp_path / "s" / "submitit").exists()


def test_scontrol_requeue_resumes_and_completes(tmp_path, reference):
    """Item 7: `scontrol requeue` of a running cell (what preemption does): the trainer checkpoints on
    SLURM's SIGTERM, the task exits without requeueing itself, SLURM's requeued job resumes the cell,
    and the study reports it complete with the subprocess executor's results (exit 0, no FAILED)."""
    out = tmp_path / "study"
    proc = start(slurm_cmd(out))
    run_dir = out / "cells" / "seed=0"
    freeze_after_first_eval(run_dir, proc)
    job = job_of(run_dir)
    subprocess.run(["scontrol", "requeue", job], check=True)
    code, text = finish(proc)
    assert code == 0, text
    assert "no GPUs" in text and "FAILED" not in text, text
    assert "#SBATCH --gpus" not in next((out / "submitit").rglob("*.sh")).read_text()
    assert 0 < stop_step(run_dir) < STEPS
    assert starts(run_dir) == 2
    log = task_logs(out)
    assert "SLURM requeued the job, which resumes the cell" in log, log[-3000:]
    assert "Job is pending execution" not in log and "Traceback" not in log, log[-3000:]
    assert slurm_state(job) == "COMPLETED"
    assert_same_results(out, reference)


def test_time_limit_warning_checkpoints_and_resumes(tmp_path, reference):
    """Item 8: a 2-minute limit with USR2 40 s before it: the frozen trainer wakes to SLURM's USR2,
    checkpoints at that step (no periodic checkpoint exists), submitit requeues the job, the next job
    resumes from there (with a longer limit), and the results equal the subprocess executor's. The
    CLI warns in one line that such a short limit may bring the warning early."""
    out = tmp_path / "study"
    proc = start(slurm_cmd(out, "--timeout-min", "2", "--signal-delay-s", "40"))
    run_dir = out / "cells" / "seed=0"
    trainer = freeze_after_first_eval(run_dir, proc)
    job = job_of(run_dir)
    wait_for(lambda: "Caught signal SIGUSR2" in task_logs(out), 200, "SLURM's warning signal")
    if trainer.is_running() and trainer.status() == psutil.STATUS_STOPPED:
        trainer.resume()  # SLURM's SIGCONT normally did this already
    # one warning -> checkpoint -> requeue cycle is the test; the rest of the cell gets a longer limit
    # (on a loaded machine the next 2-minute jobs would each add a cycle)
    wait_for(lambda: "Requeued job" in task_logs(out), 120, "submitit's requeue")
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=20"], check=True)
    code, text = finish(proc)
    assert code == 0, text
    warning = [ln for ln in text.splitlines() if ln.startswith("warning: --timeout-min 2")]
    assert len(warning) == 1 and "--signal-delay-s 40" in warning[0], text
    step = stop_step(run_dir)
    assert 0 < step < STEPS
    assert f"resumed from {run_dir / 'checkpoints'}" in (run_dir / "stdout.log").read_text()
    assert f"at step {step}" in (run_dir / "stdout.log").read_text()
    log = task_logs(out)
    assert "this job is timed-out" in log and "Requeued job" in log, log[-3000:]
    assert starts(run_dir) == 2
    assert_same_results(out, reference)


def test_scancel_stays_cancelled_and_is_reported(tmp_path):
    """Item 9: `scancel` of one cell of two: it checkpoints and stays cancelled (never requeued, its
    job CANCELLED), the other completes, and the study exits 1 naming the cancelled cell, which the
    report lists as cancelled."""
    out = tmp_path / "study"
    proc = start(slurm_cmd(out, "--seeds", "0,1"))
    run_dir = out / "cells" / "seed=1"
    freeze_after_first_eval(run_dir, proc)
    job = job_of(run_dir)
    subprocess.run(["scancel", job], check=True)
    code, text = finish(proc)
    assert code == 1, text
    assert "seed=1: CANCELLED" in text and "1 trained" in text, text
    assert "1 cancelled (seed=1)" in text, text
    assert (run_dir / "cancelled.log").is_file()
    assert 0 < stop_step(run_dir) < STEPS  # checkpointed: a rerun resumes it
    time.sleep(20)  # longer than a requeue takes to start again here (cred_expire=10)
    assert slurm_state(job) == "CANCELLED"
    assert starts(run_dir) == 1
    log = task_logs(out)
    assert "stopped by SLURM" in log and "job not requeued" in log, log[-3000:]
    assert "Requeued job" not in log and "SLURM requeued" not in log, log[-3000:]
    report = (out / "report.md").read_text()
    assert f"`seed=1` — cancelled: cancelled (SLURM job {job})" in report, report
