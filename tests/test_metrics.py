"""Imbalance metrics against hand-computed values."""

import numpy as np
import pytest

from bacon_zoo.metrics import classification_metrics, head_medium_tail, summarize


def test_head_medium_tail_thirds_by_labeled_count():
    counts = [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert head_medium_tail(counts) == ([0, 1, 2, 3], [4, 5, 6], [7, 8, 9])
    # ranking is by count, not by index
    assert head_medium_tail([1, 50, 10]) == ([1], [2], [0])


def test_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 1, 0, 0, 0])
    m = classification_metrics(preds, labels, 3, labeled_counts=[30, 20, 10])
    assert m["top1"] == pytest.approx(100 * 3 / 6)
    assert m["per_class"] == [100.0, 50.0, 0.0]
    assert m["balanced_acc"] == pytest.approx(50.0)
    assert (m["head"], m["medium"], m["tail"]) == (100.0, 50.0, 0.0)
    assert m["gmean"] == 0.0
    m = classification_metrics(labels, labels, 3, labeled_counts=[30, 20, 10])
    assert m["gmean"] == pytest.approx(100.0) and m["top1"] == 100.0


def test_summary_follows_the_paper_convention():
    hist = [{"step": s, "top1": t, "balanced_acc": t, "gmean": t, "head": t, "medium": t, "tail": t}
            for s, t in [(1, 10.0), (2, 50.0), (3, 30.0), (4, 40.0), (5, 20.0), (6, 35.0)]]  # fmt: skip
    s = summarize(hist)
    assert s["best_top1"] == 50.0 and s["best_step"] == 2
    assert s["last"]["top1"] == 35.0
    assert s["median_last5"]["top1"] == 35.0
