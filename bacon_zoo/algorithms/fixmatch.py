"""FixMatch (Sohn et al. 2020): supervised CE + confidence-masked hard pseudo-labels on u^s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bacon_zoo.config import FRACTION, at_least

from .base import Plugin, scaled, split_batch
from .registry import register


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """mean_i mask_i * CE(logits_i, targets_i): a mean over ALL rows, not over the kept ones
    (FixMatch's and ABC's normalisation: fewer confident samples means a smaller loss)."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return (ce * mask.to(ce.dtype)).mean()


@torch.no_grad()
def pseudo_labels(logits_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(probs, confidence, hard label) from weak-view logits, without gradient (no_grad: nothing to
    detach)."""
    probs = logits_w.float().softmax(dim=-1)
    conf, label = probs.max(dim=-1)
    return probs, conf, label


def fixmatch_unlabeled_loss(
    logits_s: Tensor, logits_w: Tensor, threshold: float = 0.95
) -> tuple[Tensor, Tensor]:
    """L_u = mean_j 1[max p(u_j^w) >= threshold] CE(logits_s_j, argmax p(u_j^w)); returns (L_u, mask)."""
    _, conf, label = pseudo_labels(logits_w)
    mask = (conf >= threshold).float()
    return masked_cross_entropy(logits_s, label, mask), mask


@dataclass
class FixMatchConfig:
    """FixMatch's unlabeled consistency loss (hard pseudo-labels)."""

    threshold: float = field(default=0.95, metadata={"range": FRACTION})
    lambda_u: float = field(default=1.0, metadata={"range": at_least(0)})


@register
class FixMatch(Plugin):
    """L = L_s + lambda_u * L_u on the main head (one forward over [x | u^w | u^s])."""

    name = "fixmatch"
    Config = FixMatchConfig
    title = "FixMatch"
    summary = "FixMatch (confidence-thresholded pseudo-labels on strongly augmented views)"

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int, algo: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        b, u = self.sizes(batch)
        logits_lb, logits_w, logits_s = split_batch(out.logits, b, u)
        loss_x = F.cross_entropy(logits_lb.float(), batch["y_lb"])
        loss_u, mask = fixmatch_unlabeled_loss(logits_s, logits_w, self.cfg.threshold)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean()}
        y_ulb = batch.get("y_ulb")
        if y_ulb is not None:  # diagnostics only: accuracy of the kept pseudo-labels
            logs["pl_acc"] = pseudo_label_accuracy(logits_w, y_ulb, mask)
        return loss_x + scaled(self.cfg.lambda_u, loss_u), logs


def pseudo_label_accuracy(logits_w: Tensor, y_ulb: Tensor, mask: Tensor) -> Tensor:
    """Accuracy of the kept pseudo-labels among the samples whose true label is known (a log).
    bool * float mask: the 0/1 products a cast would give, one op fewer (argmax has no gradient)."""
    known = (y_ulb >= 0) * mask
    hit = (logits_w.argmax(-1) == y_ulb) * known
    return hit.sum() / known.sum().clamp_min(1.0)
