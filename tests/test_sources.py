"""Release-exact presets (SVHN train + extra, STL-10 unlabeled + all labeled-train) and data errors.

Tiny in-process data sets stand in for the Hub copies through the presets' local-copy variables
(`BACON_ZOO_SVHN`, `BACON_ZOO_STL10`), with the split names the Hub data sets really have.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bacon_zoo.config import TrainConfig
from bacon_zoo.data import PRESETS, Split, class_counts, load_source, prepare_data, preset_env_var
from bacon_zoo.data.splits import SPLIT_FORMAT, build_split, lt_class_counts, make_lt_split
from bacon_zoo.errors import UserError

NAMES = ["ant", "bee", "cat"]


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Decoded arrays and Arrow files go to tmp, never to the user's caches."""
    import datasets.config

    monkeypatch.setenv("BACON_ZOO_CACHE", str(tmp_path / "bz_cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


def _split(per_class, fill: int, labels: bool = True, unknown_label: bool = False, size: int = 6):
    """A tiny labeled (or unlabeled) split whose images are all `fill`, so their origin shows."""
    import datasets

    n = sum(per_class) if labels else per_class
    images = [np.full((size, size, 3), fill, dtype=np.uint8) for _ in range(n)]
    cols, feats = {"image": images}, {"image": datasets.Image()}
    if labels:
        cols["label"] = [k for k, m in enumerate(per_class) for _ in range(m)]
    elif unknown_label:  # an unlabeled split that keeps a label column, all -1
        cols["label"] = [-1] * n
    if "label" in cols:
        feats["label"] = datasets.ClassLabel(names=NAMES)
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


def _save(tmp_path, name: str, **splits):
    import datasets

    path = tmp_path / name
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def _cfg(dataset: str, **kw) -> TrainConfig:
    base = dict(dataset=dataset, n1=4, m1=None, imb_ratio_l=2, imb_ratio_u=1, image_size=8)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# SVHN: train + extra pooled, test kept


def test_svhn_preset_pools_train_and_extra(tmp_path, monkeypatch):
    assert PRESETS["svhn"].train_splits == ("train", "extra")
    path = _save(
        tmp_path, "svhn",
        train=_split([4, 3, 2], 10), test=_split([2, 2, 2], 50), extra=_split([6, 5, 4], 200),
    )  # fmt: skip
    monkeypatch.setenv(preset_env_var("svhn"), str(path))
    src = load_source("svhn", image_size=8)
    assert len(src.train) == 9 + 15 and class_counts(src.train.labels, 3) == [10, 8, 6]
    assert src.origin_names == ["train", "extra"]
    assert (src.train.images[src.origin == 0] == 10).all()  # images stay with their labels
    assert (src.train.images[src.origin == 1] == 200).all()
    assert len(src.test) == 6 and (src.test.images == 50).all() and src.held_out_per_class == 0
    assert src.mean == PRESETS["svhn"].mean

    # class 0 asks for 8 labeled + 2 unlabeled: more than train (4) holds, within train + extra (10)
    data = prepare_data(_cfg("svhn", n1=8, m1=2, imb_ratio_l=2, imb_ratio_u=2), decode=False)
    assert data.split.labeled_counts == lt_class_counts(8, 3, 2)
    origins = data.split.labeled_origins
    assert set(origins) <= {"train", "extra"} and sum(origins.values()) == len(data.labeled)
    assert sum(data.split.unlabeled_origins.values()) == len(data.unlabeled)


def test_svhn_without_extra_split_is_an_error(tmp_path, monkeypatch):
    path = _save(tmp_path, "svhn", train=_split([4, 3, 2], 10), test=_split([2, 2, 2], 50))
    monkeypatch.setenv(preset_env_var("svhn"), str(path))
    with pytest.raises(UserError) as e:
        load_source("svhn", decode=False)
    msg = _one_line(e)
    assert "train + extra" in msg and "no extra split" in msg and "--dataset" in msg
    # the folder itself, not as the preset, trains on its splits as they are
    assert len(load_source(str(path), decode=False).train) == 9


# ---------------------------------------------------------------------------------------------
# STL-10: unlabeled = the unlabeled split + all labeled-train images


@pytest.mark.parametrize("unknown_label", [False, True])
def test_stl10_unlabeled_is_unlabeled_split_plus_all_labeled_train(
    tmp_path, monkeypatch, unknown_label
):
    assert PRESETS["stl10"].hub_id == "jxie/stl10" and PRESETS["stl10"].requires_unlabeled
    path = _save(
        tmp_path, "stl10",
        train=_split([10, 10, 10], 10), test=_split([3, 3, 3], 50),
        unlabeled=_split(20, 200, labels=False, unknown_label=unknown_label),
        train_0=_split([1, 1, 1], 99),  # a fold split of jxie/stl10: not part of the pool
    )  # fmt: skip
    monkeypatch.setenv(preset_env_var("stl10"), str(path))
    cfg = _cfg("stl10", n1=6, include_labeled_in_unlabeled=True)
    data = prepare_data(cfg, split_path=tmp_path / "split.json")
    src, split = data.source, data.split
    assert len(src.train) == 30 + 20 and src.origin_names == ["train", "unlabeled"]
    assert (src.train.labels[src.origin == 1] == -1).all()  # the unlabeled split's labels: unknown
    assert (src.train.images[src.origin == 1] == 200).all() and (src.train.images != 99).all()

    # every image of the pool is unlabeled: 20 unlabeled + all 30 labeled-train, the drawn ones too
    assert len(data.unlabeled) == 50 and split.unlabeled_origins == {"train": 30, "unlabeled": 20}
    assert split.unlabeled_unknown == 20 and split.unlabeled_counts == [10, 10, 10]
    assert set(split.labeled_idx) <= set(split.unlabeled_idx)
    # the labeled stream holds only the drawn N_k, all from labeled-train
    assert split.labeled_counts == lt_class_counts(6, 3, 2) == class_counts(data.labeled.labels, 3)
    assert (
        split.labeled_origins == {"train": len(data.labeled)} and (data.labeled.labels >= 0).all()
    )
    assert len(data.test) == 9 and data.labeled.images.shape[1:] == (8, 8, 3)

    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["format"] == SPLIT_FORMAT and saved["unlabeled_origins"]["unlabeled"] == 20
    again = prepare_data(cfg, split_path=tmp_path / "split.json")
    assert again.split.unlabeled_origins == split.unlabeled_origins


def test_stl10_without_unlabeled_split_is_an_error(tmp_path, monkeypatch):
    # tanganke/stl10's layout: train and test only
    path = _save(tmp_path, "stl10", train=_split([10, 10, 10], 10), test=_split([3, 3, 3], 50))
    monkeypatch.setenv(preset_env_var("stl10"), str(path))
    with pytest.raises(UserError) as e:
        prepare_data(_cfg("stl10", include_labeled_in_unlabeled=True), decode=False)
    msg = _one_line(e)
    assert "needs an unlabeled split" in msg and "has only train, test" in msg
    assert "jxie/stl10" in msg and "BACON_ZOO_STL10" in msg


def test_data_command_says_where_the_unlabeled_images_come_from(tmp_path, monkeypatch, capsys):
    from bacon_zoo.data.cli import add_parser

    path = _save(
        tmp_path, "stl10", train=_split([10, 10, 10], 10), test=_split([3, 3, 3], 50),
        unlabeled=_split(20, 200, labels=False),
    )  # fmt: skip
    monkeypatch.setenv(preset_env_var("stl10"), str(path))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["data", "--dataset", "stl10", "--n1", "6", "--m1", "none", "--imb-ratio-l", "2",
         "--include-labeled-in-unlabeled"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "unlabeled: 30 from 'train' + 20 from 'unlabeled'" in out
    assert "(unknown)" in out and "held out" not in out


def test_split_files_without_origins_still_load(tmp_path):
    y = np.repeat(np.arange(3), 10)
    split = build_split(
        y, 3, dataset="t", fingerprint="f", n1=4, m1=3, imb_ratio_l=2, imb_ratio_u=2, seed=0
    )
    d = split.to_dict()
    for key in ("labeled_origins", "unlabeled_origins"):
        del d[key]
    d["format"] = 1
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = Split.from_json(tmp_path / "old.json")
    assert np.array_equal(old.labeled_idx, split.labeled_idx) and old.unlabeled_origins == {}
    d["format"] = SPLIT_FORMAT + 1
    (tmp_path / "new.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="newer than this bacon-zoo"):
        Split.from_json(tmp_path / "new.json")


# ---------------------------------------------------------------------------------------------
# unreadable images


def _image_folder(root, per_class: dict[str, int], bad: dict[str, bytes] | None = None):
    from PIL import Image

    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    for rel, data in (bad or {}).items():
        (root / rel).write_bytes(data)
    return root


def test_corrupt_image_file_is_named_and_can_be_skipped(tmp_path, capsys):
    root = _image_folder(
        tmp_path / "imgs", {"cat": 6, "dog": 6}, bad={"dog/broken.png": b"\x89PNG not really"}
    )
    with pytest.raises(UserError) as e:
        load_source(str(root), image_size=8, test_per_class=2)
    msg = _one_line(e)
    assert "broken.png" in msg and "--skip-unreadable-images" in msg
    assert "cannot read the image" in msg and "Traceback" not in msg

    src = load_source(str(root), image_size=8, test_per_class=2, skip_unreadable=True)
    assert len(src.train) + len(src.test) == 12 and src.skipped == {"train": 1}
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image" in err and "broken.png" in err
    # label-only work never decodes, so it cannot see the bad file: the bad row stays counted
    assert len(load_source(str(root), test_per_class=2, decode=False).train) == 13 - 2 * 2


def test_corrupt_image_in_arrow_rows_names_row_and_column(tmp_path, capsys):
    import datasets

    good = _split([3, 3, 3], 10)
    rows = good.cast_column("image", datasets.Image(decode=False)).to_dict()
    rows["image"][4] = {"bytes": b"garbage", "path": None}
    ds = datasets.Dataset.from_dict(rows, features=good.features)
    path = _save(tmp_path, "arrow", train=ds, test=_split([2, 2, 2], 50))
    with pytest.raises(UserError) as e:
        load_source(str(path), image_size=8)
    msg = _one_line(e)
    assert "row 4 of split 'train', column 'image'" in msg and "--skip-unreadable-images" in msg

    src = load_source(str(path), image_size=8, skip_unreadable=True)  # decodes and caches
    assert len(src.train) == 8 and class_counts(src.train.labels, 3) == [3, 2, 3]
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    with pytest.raises(UserError, match="row 4 of split 'train'"):  # from the cached mask
        load_source(str(path), image_size=8)


# ---------------------------------------------------------------------------------------------
# folders that are not image-classification data


def test_folder_without_images_lists_supported_layouts(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello\n")
    with pytest.raises(UserError) as e:
        load_source(str(tmp_path / "notes"))
    msg = _one_line(e)
    assert "no images found" in msg and "text (Value)" in msg
    assert "class sub-folders" in msg and "save_to_disk" in msg

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        load_source(str(tmp_path / "empty"))
    msg = _one_line(e)
    assert "no images or supported data files" in msg and "class sub-folders" in msg


def test_one_class_folder_explains_the_layout(tmp_path):
    root = _image_folder(tmp_path / "one", {"cat": 4})
    with pytest.raises(UserError) as e:
        load_source(str(root))
    msg = _one_line(e)
    assert "only one class" in msg and "'cat'" in msg and "<folder>/<class>/" in msg

    path = _save(tmp_path, "single", train=_split([5], 10))  # a labeled column with one class
    with pytest.raises(UserError) as e:
        load_source(str(path), decode=False)
    msg = _one_line(e)
    assert "only one class with images ('ant')" in msg and "sub-folder" in msg


# ---------------------------------------------------------------------------------------------
# counts: the held-out test split and flag names in the messages


def test_class_count_error_mentions_the_held_out_test_split(tmp_path):
    path = _save(tmp_path, "notest", train=_split([12, 9, 6], 10))
    cfg = _cfg(str(path), n1=8, imb_ratio_l=1, test_per_class=2)
    with pytest.raises(UserError) as e:
        prepare_data(cfg, decode=False)
    msg = _one_line(e)
    assert "class 1 ('bee') has 7 images" in msg and "asks for 8" in msg
    assert "--test-per-class 2" in msg and "no test split" in msg and "--n1" in msg

    with_test = _save(tmp_path, "withtest", train=_split([12, 9, 6], 10), test=_split([2] * 3, 50))
    with pytest.raises(UserError) as e:
        prepare_data(_cfg(str(with_test), n1=8, imb_ratio_l=1), decode=False)
    assert "test-per-class" not in _one_line(e)  # nothing was held out: no mention


def test_messages_use_flag_names_not_internal_names(tmp_path):
    y = np.repeat(np.arange(3), 20)
    cases = [
        (lambda: lt_class_counts(-1, 3, 10), "--n1/--m1"),
        (lambda: make_lt_split(y, 3, 0, 5, 2, 2, seed=0), "--n1 must be positive, got 0"),
        (lambda: make_lt_split(y, 3, 5, -1, 2, 2, seed=0), "--m1 must be >= 0"),
        (lambda: make_lt_split(y, 3, 5, 5, 0.5, 2, seed=0), "--imb-ratio-l must be >= 1"),
        (lambda: make_lt_split(y, 3, 5, 5, 10, 2, seed=0), "--n1 5 with --imb-ratio-l 10 leaves"),
        (lambda: make_lt_split(y, 3, 15, 10, 1, 1, seed=0), "--n1 15 --m1 10 --imb-ratio-l 1"),
    ]
    for call, expected in cases:
        with pytest.raises(UserError) as e:
            call()
        msg = _one_line(e)
        assert expected in msg and "n_max" not in msg and "num_classes" not in msg, msg

    path = _save(tmp_path, "notest", train=_split([12, 9, 6], 10))
    for per_class, expected in ((0, "--test-per-class must be positive, got 0"),
                                (-3, "--test-per-class must be positive, got -3"),
                                (6, "too few to hold out --test-per-class 6")):  # fmt: skip
        with pytest.raises(UserError) as e:
            load_source(str(path), test_per_class=per_class, decode=False)
        assert expected in _one_line(e)


def test_decode_progress_logs_lines_not_a_bar(caplog):
    """A long decode reports at every 10% through the `bacon_zoo` logger (a log file gets lines)."""
    import logging

    from bacon_zoo.data.sources import _decode_progress

    with caplog.at_level(logging.INFO, logger="bacon_zoo"):
        report = _decode_progress(50_000, "decoding cifar10/train")
        for done in range(0, 50_001, 1000):
            report(done)
        small = _decode_progress(500, "decoding digits/train")
        for done in range(0, 501, 10):
            small(done)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 11 and lines[-1].startswith("decoding cifar10/train: 50000/50000 images")
    assert not any("digits" in line for line in lines)
