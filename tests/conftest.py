"""Shared test helpers: the tiny run every end-to-end test trains (TINY_SETS, `tiny_sets`), the CLI
in-process (`run_cli`), two CPU processes (`launch_two`), the `needs_cifar` skip."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# One OpenMP thread for the tests and the processes they start (a value already set wins): the models
# are tiny, and two threads that wait on each other on a busy machine are several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CIFAR_PATH = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CIFAR_PATH.exists():
        return
    skip = pytest.mark.skip(reason=f"needs the local CIFAR-10 copy at {CIFAR_PATH}")
    for item in items:
        if "needs_cifar" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cifar_path() -> Path:
    """The real CIFAR-10 in the uoft-cs/cifar10 layout (plain_text/*.parquet)."""
    return CIFAR_PATH


# ---- running the CLI in-process (no new interpreter per case)

# a run of a few seconds on the bundled digits data set (CPU, fp32, no export); `--set` items
TINY_SETS = (
    "dataset=digits", "n1=20", "m1=40", "imb_ratio_l=5", "imb_ratio_u=5", "image_size=8",
    "batch_size=4", "mu=2", "steps=6", "eval_every=3", "checkpoint_every=3", "keep_checkpoints=0",
    "num_workers=0", "max_eval_samples=60", "cpu=true", "mixed_precision=no", "export=false",
    "log_every=2", "eval_batch_size=32", "bacon.start=0", "bacon.anchor_threshold=0",
    "bacon.bank_threshold=0", "abc.threshold=0",
)  # fmt: skip


def tiny_sets(*items: str, drop: tuple[str, ...] = ()) -> list[str]:
    """TINY_SETS with `items` ("key=value") in place of the same keys or added, `drop` keys left out:
    every test's tiny run is this one run with its differences spelled out."""
    given = {s.split("=", 1)[0]: s for s in items}
    keep = [s for s in TINY_SETS if s.split("=", 1)[0] not in {*given, *drop}]
    return [*keep, *given.values()]


def set_args(items) -> list[str]:
    """`--set` arguments for "key=value" items."""
    return [a for s in items for a in ("--set", str(s))]


class CliResult:
    """What one `bacon_zoo.cli.main(argv)` call did: exit code, stdout, stderr."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, err={self.err[-2000:]!r})"


def _run_cli(argv: list[str]) -> CliResult:
    import contextlib
    import io
    import os

    from accelerate.state import AcceleratorState

    from bacon_zoo.cli import main

    out, err = io.StringIO(), io.StringIO()
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse: usage errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        AcceleratorState._reset_state(True)
        if offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = offline
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def run_cli():
    """`run_cli(argv) -> CliResult`: `bacon-zoo ARGV` in this process, offline, output captured.

    Exceptions other than SystemExit propagate (a traceback is a bug the test must show).
    """
    return _run_cli


def tiny_train_argv(out_dir, *extra_sets: str) -> list[str]:
    """`train` argv for a TINY_SETS run in out_dir; extra `--set` items win."""
    return ["train", "--output-dir", str(out_dir), *set_args(tiny_sets(*extra_sets))]


@pytest.fixture(scope="session")
def tiny_train():
    """`tiny_train(out_dir, *extra_sets) -> argv` for `run_cli` (see TINY_SETS)."""
    return tiny_train_argv


# ---- two CPU processes under `accelerate launch` (the distributed checks)


def launch_two(script: str | Path, *args: str, env: dict | None = None, timeout: int = 300):
    """`accelerate launch --multi_gpu --num_processes 2 SCRIPT ARGS` on the CPU (gloo), from the repo
    root; returns the CompletedProcess (text output captured)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), str(script), *args,
    ]  # fmt: skip
    full = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    return subprocess.run(
        cmd, cwd=ROOT, env=full | (env or {}), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny forwards: one thread avoids OpenMP stalls on a shared 2-core machine (2 s -> 20 ms; the
    backbone tests of test_models take 15 s with one thread and 128 s with two on a loaded machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
