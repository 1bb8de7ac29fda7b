"""ReMixMatch (Berthelot et al. 2020) as the BaCon release runs it, and the pure functions it is built from.

docs/method.md ("ReMixMatch, ReMixMatch + ABC, ReMixMatch + BaCon") is the contract: distribution
alignment to the labeled class distribution with a running mean of the unlabeled predictions, sharpening,
MixUp of [labeled; strong 0; strong 1; weak] with lambda = max(l, 1 - l), the pre-MixUp loss on the first
strong view, the rotation loss, and the ramp-up of the unlabeled weights. Every formula is a function on
tensors here, so tests can hit it directly; `ReMixMatch` is the base plug-in (`remixmatch`,
`remixmatch+abc`, `remixmatch+abc+bacon`) that runs the release's forward passes and adds these losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from bacon_zoo.config import Range, above, at_least
from bacon_zoo.models.bacon_net import Head

from .base import Plugin, step_seed
from .registry import register


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


# ---------------------------------------------------------------------------------------------
# the plug-in

_MIX_TAG = (
    0x52454D49  # separates ReMixMatch's per-step draws from the terms' (same seed, rank, step)
)


@dataclass
class ReMixMatchConfig:
    """ReMixMatch's constants; defaults are the release's `remixmatch*` configs (docs/method.md)."""

    # sharpening temperature T of the aligned weak-view predictions
    temperature: float = field(default=0.5, metadata={"range": above(0)})
    # MixUp: l ~ Beta(alpha, alpha), lambda = max(l, 1 - l); 0 turns MixUp off (lambda = 1)
    mixup_alpha: float = field(default=0.75, metadata={"range": at_least(0)})
    # weight of the mixed unlabeled loss L_u (the release's ulb_loss_ratio), ramped
    lambda_u: float = field(default=1.5, metadata={"range": at_least(0)})
    # weight of the pre-MixUp loss on the first strong view (the release's kl_loss_ratio), ramped
    lambda_u1: float = field(default=0.5, metadata={"range": at_least(0)})
    # weight of the rotation loss (not ramped); 0 drops the rotation head and its pass
    lambda_rot: float = field(default=0.5, metadata={"range": at_least(0)})
    # ramp-up of lambda_u and lambda_u1 over this fraction of the total steps
    unsup_warmup: float = field(
        default=1.0 / 64, metadata={"range": Range(0.0, 1.0, hint="; a fraction of the steps")}
    )
    # distribution alignment: momentum of the running mean of the unlabeled predictions
    da_momentum: float = field(default=0.999, metadata={"range": Range(0.0, 1.0, hi_open=True)})


class ReMixMatchOutput:
    """The step's outputs: the net's named tuple over rows [labeled | weak | first strong] (what the
    terms and diagnostics read: `out.logits`, `out.logits_abc`, `out.proj`, ...) plus the MixUp and
    rotation pieces the ReMixMatch loss needs."""

    def __init__(self, rows: Any, **extra: Any) -> None:
        self.rows = rows
        self.__dict__.update(extra)

    def __getattr__(self, name: str) -> Any:
        if name == "rows":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.rows, name)


@register
class ReMixMatch(Plugin):
    """ReMixMatch as the BaCon release runs it: DA + sharpening, two strong views, MixUp, the
    pre-MixUp and rotation losses, one forward per group of images (docs/method.md)."""

    name = "remixmatch"
    Config = ReMixMatchConfig
    title = "ReMixMatch"
    summary = (
        "ReMixMatch as the BaCon release runs it (distribution alignment to the labeled class "
        "distribution, two strongly augmented views, MixUp, pre-MixUp and rotation losses)"
    )
    unlabeled_views = {"x_w": "weak", "x_s": "strong", "x_s1": "strong1"}
    threshold_field = None  # no confidence threshold: soft, sharpened targets

    def __init__(self, cfg: ReMixMatchConfig, ctx: Any) -> None:
        super().__init__(cfg, ctx)
        counts = torch.tensor(ctx.labeled_counts, dtype=torch.float32)
        self.register_buffer("p_target", counts / counts.sum().clamp_min(1.0), persistent=False)
        self.register_buffer("p_model", torch.zeros(ctx.num_classes))
        self.register_buffer("da_ready", torch.zeros((), dtype=torch.bool))

    @classmethod
    def heads(cls, cfg: ReMixMatchConfig) -> tuple[Head, ...]:
        if cfg.lambda_rot <= 0:
            return ()
        return (Head("rot", dim=4, description="rotation head h_rot (4 quarter turns)"),)

    def _draws(
        self, step: int, device: torch.device
    ) -> tuple[torch.Generator, np.random.Generator]:
        """This step's generators (device: MixUp permutation, quarter turns; host: MixUp lambda)."""
        seed = step_seed(self.ctx.seed, self.ctx.rank, step) ^ _MIX_TAG
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        return g, np.random.default_rng(seed)

    def forward_pass(self, model: nn.Module, batch: dict[str, Tensor], step: int) -> Any:
        """The release's passes, each with its own BatchNorm batch statistics: weak (no gradient),
        labeled, strong 0, the MixUp chunks (only chunk 0 moves the running statistics),
        the rotated strong 0. DA's running mean is updated here, before its use."""
        c = self.cfg
        net = extract_model_from_parallel(model)
        fmt = torch.channels_last if batch.get("channels_last") else torch.contiguous_format

        def run(x: Tensor) -> Any:
            return model(x.contiguous(memory_format=fmt))

        x_lb, y_lb = batch["x_lb"], batch["y_lb"]
        x_w, x_s0, x_s1 = batch["x_w"], batch["x_s"], batch["x_s1"]
        b, u = x_lb.shape[0], x_w.shape[0]
        g, rng = self._draws(step, x_lb.device)

        with torch.no_grad(), frozen_bn_stats(net):
            out_w = run(x_w)
            probs_w = out_w.logits.float().softmax(-1)
            self.p_model.copy_(
                da_update(self.p_model, self.da_ready, self.ctx.gather(probs_w), c.da_momentum)
            )
            self.da_ready.fill_(True)
            q = sharpen(distribution_align(probs_w, self.p_model, self.p_target), c.temperature)
        heads_w = net.head_outputs(out_w.feat)  # heads train on the detached weak feature

        with frozen_bn_stats(net):  # (the release also runs f(u^s1) here; nothing reads it)
            out_lb, out_s0 = run(x_lb), run(x_s0)

        classes = torch.arange(self.num_classes, device=y_lb.device)
        onehot = (
            y_lb[:, None] == classes
        ).float()  # F.one_hot checks the range: a host sync on CUDA
        perm = torch.randperm(b + 3 * u, generator=g, device=g.device)
        mixed_x, mixed_y = mixup(
            torch.cat([x_lb, x_s0, x_s1, x_w]),
            torch.cat([onehot, q, q, q]),
            mixup_lambda(c.mixup_alpha, rng),
            perm,
        )
        chunks = mixed_x.split(b)
        mixed_logits = [run(chunks[0]).logits]
        with frozen_bn_stats(net):
            mixed_logits += [run(ch).logits for ch in chunks[1:]]

        logits_rot = turns = None
        if c.lambda_rot > 0:
            turns = torch.randint(0, 4, (u,), generator=g, device=g.device)
            with frozen_bn_stats(net):
                logits_rot = run(rotate_quarter_turns(x_s0, turns)).logits_rot

        rows = type(out_lb)(*(torch.cat(t) for t in zip(out_lb, heads_w, out_s0)))
        return ReMixMatchOutput(
            rows,
            mixed_logits=mixed_logits,
            mixed_targets=mixed_y,
            targets_ulb=q,
            logits_rot=logits_rot,
            rot_turns=turns,
        )

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int, algo: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg
        b, u = self.sizes(batch)
        loss, logs = remixmatch_loss(
            out.mixed_logits[0],
            torch.cat(out.mixed_logits[1:]),
            out.mixed_targets,
            out.logits[b + u : b + 2 * u],
            out.targets_ulb,
            out.logits_rot,
            out.rot_turns,
            unsup_ramp(step, total_steps, c.unsup_warmup),
            c.lambda_u,
            c.lambda_u1,
            c.lambda_rot,
        )
        return loss, logs

    def diagnostics(self) -> dict[str, Any]:
        """DA's running mean of the unlabeled predictions (what the targets are divided by)."""
        return {"da_p_model": [round(v, 6) for v in self.p_model.double().tolist()]}
