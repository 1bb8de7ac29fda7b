"""Data: long-tailed splits, sources (presets, local folders, offline errors), prepare_data (streams: test_streams.py)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

from bacon_zoo.config import TrainConfig
from bacon_zoo.data import (
    Split,
    build_split,
    class_counts,
    load_source,
    lt_class_counts,
    make_lt_split,
    prepare_data,
)
from bacon_zoo.data import sources as sources_mod
from bacon_zoo.errors import UserError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Decoded arrays and Arrow files go to tmp, never to the user's caches."""
    import datasets.config

    monkeypatch.setenv("BACON_ZOO_CACHE", str(tmp_path / "bz_cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _labels(per_class: list[int]) -> np.ndarray:
    y = np.concatenate([np.full(n, k) for k, n in enumerate(per_class)])
    return np.random.default_rng(123).permutation(y)


def _tiny_dataset(n_per_class=(12, 9, 6), size=10, image_col="pixels", label_col="cls", extra=True):
    import datasets

    rng = np.random.default_rng(0)
    labels = [k for k, n in enumerate(n_per_class) for _ in range(n)]
    images = [rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8) for _ in labels]
    cols = {image_col: images, label_col: labels}
    feats = {
        image_col: datasets.Image(),
        label_col: datasets.ClassLabel(names=["ant", "bee", "cat"]),
    }
    if extra:
        cols["note"] = [str(i) for i in range(len(labels))]
        feats["note"] = datasets.Value("string")
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


# ---------------------------------------------------------------------------------------------
# splits


def test_lt_class_counts_profiles():
    assert lt_class_counts(1000, 10, 100) == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert lt_class_counts(1500, 10, 100) == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert lt_class_counts(200, 100, 20)[0] == 200 and lt_class_counts(200, 100, 20)[-1] == 10
    assert lt_class_counts(500, 10, 1) == [500] * 10
    assert lt_class_counts(1000, 10, 100, reverse=True) == lt_class_counts(1000, 10, 100)[::-1]
    # exact products (1000 * 25^-0.5 = 200) survive float error
    assert lt_class_counts(1000, 5, 25) == [1000, 447, 200, 89, 40]


def test_split_sizes_disjoint_and_deterministic():
    y = _labels([50] * 5)
    lab, unl = make_lt_split(y, 5, 20, 25, 10, 10, seed=0)
    assert lab.dtype == np.int64 and unl.dtype == np.int64
    assert class_counts(y[lab], 5) == lt_class_counts(20, 5, 10)
    assert class_counts(y[unl], 5) == lt_class_counts(25, 5, 10)
    assert not set(lab) & set(unl)
    lab2, unl2 = make_lt_split(y, 5, 20, 25, 10, 10, seed=0)
    assert np.array_equal(lab, lab2) and np.array_equal(unl, unl2)
    lab3, _ = make_lt_split(y, 5, 20, 25, 10, 10, seed=1)
    assert not np.array_equal(lab, lab3)
    _, unl_r = make_lt_split(y, 5, 20, 25, 10, 10, seed=0, reverse_u=True)
    assert class_counts(y[unl_r], 5) == lt_class_counts(25, 5, 10)[::-1]


def test_split_include_labeled_in_unlabeled():
    y = _labels([50] * 4)
    lab, unl = make_lt_split(y, 4, 20, 25, 4, 4, seed=0, include_labeled_in_unlabeled=True)
    assert set(lab) <= set(unl)
    n, m = lt_class_counts(20, 4, 4), lt_class_counts(25, 4, 4)
    assert class_counts(y[unl], 4) == [a + b for a, b in zip(n, m)]


def test_split_too_many_images_message():
    y = _labels([30, 30, 8])
    with pytest.raises(UserError) as e:
        make_lt_split(y, 3, 10, 10, 1, 1, seed=0, class_names=["ant", "bee", "cat"])
    msg = str(e.value)
    assert "class 2" in msg and "'cat'" in msg and "8 images" in msg and "asks for 20" in msg
    assert "--n1" in msg and "\n" not in msg


def test_split_m1_none_takes_every_remaining_image():
    y = np.concatenate([_labels([20, 20, 20]), np.full(15, -1)])
    lab, unl = make_lt_split(y, 3, 10, None, 2, 2, seed=0)
    assert len(lab) + len(unl) == len(y) and not set(lab) & set(unl)
    assert (y[unl] == -1).sum() == 15
    split = build_split(
        y, 3, dataset="t", fingerprint="f", n1=10, m1=None, imb_ratio_l=2, imb_ratio_u=2, seed=0
    )
    assert split.unlabeled_unknown == 15 and sum(split.unlabeled_counts) == len(unl) - 15


def test_split_json_roundtrip(tmp_path):
    y = _labels([40, 30, 20])
    split = build_split(
        y, 3, dataset="t", fingerprint="abc", n1=10, m1=8, imb_ratio_l=5, imb_ratio_u=5, seed=3,
        class_names=["a", "b", "c"],
    )  # fmt: skip
    path = tmp_path / "run" / "split.json"
    split.to_json(path)
    back = Split.from_json(path)
    assert np.array_equal(back.labeled_idx, split.labeled_idx)
    assert np.array_equal(back.unlabeled_idx, split.unlabeled_idx)
    assert back.labeled_counts == split.labeled_counts and back.class_names == ["a", "b", "c"]
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp files left
    with pytest.raises(UserError, match="does not exist"):
        Split.from_json(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------
# sources


def test_columns_found_from_features_and_missing_column_error(tmp_path):
    import datasets

    path = tmp_path / "disk"
    datasets.DatasetDict({"train": _tiny_dataset(), "test": _tiny_dataset((3, 3, 3))}).save_to_disk(
        path
    )
    src = load_source(str(path), image_size=8)
    assert src.class_names == ["ant", "bee", "cat"]
    assert src.train.images.shape == (27, 8, 8, 3) and src.train.images.dtype == np.uint8
    assert src.test.labels.dtype == np.int64 and class_counts(src.test.labels, 3) == [3, 3, 3]
    assert all(0 < m < 1 for m in src.mean) and all(0 < s < 1 for s in src.std)
    with pytest.raises(UserError) as e:
        load_source(str(path), label_column="label")
    assert "'label' not found" in str(e.value) and "cls (ClassLabel)" in str(e.value)
    assert "pixels (Image)" in str(e.value) and "\n" not in str(e.value)


def test_no_image_column_lists_columns(tmp_path):
    import datasets

    path = tmp_path / "noimg"
    datasets.Dataset.from_dict({"a": [1, 2], "b": ["x", "y"]}).save_to_disk(path)
    with pytest.raises(UserError, match=r"no Image column.*a \(Value\), b \(Value\)"):
        load_source(str(path))


def test_save_to_disk_without_test_split_holds_out_balanced(tmp_path):
    path = tmp_path / "disk"
    _tiny_dataset().save_to_disk(path)  # a bare Dataset, one split
    src = load_source(str(path), image_size=8, test_per_class=2, seed=0)
    assert class_counts(src.test.labels, 3) == [2, 2, 2]
    assert class_counts(src.train.labels, 3) == [10, 7, 4]
    assert (
        load_source(str(path), image_size=8, test_per_class=2, seed=0).fingerprint
        == src.fingerprint
    )
    other = load_source(str(path), image_size=8, test_per_class=2, seed=1)
    assert other.fingerprint != src.fingerprint  # a different held-out set is different data
    with pytest.raises(UserError, match="test-per-class"):
        load_source(str(path), test_per_class=6)


def test_parquet_folder_with_string_labels_and_cache(tmp_path, monkeypatch):
    import datasets

    rng = np.random.default_rng(1)
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    feats = datasets.Features({"image": datasets.Image(), "kind": datasets.Value("string")})
    for split, n in (("train", 20), ("test", 6)):
        kinds = ["dog", "cat"] * (n // 2)
        images = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in kinds]  # grayscale
        ds = datasets.Dataset.from_dict({"image": images, "kind": kinds}, features=feats)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    src = load_source(str(tmp_path / "pq"), label_column="kind", image_size=12)
    assert src.class_names == ["cat", "dog"]
    assert src.train.images.shape == (20, 12, 12, 3) and len(src.test) == 6
    assert np.array_equal(src.train.images[..., 0], src.train.images[..., 2])  # gray -> 3 channels
    assert list((tmp_path / "bz_cache" / "decoded").glob("*.npz"))

    def no_decode(*a, **k):
        raise AssertionError("the second load must read the cache")

    monkeypatch.setattr(sources_mod, "decode_images", no_decode)
    again = load_source(str(tmp_path / "pq"), label_column="kind", image_size=12)
    assert (
        np.array_equal(again.train.images, src.train.images)
        and again.fingerprint == src.fingerprint
    )


def test_digits_preset_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = load_source("digits", image_size=16, seed=0)
    assert src.class_names == [str(i) for i in range(10)]
    assert src.train.images.shape[1:] == (16, 16, 3) and len(src.train) + len(src.test) == 1797
    assert class_counts(src.test.labels, 10) == [30] * 10
    assert src.train.images.max() > 200 and src.mean != (0.485, 0.456, 0.406)
    other = load_source("digits", image_size=16, seed=5)
    # a fixed test split, whatever the run seed
    assert np.array_equal(other.test.labels, src.test.labels)
    assert np.array_equal(other.test.images, src.test.images)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_hub_id_fails_fast_offline(how, monkeypatch):
    import huggingface_hub.constants

    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        import datasets.config

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        closed_port = "http://127.0.0.1:9"  # loopback only: connection refused at once
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed_port)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        load_source("someone/no-such-dataset")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "--dataset digits" in msg and "local folder" in msg


def test_missing_local_path_and_typo_are_user_errors():
    with pytest.raises(UserError, match="does not exist"):
        load_source("./no/such/folder")
    with pytest.raises(UserError, match="did you mean cifar10"):
        load_source("cifar-10")


# ---------------------------------------------------------------------------------------------
# prepare_data and the command


def _digits_cfg(**kw) -> TrainConfig:
    base = dict(dataset="digits", n1=40, m1=50, imb_ratio_l=10, imb_ratio_u=10, image_size=8)
    return TrainConfig(**{**base, **kw})


def test_prepare_data_reloads_saved_split(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "split.json"
    data = prepare_data(_digits_cfg(max_eval_samples=55), split_path=path)
    assert path.is_file() and data.labeled_counts == lt_class_counts(40, 10, 10)
    assert len(data.labeled) == sum(data.labeled_counts) and len(data.unlabeled) == sum(
        lt_class_counts(50, 10, 10)
    )
    assert len(data.test) == 55 and max(class_counts(data.test.labels, 10)) == 6
    assert data.labeled.images.shape[1:] == (8, 8, 3) and data.num_classes == 10
    again = prepare_data(_digits_cfg(), split_path=path)
    assert np.array_equal(again.split.labeled_idx, data.split.labeled_idx)
    with pytest.raises(UserError, match="n1=40 but the config says 30"):
        prepare_data(_digits_cfg(n1=30), split_path=path)
    bad = Split.from_json(path)
    bad.fingerprint = "0000"
    bad.to_json(path)
    with pytest.raises(UserError, match="different data"):
        prepare_data(_digits_cfg(), split_path=path)


def test_data_command_table_and_save_split(tmp_path, monkeypatch, capsys):
    from bacon_zoo.data.cli import add_parser

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "s.json"
    args = parser.parse_args(
        ["data", "--dataset", "digits", "--n1", "30", "--m1", "20", "--imb-ratio-l", "5",
         "--imb-ratio-u", "5", "--reverse-u", "--save-split", str(out)]
    )  # fmt: skip
    assert args.func(args) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line[:1].isdigit()]
    assert [int(r[2]) for r in rows] == lt_class_counts(30, 10, 5)
    assert [int(r[3]) for r in rows] == lt_class_counts(20, 10, 5, reverse=True)
    assert "total" in text and Split.from_json(out).reverse_u is True


@pytest.mark.needs_cifar
def test_cifar10_lt_from_local_copy(cifar_path, monkeypatch):
    monkeypatch.setenv("BACON_ZOO_CIFAR10", str(cifar_path))
    cfg = TrainConfig(dataset="cifar10", n1=1500, m1=3000, imb_ratio_l=100, imb_ratio_u=100)
    data = prepare_data(cfg, decode=False)  # counts need labels only; decoding is covered above
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    assert data.split.labeled_counts == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert data.split.unlabeled_counts == [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
    assert class_counts(data.labeled.labels, 10) == data.split.labeled_counts
    assert class_counts(data.test.labels, 10) == [1000] * 10
    assert data.mean == (0.4914, 0.4822, 0.4465)


@pytest.mark.slow
@pytest.mark.needs_cifar
def test_cifar10_decode_and_cache(cifar_path, monkeypatch):
    monkeypatch.setenv("BACON_ZOO_CIFAR10", str(cifar_path))
    first = load_source("cifar10")
    assert first.train.images.shape == (50000, 32, 32, 3) and first.test.images.shape == (
        10000,
        32,
        32,
        3,
    )
    monkeypatch.setattr(sources_mod, "decode_images", lambda *a, **k: pytest.fail("cache not used"))
    t0 = time.perf_counter()
    second = load_source("cifar10")
    assert time.perf_counter() - t0 < 15
    assert np.array_equal(first.train.images[:100], second.train.images[:100])
