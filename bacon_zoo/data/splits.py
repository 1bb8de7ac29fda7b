"""Long-tailed labeled/unlabeled splits: the count profile, the seeded per-class draw, and its JSON file.

Everything here is a pure function of (labels, parameters, seed): one `np.random.default_rng(seed)` walks
the classes in order 0..K-1, so a split is identical on every machine and can be re-derived or reloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write_text

# 2: adds labeled_origins / unlabeled_origins (format-1 files still load, with those empty)
SPLIT_FORMAT = 2


def lt_class_counts(
    n_max: int, num_classes: int, imb_ratio: float, reverse: bool = False
) -> list[int]:
    """N_k = floor(n_max * ratio^(-(k-1)/(K-1))), last class floor(n_max / ratio); reverse flips it.

    A 1e-9 guard keeps exact products (e.g. 1000 * 25^-0.5 = 200) from flooring to 199 through float
    error; on every setting of the paper's grid the counts equal the USB/DARP code's.
    """
    if n_max < 0 or num_classes < 1 or imb_ratio < 1:
        raise UserError(
            f"a long-tailed profile needs a largest count >= 0 (--n1/--m1), at least one class and an "
            f"imbalance ratio >= 1 (--imb-ratio-l/-u); got {n_max}, {num_classes} classes, ratio {imb_ratio:g}; "
            "use --reverse-u for an inverted unlabeled profile"
        )
    if num_classes == 1:
        return [int(n_max)]
    counts = [
        math.floor(n_max * imb_ratio ** (-k / (num_classes - 1)) + 1e-9)
        for k in range(num_classes - 1)
    ]
    counts.append(math.floor(n_max / imb_ratio + 1e-9))
    return counts[::-1] if reverse else counts


def _label_array(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _class_label(k: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and k < len(class_names):
        return f"class {k} ('{class_names[k]}')"
    return f"class {k}"


def _split_flags(
    n1: int, m1: int | None, imb_ratio_l: float, imb_ratio_u: float, reverse_u: bool
) -> str:
    """The split's parameters as the command-line flags that set them (for error messages)."""
    m = "none" if m1 is None else str(m1)
    rev = " --reverse-u" if reverse_u else ""
    return f"--n1 {n1} --m1 {m} --imb-ratio-l {imb_ratio_l:g} --imb-ratio-u {imb_ratio_u:g}{rev}"


def _check_split_args(
    n1: int, m1: int | None, imb_ratio_l: float, imb_ratio_u: float, num_classes: int
) -> None:
    """Impossible split parameters, named by their flags (the config checks ranges, this the profile)."""
    if n1 < 1:
        raise UserError(f"--n1 must be positive, got {n1}")
    if m1 is not None and m1 < 0:
        raise UserError(f"--m1 must be >= 0, or none for every image not labeled; got {m1}")
    for flag, ratio in (("--imb-ratio-l", imb_ratio_l), ("--imb-ratio-u", imb_ratio_u)):
        if ratio < 1:
            raise UserError(
                f"{flag} must be >= 1, got {ratio:g}; use --reverse-u for a reversed unlabeled profile"
            )
    tail = lt_class_counts(n1, num_classes, imb_ratio_l)[-1]
    if tail == 0:
        raise UserError(
            f"--n1 {n1} with --imb-ratio-l {imb_ratio_l:g} leaves the last class with 0 labeled images "
            f"(n1 / ratio < 1); use --n1 >= {math.ceil(imb_ratio_l)} or a smaller --imb-ratio-l"
        )


def make_lt_split(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    n1: int,
    m1: int | None,
    imb_ratio_l: float,
    imb_ratio_u: float,
    seed: int,
    reverse_u: bool = False,
    include_labeled_in_unlabeled: bool = False,
    class_names: Sequence[str] | None = None,
    held_out_per_class: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Labeled and unlabeled index arrays (int64, sorted) into `labels` for a long-tailed split.

    Per class, one seeded permutation: the first N_k are labeled and the next M_k unlabeled (disjoint).
    With `include_labeled_in_unlabeled` the unlabeled set is the first N_k + M_k, i.e. the labeled images
    plus M_k others (the DARP/CoSSL/ACR convention).
    `m1=None` makes every image that is not labeled unlabeled, label -1 (unknown) included; with
    `include_labeled_in_unlabeled` it is every image of the pool (STL-10: the unlabeled split plus all
    labeled-train images). `held_out_per_class` only words the error: a test split was already carved
    out of `labels`, so the user knows why a class is smaller than the data set says.
    """
    y = _label_array(labels)
    _check_split_args(n1, m1, imb_ratio_l, imb_ratio_u, num_classes)
    n_counts = lt_class_counts(n1, num_classes, imb_ratio_l)
    m_counts = (
        None if m1 is None else lt_class_counts(m1, num_classes, imb_ratio_u, reverse=reverse_u)
    )
    rng = np.random.default_rng(seed)
    labeled, unlabeled = [], []
    for k in range(num_classes):
        members = np.flatnonzero(y == k)
        perm = members[rng.permutation(len(members))]
        n_k = n_counts[k]
        if m_counts is None:
            need, what, flag = n_k, f"{n_k} labeled", "--n1"
        else:
            need, what = n_k + m_counts[k], f"{n_k} labeled + {m_counts[k]} unlabeled"
            flag = "--n1/--m1"
        if need > len(members):
            held = (
                f", after holding out --test-per-class {held_out_per_class} images per class for "
                "testing (the data set has no test split)"
                if held_out_per_class
                else ""
            )
            raise UserError(
                f"{_class_label(k, class_names)} has {len(members)} images{held} but the split asks "
                f"for {need} ({what} from {_split_flags(n1, m1, imb_ratio_l, imb_ratio_u, reverse_u)}); "
                f"use a smaller {flag}{' or --test-per-class' if held_out_per_class else ''}"
            )
        labeled.append(perm[:n_k])
        if m_counts is not None:
            start = 0 if include_labeled_in_unlabeled else n_k
            unlabeled.append(perm[start : n_k + m_counts[k]])
    lab = np.sort(np.concatenate(labeled)).astype(np.int64) if labeled else np.zeros(0, np.int64)
    if m_counts is None:
        pool = np.ones(len(y), dtype=bool)
        if not include_labeled_in_unlabeled:
            pool[lab] = False
        pool &= (y >= -1) & (y < num_classes)  # never hand out out-of-range labels
        unl = np.flatnonzero(pool).astype(np.int64)
    else:
        unl = (
            np.sort(np.concatenate(unlabeled)).astype(np.int64)
            if unlabeled
            else np.zeros(0, np.int64)
        )
    return lab, unl


def balanced_indices(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    per_class: int | Sequence[int],
    seed: int,
    strict: bool = True,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Sorted indices of `per_class[k]` seeded picks from each class (a held-out test or eval subset).

    With `strict=False`, a class smaller than its quota contributes all of its images.
    """
    y = _label_array(labels)
    quota = (
        [int(per_class)] * num_classes if np.isscalar(per_class) else [int(q) for q in per_class]
    )
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(num_classes):
        members = np.flatnonzero(y == k)
        if quota[k] > len(members) and strict:
            raise UserError(
                f"{_class_label(k, class_names)} has {len(members)} images, fewer than the {quota[k]} "
                "per class asked for; use a smaller --test-per-class"
            )
        picks.append(members[rng.permutation(len(members))[: quota[k]]])
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, np.int64)


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Images per class 0..K-1 (label -1 is not counted)."""
    y = _label_array(labels)
    y = y[(y >= 0) & (y < num_classes)]
    return np.bincount(y, minlength=num_classes).astype(int).tolist()


@dataclass
class Split:
    """A long-tailed split and the parameters that made it; saved next to a run so resume reuses it."""

    labeled_idx: np.ndarray
    unlabeled_idx: np.ndarray
    labeled_counts: list[int]
    unlabeled_counts: list[int]
    dataset: str
    fingerprint: str
    seed: int
    n1: int
    m1: int | None
    imb_ratio_l: float
    imb_ratio_u: float
    reverse_u: bool = False
    include_labeled_in_unlabeled: bool = False
    class_names: list[str] = field(default_factory=list)
    # unlabeled images whose true label is -1 (e.g. STL-10's unlabeled split)
    unlabeled_unknown: int = 0
    # how many labeled / unlabeled images came from each source split pooled into the training set,
    # e.g. SVHN {"train": ..., "extra": ...}, STL-10 unlabeled {"train": 5000, "unlabeled": 100000}
    labeled_origins: dict[str, int] = field(default_factory=dict)
    unlabeled_origins: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labeled_counts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labeled_idx"] = np.asarray(self.labeled_idx).tolist()
        d["unlabeled_idx"] = np.asarray(self.unlabeled_idx).tolist()
        d["format"] = SPLIT_FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        d = dict(d)
        fmt = d.pop("format", 1)
        if not isinstance(fmt, int) or fmt > SPLIT_FORMAT:
            raise UserError(
                f"split file has format {fmt}, newer than this bacon-zoo reads ({SPLIT_FORMAT}); "
                "upgrade bacon-zoo or regenerate it with `bacon-zoo data --save-split`"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(
                f"split file has unknown keys {sorted(unknown)}; regenerate it with `bacon-zoo data`"
            )
        d["labeled_idx"] = np.asarray(d["labeled_idx"], dtype=np.int64)
        d["unlabeled_idx"] = np.asarray(d["unlabeled_idx"], dtype=np.int64)
        return cls(**d)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + os.replace) so a crash never leaves half a split."""
        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Split:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(
                f"split file '{path}' does not exist; create it with `bacon-zoo data --save-split`"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(
                f"split file '{path}' is not a valid split ({e}); delete it to regenerate"
            ) from None


def build_split(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    *,
    dataset: str,
    fingerprint: str,
    n1: int,
    m1: int | None,
    imb_ratio_l: float,
    imb_ratio_u: float,
    seed: int,
    reverse_u: bool = False,
    include_labeled_in_unlabeled: bool = False,
    class_names: Sequence[str] | None = None,
    origin: np.ndarray | None = None,
    origin_names: Sequence[str] | None = None,
    held_out_per_class: int = 0,
) -> Split:
    """`make_lt_split` plus the bookkeeping (counts, parameters, source splits) a `Split` file records.

    `origin[i]` indexes `origin_names`: the source split image i of the pool came from.
    """
    y = _label_array(labels)
    lab, unl = make_lt_split(
        y, num_classes, n1, m1, imb_ratio_l, imb_ratio_u, seed,
        reverse_u=reverse_u, include_labeled_in_unlabeled=include_labeled_in_unlabeled,
        class_names=class_names, held_out_per_class=held_out_per_class,
    )  # fmt: skip
    return Split(
        labeled_idx=lab,
        unlabeled_idx=unl,
        labeled_counts=class_counts(y[lab], num_classes),
        unlabeled_counts=class_counts(y[unl], num_classes),
        dataset=dataset,
        fingerprint=fingerprint,
        seed=int(seed),
        n1=int(n1),
        m1=None if m1 is None else int(m1),
        imb_ratio_l=float(imb_ratio_l),
        imb_ratio_u=float(imb_ratio_u),
        reverse_u=bool(reverse_u),
        include_labeled_in_unlabeled=bool(include_labeled_in_unlabeled),
        class_names=list(class_names or []),
        unlabeled_unknown=int((y[unl] < 0).sum()),
        labeled_origins=origin_counts(origin, origin_names, lab),
        unlabeled_origins=origin_counts(origin, origin_names, unl),
    )


def origin_counts(
    origin: np.ndarray | None, origin_names: Sequence[str] | None, idx: np.ndarray
) -> dict[str, int]:
    """Images of `idx` per source split, in `origin_names` order, empty splits left out."""
    if origin is None or not origin_names:
        return {}
    counts = np.bincount(np.asarray(origin)[idx], minlength=len(origin_names))
    return {name: int(c) for name, c in zip(origin_names, counts) if c}
