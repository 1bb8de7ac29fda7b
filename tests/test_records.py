"""The records layer: a data set is one `Preset` record that loading, names, cards and cost all read;
every file the package writes gets its mode from the umask (0644 under the usual 022)."""

from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest

from bacon_zoo.config import TrainConfig
from bacon_zoo.data.presets import PRESETS, Preset, dataset_title, num_test_images
from bacon_zoo.errors import UserError

TOY_CLASSES = ("circle", "square", "star")


def _toy_dataset():
    """30 random 6x6 images per class with plain integer labels (the record names the classes)."""
    import datasets

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(TOY_CLASSES)), 30)
    images = list(rng.integers(0, 256, (len(labels), 6, 6, 3), dtype=np.uint8))
    features = datasets.Features({"picture": datasets.Image(), "y": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"picture": images, "y": labels.tolist()}, features=features)


TOY = Preset(
    name="toyshapes", title="Toy Shapes", code="toy", hub_id=None, builder=_toy_dataset,
    image_column="picture", label_column="y", image_size=6, test_size=12,
    class_names=TOY_CLASSES, test_per_class=4, holdout_seed=0,
)  # fmt: skip


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(PRESETS, TOY.name, TOY)  # the whole registration: one record
    return TOY


def test_a_toy_preset_is_one_record_that_loads_names_cards_and_costs(toy):
    from bacon_zoo.data import load_source
    from bacon_zoo.hub.card import dataset_ref, eval_results
    from bacon_zoo.hub.names import model_name
    from bacon_zoo.study.cost import eval_images

    src = load_source("ToyShapes", image_size=8)  # any case, as every preset
    assert src.class_names == list(TOY_CLASSES)
    assert len(src.test) == toy.test_size and src.held_out_per_class == toy.test_per_class
    assert len(src.train) == 90 - toy.test_size and src.train.images.shape[1:] == (8, 8, 3)

    cfg = TrainConfig(dataset="toyshapes", n1=20, m1=40, imb_ratio_l=5, imb_ratio_u=5, seed=1)
    assert model_name(cfg.to_dict()) == "wrn28_2.bacon_toylt_n20m40g5_s1"
    assert dataset_title("toyshapes") == "Toy Shapes" and dataset_ref("toyshapes") == "toyshapes"
    summary = {"best_step": 10, "best": {"top1": 50.0}, "last": {"step": 10, "top1": 50.0}}
    (best, _last) = eval_results(summary, cfg.to_dict())
    assert best.dataset_name.startswith("Toy Shapes-LT (") and best.dataset_type == "toyshapes"

    cfg.steps, cfg.eval_every = 100, 30
    assert eval_images(cfg) == math.ceil(100 / 30) * toy.test_size


def test_every_preset_has_a_test_size_and_an_unknown_data_set_has_none():
    from bacon_zoo.study.cost import UNKNOWN_TEST_SIZE, estimate_cell, eval_images

    assert all(p.test_size > 0 for p in PRESETS.values())
    assert num_test_images("svhn") == 26_032 and num_test_images("digits") == 300
    with pytest.raises(TypeError, match="test_size"):
        Preset(name="x", title="X", code="x", hub_id="o/x", image_column="i", label_column="l",
               image_size=32)  # fmt: skip
    with pytest.raises(UserError, match="test_size"):
        Preset(name="x", title="X", code="x", hub_id="o/x", image_column="i", label_column="l",
               image_size=32, test_size=0)  # fmt: skip
    with pytest.raises(UserError, match="is not 4 held-out images x 3 classes"):
        Preset(name="x", title="X", code="x", hub_id=None, builder=_toy_dataset, image_column="i",
               label_column="l", image_size=6, test_size=10, class_names=TOY_CLASSES,
               test_per_class=4)  # fmt: skip

    cfg = TrainConfig(dataset="someone/their_data", steps=100, eval_every=50)
    with pytest.raises(
        UserError, match="test-set size of data set 'someone/their_data' is unknown"
    ):
        eval_images(cfg)
    est = estimate_cell("c", cfg)  # an estimate that cannot be made says so, never counts 0
    assert est.source == UNKNOWN_TEST_SIZE and math.isnan(est.device_hours)
    cfg.max_eval_samples = 500
    assert eval_images(cfg) == 2 * 500


# ---------------------------------------------------------------------------------------------
# file modes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_take_their_mode_from_the_umask(tmp_path, umask_022):
    from bacon_zoo.fileio import atomic_write_bytes, atomic_write_text, write_json

    atomic_write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "b.json", {"a": 1})
    atomic_write_bytes(tmp_path / "c.bin", b"\0")
    assert {_mode(p) for p in tmp_path.iterdir()} == {0o644}
    os.umask(0o077)
    atomic_write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_run_directory_and_its_export_are_readable_by_the_group(tmp_path, umask_022, run_cli):
    """Every file a tiny run and its export write is 0644 and every folder 0755 under umask 022
    (safetensors writes 0600 itself; checkpoints and exports are given the umask's modes)."""
    from conftest import tiny_train_argv

    run = tmp_path / "run"
    r = run_cli(
        tiny_train_argv(run, "steps=3", "eval_every=3", "checkpoint_every=3", "export=true")
    )
    assert r.code == 0, r
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"config.yaml", "summary.json", "model.safetensors", "bacon_net.json", "README.md"} <= {
        p.name for p in files
    }
    assert {p.relative_to(run).as_posix(): oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}
    folders = [p for p in run.rglob("*") if p.is_dir()]
    assert {p.name: oct(_mode(p)) for p in folders if _mode(p) != 0o755} == {}
