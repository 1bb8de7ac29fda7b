"""Studies through submitit: the local executor with a cell killed mid-run and requeued, and the sbatch
script a SLURM submission would produce (with a stand-in `srun`; no SLURM needed)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import tiny_sets

pytest.importorskip("submitit")
psutil = pytest.importorskip("psutil")

from bacon_zoo.study.executors import submit_study, submitit_executor, wait_jobs  # noqa: E402
from bacon_zoo.study.report import TIMING_COLUMNS, write_report  # noqa: E402
from bacon_zoo.study.runner import plan_study, run_study  # noqa: E402

# the shared tiny run (6 steps), evaluated and checkpointed every 2
TINY = tiny_sets("eval_every=2", "checkpoint_every=2", "max_eval_samples=40", "channels_last=false")

# A stand-in cell: `python fake_cell.py train.py ... --output-dir D ... --resume`. It counts to 40 in
# 50 ms steps, keeping its progress in D/progress; SIGTERM saves the progress and exits 143 like the
# trainer; each start is logged to D/starts.jsonl with its pid, its parent's (the submitit task) and the
# step it resumed from. At 40 it writes a complete summary.json.
FAKE_CELL = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = sys.argv[sys.argv.index("--output-dir") + 1]
    os.makedirs(out, exist_ok=True)
    prog = os.path.join(out, "progress")
    step = int(open(prog).read()) if os.path.exists(prog) else 0
    with open(os.path.join(out, "starts.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "from": step,
                            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                            "t0": time.time()}) + "\\n")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    while step < 40:
        if stop:
            sys.exit(143)
        time.sleep(0.05)
        step += 1
        open(prog, "w").write(str(step))
    json.dump({"status": "complete", "best_top1": 50.0 + len(out) % 7, "backbone": "wrn28_2",
               "t1": time.time()}, open(os.path.join(out, "summary.json"), "w"))
    """
)


def _starts(run_dir: Path) -> list[dict]:
    path = run_dir / "starts.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def _wait_for(predicate, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow  # waits on submitit's local executor: a minute, and timing-bound under load
def test_local_executor_requeues_preempted_and_stopped_cells(tmp_path, monkeypatch):
    """The requeue path with fake cells: one task gets submitit's preemption signal (USR2), another
    cell is SIGTERMed directly (exit 143); both are requeued and resume; the third runs straight."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fake = tmp_path / "fake_cell.py"
    fake.write_text(FAKE_CELL)
    study = plan_study(
        tmp_path / "study", grid={"algorithm": ["fixmatch", "abc", "bacon"]}, sets=TINY
    )
    dirs = [study.cell_dir(c) for c in study.cells]
    jobs = submit_study(
        study,
        study.cells,
        executor="local",
        launcher=f"{sys.executable} {fake}",
        log=lambda m: None,
    )
    assert len(jobs) == 3
    # preempt cell 0 through submitit (what SLURM does at --signal time / preemption)
    _wait_for(lambda: (dirs[0] / "progress").is_file(), what="cell 0 to start")
    os.kill(_starts(dirs[0])[0]["ppid"], signal.SIGUSR2)
    # stop cell 1 from outside submitit (a scheduler's SIGTERM to every process)
    _wait_for(lambda: (dirs[1] / "progress").is_file(), what="cell 1 to start")
    os.kill(_starts(dirs[1])[0]["pid"], signal.SIGTERM)
    outcome = wait_jobs(jobs, log=lambda m: None)
    assert sorted(outcome["trained"]) == sorted(c.name for c in study.cells), outcome
    assert not outcome["failed"]
    for i, d in enumerate(dirs):
        starts = _starts(d)
        assert json.loads((d / "summary.json").read_text())["status"] == "complete"
        assert int((d / "progress").read_text()) == 40
        if (
            i < 2
        ):  # requeued once, resumed from where it stopped (not from 0), in a new task process
            assert len(starts) == 2 and 0 < starts[1]["from"] < 40, starts
            assert not (d / "error.log").exists()
        else:
            assert len(starts) == 1 and starts[0]["from"] == 0
    log = "".join(p.read_text() for p in (study.dir / "submitit").rglob("*_log.out"))
    assert "Requeued job" in log or "requeue" in log.lower()


@pytest.mark.slow  # six real cells through two runners: minutes on a loaded machine
def test_real_cells_killed_and_requeued_match_the_subprocess_runner(tmp_path, monkeypatch):
    """Done-when: 3 real tiny cells through submitit's local executor, one preempted mid-run and resumed
    by the requeue path, end complete with results.csv identical (timings aside) to the subprocess
    runner's on the same cells."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    grid = {"algorithm": ["fixmatch", "abc", "bacon"]}
    sets = TINY
    ref = plan_study(tmp_path / "subprocess", grid=grid, sets=sets)
    outcome = run_study(ref, log=lambda m: None)
    assert len(outcome["trained"]) == 3, outcome

    study = plan_study(tmp_path / "submitit", grid=grid, sets=sets)
    killed = study.cell_dir(study.cells[1])
    jobs = submit_study(study, study.cells, executor="local", log=lambda m: None)
    # freeze the cell right after its first checkpoint, preempt its task, let it take the SIGTERM
    _wait_for(lambda: (killed / "checkpoints").is_dir() and any(
        p.name.startswith("step_") for p in (killed / "checkpoints").iterdir()
    ), timeout=240, what="the first checkpoint")  # fmt: skip
    task = next(
        p for p in psutil.process_iter(["cmdline"])
        if "submitit.core._submit" in " ".join(p.info["cmdline"] or [])
        and any(str(killed) in " ".join(c.cmdline()) for c in p.children())
    )  # fmt: skip
    trainer = next(c for c in task.children() if str(killed) in " ".join(c.cmdline()))
    trainer.suspend()
    task.send_signal(signal.SIGUSR2)
    time.sleep(1.0)
    trainer.resume()
    outcome = wait_jobs(jobs, log=lambda m: None)
    assert len(outcome["trained"]) == 3 and not outcome["failed"], outcome
    assert (
        "stopped at step"
        in (killed / "stdout.log").read_text() + (killed / "stderr.log").read_text()
    )
    assert (killed / "stdout.log").read_text().count("=== ") == 2  # started, requeued, resumed

    def table(d: Path) -> list[dict]:
        write_report(d)
        with (d / "results.csv").open() as f:
            return [
                {k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)
            ]

    a, b = table(ref.dir), table(study.dir)
    assert [r["status"] for r in b] == ["complete"] * 3
    diff = [
        (ra["cell"], k, ra[k], rb.get(k)) for ra, rb in zip(a, b) for k in ra if ra[k] != rb.get(k)
    ]
    assert not diff, diff


def test_slurm_submission_script(tmp_path, monkeypatch):
    """What `--executor slurm --partition P --gpus-per-cell 1` asks SLURM for (a stand-in srun)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    study = plan_study(tmp_path / "study", grid={"algorithm": ["abc", "bacon"]}, sets=TINY)
    ex = submitit_executor(
        study, "slurm", partition="gpu", gpus_per_cell=1, timeout_min=600, array_parallelism=8
    )
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--signal=USR2@120", "--time=600",
                 "--ntasks-per-node=1", "--nodes=1"):  # fmt: skip
        assert f"#SBATCH {line}" in script, (line, script)
    assert ex._executor.parameters["array_parallelism"] == 8
    assert ex._executor.max_num_timeout == 20


def _stand_in(tmp_path, monkeypatch, **scripts: str) -> None:
    """Stand-in SLURM commands on PATH: name -> what it prints."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, out in scripts.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}\nEOF\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_gpus_per_cell_follows_the_partition(tmp_path, monkeypatch):
    """Item 6 of issue 22 without SLURM: no GPU in `sinfo -o %G` -> 0 by default (with a note) and a
    GPU request is one line; GPU nodes -> 1 by default, more than a node has is refused."""
    from bacon_zoo.errors import UserError
    from bacon_zoo.study.executors import partition_gpus, resolve_gpus

    _stand_in(tmp_path, monkeypatch, sinfo="(null)")
    assert partition_gpus("cpu") == 0
    gpus, note = resolve_gpus("cpu", None)
    assert gpus == 0 and "no GPUs" in note and "--gpus-per-cell 0" in note
    assert resolve_gpus("cpu", 0) == (0, None)
    with pytest.raises(UserError, match=r"has no GPUs .*use --gpus-per-cell 0"):
        resolve_gpus("cpu", 1)
    _stand_in(tmp_path, monkeypatch, sinfo="gpu:a100:4(S:0-1),shard:8\ngpu:2")
    assert partition_gpus("gpu") == 4
    assert resolve_gpus("gpu", None) == (1, None)
    assert resolve_gpus("gpu", 4) == (4, None)
    with pytest.raises(UserError, match="at most 4 GPUs"):
        resolve_gpus("gpu", 8)


def test_help_says_zero_gpus_is_allowed(capsys):
    from bacon_zoo.study import cli as study_cli

    parser = argparse.ArgumentParser()
    study_cli.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["study", "run", "--help"])
    assert "0 runs the cells on CPUs" in " ".join(capsys.readouterr().out.split())


def test_short_time_limit_is_warned_about():
    from bacon_zoo.study.executors import timeout_warning

    assert timeout_warning(24 * 60, 120) is None
    assert timeout_warning(5, 120) is None  # 300 - 120 - 60 s leaves 120 s before the warning
    line = timeout_warning(1, 10)
    assert "--timeout-min 1" in line and "0 s into each job" in line and "\n" not in line


@pytest.mark.parametrize(
    ("scontrol", "restart_count", "expect"),
    [
        ("JobId=7 JobState=COMPLETING Reason=None Restarts=1", "", "requeued"),  # scontrol requeue
        ("JobId=7 JobState=COMPLETING Reason=None Restarts=2", "1", "requeued"),
        ("JobId=7 JobState=COMPLETING Reason=None Restarts=1", "1", "ending"),  # scancel after one
        ("JobId=7 JobState=CANCELLED Reason=None Restarts=0", "", "ending"),
        ("JobId=7 JobState=RUNNING Reason=None Restarts=0", "", None),  # a signal from elsewhere
    ],
)
def test_a_stopped_task_asks_slurm_why(tmp_path, monkeypatch, scontrol, restart_count, expect):
    """Items 7 and 9: a cell stopped by SIGTERM inside a SLURM job is requeued by SLURM (the task must
    not requeue it again), ended by SLURM (scancel: it must not be requeued), or neither."""
    from bacon_zoo.study.executors import _slurm_took_over

    _stand_in(tmp_path, monkeypatch, scontrol=scontrol)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", restart_count)
    assert _slurm_took_over() == expect
    monkeypatch.delenv("SLURM_JOB_ID")
    assert _slurm_took_over() is None  # not in a SLURM job: submitit's own requeue path


def test_trainer_and_runner_agree_on_stop_signals():
    """The runner treats 128 + each of the trainer's stop signals (140 for SLURM's USR2) as stopped."""
    from bacon_zoo.study.runner import STOP_CODES, STOP_SIGNALS
    from bacon_zoo.train.trainer import STOP_SIGNALS as TRAINER_SIGNALS

    assert set(STOP_SIGNALS) == set(TRAINER_SIGNALS)
    assert {130, 140, 143} <= STOP_CODES
