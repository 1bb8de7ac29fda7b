"""A data set as one .npz of decoded uint8 arrays (`sources.save_npz`): what the GPU device check
carries instead of the CIFAR-10 copy, loaded with numpy alone (the lent machine has no `datasets`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bacon_zoo.data import ImageSet, load_source
from bacon_zoo.data.sources import save_npz
from bacon_zoo.errors import UserError

NAMES = ["a", "b", "c"]


def toy(tmp_path: Path, side: int = 8, **kw) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [30, 20, 10])
    labels[::7] = -1  # unlabeled images
    train = ImageSet(rng.integers(0, 256, (len(labels), side, side, 3), dtype=np.uint8), labels)
    test = ImageSet(rng.integers(0, 256, (9, side, side, 3), dtype=np.uint8), np.arange(9) % 3)
    return save_npz(tmp_path / "toy.npz", train, test, NAMES, note="test data", **kw)


def test_round_trip_keeps_images_labels_and_names(tmp_path: Path) -> None:
    path = toy(tmp_path, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    with np.load(path) as z:
        train_images = z["train_images"]
    src = load_source(str(path), image_size=8)
    assert np.array_equal(src.train.images, train_images)
    assert src.class_names == NAMES and (src.train.labels == -1).sum() == 9
    assert len(src.test) == 9 and src.mean == (0.1, 0.2, 0.3) and src.std == (0.4, 0.5, 0.6)
    assert src.fingerprint == load_source(str(path), image_size=8).fingerprint
    no_images = load_source(str(path), image_size=8, decode=False)
    assert no_images.train.images.shape == (60, 0, 0, 3)
    assert no_images.fingerprint == src.fingerprint


def test_measured_stats_and_resize(tmp_path: Path) -> None:
    path = toy(tmp_path)
    src = load_source(str(path), image_size=4)
    assert src.train.images.shape == (60, 4, 4, 3) and src.test.images.shape == (9, 4, 4, 3)
    assert all(0.3 < m < 0.7 for m in src.mean)  # uniform noise: measured, not the defaults


def test_a_preset_reads_its_local_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BACON_ZOO_CIFAR10 may name an .npz: the preset's normalisation and name, the file's images."""
    monkeypatch.setenv("BACON_ZOO_CIFAR10", str(toy(tmp_path)))
    src = load_source("cifar10", image_size=8)
    assert src.name == "cifar10" and src.mean == (0.4914, 0.4822, 0.4465)
    assert len(src.train) == 60


def test_bad_files_are_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="no train_labels, test_images"):
        load_source(str(bad))
    np.savez(
        bad, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros(2, np.int64),
        test_images=np.zeros((1, 4, 4, 3), np.uint8), test_labels=np.zeros(1, np.int64),
        class_names=np.asarray(["x"]),
    )  # fmt: skip
    with pytest.raises(UserError, match=r"uint8 \[N, H, W, 3\]"):
        load_source(str(bad))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        load_source(str(tmp_path / "junk.npz"))


def test_training_data_from_npz_never_imports_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lent GPU machine has no `datasets`: the source, the split and the sets must not need it."""
    from bacon_zoo.config import build_config
    from bacon_zoo.data import prepare_data

    path = toy(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # any `import datasets` now fails
    with pytest.raises(ImportError):
        import datasets  # noqa: F401  (the guard works)
    flags = dict(dataset=str(path), image_size=8, n1=8, m1=8, imb_ratio_l=2, imb_ratio_u=2)
    data = prepare_data(build_config(None, flags))
    assert (len(data.labeled), len(data.unlabeled), len(data.test)) == (17, 17, 9)
