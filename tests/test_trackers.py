"""`--log-with`: the config reaches the tracker as flat scalars, and TensorBoard reads what training logs."""

from __future__ import annotations

import contextlib

import pytest

from bacon_zoo.config import TrainConfig
from bacon_zoo.train.trainer import tracker_config


def test_tracker_config_is_dotted_scalars():
    cfg = TrainConfig(m1=None, backbone_kwargs={"drop_rate": 0.1, "extra": {"a": [1, 2]}})
    flat = tracker_config(cfg.to_dict())
    assert flat["bacon.tau0"] == 0.1 and flat["fixmatch.threshold"] == 0.95 and flat["n1"] == 1000
    assert flat["m1"] == "None" and flat["backbone_kwargs.drop_rate"] == 0.1
    assert flat["backbone_kwargs.extra.a"] == "[1, 2]" and flat["bacon.rns"] is True
    assert "bacon" not in flat
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert tracker_config({"backbone_kwargs": {}}) == {"backbone_kwargs": "{}"}


def test_tensorboard_reads_train_and_eval_tags(tmp_path, run_cli, tiny_train):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli(tiny_train(tmp_path / "run", "log_with=tensorboard"))
    assert result.code == 0, result
    files = sorted((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file was written"
    scalars, hparams = set(), b""
    for f in files:
        acc = EventAccumulator(str(f)).Reload()
        scalars |= set(acc.Tags()["scalars"])
        with contextlib.suppress(KeyError):  # the hparams are in their own event file
            hparams += b"".join(acc.PluginTagToContent("hparams").values())
    want = {"train/loss", "train/images_per_s", "eval/top1", "eval/balanced_acc"}
    assert want <= scalars, scalars
    assert b"bacon.tau0" in hparams and b"fixmatch.threshold" in hparams
