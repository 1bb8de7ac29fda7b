"""The release's protocol where it is a setting: precision (fp32 in the paper recipes, a launcher's choice
honoured), SyncBatchNorm across GPUs, STL-10's bilinear resize, and no silent `--dataset-revision`."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bacon_zoo.config import RECIPES_DIR, build_config
from bacon_zoo.data.sources import PRESETS, _cache_key, _to_rgb, load_source
from bacon_zoo.errors import UserError
from bacon_zoo.run import build_model, sync_batchnorm
from bacon_zoo.train import precision
from bacon_zoo.train.precision import resolve_precision

CPU = torch.device("cpu")
PAPER = ("cifar10_lt", "cifar100_lt", "stl10_lt", "svhn_lt")  # and every recipe built on them


@pytest.fixture
def bf16_native(monkeypatch):
    """A device where `auto` alone would pick bf16, so only the launcher can make it fp32."""
    monkeypatch.setattr(precision, "device_supports_bf16", lambda device: True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def test_launcher_precision_wins_over_auto(bf16_native, monkeypatch):
    assert resolve_precision("auto", CPU)[0] == "bf16"  # no launcher: the hardware decides
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch --mixed_precision no
    mp, why = resolve_precision("auto", CPU)
    assert mp == "no" and "fp32" in why and "accelerate launch" in why
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto", CPU)[0] == "bf16"
    assert resolve_precision("no", CPU)[0] == "no"  # an explicit setting wins over the launcher
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(UserError, match="fp16 autocast does not run on a CPU"):
        resolve_precision("auto", CPU)


def test_paper_recipes_train_fp32_with_sync_bn_and_the_cpu_ones_auto(bf16_native, monkeypatch):
    paper = [
        p.stem
        for p in sorted(RECIPES_DIR.glob("*.yaml"))
        if p.stem.startswith(PAPER) and "study" not in p.read_text()
    ]
    assert len(paper) >= 10
    for name in paper:
        cfg = build_config(name)
        assert cfg.mixed_precision is None and cfg.sync_bn, name
        assert resolve_precision(cfg.mixed_precision, CPU)[0] == "no", name  # fp32, no launcher
    # a launcher's explicit bf16 is honoured
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision(build_config("cifar100_lt").mixed_precision, CPU)[0] == "bf16"
    for name in ("cpu_cifar10_lt", "demo_digits"):
        assert build_config(name).mixed_precision == "auto", name
    assert build_config(None).mixed_precision == "auto" and not build_config(None).sync_bn


def _bn_types(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__}


def test_sync_bn_converts_only_across_gpu_processes(monkeypatch, caplog):
    cfg = build_config(None, None, ["backbone=wrn28_2", "sync_bn=true"])
    model = build_model(cfg, num_classes=3)  # one process: unchanged
    assert _bn_types(model) == {"BatchNorm2d"}
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")  # CPU processes: kept, said
    with caplog.at_level(logging.WARNING, logger="bacon_zoo"):
        assert _bn_types(sync_batchnorm(model)) == {"BatchNorm2d"}
    assert "SyncBatchNorm needs GPUs" in caplog.text
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    synced = build_model(cfg, num_classes=3)
    assert _bn_types(synced) == {"SyncBatchNorm"}
    assert synced.state_dict().keys() == model.state_dict().keys()  # checkpoints load either way
    plain = build_model(build_config(None, None, ["sync_bn=false"]), num_classes=3)
    assert _bn_types(plain) == {"BatchNorm2d"}


def test_stl10_is_resized_bilinear_like_the_release():
    from PIL import Image

    assert PRESETS["stl10"].resample == "bilinear" and PRESETS["cifar10"].resample == "bicubic"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    want = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(_to_rgb(img, 32, "bilinear"), want)
    assert not np.array_equal(_to_rgb(img, 32), want)  # bicubic, the default, differs

    class Decoded:  # a data set with a fingerprint: the decoded cache is keyed by the filter
        _fingerprint, cache_files = "abc", ["x.arrow"]

        def __len__(self) -> int:
            return 10

    keys = {r: _cache_key(Decoded(), "train", "image", 32, r) for r in ("bicubic", "bilinear")}
    assert keys["bicubic"] != keys["bilinear"]
    assert keys["bicubic"] == _cache_key(Decoded(), "train", "image", 32)  # old caches still hit


def test_dataset_revision_on_local_data_is_refused(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="pins a Hub data set, but the bundled digits is local"):
        load_source("digits", revision="v1")
    folder = tmp_path / "images"
    folder.mkdir()  # refused before the folder is even read (it holds no images)
    with pytest.raises(UserError, match=r"--dataset-revision v1 pins a Hub data set, but '.*' is"):
        load_source(str(folder), revision="v1")
    monkeypatch.setenv("BACON_ZOO_CIFAR10", str(folder))
    with pytest.raises(UserError, match="BACON_ZOO_CIFAR10=.* is local"):
        load_source("cifar10", revision="v1")
