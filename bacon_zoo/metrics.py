"""Imbalance-aware classification metrics, as pure functions on label arrays.

Head / medium / tail: classes are ranked by their *labeled* count (largest first; ties broken by class
index) and cut into three groups with `numpy.array_split`, so for K = 10 the groups hold 4 / 3 / 3
classes. The group accuracy is the mean per-class accuracy of its classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def head_medium_tail(labeled_counts: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Class indices of the head, medium and tail thirds by labeled count."""
    counts = np.asarray(labeled_counts)
    order = np.lexsort((np.arange(len(counts)), -counts))  # count descending, then index
    head, medium, tail = np.array_split(order, 3)
    return sorted(head.tolist()), sorted(medium.tolist()), sorted(tail.tolist())


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class; NaN for a class absent from `labels`."""
    correct = np.bincount(labels, weights=(preds == labels), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / total


def classification_metrics(
    preds: np.ndarray, labels: np.ndarray, num_classes: int, labeled_counts: Sequence[int]
) -> dict:
    """top-1, balanced accuracy, geometric mean, head/medium/tail and per-class accuracy (all in %)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    acc = per_class_accuracy(preds, labels, num_classes)
    present = ~np.isnan(acc)
    groups = head_medium_tail(labeled_counts)
    out = {
        "top1": 100.0 * float((preds == labels).mean()) if len(labels) else float("nan"),
        "balanced_acc": 100.0 * float(np.nanmean(acc)) if present.any() else float("nan"),
        # geometric mean of per-class recalls: zero as soon as one class is never recognised
        "gmean": 100.0 * float(np.exp(np.log(np.clip(acc[present], 1e-12, None)).mean()))
        if present.any()
        else float("nan"),
        "num_samples": int(len(labels)),
    }
    if present.any() and np.any(acc[present] == 0):
        out["gmean"] = 0.0
    for name, idx in zip(("head", "medium", "tail"), groups):
        vals = acc[idx][present[idx]] if len(idx) else np.array([])
        out[name] = 100.0 * float(vals.mean()) if len(vals) else float("nan")
    out["per_class"] = [None if np.isnan(a) else round(100.0 * float(a), 4) for a in acc]
    return out


def summarize(history: Sequence[dict]) -> dict:
    """The paper's convention (best top-1 over training) plus last and median of the last five."""
    if not history:
        return {}
    best = max(history, key=lambda r: r["top1"])
    last = history[-1]
    tail5 = history[-5:]
    keys = ("top1", "balanced_acc", "gmean", "head", "medium", "tail")
    return {
        "best_top1": best["top1"],
        "best_step": best["step"],
        "best": {k: best[k] for k in keys},
        "last": {k: last[k] for k in keys} | {"step": last["step"]},
        "median_last5": {k: float(np.median([r[k] for r in tail5])) for k in keys},
        "num_evals": len(history),
    }
