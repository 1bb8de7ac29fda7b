"""ABC (Lee et al. 2021): an auxiliary class-balanced head trained on Bernoulli-subsampled losses.

The main head keeps FixMatch's losses; the ABC head h_a sees each labeled sample of class k with
probability r_k = min_m N_m / N_k (so every class is seen equally often) and each confident
unlabeled sample with probability 1 - (t/T)(1 - r_yhat), annealed from 1 to r_yhat over training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bacon_zoo.config import FRACTION, at_least
from bacon_zoo.models.bacon_net import Head

from .base import Plugin, leading_rows, scaled, split_batch
from .fixmatch import masked_cross_entropy, pseudo_labels
from .registry import register


def abc_ratios(labeled_counts: Sequence[int] | Tensor) -> Tensor:
    """r_k = min_m N_m / N_k over the classes present; 1 for a class without labeled samples
    (it is never down-sampled, and the release's 0/0 never happens)."""
    n = torch.as_tensor(labeled_counts, dtype=torch.float64)
    present = n > 0
    n_min = n[present].min() if bool(present.any()) else torch.tensor(1.0, dtype=torch.float64)
    r = torch.where(present, n_min / n.clamp_min(1.0), torch.ones_like(n))
    return r.float()


def _uniform(
    n: int, device: torch.device, generator: torch.Generator | None, drawn: Tensor | None = None
) -> Tensor:
    """U(0, 1) draws made on the generator's device, returned on `device` (or `drawn`, already made)."""
    if drawn is not None:
        return drawn.to(device)
    where = generator.device if generator is not None else device
    return torch.rand(n, device=where, generator=generator).to(device)


def abc_labeled_mask(
    labels: Tensor,
    ratios: Tensor,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> Tensor:
    """Bern(r_{y_i}) per labeled sample, as a float mask (`uniform`: the U(0, 1) draws, if made)."""
    keep = ratios.to(labels.device)[labels]
    return (_uniform(labels.numel(), labels.device, generator, uniform) < keep).float()


def abc_unlabeled_mask(
    probs_w: Tensor,
    ratios: Tensor,
    progress: float,
    threshold: float = 0.95,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """1[max q >= threshold] * Bern(1 - progress * (1 - r_yhat)); returns (float mask, yhat).

    `progress` = t/T in [0, 1]: at 0 every confident sample is kept, at 1 class k keeps r_k of them.
    """
    conf, yhat = probs_w.max(dim=-1)
    return abc_kept(conf, yhat, 1.0 - ratios, progress, threshold, generator, uniform), yhat


def abc_kept(
    conf: Tensor,
    yhat: Tensor,
    drop: Tensor,
    progress: float,
    threshold: float = 0.95,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> Tensor:
    """`abc_unlabeled_mask` from the pseudo-labels' confidence and class, when the caller has them,
    and drop = 1 - r [K] (a constant of the run: 1 - r_yhat is one gather of it)."""
    progress = min(max(float(progress), 0.0), 1.0)
    keep = 1.0 - progress * drop.to(conf.device)[yhat]
    draw = _uniform(yhat.numel(), conf.device, generator, uniform) < keep
    return ((conf >= threshold) & draw).float()


@dataclass
class ABCConfig:
    """The auxiliary class-balanced classifier (ABC, Lee et al. 2021)."""

    threshold: float = field(default=0.95, metadata={"range": FRACTION})
    weight: float = field(default=1.0, metadata={"range": at_least(0)})


@register(aliases={"abc": "fixmatch+abc"})
class ABC(Plugin):
    """ABC's balanced losses on its own head h_a (the one evaluated), on top of a base's losses."""

    name = "abc"
    kind = "term"
    role = "imbalance"
    Config = ABCConfig
    title = "ABC"
    summary = "ABC (an auxiliary class-balanced classifier)"
    balanced_head = "abc"
    reported_with = ("fixmatch", "remixmatch")

    def __init__(self, cfg: ABCConfig, ctx: Any) -> None:
        super().__init__(cfg, ctx)
        self.register_buffer("ratios", abc_ratios(ctx.labeled_counts), persistent=False)
        self.register_buffer("drop", 1.0 - self.ratios, persistent=False)  # 1 - r_k

    @classmethod
    def heads(cls, cfg: Any) -> tuple[Head, ...]:
        return (Head("abc", description="ABC head h_a (the head ABC and BaCon evaluate)"),)

    def draws(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """U(0, 1) per labeled sample, then per unlabeled sample, from this step's generator."""
        b, u = self.sizes(batch)
        device = batch["y_lb"].device
        g = self.generator(step, device)
        return {"abc.u_lb": _uniform(b, device, g), "abc.u_ulb": _uniform(u, device, g)}

    def abc_losses(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(ABC loss, logs, q(u^w))."""
        b, u = self.sizes(batch)
        abc_lb, abc_w, abc_s = split_batch(leading_rows(out.logits_abc, b + 2 * u), b, u)
        drawn = self.drawn(batch, step)
        mask_lb = abc_labeled_mask(batch["y_lb"], self.ratios, uniform=drawn["abc.u_lb"])
        q_w, conf, yhat = pseudo_labels(abc_w)
        mask_u = abc_kept(
            conf,
            yhat,
            self.drop,
            step / max(total_steps, 1),
            self.cfg.threshold,
            uniform=drawn["abc.u_ulb"],
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
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int, algo: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss_abc, logs, _ = self.abc_losses(out, batch, step, total_steps)
        return scaled(self.cfg.weight, loss_abc), logs
