"""Named data sets: one `Preset` record each, the only place a data set is described.

A record says where the data lives (a Hub id, or a builder for bundled data), its columns and splits,
its class names when the data carries none, its published image size, normalisation and test-set size,
and how people and model names write it (`title`, `code`). Loading (`bacon_zoo.data.sources`), model
names (`bacon_zoo.hub.names`), model cards (`bacon_zoo.hub.card`) and study cost estimates
(`bacon_zoo.study.cost`) all read these records, so adding a data set is adding one record to
`PRESETS` (a test adds a toy one with `monkeypatch.setitem(PRESETS, toy.name, toy)`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError

RGB = tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class Preset:
    """One named data set. `test_size` is required: a cost estimate must never count 0 test images."""

    name: str  # the --dataset name
    title: str  # how a model card writes it ("CIFAR-10")
    code: str  # its short code in model tags ("c10" in wrn28_2.bacon_c10lt_...)
    hub_id: str | None  # the Hub data set; None: `builder` makes it in-process
    image_column: str
    label_column: str
    image_size: int  # the published side in pixels (images are resized to --image-size)
    test_size: int  # test images of the protocol (held out of train when there is no test split)
    config: str | None = None  # the Hub data set's config (SVHN: cropped_digits)
    class_names: tuple[str, ...] | None = None  # None: the data's own ClassLabel names
    mean: RGB | None = None  # published normalisation; None: measured on the training images
    std: RGB | None = None
    # without a test split: the held-out per-class count, and a fixed seed for it (not the run seed)
    test_per_class: int | None = None
    holdout_seed: int | None = None
    builder: Callable[[], Any] | None = field(default=None, compare=False)  # in-process source
    # source splits pooled, in this order, into the training pool (SVHN: train + extra); all required
    train_splits: tuple[str, ...] = ("train",)
    test_split: str | None = None  # None: the first of sources.TEST_SPLITS present
    # the protocol needs an unlabeled-only split (STL-10): stop when the source has none
    requires_unlabeled: bool = False
    # PIL filter that resizes images to --image-size (STL-10: bilinear 96 -> 32 px, as the release)
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if not isinstance(self.test_size, int) or self.test_size < 1:
            raise UserError(f"data set preset '{self.name}' needs a test_size (test images) >= 1")
        if (self.hub_id is None) == (self.builder is None):
            raise UserError(
                f"data set preset '{self.name}' needs exactly one of hub_id and builder"
            )
        held_out = (self.test_per_class or 0) * len(self.class_names or ())
        if held_out and held_out != self.test_size:
            raise UserError(
                f"data set preset '{self.name}': test_size {self.test_size} is not "
                f"{self.test_per_class} held-out images x {len(self.class_names or ())} classes"
            )


@functools.cache  # the same in-memory Dataset for every load in a process
def _digits_dataset() -> Any:
    """scikit-learn's bundled 8x8 digits (1,797 images, offline) as a `datasets.Dataset`, 0..255 grayscale."""
    import datasets
    import numpy as np
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.clip(np.rint(raw.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGITS)}
    )
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": raw.target.astype(np.int64).tolist()}, features=features
    )


DIGITS = [str(i) for i in range(10)]

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="cifar10", title="CIFAR-10", code="c10", hub_id="uoft-cs/cifar10",
        image_column="img", label_column="label", image_size=32, test_size=10_000,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
    ),
    Preset(
        name="cifar100", title="CIFAR-100", code="c100", hub_id="uoft-cs/cifar100",
        image_column="img", label_column="fine_label", image_size=32, test_size=10_000,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
    # the release pools train (73,257) + extra (531,131) before drawing the long-tailed subsets
    Preset(
        name="svhn", title="SVHN", code="svhn", hub_id="ufldl-stanford/svhn",
        config="cropped_digits", image_column="image", label_column="label", image_size=32,
        test_size=26_032, mean=(0.4380, 0.4440, 0.4730), std=(0.1751, 0.1771, 0.1744),
        train_splits=("train", "extra"), test_split="test",
    ),
    # train 5,000 / test 8,000 / unlabeled 100,000 (and folds train_0..9, unused); tanganke/stl10
    # holds only train and test, so it cannot give the protocol's unlabeled set
    Preset(
        name="stl10", title="STL-10", code="stl10", hub_id="jxie/stl10",
        image_column="image", label_column="label", image_size=96, test_size=8_000,
        mean=(0.4409, 0.4279, 0.3868), std=(0.2683, 0.2610, 0.2687),
        test_split="test", requires_unlabeled=True, resample="bilinear",
    ),
    # scikit-learn's 8x8 digits, bundled: 30 images per class held out as its test set
    Preset(
        name="digits", title="digits", code="digits", hub_id=None, builder=_digits_dataset,
        image_column="image", label_column="label", image_size=8, test_size=300,
        class_names=tuple(DIGITS), test_per_class=30, holdout_seed=0,
    ),
)}  # fmt: skip


def preset_of(dataset: str) -> Preset | None:
    """The preset `dataset` names (any case), or None for a Hub id or a local folder."""
    return PRESETS.get(dataset.lower())


def preset_env_var(name: str) -> str:
    """`BACON_ZOO_CIFAR10` etc.: a local copy of a preset, used instead of the Hub id when set."""
    return f"BACON_ZOO_{name.upper()}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def dataset_slug(dataset: str) -> str:
    """`uoft-cs/cifar10` -> `cifar10`, `/data/my_set/` -> `my_set`: the data set part of a name."""
    return slug(Path(dataset.rstrip("/")).name) or "data"


def _by_slug(dataset: str) -> Preset | None:
    """The preset a name ends in (`uoft-cs/cifar10`, a local copy `/data/cifar10/`), for naming."""
    return PRESETS.get(dataset_slug(dataset))


def dataset_code(dataset: str) -> str:
    """The data set part of a model tag: the preset's code, else the slug of the name."""
    preset = _by_slug(dataset)
    return preset.code if preset else dataset_slug(dataset)


def dataset_title(dataset: str) -> str:
    """How a card names the data set: the preset's title, else the slug of the name."""
    preset = _by_slug(dataset)
    return preset.title if preset else dataset_slug(dataset)


def num_test_images(dataset: str) -> int:
    """The test images of a preset; a UserError for a data set no preset describes."""
    preset = preset_of(dataset)
    if preset is None:
        raise UserError(
            f"the test-set size of data set '{dataset}' is unknown (it is no preset: "
            f"{', '.join(PRESETS)}); set max_eval_samples to the images an evaluation uses"
        )
    return preset.test_size


__all__ = [
    "PRESETS",
    "Preset",
    "dataset_code",
    "dataset_slug",
    "dataset_title",
    "num_test_images",
    "preset_env_var",
    "preset_of",
    "slug",
]
