"""Run folders, exports and checkpoints passed around between people: nothing in them runs code, names
cannot escape the zoo, one writer per run, and no silent garbage (16-bit PNGs, diverged runs, another
run's checkpoint)."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_SETS, _run_cli, tiny_train_argv
from safetensors.torch import load_file, save_file

from bacon_zoo.errors import UserError
from bacon_zoo.run.checkpoint import (
    CUSTOM_OBJECTS,
    STATE_JSON,
    STATE_TENSORS,
    read_state,
    verify_checkpoint,
    write_manifest,
)
from bacon_zoo.run.lock import LOCK_FILE, RunLock

SETS = ("steps=3", "eval_every=3", "checkpoint_every=3", "keep_checkpoints=0")


class Payload:
    """Unpickling this creates `path` (what a hostile pickle would do with `os.system`)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def tree_hash(path: Path) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny finished, exported run (shared read-only; cases copy it)."""
    run = tmp_path_factory.mktemp("sec") / "run"
    r = _run_cli([*tiny_train_argv(run, *SETS)])
    assert r.code == 0, r
    r = _run_cli(["export", run])
    assert r.code == 0, r
    return run


def _copy(finished: Path, dst: Path) -> tuple[Path, Path]:
    run = dst / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # as if stopped at step 3: a resume with steps=4 loads it
    return run, run / "checkpoints" / "step_0000003"


def _to_legacy(ckpt: Path) -> None:
    """Rewrite a checkpoint as an older version wrote it: our state in custom_checkpoint_N.pkl."""
    states = read_state(ckpt)
    for i, name in enumerate(CUSTOM_OBJECTS):
        torch.save(states[name], ckpt / f"custom_checkpoint_{i}.pkl")
    (ckpt / STATE_JSON).unlink()
    (ckpt / STATE_TENSORS).unlink()
    write_manifest(ckpt)


# ---- 1. no code runs from a run folder, a checkpoint or an export


def _legacy_ema_payload(run: Path, ckpt: Path, marker: Path) -> None:
    _to_legacy(ckpt)
    torch.save({"module.x": Payload(marker)}, ckpt / "custom_checkpoint_1.pkl")
    write_manifest(ckpt)  # the sender recomputes the checksums: the manifest is no defence


def _optimizer_payload(run: Path, ckpt: Path, marker: Path) -> None:
    torch.save({"state": {}, "param_groups": [Payload(marker)]}, ckpt / "optimizer.bin")
    write_manifest(ckpt)


def _rng_payload(run: Path, ckpt: Path, marker: Path) -> None:
    torch.save({"step": 0, "random_state": Payload(marker)}, ckpt / "random_states_0.pkl")
    write_manifest(ckpt)


def _raw_pickle_payload(run: Path, ckpt: Path, marker: Path) -> None:
    import pickle

    (ckpt / "optimizer.bin").write_bytes(pickle.dumps(Payload(marker)))  # not even a torch file
    write_manifest(ckpt)


@pytest.mark.parametrize(
    "plant, commands",
    [
        (_legacy_ema_payload, ("export", "analyze", "resume")),
        (_optimizer_payload, ("resume",)),
        (_rng_payload, ("resume",)),
        (_raw_pickle_payload, ("resume",)),
    ],
)
def test_a_pickle_that_runs_code_is_refused_by_every_command(finished, tmp_path, plant, commands):
    run, ckpt = _copy(finished, tmp_path)
    marker = tmp_path / "PWNED"
    plant(run, ckpt, marker)
    assert verify_checkpoint(ckpt) is None
    argv = {
        "export": ["export", run, "--out", tmp_path / "exp"],
        "analyze": ["analyze", run, "--out", tmp_path / "analysis"],
        "resume": [*tiny_train_argv(run, *SETS, "steps=4"), "--resume"],
    }
    for command in commands:
        r = _run_cli(argv[command])
        errors = [x for x in r.err.splitlines() if "error:" in x]
        assert r.code == 2 and len(errors) == 1, (command, r)
        assert "refused: the file asks to run code" in errors[0] or "not a torch" in errors[0]
        assert not marker.exists(), command
    assert not (tmp_path / "exp").exists() and not (tmp_path / "analysis").exists()


def test_a_stray_custom_checkpoint_pickle_is_never_loaded(finished, tmp_path):
    """accelerate's load_state would load any custom_checkpoint_N.pkl with weights_only=False."""
    run, ckpt = _copy(finished, tmp_path)
    marker = tmp_path / "PWNED"
    for i in range(len(CUSTOM_OBJECTS)):
        torch.save(Payload(marker), ckpt / f"custom_checkpoint_{i}.pkl")
    write_manifest(ckpt)
    r = _run_cli([*tiny_train_argv(run, *SETS, "steps=4"), "--resume"])
    assert r.code == 0, r
    r = _run_cli(["export", run, "--out", tmp_path / "exp"])
    assert r.code == 0, r
    assert not marker.exists()


def test_checkpoints_hold_no_pickle_of_ours(finished):
    ckpt = finished / "checkpoints" / "step_0000003"
    names = {p.name for p in ckpt.iterdir()}
    assert not [n for n in names if n.startswith("custom_checkpoint")], names
    assert {STATE_JSON, STATE_TENSORS} <= names
    meta = json.loads((ckpt / STATE_JSON).read_text())
    assert set(meta["objects"]) == set(CUSTOM_OBJECTS)
    assert meta["run"]["config"]["seed"] == 0 and "steps" not in meta["run"]["config"]


def test_an_export_whose_weights_are_a_pickle_is_refused(finished, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(finished / "export", export)
    marker = tmp_path / "PWNED"
    for name in ("model.safetensors", "bacon_net.safetensors"):
        torch.save({"x": Payload(marker)}, export / name)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    r = _run_cli(["predict", export, image])
    assert r.code == 2 and "truncated or corrupt" in r.err, r
    r = _run_cli([*tiny_train_argv(tmp_path / "new", *SETS), "--init-from", export])
    assert r.code == 2 and "truncated or corrupt" in r.err, r
    assert not marker.exists()


# ---- 2. names cannot escape the zoo


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim", "a/b/c", "..", "x/../../y", ""])
def test_export_refuses_a_name_that_is_a_path(finished, tmp_path, name):
    out = tmp_path / "exp"
    r = _run_cli(["export", finished, "--out", out, "--name", name])
    assert r.code == 2 and "is not a model name" in r.err, r
    assert not out.exists()


def test_zoo_add_never_writes_or_deletes_outside_the_zoo(finished, tmp_path, monkeypatch):
    cards = tmp_path / "zoo" / "model_cards"
    cards.mkdir(parents=True)
    monkeypatch.setenv("BACON_ZOO_INDEX", str(cards / "index.json"))
    victim = tmp_path / "zoo" / "victim"  # beside the cards folder: `../victim` from inside it
    victim.mkdir()
    (victim / "precious.txt").write_text("mine\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("mine too\n")
    before = {p: tree_hash(p) for p in (victim, outside)}
    export = tmp_path / "export"
    shutil.copytree(finished / "export", export)
    for name in ("../victim", str(outside), "../../outside", "ok/../../victim"):
        info = json.loads((export / "bacon_net.json").read_text())
        info["name"] = name
        (export / "bacon_net.json").write_text(json.dumps(info))
        r = _run_cli(["zoo", "add", export])
        assert r.code == 2 and "is not a model name" in r.err, (name, r)
        r = _run_cli(["zoo", "add", export, "--hub-id", f"me/{name}"])
        assert r.code == 2, (name, r)
    assert {p: tree_hash(p) for p in (victim, outside)} == before
    assert not (tmp_path / "zoo" / "victim.md").exists() and not (tmp_path / "victim.md").exists()
    # a card file someone else put in the zoo folder is not replaced by a new entry of that name
    info["name"] = "wrn28_2.bacon_mine"
    (export / "bacon_net.json").write_text(json.dumps(info))
    (cards / "wrn28_2.bacon_mine.md").write_text("my own notes\n")
    r = _run_cli(["zoo", "add", export])
    assert r.code == 2 and "no zoo entry" in r.err, r
    assert (cards / "wrn28_2.bacon_mine.md").read_text() == "my own notes\n"
    (cards / "wrn28_2.bacon_mine.md").unlink()
    r = _run_cli(["zoo", "add", export])
    assert r.code == 0, r
    r = _run_cli(["zoo", "add", export])  # its own entry is updated in place
    assert r.code == 0, r


# ---- 3. one writer per run


def test_a_held_run_is_refused_with_its_holder_and_left_intact(finished, tmp_path):
    run, _ = _copy(finished, tmp_path)
    before = tree_hash(run)
    with RunLock(run):
        r = _run_cli([*tiny_train_argv(run, *SETS, "steps=4"), "--resume"])
        assert r.code == 2, r
        line = [x for x in r.err.splitlines() if "error:" in x]
        assert len(line) == 1 and f"pid {os.getpid()} on " in line[0], r.err
        assert "being trained by another process" in line[0]
        assert tree_hash(run) | {LOCK_FILE: ""} == before | {LOCK_FILE: ""}
    r = _run_cli([*tiny_train_argv(run, *SETS, "steps=4"), "--resume"])  # released: it runs
    assert r.code == 0, r


def _train_subprocess(out: Path, *sets: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bacon_zoo.cli", *map(str, tiny_train_argv(out, *sets))]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.2)


def test_a_lock_whose_holder_was_killed_is_taken_over(tmp_path, capsys):
    code = "import os, sys; from bacon_zoo.run.lock import RunLock; RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True)
    assert r.returncode == -signal.SIGKILL, r
    holder = (tmp_path / LOCK_FILE).read_text()
    pid = int(holder.split("pid=")[1].split()[0])
    with RunLock(tmp_path):
        assert f"pid={os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    assert f"taking over the lock of pid {pid} on " in capsys.readouterr().err
    assert (tmp_path / LOCK_FILE).read_text() == ""


@pytest.mark.slow  # two real trainers: seconds alone, minutes on a loaded 2-core machine
def test_two_trainers_one_output_dir_and_a_stale_lock(tmp_path):
    """A second `train` into a directory being trained stops in one line naming the holder; the first
    finishes intact; a lock whose holder was SIGKILLed is taken over on --resume."""
    run = tmp_path / "run"
    first = _train_subprocess(run, "steps=100000", "checkpoint_every=5", "eval_every=100000")
    try:
        ckpts = run / "checkpoints"
        _wait_for(
            lambda: ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()),
            first,
        )
        config = (run / "config.yaml").read_text()
        r = _run_cli([*tiny_train_argv(run, "steps=100000", "lr=0.1"), "--resume"])
        assert r.code == 2 and "different config" in r.err, r  # checked first: nothing written
        r = _run_cli(
            [
                *tiny_train_argv(run, "steps=100000", "checkpoint_every=5", "eval_every=100000"),
                "--resume",
            ]
        )
        line = [x for x in r.err.splitlines() if "error:" in x]
        assert r.code == 2 and len(line) == 1, r
        assert f"pid {first.pid} on " in line[0], line
        assert (run / "config.yaml").read_text() == config
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    holder = (run / LOCK_FILE).read_text()
    assert f"pid={first.pid}" in holder  # killed: it could not clear its record
    for ckpt in [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")]:
        assert verify_checkpoint(ckpt) is None, ckpt  # the first's checkpoints are intact
    steps = sorted(
        int(p.name[5:]) for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")
    )
    r = _run_cli(
        [
            *tiny_train_argv(
                run, f"steps={steps[-1] + 2}", "checkpoint_every=5", "eval_every=100000"
            ),
            "--resume",
        ]
    )
    assert r.code == 0, r
    assert f"taking over the lock of pid {first.pid}" in r.err
    assert (run / LOCK_FILE).read_text() == ""  # released at the end


# ---- 4. no silent garbage


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    r = _run_cli(tiny_train_argv(run, "lr=1e6", "steps=12", "checkpoint_every=1", "log_every=2"))
    errors = [x for x in r.err.splitlines() if "error:" in x]
    assert r.code == 2 and len(errors) == 1, r
    assert "the training loss or weights became NaN or infinite by step " in errors[0], errors
    stopped = int(errors[0].split("by step ")[1].split(":")[0])
    kept = sorted(p for p in (run / "checkpoints").glob("step_*"))
    assert kept and all(
        int(p.name[5:]) < stopped for p in kept
    )  # nothing saved after the loss went bad
    for ckpt in kept:
        assert verify_checkpoint(ckpt) is None
        tensors = [
            *load_file(ckpt / "model.safetensors").values(),
            *read_state(ckpt)["ema"].values(),
        ]
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), ckpt
    last = f"its last checkpoint, {kept[-1].name}, is kept" if kept else "it saved no checkpoint"
    assert last in errors[0]
    assert not (run / "summary.json").exists() and not (run / "export").exists()
    assert (run / LOCK_FILE).read_text() == ""  # the lock was released


def test_export_refuses_non_finite_weights(finished, tmp_path):
    run, ckpt = _copy(finished, tmp_path)
    tensors = load_file(ckpt / STATE_TENSORS)
    key = next(k for k in tensors if k.startswith("ema.module.") and k.endswith("weight"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, ckpt / STATE_TENSORS, metadata={"format": "pt"})
    write_manifest(ckpt)
    r = _run_cli(["export", run, "--out", tmp_path / "exp"])
    assert r.code == 2 and "NaN or infinite weights" in r.err, r
    assert not (tmp_path / "exp").exists()


def test_another_runs_checkpoint_is_refused(finished, tmp_path):
    other = tmp_path / "other"
    r = _run_cli(tiny_train_argv(other, *SETS, "seed=1"))
    assert r.code == 0, r
    foreign = other / "checkpoints" / "step_0000003"
    r = _run_cli(["export", finished, "--checkpoint", foreign, "--out", tmp_path / "exp"])
    assert r.code == 2 and "belongs to another run (its config differs in: seed)" in r.err, r
    r = _run_cli(["analyze", finished, "--checkpoint", foreign, "--out", tmp_path / "a"])
    assert r.code == 2 and "belongs to another run" in r.err, r
    assert not (tmp_path / "exp").exists() and not (tmp_path / "a").exists()
    # its own checkpoint, given as a path, is fine; so is a copy of the run (the same experiment)
    r = _run_cli(
        [
            "export",
            finished,
            "--checkpoint",
            finished / "checkpoints/step_0000003",
            "--out",
            tmp_path / "exp",
        ]
    )
    assert r.code == 0, r
    # an older version's checkpoint records no run: only from the run's own checkpoints/
    copy, ckpt = _copy(finished, tmp_path / "c")
    _to_legacy(ckpt)
    r = _run_cli(["export", copy, "--out", tmp_path / "exp2"])
    assert r.code == 0, r
    r = _run_cli(["export", finished, "--checkpoint", ckpt, "--out", tmp_path / "exp3"])
    assert r.code == 2 and "records no run" in r.err, r


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey [H, W] or RGB [H, W, 3]) written by hand: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    head = struct.pack(">IIBBBBB", w, h, 16, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16_bit_pngs_decode_to_their_pixels(tmp_path):
    """A 16-bit data set decodes to the same uint8 images as its 8-bit copy (PIL alone: pure white)."""
    from PIL import Image

    from bacon_zoo.config import build_config
    from bacon_zoo.data import prepare_data

    rng = np.random.default_rng(0)
    wide, narrow = tmp_path / "wide", tmp_path / "narrow"
    for k in range(3):
        for root in (wide, narrow):
            (root / f"class_{k}").mkdir(parents=True)
        for i in range(12):
            shape = (8, 8) if i % 2 else (8, 8, 3)  # grey (mode I;16) and RGB (48-bit)
            px = rng.integers(0, 65536, shape, dtype=np.uint16)
            (wide / f"class_{k}" / f"{i}.png").write_bytes(_png16(px))
            Image.fromarray((px >> 8).astype(np.uint8)).save(narrow / f"class_{k}" / f"{i}.png")
    assert Image.open(wide / "class_0" / "1.png").mode == "I;16"
    sets = ["n1=4", "m1=4", "imb_ratio_l=1", "imb_ratio_u=1", "test_per_class=2", "image_size=8"]
    got = [prepare_data(build_config(None, None, [f"dataset={r}", *sets])) for r in (wide, narrow)]
    a, b = (d.labeled.images for d in got)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert 0.3 < np.asarray(a).mean() / 255 < 0.7  # not white


def test_out_of_range_pixels_are_refused_with_the_image_named():
    from bacon_zoo.data.sources import _to_rgb

    with pytest.raises(ValueError, match=r"pixel values in \[0, 70000\]"):
        _to_rgb(np.array([[0, 70000]], dtype=np.int32), 8)
    assert _to_rgb(np.full((2, 2), 200, dtype=np.int64), 2).max() == 200  # 0..255 stays as it is


def test_run_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with pytest.raises(UserError), RunLock(tmp_path), RunLock(tmp_path):
        pass
    with RunLock(tmp_path):  # the first was released by the exception
        pass


@pytest.mark.slow  # a study and its cell start up: about a minute on a loaded 2-core machine
def test_a_killed_study_takes_its_cell_with_it(tmp_path):
    """SIGKILL of `study run` used to leave its training cell running as an orphan (and a re-run
    trained it again beside it): the cell now gets SIGTERM, checkpoints and ends."""
    out = tmp_path / "study"
    long = ("steps=100000", "eval_every=100000", "checkpoint_every=100000")
    keys = {s.split("=")[0] for s in long}
    kept = [s for s in TINY_SETS if s.split("=")[0] not in keys]
    sets = [a for s in (*kept, *long) for a in ("--set", s)]
    argv = [sys.executable, "-m", "bacon_zoo.cli", "study", "run", "--grid", "algorithm=fixmatch",
            *sets, "--out", str(out)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = None
    try:
        lock = out / "cells" / "algorithm=fixmatch__seed=0" / LOCK_FILE
        metrics = lock.parent / "stdout.log"
        _wait_for(
            lambda: lock.is_file() and "pid=" in lock.read_text() and metrics.is_file(), runner
        )
        cell = int(lock.read_text().split("pid=")[1].split()[0])
        runner.kill()
        runner.wait(timeout=30)
        t0 = time.monotonic()
        while _alive(cell):
            assert time.monotonic() - t0 < 300, "the cell outlived its study"
            time.sleep(0.2)
    finally:
        if runner.poll() is None:
            runner.kill()
        if cell is not None and _alive(cell):  # the bug: don't leave it training after the test
            os.kill(cell, signal.SIGKILL)
    assert lock.read_text() == ""  # it stopped cleanly (released its lock)
    assert [p.name for p in (lock.parent / "checkpoints").iterdir() if p.name.startswith("step_")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_output_dir_tilde_is_expanded_and_an_empty_one_refused():
    from bacon_zoo.config import build_config

    assert build_config(None, {"output_dir": "~/x"}).output_dir == str(Path.home() / "x")
    with pytest.raises(UserError, match="output_dir is empty"):
        build_config(None, {"output_dir": " "})
