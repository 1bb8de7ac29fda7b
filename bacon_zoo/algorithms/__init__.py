"""Algorithms (FixMatch, ABC, BaCon) and the pure loss functions they are built from.

algo = create_algorithm(cfg.algorithm, cfg=cfg, num_classes=K, labeled_counts=counts,
                        num_labeled=N_L, num_unlabeled=N_U, seed=cfg.seed,
                        rank=accelerator.process_index, gather=accelerator.gather)
"""

from __future__ import annotations

import difflib
from typing import Any

from bacon_zoo.errors import UserError

from .abc import ABC, abc_labeled_mask, abc_ratios, abc_unlabeled_mask
from .bacon import (
    BaCon,
    bacon_contrastive_loss,
    bacon_contrastive_terms,
    bta_temperatures,
    reduce_anchors,
    reliable_negatives,
)
from .bank import MemoryBank
from .base import Algorithm, split_batch, step_seed
from .fixmatch import FixMatch, fixmatch_unlabeled_loss, masked_cross_entropy, pseudo_labels

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FixMatch, ABC, BaCon)}


def create_algorithm(name: str, **kwargs: Any) -> Algorithm:
    """Build a registered algorithm by name; unknown names raise a one-line UserError."""
    cls = ALGORITHMS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown algorithm '{name}'{hint}; known: {', '.join(ALGORITHMS)}")
    return cls(**kwargs)


__all__ = [
    "ABC",
    "ALGORITHMS",
    "Algorithm",
    "BaCon",
    "FixMatch",
    "MemoryBank",
    "abc_labeled_mask",
    "abc_ratios",
    "abc_unlabeled_mask",
    "bacon_contrastive_loss",
    "bacon_contrastive_terms",
    "bta_temperatures",
    "create_algorithm",
    "fixmatch_unlabeled_loss",
    "masked_cross_entropy",
    "pseudo_labels",
    "reduce_anchors",
    "reliable_negatives",
    "split_batch",
    "step_seed",
]
