"""ReMixMatch (Berthelot et al. 2020) as the BaCon release runs it, and the pure functions it is built from.

docs/method.md ("ReMixMatch, ReMixMatch + ABC, ReMixMatch + BaCon") is the contract: distribution
alignment to the labeled class distribution with a running mean of the unlabeled predictions, sharpening,
MixUp of [labeled; strong 0; strong 1; weak] with lambda = max(l, 1 - l), the pre-MixUp loss on the first
strong view, the rotation loss, and the ramp-up of the unlabeled weights. Every formula is a function on
tensors here, so tests can hit it directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """mean_i -sum_k t_ik log softmax(z_i)_k, in float32 (t may be one-hot or soft)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * logp).sum(dim=-1).mean()


@torch.no_grad()
def da_update(
    p_model: Tensor, initialized: Tensor, probs: Tensor, momentum: float = 0.999
) -> Tensor:
    """The running mean of the unlabeled predictions after one batch: the batch mean at the first step
    (`initialized` False), else momentum * p_model + (1 - momentum) * mean_j p_j. No host sync."""
    batch_mean = probs.detach().float().mean(dim=0)
    ema = momentum * p_model.float() + (1.0 - momentum) * batch_mean
    return torch.where(initialized.bool(), ema, batch_mean)


@torch.no_grad()
def distribution_align(
    probs: Tensor, p_model: Tensor, p_target: Tensor, eps: float = 1e-6
) -> Tensor:
    """p_j * (p_target + eps) / (p_model + eps), renormalised to sum 1 per row."""
    aligned = probs.float() * (p_target.float() + eps) / (p_model.float() + eps)
    return aligned / aligned.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sharpen(probs: Tensor, temperature: float = 0.5) -> Tensor:
    """p^(1/T) renormalised: T < 1 makes the target more confident."""
    p = probs.float() ** (1.0 / temperature)
    return p / p.sum(dim=-1, keepdim=True)


def mixup_lambda(alpha: float, rng: np.random.Generator) -> float:
    """lambda = max(l, 1 - l), l ~ Beta(alpha, alpha) (1.0 when alpha <= 0): a host-side draw, so the
    step never waits on the device."""
    if alpha <= 0:
        return 1.0
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mixup(x: Tensor, y: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
    """(lam x + (1 - lam) x[perm], lam y + (1 - lam) y[perm]) over the rows."""
    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm]


def rotate_quarter_turns(x: Tensor, turns: Tensor) -> Tensor:
    """Image i of [N, C, H, H] turned by turns_i * 90 degrees counter-clockwise (torch.rot90 on the
    last two axes, as torchvision's `rotate(img, 90 * k)` turns a square image)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"quarter turns need square images, got {tuple(x.shape[-2:])}")
    out = x.clone()
    for k in (1, 2, 3):
        sel = turns == k
        out = torch.where(sel.view(-1, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), out)
    return out


def unsup_ramp(step: int, total_steps: int, warmup: float = 1.0 / 64) -> float:
    """w(t) = clip(t / (warmup * T), 0, 1): the ramp-up of ReMixMatch's unlabeled loss weights."""
    if warmup <= 0:
        return 1.0
    return float(np.clip(step / (warmup * total_steps), 0.0, 1.0))


def remixmatch_loss(
    logits_mixed_lb: Tensor,
    logits_mixed_ulb: Tensor,
    mixed_targets: Tensor,
    logits_s0: Tensor,
    targets_ulb: Tensor,
    logits_rot: Tensor | None,
    rot_labels: Tensor | None,
    ramp: float,
    lambda_u: float = 1.5,
    lambda_kl: float = 0.5,
    lambda_rot: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_x + lambda_kl w L_u1 + lambda_u w L_u + lambda_rot L_rot (docs/method.md); returns (loss, terms).

    mixed_targets: Y' for all mixed rows (labeled rows first); targets_ulb: the sharpened q of the weak
    views; logits_rot/rot_labels None (or lambda_rot 0) drops the rotation term.
    """
    b = logits_mixed_lb.shape[0]
    loss_x = soft_cross_entropy(logits_mixed_lb, mixed_targets[:b])
    loss_u = soft_cross_entropy(logits_mixed_ulb, mixed_targets[b:])
    loss_u1 = soft_cross_entropy(logits_s0, targets_ulb)
    loss = loss_x + lambda_kl * ramp * loss_u1 + lambda_u * ramp * loss_u
    terms = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_u1": loss_u1.detach()}
    if logits_rot is not None and rot_labels is not None and lambda_rot > 0:
        loss_rot = F.cross_entropy(logits_rot.float(), rot_labels)
        loss = loss + lambda_rot * loss_rot
        terms["loss_rot"] = loss_rot.detach()
    return loss, terms


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep normalising with the batch's statistics but leave their running statistics
    (and counters) untouched: the release's frozen passes, without copying any buffer."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in norms]
    try:
        for m in norms:
            m.track_running_stats = False
        yield
    finally:
        for m, s in zip(norms, saved):
            m.track_running_stats = s
