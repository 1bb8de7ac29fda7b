"""ACR (Wei and Gan, CVPR 2023): a logit-adjusted balanced branch and adaptive consistency from the
estimated unlabeled class distribution, as the authors' code runs it.

docs/method.md ("ACR and ACR + BaCon") is the contract: a balanced head h_b trained with a
logit-adjusted loss, two strong views, pseudo-labels of the standard head adjusted by a(tau_1) with tau_1
set every window from how far the estimated unlabeled distribution is from the consistent / uniform /
reversed anchors. Every formula is a pure function on tensors here; the plug-in keeps the running
estimate in buffers (checkpointed) and shares it across processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bacon_zoo.config import FRACTION, Range, above, at_least
from bacon_zoo.models.bacon_net import Head

from .base import Plugin, split_views
from .fixmatch import masked_cross_entropy
from .registry import register


def logit_adjustment(prior: Tensor, tau: float | Tensor) -> Tensor:
    """a(tau)_k = log(pi_k^tau + 1e-12): the logit-adjustment vector of a class prior."""
    return torch.log(prior.float() ** tau + 1e-12)


def symmetric_kl(p: Tensor, q: Tensor) -> Tensor:
    """0.5 KL(p || q) + 0.5 KL(q || p), natural logs, 0 log 0 = 0 (p, q: distributions over K)."""
    p, q = p.double(), q.double()
    kl_pq = (torch.xlogy(p, p) - torch.xlogy(p, q)).sum()
    kl_qp = (torch.xlogy(q, q) - torch.xlogy(q, p)).sum()
    return 0.5 * kl_pq + 0.5 * kl_qp


def anchor_distances(estimate: Tensor, prior: Tensor) -> Tensor:
    """[3]: symmetric KL of the estimated unlabeled distribution to the consistent (the labeled
    prior), uniform and reversed (the prior's classes in reverse order) anchors."""
    k = prior.numel()
    anchors = (prior, torch.full_like(prior, 1.0 / k), prior.flip(0))
    return torch.stack([symmetric_kl(estimate, a) for a in anchors])


def adaptive_tau(mean_distances: Tensor, tau_min: float = 0.0, tau_max: float = 2.0) -> Tensor:
    """tau_1 = tau_min + (tau_max - tau_min) exp(d_con) / sum_j exp(d_j): strong adjustment when the
    unlabeled distribution is far from the labeled one."""
    s = torch.softmax(mean_distances.double(), dim=0)[0]
    return tau_min + (tau_max - tau_min) * s


def class_counts(labels: Tensor, keep: Tensor, num_classes: int, presence: bool = False) -> Tensor:
    """n_k = how many kept samples have label k ([K] float). `presence`: the authors' indexed write,
    one write per class: the keep flag of the class's last sample in batch order (0 if absent)."""
    keep = keep.float()
    if not presence:
        return torch.zeros(num_classes, device=labels.device).index_add_(0, labels, keep)
    pos = torch.arange(labels.numel(), device=labels.device)
    last = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    last = last.scatter_reduce(0, labels, pos, reduce="amax")
    return torch.where(last >= 0, keep[last.clamp_min(0)], torch.zeros_like(keep[:1]))


def update_estimate(estimate: Tensor, counts: Tensor, rho: float) -> Tensor:
    """pi_u <- rho pi_u + (1 - rho) n / sum n, or pi_u unchanged when no sample counted."""
    total = counts.sum()
    new = rho * estimate + (1.0 - rho) * counts.to(estimate) / total.clamp_min(1e-12).to(estimate)
    return torch.where(total > 0, new, estimate)


def acr_losses(
    logits_lb: Tensor,
    logits_w: Tensor,
    logits_s: Tensor,
    bal_lb: Tensor,
    bal_w: Tensor,
    bal_s: Tensor,
    y_lb: Tensor,
    adj_1: Tensor,
    adj_12: Tensor,
    adj_2: Tensor,
    threshold: float = 0.95,
    temperature: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_x + L_u + L_x^b + L_u^b (docs/method.md) and the pieces: `*_s` hold both strong views of each
    unlabeled image ([2U, K], first view's rows first); `adj_*` are a(tau_1), a(tau_12), a(tau_2).
    The returned dict also holds the balanced head's weak pseudo-labels and mask (the estimate's input)."""
    loss_x = F.cross_entropy(logits_lb.float(), y_lb)
    loss_xb = F.cross_entropy(bal_lb.float() + adj_2, y_lb)
    with torch.no_grad():
        w, wb = logits_w.detach().float(), bal_w.detach().float()
        conf_1, yhat_1 = torch.softmax((w - adj_1) / temperature, -1).max(-1)
        conf_h, _ = torch.softmax(w / temperature, -1).max(-1)
        conf_2, yhat_2 = torch.softmax((w - adj_12) / temperature, -1).max(-1)
        conf_b, yhat_b = torch.softmax(wb / temperature, -1).max(-1)
        mask_1 = ((conf_1 >= threshold) | (conf_h >= threshold)).float()
        mask_2 = ((conf_b >= threshold) | (conf_2 >= threshold)).float()
    loss_u = masked_cross_entropy(logits_s, yhat_1.repeat(2), mask_1.repeat(2))
    loss_ub = masked_cross_entropy(bal_s, yhat_2.repeat(2), mask_2.repeat(2))
    parts = {
        "loss_x": loss_x.detach(),
        "loss_u": loss_u.detach(),
        "loss_x_bal": loss_xb.detach(),
        "loss_u_bal": loss_ub.detach(),
        "mask": mask_1.mean(),
        "mask_bal": mask_2.mean(),
        "yhat_bal": yhat_b,
        "mask_est": (conf_b >= threshold).float(),
        "yhat_adj": yhat_1,
        "mask_adj": mask_1,
    }
    return loss_x + loss_u + loss_xb + loss_ub, parts


@dataclass
class ACRConfig:
    """ACR's constants; defaults are the authors' (their README's commands)."""

    threshold: float = field(default=0.95, metadata={"range": FRACTION})
    temperature: float = field(default=1.0, metadata={"range": above(0)})  # pseudo-label T
    tau_max: float = field(default=2.0, metadata={"range": at_least(0)})  # tau_1's range top
    tau_min: float = field(default=0.0, metadata={"range": at_least(0)})  # tau_1's range bottom
    tau12: float = field(default=2.0, metadata={"range": at_least(0)})  # balanced head's targets
    tau2: float = field(
        default=2.0, metadata={"range": at_least(0)}
    )  # balanced head's labeled loss
    # EMA of the unlabeled class estimate (README commands: 0.99; the parser default is 0.9)
    ema_u: float = field(default=0.99, metadata={"range": Range(0.0, 1.0, hi_open=True)})
    window: int = field(default=500, metadata={"range": at_least(1)})  # steps per window ("epoch")
    est_start: int = field(default=5, metadata={"range": at_least(0)})  # estimate after this window
    official_quirks: bool = False  # the authors' one-write-per-class count (docs/method.md)


@register
class ACR(Plugin):
    """ACR's dual branch: standard head h and logit-adjusted balanced head h_b (evaluated), adaptive
    consistency from the running estimate of the unlabeled class distribution."""

    name = "acr"
    Config = ACRConfig
    title = "ACR"
    summary = (
        "ACR (a logit-adjusted balanced branch and adaptive consistency from the estimated "
        "unlabeled class distribution)"
    )
    balanced_head = "bal"
    unlabeled_views = {"x_w": "weak", "x_s": "strong", "x_s1": "strong1"}

    def __init__(self, cfg: ACRConfig, ctx: Any) -> None:
        super().__init__(cfg, ctx)
        counts = torch.tensor(ctx.labeled_counts, dtype=torch.float32)
        prior = counts / counts.sum().clamp_min(1.0)
        self.register_buffer("prior", prior, persistent=False)
        k = ctx.num_classes
        self.register_buffer("estimate", torch.full((k,), 1.0 / k))  # pi_u
        self.register_buffer("kl_sums", torch.zeros(3, dtype=torch.float64))  # this window's D_j
        self.register_buffer("tau", torch.tensor(float(cfg.tau_max), dtype=torch.float64))
        labeled = ctx.unlabeled_is_labeled
        self.register_buffer(
            "ulb_is_lb",
            torch.zeros(ctx.num_unlabeled, dtype=torch.bool)
            if labeled is None
            else torch.as_tensor(labeled, dtype=torch.bool).clone(),
            persistent=False,
        )

    @classmethod
    def heads(cls, cfg: ACRConfig) -> tuple[Head, ...]:
        return (Head("bal", description="ACR's balanced head h_b (the logit-adjusted branch)"),)

    def begin_window(self, step: int) -> None:
        """At the first step of a window after `est_start`: tau_1 from the last window's distances."""
        c = self.cfg
        if step % c.window == 0 and step // c.window > c.est_start:
            tau = adaptive_tau(self.kl_sums / c.window, c.tau_min, c.tau_max)
            self.tau.copy_(torch.where(torch.isnan(tau), self.tau, tau))
        if step % c.window == 0:
            self.kl_sums.zero_()

    @torch.no_grad()
    def estimate_step(self, step: int, yhat_bal: Tensor, mask_bal: Tensor, idx_ulb: Tensor) -> None:
        """Update pi_u from this step's confident balanced pseudo-labels (all ranks' counts) and add
        the anchor distances to the window's sums."""
        c = self.cfg
        if step // c.window <= c.est_start:
            return
        idx = idx_ulb.to(self.ulb_is_lb.device).long().clamp(0, max(self.ulb_is_lb.numel() - 1, 0))
        is_lb = self.ulb_is_lb[idx] if self.ulb_is_lb.numel() else torch.zeros_like(mask_bal).bool()
        keep = mask_bal * (~is_lb.to(mask_bal.device)).float()
        if c.official_quirks:  # one write per class over the global batch, in rank order
            labels = self.ctx.gather(yhat_bal.long())
            counts = class_counts(labels, self.ctx.gather(keep), self.num_classes, presence=True)
        else:
            counts = self.ctx.gather(class_counts(yhat_bal.long(), keep, self.num_classes)[None])
            counts = counts.sum(0)
        total = counts.sum()
        new = update_estimate(self.estimate, counts, c.ema_u)
        self.estimate.copy_(new)
        dist = anchor_distances(new, self.prior.to(new))
        self.kl_sums.add_(torch.where(total > 0, dist, torch.zeros_like(dist)))

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int, algo: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg
        b, u = self.sizes(batch)
        self.begin_window(step)
        lb, w, s, s1 = split_views(out.logits, b, u, 3)
        bal_lb, bal_w, bal_s, bal_s1 = split_views(out.logits_bal, b, u, 3)
        prior = self.prior.to(lb.device)
        loss, parts = acr_losses(
            lb, w, torch.cat([s, s1]), bal_lb, bal_w, torch.cat([bal_s, bal_s1]), batch["y_lb"],
            logit_adjustment(prior, self.tau.to(lb.device).float()),
            logit_adjustment(prior, c.tau12), logit_adjustment(prior, c.tau2),
            c.threshold, c.temperature,
        )  # fmt: skip
        self.estimate_step(step, parts.pop("yhat_bal"), parts.pop("mask_est"), batch["idx_ulb"])
        yhat, mask_1 = parts.pop("yhat_adj"), parts.pop("mask_adj")
        logs = dict(parts, tau=self.tau.float().detach().clone())
        y_ulb = batch.get("y_ulb")
        if y_ulb is not None:  # diagnostics only: accuracy of the kept (adjusted) pseudo-labels
            known = (y_ulb >= 0).float() * mask_1
            logs["pl_acc"] = ((yhat == y_ulb).float() * known).sum() / known.sum().clamp_min(1.0)
        return loss, logs

    def diagnostics(self) -> dict[str, Any]:
        """The unlabeled class estimate and tau_1 (one host read per evaluation)."""
        tau = float(self.tau)
        return {
            "acr_tau": None if math.isnan(tau) else round(tau, 6),
            "acr_estimate": [round(v, 6) for v in self.estimate.double().tolist()],
        }
