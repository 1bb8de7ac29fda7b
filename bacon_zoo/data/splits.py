"""Long-tailed labeled/unlabeled splits: the count profile, the seeded per-class draw, and its JSON file.

Everything here is a pure function of (labels, parameters, seed): one `np.random.default_rng(seed)` walks
the classes in order 0..K-1, so a split is identical on every machine and can be re-derived or reloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bacon_zoo.errors import UserError

SPLIT_FORMAT = 1


def lt_class_counts(
    n_max: int, num_classes: int, imb_ratio: float, reverse: bool = False
) -> list[int]:
    """N_k = floor(n_max * ratio^(-(k-1)/(K-1))), last class floor(n_max / ratio); reverse flips it.

    A 1e-9 guard keeps exact products (e.g. 1000 * 25^-0.5 = 200) from flooring to 199 through float
    error; on every setting of the paper's grid the counts equal the USB/DARP code's.
    """
    if n_max < 0 or num_classes < 1 or imb_ratio < 1:
        raise UserError(
            f"long-tailed profile needs n_max >= 0, num_classes >= 1 and ratio >= 1 "
            f"(got {n_max}, {num_classes}, {imb_ratio}); use reverse for an inverted profile"
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
) -> tuple[np.ndarray, np.ndarray]:
    """Labeled and unlabeled index arrays (int64, sorted) into `labels` for a long-tailed split.

    Per class, one seeded permutation: the first N_k are labeled and the next M_k unlabeled (disjoint).
    With `include_labeled_in_unlabeled` the unlabeled set is the first N_k + M_k, i.e. the labeled images
    plus M_k others (the DARP/CoSSL/ACR codes' convention).
    `m1=None` makes every image that is not labeled unlabeled, label -1 (unknown) included.
    """
    y = _label_array(labels)
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
            need, what, flag = n_k, "labeled", "--n1"
        else:
            need, what, flag = n_k + m_counts[k], "labeled + unlabeled", "--n1/--m1"
        if need > len(members):
            raise UserError(
                f"{_class_label(k, class_names)} has {len(members)} images but the split asks for "
                f"{need} ({what}: n1={n1}, m1={m1}, imb_ratio_l={imb_ratio_l}, imb_ratio_u={imb_ratio_u}); "
                f"use a smaller {flag}"
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
        d.pop("format", None)
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
        write_text_atomic(Path(path), json.dumps(self.to_dict()))

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
) -> Split:
    """`make_lt_split` plus the bookkeeping (counts, parameters) that a `Split` file records."""
    y = _label_array(labels)
    lab, unl = make_lt_split(
        y, num_classes, n1, m1, imb_ratio_l, imb_ratio_u, seed,
        reverse_u=reverse_u, include_labeled_in_unlabeled=include_labeled_in_unlabeled,
        class_names=class_names,
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
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file through a temp file in the same folder and os.replace (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
