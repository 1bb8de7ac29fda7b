"""Checkpoints: a manifest written last, verification, and resuming from the newest complete one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bacon_zoo.errors import UserError
from bacon_zoo.run.checkpoint import (
    CUSTOM_OBJECTS,
    MANIFEST,
    find_resume_dir,
    latest_complete,
    list_checkpoints,
    load_custom_object,
    verify_checkpoint,
    write_manifest,
)


def fake_checkpoint(root: Path, step: int, manifest: bool = True) -> Path:
    """A folder shaped like accelerate's save_state output (contents are arbitrary bytes)."""
    d = root / f"step_{step:07d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes(range(256)) * (4 + step))
    (d / "optimizer.bin").write_bytes(b"o" * 100)
    (d / "random_states_0.pkl").write_bytes(b"r" * 10)
    for i in range(len(CUSTOM_OBJECTS)):
        torch.save({"step": step, "i": i}, d / f"custom_checkpoint_{i}.pkl")
    if manifest:
        write_manifest(d)
    return d


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    files = json.loads((d / MANIFEST).read_text())["files"]
    assert set(files) == {p.name for p in d.iterdir()} - {MANIFEST}
    assert files["model.safetensors"]["size"] == (d / "model.safetensors").stat().st_size
    assert all(len(m["sha256"]) == 64 for m in files.values())
    assert not (d / f"{MANIFEST}.tmp").exists()
    assert verify_checkpoint(d) is None


def test_verify_names_what_is_wrong(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    size = (d / "model.safetensors").stat().st_size
    with (d / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    assert verify_checkpoint(d) == f"model.safetensors is 100 bytes, manifest says {size}"

    d = fake_checkpoint(tmp_path, 2)
    (d / "custom_checkpoint_2.pkl").unlink()
    assert verify_checkpoint(d) == "custom_checkpoint_2.pkl missing"

    d = fake_checkpoint(tmp_path, 3)
    data = bytearray((d / "optimizer.bin").read_bytes())
    data[50] ^= 1  # same size, other content
    (d / "optimizer.bin").write_bytes(bytes(data))
    assert verify_checkpoint(d) == "optimizer.bin does not match its sha256 in the manifest"
    assert verify_checkpoint(d, hashes=False) is None

    d = fake_checkpoint(tmp_path, 4, manifest=False)
    assert verify_checkpoint(d).startswith("missing manifest.json")

    d = fake_checkpoint(tmp_path, 5)
    (d / MANIFEST).write_text('{"files": ')
    assert verify_checkpoint(d) == "manifest.json is unreadable"

    d = fake_checkpoint(tmp_path, 6)
    (d / "custom_checkpoint_4.pkl").unlink()
    write_manifest(d)  # a manifest of a checkpoint with fewer registered objects
    assert "custom_checkpoint_4.pkl is not in the manifest" in verify_checkpoint(d)
    assert verify_checkpoint(tmp_path / "nope") == "not a directory"


def test_auto_resume_skips_damaged_checkpoints_and_never_a_tmp(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, 100)
    fake_checkpoint(root, 200)
    newest = fake_checkpoint(root, 300)
    (root / ".tmp-step_0000400").mkdir()
    with (newest / "model.safetensors").open("r+b") as f:
        f.truncate(7)
    assert [p.name for p in list_checkpoints(root)] == [
        "step_0000100",
        "step_0000200",
        "step_0000300",
    ]
    assert find_resume_dir("auto", root) == root / "step_0000200"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "skipping checkpoints/step_0000300: model.safetensors is 7 bytes, manifest says "
        f"{256 * 304}; resuming from step_0000200"
    ]
    (root / "step_0000200" / MANIFEST).unlink()
    assert find_resume_dir("auto", root) == root / "step_0000100"
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    assert latest_complete(root) == root / "step_0000100"
    assert "; using step_0000100" in capsys.readouterr().err
    # the run directory form picks the same
    assert find_resume_dir(str(tmp_path), root) == root / "step_0000100"


def test_auto_resume_says_it_starts_over(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    assert find_resume_dir("auto", root) is None
    assert capsys.readouterr().err.strip() == (
        f"--resume: no checkpoint in {root}; starting from step 0"
    )
    d = fake_checkpoint(root, 5)
    (d / "custom_checkpoint_0.pkl").unlink()
    assert find_resume_dir("auto", root) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "skipping checkpoints/step_0000005: custom_checkpoint_0.pkl missing",
        f"--resume: no complete checkpoint in {root}; starting from step 0",
    ]


def test_explicit_resume_paths_are_checked(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    good = fake_checkpoint(root, 1)
    assert find_resume_dir(str(good), root) == good
    bad = fake_checkpoint(root, 2)
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"damaged checkpoint \(model.safetensors missing\)"):
        find_resume_dir(str(bad), root)
    (root / ".tmp-step_0000003").mkdir()
    with pytest.raises(UserError, match="half-written checkpoint"):
        find_resume_dir(str(root / ".tmp-step_0000003"), root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no checkpoints in it"):
        find_resume_dir(str(empty), root)
    with pytest.raises(UserError, match="no such directory"):
        find_resume_dir(str(tmp_path / "runz"), root)
    (good / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="no complete checkpoint"):
        find_resume_dir(str(tmp_path / "run"), root)


def test_load_custom_object_refuses_a_damaged_checkpoint(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    assert load_custom_object(d, "ema") == {"step": 1, "i": CUSTOM_OBJECTS.index("ema")}
    (d / "optimizer.bin").write_bytes(b"short")
    with pytest.raises(UserError, match="is damaged"):
        load_custom_object(d, "ema")


# ---- end to end: damage the newest checkpoint of a real run, three ways, and resume


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Model, EMA and algorithm (memory bank) tensors of a checkpoint."""
    out = {f"model.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    for i, name in enumerate(CUSTOM_OBJECTS):
        sd = torch.load(ckpt / f"custom_checkpoint_{i}.pkl", weights_only=False)
        if isinstance(sd, dict):
            out |= {f"{name}.{k}": v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return out


def _truncate(ckpt: Path) -> str:
    f = ckpt / "model.safetensors"
    size = f.stat().st_size
    with f.open("r+b") as fh:
        fh.truncate(size // 2)
    return f"model.safetensors is {size // 2} bytes, manifest says {size}"


def _drop_custom(ckpt: Path) -> str:
    name = f"custom_checkpoint_{CUSTOM_OBJECTS.index('algorithm')}.pkl"
    (ckpt / name).unlink()
    return f"{name} missing"


def _drop_manifest(ckpt: Path) -> str:
    (ckpt / MANIFEST).unlink()
    return "missing manifest.json"


def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path, run_cli, tiny_train):
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    sets = ("steps=4", "checkpoint_every=2", "eval_every=2")
    r = run_cli(tiny_train(straight, *sets))
    assert r.code == 0, r
    r = run_cli(tiny_train(damaged, *sets))
    assert r.code == 0, r
    expected = _weights(straight / "checkpoints/step_0000004")
    assert any(k.startswith("algorithm.") for k in expected)
    for damage in (_truncate, _drop_custom, _drop_manifest):
        newest = damaged / "checkpoints/step_0000004"
        reason = damage(newest)
        # as if the run had been stopped right after its last checkpoint: not finished yet
        (damaged / "summary.json").unlink(missing_ok=True)
        r = run_cli([*tiny_train(damaged, *sets), "--resume"])
        assert r.code == 0, (damage.__name__, r)
        skipped = [x for x in r.err.splitlines() if x.startswith("skipping ")]
        assert len(skipped) == 1, r.err
        assert skipped[0].startswith(f"skipping checkpoints/step_0000004: {reason}")
        assert skipped[0].endswith("; resuming from step_0000002")
        assert "Traceback" not in r.err
        assert verify_checkpoint(newest) is None
        got = _weights(newest)
        assert got.keys() == expected.keys()
        for k in expected:
            assert torch.equal(got[k], expected[k]), (damage.__name__, k)
