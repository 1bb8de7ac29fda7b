"""ABC (Lee et al. 2021): an auxiliary class-balanced head trained on Bernoulli-subsampled losses.

The main head keeps FixMatch's losses; the ABC head h_a sees each labeled sample of class k with
probability r_k = min_m N_m / N_k (so every class is seen equally often) and each confident
unlabeled sample with probability 1 - (t/T)(1 - r_yhat), annealed from 1 to r_yhat over training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import split_batch
from .fixmatch import FixMatch, masked_cross_entropy, pseudo_labels


def abc_ratios(labeled_counts: Sequence[int] | Tensor) -> Tensor:
    """r_k = min_m N_m / N_k over the classes present; 1 for a class without labeled samples
    (it is never down-sampled, and the release's 0/0 never happens)."""
    n = torch.as_tensor(labeled_counts, dtype=torch.float64)
    present = n > 0
    n_min = n[present].min() if bool(present.any()) else torch.tensor(1.0, dtype=torch.float64)
    r = torch.where(present, n_min / n.clamp_min(1.0), torch.ones_like(n))
    return r.float()


def _uniform(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) draws made on the generator's device, returned on `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(n, device=where, generator=generator).to(device)


def abc_labeled_mask(
    labels: Tensor, ratios: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Bern(r_{y_i}) per labeled sample, as a float mask."""
    keep = ratios.to(labels.device)[labels]
    return (_uniform(labels.numel(), labels.device, generator) < keep).float()


def abc_unlabeled_mask(
    probs_w: Tensor,
    ratios: Tensor,
    progress: float,
    threshold: float = 0.95,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """1[max q >= threshold] * Bern(1 - progress * (1 - r_yhat)); returns (float mask, yhat).

    `progress` = t/T in [0, 1]: at 0 every confident sample is kept, at 1 class k keeps r_k of them.
    """
    conf, yhat = probs_w.max(dim=-1)
    progress = min(max(float(progress), 0.0), 1.0)
    keep = 1.0 - progress * (1.0 - ratios.to(probs_w.device)[yhat])
    draw = _uniform(yhat.numel(), probs_w.device, generator) < keep
    return ((conf >= threshold) & draw).float(), yhat


class ABC(FixMatch):
    """FixMatch on the main head + ABC's balanced losses on the ABC head (the one evaluated)."""

    name = "abc"
    eval_head = "abc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("ratios", abc_ratios(self.labeled_counts), persistent=False)

    def abc_losses(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(ABC loss, logs, q(u^w)) -- BaCon reuses q(u^w) for its pseudo-labels."""
        b, u = self.sizes(batch)
        abc_lb, abc_w, abc_s = split_batch(out.logits_abc, b, u)
        g = self.generator(step, abc_lb.device)
        mask_lb = abc_labeled_mask(batch["y_lb"], self.ratios, g)
        q_w, _, _ = pseudo_labels(abc_w)
        mask_u, yhat = abc_unlabeled_mask(
            q_w, self.ratios, step / max(total_steps, 1), self.cfg.abc.threshold, g
        )
        loss_lb = masked_cross_entropy(abc_lb, batch["y_lb"], mask_lb)
        loss_ulb = masked_cross_entropy(abc_s, yhat, mask_u)
        loss = loss_lb + loss_ulb
        logs = {
            "loss_abc": loss.detach(),
            "loss_abc_lb": loss_lb.detach(),
            "loss_abc_ulb": loss_ulb.detach(),
            "mask_abc": mask_u.mean(),
            "mask_abc_lb": mask_lb.mean(),
        }
        return loss, logs, q_w

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss_fm, logs = self.fixmatch_losses(out, batch)
        loss_abc, logs_abc, _ = self.abc_losses(out, batch, step, total_steps)
        loss = loss_fm + self.cfg.abc.weight * loss_abc
        logs.update(logs_abc, loss=loss.detach())
        return loss, logs
