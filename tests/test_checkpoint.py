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
    STATE_JSON,
    STATE_TENSORS,
    find_resume_dir,
    latest_complete,
    list_checkpoints,
    load_custom_object,
    read_state,
    verify_checkpoint,
    write_manifest,
    write_state,
)


class Obj:
    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def fake_checkpoint(root: Path, step: int, manifest: bool = True) -> Path:
    """A folder shaped like a checkpoint (accelerate's files are arbitrary bytes; ours are real)."""
    d = root / f"step_{step:07d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes(range(256)) * (4 + step))
    (d / "optimizer.bin").write_bytes(b"o" * 100)
    (d / "random_states_0.pkl").write_bytes(b"r" * 10)
    objects = {n: Obj({"step": step, "i": i}) for i, n in enumerate(CUSTOM_OBJECTS)}
    write_state(d, objects, None)
    if manifest:
        write_manifest(d)
    return d


def legacy_checkpoint(root: Path, step: int) -> Path:
    """A checkpoint of an older version: our state in accelerate's custom_checkpoint_N.pkl."""
    d = root / f"step_{step:07d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"m" * 64)
    for i in range(len(CUSTOM_OBJECTS)):
        torch.save({"step": step, "i": i, "t": torch.arange(3)}, d / f"custom_checkpoint_{i}.pkl")
    write_manifest(d)
    return d


def test_state_round_trips_exactly(tmp_path):
    """Tensors of every dtype, None, nested lists/tuples, int keys and exact floats come back equal."""
    state = {
        "w": torch.randn(3, 4),
        "b": torch.tensor([True, False]),
        "i": torch.arange(5),
        "h": torch.randn(2, dtype=torch.float64),
        "bf": torch.randn(2).to(torch.bfloat16),
        "scalar": torch.tensor(7),
        "none": None,
        "lrs": [0.1 / 3, 1e-300, float("inf")],
        "pair": (1, "x"),
        "by_int": {0: torch.ones(1), 1: {"momentum_buffer": None}},
        "__odd": 1,
        "nested": {"a": [torch.zeros(2), {"b": 2.5}]},
    }
    write_state(tmp_path, {"obj": Obj(state)}, {"config": {"lr": 0.1}})
    got = read_state(tmp_path, ("obj",))["obj"]
    assert got.keys() == state.keys()
    for k in ("w", "b", "i", "h", "bf", "scalar"):
        assert got[k].dtype == state[k].dtype and torch.equal(got[k], state[k]), k
    assert got["lrs"] == state["lrs"] and got["pair"] == (1, "x") and got["none"] is None
    assert torch.equal(got["by_int"][0], torch.ones(1)) and got["by_int"][1] == {
        "momentum_buffer": None
    }
    assert got["__odd"] == 1 and got["nested"]["a"][1] == {"b": 2.5}
    assert set(json.loads((tmp_path / STATE_JSON).read_text())) == {"format", "run", "objects"}


def test_state_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="obj.f is a function"):
        write_state(tmp_path, {"obj": Obj({"f": lambda: 0})}, None)


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    record = json.loads((d / MANIFEST).read_text())
    files, sizes = record["files"], record["sizes"]  # the one manifest format, plus sizes
    assert set(files) == set(sizes) == {p.name for p in d.iterdir()} - {MANIFEST}
    assert sizes["model.safetensors"] == (d / "model.safetensors").stat().st_size
    assert all(len(sha) == 64 for sha in files.values())
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert verify_checkpoint(d) is None


def test_a_manifest_of_an_earlier_version_still_verifies(tmp_path):
    """Checkpoints written before the one manifest format list {"size", "sha256"} per file."""
    d = fake_checkpoint(tmp_path, 1)
    record = json.loads((d / MANIFEST).read_text())
    old = {f: {"size": record["sizes"][f], "sha256": h} for f, h in record["files"].items()}
    (d / MANIFEST).write_text(json.dumps({"version": 1, "files": old}))
    assert verify_checkpoint(d) is None
    (d / "model.safetensors").write_bytes(b"x" * 7)
    assert (
        verify_checkpoint(d)
        == f"model.safetensors is 7 bytes, manifest says {old['model.safetensors']['size']}"
    )


def test_verify_names_what_is_wrong(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    size = (d / "model.safetensors").stat().st_size
    with (d / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    assert verify_checkpoint(d) == f"model.safetensors is 100 bytes, manifest says {size}"

    d = fake_checkpoint(tmp_path, 2)
    (d / STATE_TENSORS).unlink()
    assert verify_checkpoint(d) == f"{STATE_TENSORS} missing"

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
    (d / STATE_TENSORS).unlink()
    write_manifest(d)  # a manifest of a checkpoint without our state
    assert f"{STATE_TENSORS} is not in the manifest" in verify_checkpoint(d)
    d = fake_checkpoint(tmp_path, 7)
    (d / STATE_TENSORS).unlink()
    (d / STATE_JSON).unlink()
    write_manifest(d)
    assert f"{STATE_JSON} is not in the manifest" in verify_checkpoint(d)
    d = legacy_checkpoint(tmp_path / "old", 8)
    assert verify_checkpoint(d) is None
    (d / "custom_checkpoint_4.pkl").unlink()
    write_manifest(d)  # an older version's checkpoint with fewer registered objects
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
    (d / STATE_JSON).unlink()
    assert find_resume_dir("auto", root) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"skipping checkpoints/step_0000005: {STATE_JSON} missing",
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


def test_checkpoints_of_older_versions_are_read_without_pickle_code(tmp_path):
    d = legacy_checkpoint(tmp_path, 3)
    got = load_custom_object(d, "algorithm")
    assert got["step"] == 3 and torch.equal(got["t"], torch.arange(3))


# ---- end to end: damage the newest checkpoint of a real run, three ways, and resume


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Model, EMA and algorithm (memory bank) tensors of a checkpoint."""
    out = {f"model.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    for name, sd in read_state(ckpt).items():
        out |= {f"{name}.{k}": v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return out


def _truncate(ckpt: Path) -> str:
    f = ckpt / "model.safetensors"
    size = f.stat().st_size
    with f.open("r+b") as fh:
        fh.truncate(size // 2)
    return f"model.safetensors is {size // 2} bytes, manifest says {size}"


def _drop_custom(ckpt: Path) -> str:
    (ckpt / STATE_TENSORS).unlink()
    return f"{STATE_TENSORS} missing"


def _drop_manifest(ckpt: Path) -> str:
    (ckpt / MANIFEST).unlink()
    return "missing manifest.json"


@pytest.mark.slow  # two tiny runs; test_train keeps a resume in the default suite
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
