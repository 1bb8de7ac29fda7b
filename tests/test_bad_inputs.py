"""Bad input and damaged state through `bacon_zoo.cli.main`, in-process: one table of cases.

For every case: a non-zero exit, no traceback, exactly one `error:` line naming the problem, and
the watched state (the shared finished run, its export, any case folder) byte-for-byte unchanged;
a train command that fails also must not have created its output directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SETS, _run_cli, tiny_train_argv
from PIL import Image


def tree_hash(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `path` (a file: itself); {} if absent."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One tiny finished and exported run, shared (read-only) by every case that needs a run."""
    run = tmp_path_factory.mktemp("shared") / "run"
    r = _run_cli(tiny_train_argv(run, "steps=3", "eval_every=3", "keep_checkpoints=1"))
    assert r.code == 0, r
    r = _run_cli(["export", run])
    assert r.code == 0, r
    assert (run / "export").is_dir() and (run / "checkpoints/step_0000003").is_dir()
    return run


@dataclass
class Ctx:
    """What a case's setup sees and fills in: paths to watch, paths that must stay absent."""

    tmp: Path
    shared: Path
    mp: pytest.MonkeyPatch
    watch: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)  # run after the case

    def own_run(self) -> Path:
        """A private copy of the shared run, for cases that damage or edit it."""
        dst = self.tmp / "run"
        shutil.copytree(self.shared, dst)
        self.watch.append(dst)
        return dst

    def train(self, *args: str, sets: tuple[str, ...] = ()) -> list[str]:
        """`train` of a fresh tiny run in tmp/out (which must not appear) plus `args`.

        TINY_SETS items for the keys that `args` or `sets` give are left out (a `--set` would win
        over the flag under test).
        """
        out = self.tmp / "out"
        self.absent.append(out)
        given = {a[2:].replace("-", "_") for a in args if str(a).startswith("--")}
        given |= {a.split("=")[0] for a in (*args, *sets) if "=" in str(a)}
        base = [s for s in TINY_SETS if s.split("=")[0] not in given]
        return [
            "train",
            "--output-dir",
            out,
            *[a for s in (*base, *sets) for a in ("--set", s)],
            *args,
        ]


def _images(root: Path, classes: int = 10, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for k in range(classes):
        d = root / f"class_{k}"
        d.mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(px).save(d / f"{i}.png")
    return root


def _folder_sets(path: Path) -> tuple[str, ...]:
    return (f"dataset={path}", "n1=10", "m1=20", "imb_ratio_l=2", "imb_ratio_u=2",
            "test_per_class=2", "max_eval_samples=null")  # fmt: skip


# ---- case setups: each returns argv (and may register more state to watch)


def corrupt_image(c: Ctx) -> list[str]:
    root = _images(c.tmp / "imgs")
    (root / "class_3" / "broken.png").write_bytes(b"not a png at all")
    c.watch.append(root)
    return c.train(sets=_folder_sets(root))


def empty_folder(c: Ctx) -> list[str]:
    (c.tmp / "empty").mkdir()
    c.watch.append(c.tmp / "empty")
    return c.train(sets=_folder_sets(c.tmp / "empty"))


def one_class_folder(c: Ctx) -> list[str]:
    root = _images(c.tmp / "one", classes=1, per_class=20)
    c.watch.append(root)
    return c.train(sets=_folder_sets(root))


def labels_with_gaps(c: Ctx) -> list[str]:
    """Integer labels 3/7/9 without class names: 10 classes of which 7 are empty."""
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(30)]
    labels = [(3, 7, 9)[i % 3] for i in range(30)]
    root = c.tmp / "gaps"
    datasets.Dataset.from_dict({"image": images, "label": labels}).save_to_disk(str(root))
    c.watch.append(root)
    return c.train(sets=_folder_sets(root))


def one_image_class(c: Ctx) -> list[str]:
    root = _images(c.tmp / "imgs", classes=3, per_class=12)
    for extra in list((root / "class_2").iterdir())[1:]:
        extra.unlink()  # class_2 keeps one image
    c.watch.append(root)
    return c.train(sets=(*_folder_sets(root), "test_per_class=1"))


def output_dir_is_file(c: Ctx) -> list[str]:
    f = c.tmp / "afile"
    f.write_text("user data\n")
    c.watch.append(f)
    return [*tiny_train_argv(f)]


def output_dir_under_file(c: Ctx) -> list[str]:
    f = c.tmp / "afile"
    f.write_text("user data\n")
    c.watch.append(f)
    return [*tiny_train_argv(f / "run")]


def output_dir_deep_under_file(c: Ctx) -> list[str]:  # "not writable" as root: no chmod stops root
    f = c.tmp / "afile"
    f.write_text("user data\n")
    c.watch.append(f)
    return [*tiny_train_argv(f / "a" / "b" / "run")]


def save_split_unwritable(c: Ctx) -> list[str]:
    f = c.tmp / "afile"
    f.write_text("user data\n")
    c.watch.append(f)
    return [
        "data",
        *[a for s in TINY_SETS for a in ("--set", s)],
        "--save-split",
        f / "x/split.json",
    ]


def _broken_config(c: Ctx) -> Path:
    run = c.own_run()
    (run / "config.yaml").write_text("backbone: wrn28_2\nsteps: [3,\n")
    return run


def resume_malformed_config(c: Ctx) -> list[str]:
    run = _broken_config(c)
    return [*tiny_train_argv(run, "steps=3", "eval_every=3", "keep_checkpoints=1"),
            "--resume"]  # fmt: skip


def export_malformed_config(c: Ctx) -> list[str]:
    return ["export", _broken_config(c)]


def analyze_malformed_config(c: Ctx) -> list[str]:
    return ["analyze", _broken_config(c), "--out", c.tmp / "analysis"]


def export_over_edited_export(c: Ctx) -> list[str]:
    run = c.own_run()
    (run / "export" / "NOTES.md").write_text("my notes\n")
    with (run / "export" / "README.md").open("a") as f:
        f.write("\nA hand edit.\n")
    return ["export", run]


def analyze_out_over_unrelated(c: Ctx) -> list[str]:
    other = c.tmp / "mine"
    other.mkdir()
    (other / "analysis.md").write_text("my own notes\n")
    (other / "predictions.npz").write_bytes(b"my data")
    c.watch.append(other)
    return ["analyze", c.shared, "--out", other]


def analyze_compare_bad(c: Ctx) -> list[str]:
    return ["analyze", c.shared, "--compare", c.tmp / "no_such_run", "--out", c.tmp / "a"]


def analyze_not_a_run(c: Ctx) -> list[str]:
    (c.tmp / "nothing").mkdir()
    return ["analyze", c.tmp / "nothing"]


def export_not_a_run(c: Ctx) -> list[str]:
    (c.tmp / "nothing").mkdir()
    return ["export", c.tmp / "nothing"]


def _damaged_newest(c: Ctx) -> Path:
    run = c.own_run()
    ckpt = run / "checkpoints" / "step_0000003"
    with (ckpt / "model.safetensors").open("r+b") as f:
        f.truncate(64)
    return ckpt


def resume_damaged_checkpoint(c: Ctx) -> list[str]:
    ckpt = _damaged_newest(c)
    sets = ("steps=3", "eval_every=3", "keep_checkpoints=1")
    return [*tiny_train_argv(ckpt.parent.parent, *sets), "--resume", ckpt]


def resume_only_damaged(c: Ctx) -> list[str]:
    """Auto-resume when the only checkpoint is damaged: starting over must not clobber it silently."""
    ckpt = _damaged_newest(c)
    (ckpt.parent.parent / "summary.json").unlink()
    sets = ("steps=3", "eval_every=3", "keep_checkpoints=1")
    return [*tiny_train_argv(ckpt.parent.parent, *sets), "--resume", ckpt.parent.parent]


def resume_tmp_checkpoint(c: Ctx) -> list[str]:
    run = c.own_run()
    tmp = run / "checkpoints" / ".tmp-step_0000004"
    shutil.copytree(run / "checkpoints" / "step_0000003", tmp)
    return [*tiny_train_argv(run, "steps=3", "eval_every=3", "keep_checkpoints=1"), "--resume", tmp]


def resume_empty_dir(c: Ctx) -> list[str]:
    (c.tmp / "empty").mkdir()
    return c.train("--resume", c.tmp / "empty")


def resume_mistyped_dir(c: Ctx) -> list[str]:
    return c.train("--resume", c.tmp / "runz" / "checkpoints" / "step_0000003")


def resume_a_file(c: Ctx) -> list[str]:
    (c.tmp / "f").write_text("x")
    return c.train("--resume", c.tmp / "f")


def train_over_finished_without_resume(c: Ctx) -> list[str]:
    c.watch.append(c.shared)
    return tiny_train_argv(c.shared, "steps=3", "eval_every=3", "keep_checkpoints=1")


def resume_with_other_lr(c: Ctx) -> list[str]:
    c.watch.append(c.shared)
    sets = ("steps=3", "eval_every=3", "keep_checkpoints=1", "lr=0.1")
    return [*tiny_train_argv(c.shared, *sets), "--resume"]


def resume_corrupt_split(c: Ctx) -> list[str]:
    run = c.own_run()
    (run / "split.json").write_text('{"labeled": [1, 2')
    (run / "summary.json").unlink()
    sets = ("steps=3", "eval_every=3", "keep_checkpoints=1")
    return [*tiny_train_argv(run, *sets), "--resume"]


def study_dry_run_bad_backbone(c: Ctx) -> list[str]:
    return ["study", "run", "--grid", "backbone=wrn28_2,no_such_net", "--seeds", "0",
            *[a for s in TINY_SETS for a in ("--set", s)], "--out", c.tmp / "study", "--dry-run"]  # fmt: skip


def push_without_token(c: Ctx) -> list[str]:
    return ["push", c.shared / "export", "--repo-id", "someone/some-model"]


def predict_missing_image(c: Ctx) -> list[str]:
    return ["predict", c.shared / "export", c.tmp / "no_such.png"]


def tensorboard_missing(c: Ctx) -> list[str]:
    return c.train("--log-with", "tensorboard")


def _read_only(c: Ctx, path: Path) -> None:
    """Make `path` read-only even for root (immutable, where chattr works), undone after the case."""
    path.chmod(0o555)
    c.undo.append(lambda: path.chmod(0o755))
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root ignores permissions and chattr +i is not available here")
        c.undo.insert(0, lambda: subprocess.run(["chattr", "-i", str(path)], check=True))


def export_read_only_run(c: Ctx) -> list[str]:
    run = c.own_run()
    shutil.rmtree(run / "export")
    _read_only(c, run)
    return ["export", run]


def analyze_read_only_out(c: Ctx) -> list[str]:
    ro = c.tmp / "ro"
    ro.mkdir()
    c.watch.append(ro)
    _read_only(c, ro)
    return ["analyze", c.shared, "--out", ro / "analysis"]


def full_disk_at_second_checkpoint(c: Ctx) -> list[str]:
    """The second checkpoint's write fails as torch's zip writer does on a full disk."""
    import torch

    save = torch.save

    def full(obj, f, *args, **kwargs):
        if "step_0000006" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        return save(obj, f, *args, **kwargs)

    c.mp.setattr(torch, "save", full)
    return tiny_train_argv(c.tmp / "full", "steps=9")


def diverging_lr(c: Ctx) -> list[str]:
    return tiny_train_argv(c.tmp / "diverged", "lr=1e6")


def utf16_recipe(c: Ctx) -> list[str]:
    (c.tmp / "r.yaml").write_bytes("n1: 10\n".encode("utf-16"))
    return c.train("--recipe", c.tmp / "r.yaml")


def _own_export(c: Ctx) -> Path:
    export = c.tmp / "export"
    shutil.copytree(c.shared / "export", export)
    c.watch.append(export)
    return export


def predict_broken_config(c: Ctx) -> list[str]:
    export = _own_export(c)
    (export / "config.json").write_text('{"architecture": "wrn28_2", ')
    Image.new("RGB", (8, 8)).save(c.tmp / "x.png")
    return ["predict", export, c.tmp / "x.png"]


def predict_image_bomb(c: Ctx) -> list[str]:
    """A PNG header claiming 20000 x 20000 pixels (PIL refuses it at open, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    head = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    (c.tmp / "bomb.png").write_bytes(bomb + chunk(b"IEND", b""))
    return ["predict", c.shared / "export", c.tmp / "bomb.png"]


def _train(*args: str, sets: tuple[str, ...] = ()) -> Callable[[Ctx], list[str]]:
    return lambda c: c.train(*args, sets=sets)


def _bad_recipe(c: Ctx) -> list[str]:
    (c.tmp / "r.yaml").write_text("n1: [1, 2\n")
    return c.train("--recipe", c.tmp / "r.yaml")


# ---- the table: (id, setup, expected text in the error line)

CASES = [
    # unchecked numbers (17.3): refused by config.validate before anything runs
    ("lr_negative", _train("--lr", "-0.1"), "lr must be > 0 (got -0.1)"),
    ("lr_nan", _train("--lr", "nan"), "lr must be > 0 (got nan)"),
    ("lr_not_a_number", _train("--lr", "fast"), "'lr': 'fast' is not a valid float"),
    ("eval_batch_size_0", _train("--eval-batch-size", "0"), "eval_batch_size must be >= 1"),
    ("log_every_0", _train("--log-every", "0"), "log_every must be >= 1"),
    ("seed_negative", _train("--seed", "-1"), "seed must be in [0, 4294967295]"),
    ("seed_too_big", _train("--seed", str(2**32)), "seed must be in [0, 4294967295]"),
    ("ema_decay_1_5", _train("--ema-decay", "1.5"), "ema_decay must be in [0, 1)"),
    ("tau0_negative", _train("--set", "bacon.tau0=-1"), "bacon.tau0 must be > 0"),
    ("eta_1", _train("--set", "bacon.eta=1"), "bacon.eta must be in [0, 1)"),
    ("topk_0", _train("--set", "bacon.topk=0"), "bacon.topk must be >= 1"),
    ("threshold_1_5", _train("--set", "fixmatch.threshold=1.5"), "fixmatch.threshold must be in [0, 1]"),
    ("max_eval_samples_0", _train("--max-eval-samples", "0"), "max_eval_samples must be >= 1 or null"),
    ("test_per_class_neg", _train("--test-per-class", "-3"), "test_per_class must be >= 1 or null"),
    ("batch_size_0", _train("--batch-size", "0"), "batch_size must be >= 1"),
    ("num_workers_neg", _train("--num-workers", "-1"), "num_workers must be >= 0"),
    ("image_size_4", _train("--image-size", "4"), "image_size must be >= 8"),
    ("momentum_1", _train("--momentum", "1"), "momentum must be in [0, 1)"),
    ("bn_momentum_0", _train("--bn-momentum", "0"), "bn_momentum must be in (0, 1] or null"),
    ("weight_decay_neg", _train("--weight-decay", "-1e-4"), "weight_decay must be >= 0"),
    ("keep_checkpoints_neg", _train("--keep-checkpoints", "-1"), "keep_checkpoints must be >= 0"),
    ("mixed_precision_bad", _train("--mixed-precision", "fp17"), "mixed_precision 'fp17' is not one of"),
    ("flag_without_value", _train("--lr"), "argument --lr: expected one argument"),
    ("unknown_flag", _train("--learning-rate", "1"), "unrecognized arguments: --learning-rate"),
    ("unknown_set_key", _train("--set", "bacon.tua=1"), "unknown config key 'bacon.tua'"),
    ("set_without_equals", _train("--set", "lr"), "--set expects key=value"),
    ("recipe_missing", _train("--recipe", "no_such_recipe"), "recipe 'no_such_recipe' not found"),
    ("recipe_bad_yaml", _bad_recipe, "is not valid YAML"),
    # precision (17.4) and backbones (17.5)
    ("fp16_on_cpu", _train("--mixed-precision", "fp16"), "fp16"),
    ("unknown_backbone", _train("--backbone", "wrn28-2"), "wrn28_2"),
    ("vit_at_16px", _train("--backbone", "vit_tiny_patch4_32", "--image-size", "16"), "input size"),
    ("convnext_at_8px", _train("--backbone", "convnext_atto"), "input size"),
    # data (17.6)
    ("corrupt_image", corrupt_image, "broken.png"),
    ("empty_folder", empty_folder, "no images or supported data files"),
    ("one_class_folder", one_class_folder, "one class"),
    ("labels_with_gaps", labels_with_gaps, "have no training images"),
    ("one_image_class", one_image_class, "has only 1 image"),
    ("dataset_missing", _train("--set", "dataset=/no/such/folder"), "/no/such/folder"),
    ("n1_too_big", _train("--n1", "5000"), "5000"),
    # paths (17.7)
    ("output_dir_is_file", output_dir_is_file, "afile"),
    ("output_dir_under_file", output_dir_under_file, "afile"),
    ("output_dir_not_writable", output_dir_deep_under_file, "afile"),
    ("save_split_unwritable", save_split_unwritable, "split.json"),
    ("resume_malformed_config", resume_malformed_config, "config.yaml is not valid YAML"),
    ("export_malformed_config", export_malformed_config, "config.yaml is not valid YAML"),
    ("analyze_malformed_config", analyze_malformed_config, "config.yaml is not valid YAML"),
    ("resume_corrupt_split", resume_corrupt_split, "split.json"),
    # user files (17.8)
    ("export_over_edited_export", export_over_edited_export, "--force"),
    ("analyze_out_over_unrelated", analyze_out_over_unrelated, "mine"),
    # resume (17.1, 17.11)
    ("resume_empty_dir", resume_empty_dir, "no checkpoints in it"),
    ("resume_mistyped_dir", resume_mistyped_dir, "no such directory"),
    ("resume_a_file", resume_a_file, "not a directory"),
    ("resume_damaged_checkpoint", resume_damaged_checkpoint, "damaged checkpoint (model.safetensors is 64 bytes"),
    ("resume_only_damaged_checkpoint", resume_only_damaged, "no complete checkpoint"),
    ("resume_tmp_checkpoint", resume_tmp_checkpoint, "half-written checkpoint"),
    ("train_over_finished_run", train_over_finished_without_resume, "--resume"),
    ("resume_with_other_lr", resume_with_other_lr, "differs in: lr"),
    # other commands (17.11)
    ("study_dry_run_bad_backbone", study_dry_run_bad_backbone, "no_such_net"),
    ("analyze_compare_bad", analyze_compare_bad, "no_such_run"),
    ("analyze_not_a_run", analyze_not_a_run, "not a run directory"),
    ("analyze_max_points_neg", lambda c: ["analyze", c.shared, "--max-points", "-1"], "--max-points must be >= 0"),
    ("export_not_a_run", export_not_a_run, "not a run directory"),
    ("push_without_token", push_without_token, "token"),
    ("predict_missing_image", predict_missing_image, "no_such.png"),
    ("study_bad_grid", lambda c: ["study", "run", "--grid", "backbone", "--out", c.tmp / "s", "--dry-run"], "backbone"),
    ("data_n1_zero", lambda c: ["data", "--n1", "0"], "n1 must be >= 1 (got 0)"),
    # integrity (issue 22): ranges that depend on the data, divergence, faults and odd inputs
    ("topk_above_classes", _train("--set", "bacon.topk=11"), "bacon.topk 11 is above the number of classes (10)"),
    ("batch_above_labeled_set", _train("--batch-size", "500"), "is more than the labeled set (96 images)"),
    ("image_size_too_big", _train("--image-size", "4096"), "GiB of activations"),
    ("diverging_lr", diverging_lr, "the training loss or weights became NaN or infinite"),
    ("full_disk_checkpoint", full_disk_at_second_checkpoint, "no space left on the device while writing checkpoint step_0000006"),
    ("export_read_only_run", export_read_only_run, "is read-only"),
    ("analyze_read_only_out", analyze_read_only_out, "is read-only"),
    ("steps_1e400", _train("--steps", "1e400"), "'steps': '1e400' is not a valid int"),
    ("recipe_utf16", utf16_recipe, "is not UTF-8 text (it is UTF-16"),
    ("output_dir_empty", lambda c: tiny_train_argv(""), "output_dir is empty"),
    ("predict_broken_config", predict_broken_config, "config.json is not valid JSON"),
    ("predict_image_bomb", predict_image_bomb, "too large to open safely"),
]  # fmt: skip
if (
    importlib.util.find_spec("tensorboard") is None
    and importlib.util.find_spec("tensorboardX") is None
):
    CASES.append(("tensorboard_missing", tensorboard_missing, "needs the 'tensorboard' package"))


def _param(case):
    name, setup, expect = case
    return pytest.param(setup, expect, id=name)


@pytest.mark.parametrize("setup, expect", [_param(c) for c in CASES])
def test_bad_input(setup, expect, tmp_path, finished, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no cached login either
    monkeypatch.chdir(tmp_path)  # nothing lands in the checkout (e.g. a default runs/ dir)
    shared_before = tree_hash(finished)
    ctx = Ctx(tmp=tmp_path / "case", shared=finished, mp=monkeypatch)
    ctx.tmp.mkdir()
    try:
        argv = setup(ctx)
        before = {p: tree_hash(p) for p in ctx.watch}
        r = _run_cli(argv)  # any exception but SystemExit is a traceback: the test fails on it
    finally:
        for undo in ctx.undo:
            undo()

    text = r.out + r.err
    assert r.code not in (0, None), f"exit {r.code}: {text[-1500:]}"
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in r.err.splitlines() if "error:" in line]
    assert len(errors) == 1, r.err[-3000:]
    assert expect in errors[0], errors[0]
    for p, h in before.items():
        assert tree_hash(p) == h, f"{p} changed"
    assert tree_hash(finished) == shared_before, "the shared run changed"
    for p in ctx.absent:
        assert not p.exists(), f"{p} was created by a failed command"
