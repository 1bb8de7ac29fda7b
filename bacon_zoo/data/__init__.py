"""Data for class-imbalanced SSL: sources (presets, Hub ids, local folders), long-tailed splits, views, loaders.

`prepare_data(cfg)` is the one entry point a trainer needs; the pieces are public for tools and tests.
Data code knows nothing about algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bacon_zoo.data.loaders import (
    EvalLoader,
    StreamBatchSampler,
    TrainStream,
    eval_positions,
    make_eval_loader,
    make_train_loaders,
)
from bacon_zoo.data.sources import PRESETS, ImageSet, SourceData, load_source, preset_env_var
from bacon_zoo.data.splits import (
    Split,
    balanced_indices,
    build_split,
    class_counts,
    lt_class_counts,
    make_lt_split,
)
from bacon_zoo.data.views import normalize
from bacon_zoo.errors import UserError

if TYPE_CHECKING:
    from bacon_zoo.config import TrainConfig

__all__ = [
    "PRESETS",
    "EvalLoader",
    "ImageSet",
    "SSLData",
    "SourceData",
    "Split",
    "StreamBatchSampler",
    "TrainStream",
    "balanced_indices",
    "build_split",
    "class_counts",
    "eval_positions",
    "load_source",
    "lt_class_counts",
    "make_eval_loader",
    "make_lt_split",
    "make_train_loaders",
    "normalize",
    "prepare_data",
    "preset_env_var",
]

# the quick-eval subset is the same for every run seed, so runs stay comparable
EVAL_SUBSET_SEED = 0


@dataclass
class SSLData:
    """Everything a trainer needs from the data side."""

    source: SourceData
    split: Split
    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet

    # derived from the source and the split, never stored twice
    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.source.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.source.std

    @property
    def labeled_counts(self) -> list[int]:
        return list(self.split.labeled_counts)

    @property
    def unlabeled_counts(self) -> list[int]:
        return list(self.split.unlabeled_counts)


# split parameters that must agree between a saved split and the config that resumes it
_SPLIT_KEYS = (
    "seed",
    "n1",
    "m1",
    "imb_ratio_l",
    "imb_ratio_u",
    "reverse_u",
    "include_labeled_in_unlabeled",
)


def _check_saved_split(split: Split, source: SourceData, cfg: TrainConfig, path: Path) -> None:
    if split.fingerprint != source.fingerprint:
        raise UserError(
            f"split file '{path}' was made from different data (fingerprint {split.fingerprint}, "
            f"now {source.fingerprint}); use the same --dataset/--image-size or a new output dir"
        )
    for key in _SPLIT_KEYS:
        saved, now = getattr(split, key), getattr(cfg, key)
        if saved != now and not (
            isinstance(saved, float) and now is not None and float(now) == saved
        ):
            raise UserError(
                f"split file '{path}' has {key}={saved} but the config says {now}; "
                "resume with the original config or start a new output dir"
            )
    n = len(source.train)
    for name, idx in (("labeled", split.labeled_idx), ("unlabeled", split.unlabeled_idx)):
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise UserError(
                f"split file '{path}' has {name} indices outside the {n} training images"
            )


def eval_subset(test: ImageSet, num_classes: int, max_samples: int) -> ImageSet:
    """A class-balanced subset of about `max_samples` test images (fixed seed; small classes give all)."""
    if max_samples >= len(test):
        return test
    base, extra = divmod(max_samples, num_classes)
    quota = [base + (k < extra) for k in range(num_classes)]
    return test.subset(
        balanced_indices(test.labels, num_classes, quota, EVAL_SUBSET_SEED, strict=False)
    )


def prepare_data(
    cfg: TrainConfig, split_path: str | Path | None = None, decode: bool = True
) -> SSLData:
    """Load the source, make the long-tailed split (or reload the one at `split_path`), cut the sets.

    When `split_path` is given but missing, the new split is written there (atomically), so a resumed
    run reloads exactly the same indices and fails loudly if the data changed underneath.
    `decode=False` skips decoding images (label-only work such as `bacon-zoo data`).
    """
    source = load_source(
        cfg.dataset,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        revision=cfg.dataset_revision,
        image_size=cfg.image_size,
        test_per_class=cfg.test_per_class,
        seed=cfg.seed,
        decode=decode,
        skip_unreadable=cfg.skip_unreadable_images,
    )
    path = Path(split_path) if split_path is not None else None
    if path is not None and path.is_file():
        split = Split.from_json(path)
        _check_saved_split(split, source, cfg, path)
    else:
        split = build_split(
            source.train.labels,
            source.num_classes,
            dataset=source.name,
            fingerprint=source.fingerprint,
            n1=cfg.n1,
            m1=cfg.m1,
            imb_ratio_l=cfg.imb_ratio_l,
            imb_ratio_u=cfg.imb_ratio_u,
            seed=cfg.seed,
            reverse_u=cfg.reverse_u,
            include_labeled_in_unlabeled=cfg.include_labeled_in_unlabeled,
            class_names=source.class_names,
            origin=source.origin,
            origin_names=source.origin_names,
            held_out_per_class=source.held_out_per_class,
        )
        if path is not None:
            split.to_json(path)
    test = source.test
    if cfg.max_eval_samples is not None:
        test = eval_subset(test, source.num_classes, cfg.max_eval_samples)
    labeled = source.train.subset(split.labeled_idx)
    if len(labeled) == 0:
        raise UserError("the split has no labeled images; use a larger --n1")
    unlabeled = source.train.subset(split.unlabeled_idx)
    if len(unlabeled) == 0:
        raise UserError("the split has no unlabeled images; use a larger --m1")
    return SSLData(
        source=source,
        split=split,
        labeled=labeled,
        unlabeled=unlabeled,
        test=test,
    )
