"""BaCon (Feng et al., AAAI 2024): a balanced feature-level contrastive term over a base (+ ABC).

Each anchor z_i is pulled toward its class center c_{a_i} (from the memory bank, no gradient) with a
class-dependent temperature (Balanced Temperature Adjusting) and pushed from the batch's reliable
negatives of its class (Reliable Negative Selection). See docs/method.md ("Losses"): every formula below is from
there, computed with a few matrix products instead of loops over classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bacon_zoo.config import FRACTION, Range, above, at_least
from bacon_zoo.errors import UserError
from bacon_zoo.models.bacon_net import Head

from .bank import MemoryBank, WritePlan
from .base import Plugin, scaled
from .fixmatch import pseudo_labels
from .registry import register


def bta_temperatures(
    class_counts: Tensor, progress: float | Tensor, tau0: float = 0.1, eta: float = 0.005
) -> Tensor:
    """tau_k = tau0 * (1 - eta * (1 - progress)^2 * sqrt(n_k / max_m n_m)).

    Frequent classes get a slightly lower temperature (a sharper pull to their center) early on; the
    adjustment fades to tau0 as progress -> 1. progress is clipped to [0, 1]; an all-empty bank
    (max n = 0) gives tau0 everywhere.
    """
    # integer counts become float32 in the division (no cast of their own); float ones are cast
    n = class_counts.float() if class_counts.is_floating_point() else class_counts
    ratio = n / n.max().clamp_min(1e-12)  # counts are >= 0: an all-empty bank gives 0 / 1e-12 = 0
    if isinstance(progress, Tensor):
        fade = (1.0 - progress.to(ratio).clamp(0.0, 1.0)) ** 2
    else:  # a Python number stays on the host: no tensor is made from it (a copy on a GPU)
        fade = (1.0 - min(max(float(progress), 0.0), 1.0)) ** 2
    return tau0 * (1.0 - eta * fade * ratio.sqrt())


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """bool [n, K]; `F.one_hot` reads min() and max() back to the host on the CPU to check them."""
    return labels.long().unsqueeze(1) == torch.arange(num_classes, device=labels.device)


def reliable_negatives(
    anchor_labels: Tensor,
    is_labeled: Tensor,
    topk: Tensor,
    num_classes: int,
    own: Tensor | None = None,
) -> Tensor:
    """neg[k, j]: is sample j a negative of class k?  [K, n] bool.

    E_k = {labeled j: y_j != k} u {unlabeled j: k not in topk_j}, and never a sample whose own
    (pseudo-)label is k, so self-pairs cannot enter nu. `topk` = the pseudo-label alone
    ([n, 1]) gives plain label-based negatives (RNS off). `own`: the labels' one-hot [n, K] bool, if
    the caller has it.
    """
    n = anchor_labels.numel()
    own = _one_hot(anchor_labels, num_classes) if own is None else own  # [n, K]
    in_topk = torch.zeros(n, num_classes, dtype=torch.bool, device=anchor_labels.device)
    if topk.numel():
        in_topk.scatter_(1, topk.long(), True)
    excluded = own | (in_topk & ~is_labeled.bool()[:, None])
    return ~excluded.T


def bacon_contrastive_terms(
    feats: Tensor,
    anchor_labels: Tensor,
    is_labeled: Tensor,
    topk: Tensor,
    centers: Tensor,
    tau: Tensor,
    tau0: float = 0.1,
    neg_scale: float = 64.0,
    center_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-anchor losses l_i [n] and `usable` [n] (the anchor's class has a valid center and a
    non-empty negative set in this batch). Unusable anchors get a finite dummy loss.

    Computed in float32 (float64 inputs stay float64) with autocast off, and in a shifted log
    domain: every exponent is reduced by m = max(1/tau0, max_k 1/tau_k) >= any cos/tau, so nothing
    overflows whatever tau0; -log(pi / (pi + s nu + 1e-8)) is unchanged by the shift.
    """
    dtype, num_classes = _compute_dtype(feats), centers.shape[0]
    own = _one_hot(anchor_labels, num_classes)  # [n, K] bool
    neg = reliable_negatives(anchor_labels, is_labeled, topk, num_classes, own).to(dtype)
    return contrastive_terms(
        feats, anchor_labels, own.to(dtype), neg, centers, tau, tau0, neg_scale, center_valid
    )


def _compute_dtype(feats: Tensor) -> torch.dtype:
    """float32, or float64 for float64 features (torch.promote_types would be one more op)."""
    return torch.float64 if feats.dtype == torch.float64 else torch.float32


def _constant(t: Tensor) -> Tensor:
    """t without gradient: t itself when it has none (a detach is one more op)."""
    return t.detach() if t.requires_grad else t


class _Normalize(torch.autograd.Function):
    """F.normalize(x, dim=1) (eps 1e-12) with a shorter backward of the same float values.

    Autograd runs the division, the clamp and the norm as three backward nodes, 15 ops (x / d twice,
    a where for the clamp, a masked_fill for a zero norm, an expand). With n = |x|, d = max(n, eps)
    and y = x / d, the gradient is g / d + y * sum(-g * (y / d)) over the rows with n > eps: torch's
    formulas for the three, rounded in their order (where n > eps, x / n is y; the other rows get no
    norm gradient), in 9 ops.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        n = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        d = n.clamp_min(1e-12)
        ctx.save_for_backward(x, n, d)
        return x / d

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        x, n, d = ctx.saved_tensors
        y = x / d
        g_norm = (-g * (y / d)).sum(1, keepdim=True).masked_fill(n <= 1e-12, 0.0)
        return g / d + g_norm * y


def _normalize(x: Tensor) -> Tensor:
    """F.normalize(x, dim=1): the same values and gradients, in fewer ops (`_Normalize`)."""
    return _Normalize.apply(x)


def batch_negatives(
    anchor_labels: Tensor, num_labeled: int, topk: Tensor, num_classes: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(one-hot labels [n, K], `reliable_negatives` [K, n]) as 0/1 floats for a batch whose first
    `num_labeled` anchors are the labeled ones and whose `topk` [n - num_labeled, k] holds the
    others' top-k: scatters on the layout BaCon's batch has, in fewer ops than the general masks."""
    a = anchor_labels.long()[:, None]
    onehot = torch.zeros(a.shape[0], num_classes, dtype=dtype, device=a.device).scatter_(1, a, 1.0)
    excluded = onehot.clone()  # own class, and the unlabeled anchors' top-k
    excluded[num_labeled:].scatter_(1, topk.long(), 1.0)
    return onehot, (1.0 - excluded).T


def contrastive_terms(
    feats: Tensor,
    anchor_labels: Tensor,
    onehot: Tensor,
    neg: Tensor,
    centers: Tensor,
    tau: Tensor,
    tau0: float = 0.1,
    neg_scale: float = 64.0,
    center_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`bacon_contrastive_terms` given the anchors' one-hot labels [n, K] and the negatives [K, n]
    as 0/1 floats of the compute dtype (`batch_negatives` or `reliable_negatives`)."""
    dtype = onehot.dtype
    num_classes = centers.shape[0]
    with torch.autocast(device_type=feats.device.type, enabled=False):
        valid_c = (
            torch.ones(num_classes, dtype=torch.bool, device=feats.device)
            if center_valid is None
            else center_valid.to(feats.device).bool()
        )
        z = _normalize(feats.to(dtype))
        c = _constant(centers).to(device=feats.device, dtype=dtype)
        c = _normalize(torch.where(valid_c[:, None], c, torch.zeros_like(c)))
        tau = _constant(tau).to(device=feats.device, dtype=dtype)
        a = anchor_labels.long()

        shift = tau.min().reciprocal().clamp_min(1.0 / tau0)  # max(1 / min tau, 1 / tau0)
        log_pi = (z * c[a]).sum(1) / tau[a] - shift  # log pi_i - m
        sim = torch.exp(z @ z.T / tau0 - shift)  # exp(cos/tau0 - m), [n, n]

        neg_sum = ((onehot.T @ sim) * neg).sum(1)  # [K]: sum over {i: a_i = k} x E_k
        pairs = onehot.sum(0) * neg.sum(1)  # [K]: |{i: a_i = k}| * |E_k|
        nu = neg_sum / pairs.clamp_min(1.0)

        eps = torch.exp(math.log(1e-8) - shift)
        rest = (neg_scale * nu[a] + eps).clamp_min(torch.finfo(dtype).tiny)
        losses = torch.logaddexp(log_pi, rest.log()) - log_pi
        usable = (valid_c & (pairs > 0))[a]
    return losses, usable


def bacon_contrastive_loss(
    feats: Tensor,
    anchor_labels: Tensor,
    is_labeled: Tensor,
    topk: Tensor,
    selected: Tensor,
    centers: Tensor,
    tau: Tensor,
    tau0: float = 0.1,
    neg_scale: float = 64.0,
    center_valid: Tensor | None = None,
) -> Tensor:
    """L_con = sum_i s_i l_i / (sum_i s_i + 1e-8), l_i = -log(pi_i / (pi_i + neg_scale nu_{a_i} + 1e-8)).

    feats [n, d] anchor projections (gradient flows into anchors and negatives); anchor_labels [n];
    is_labeled [n] bool; topk [n, k] the ABC head's top-k classes (ignored on labeled rows);
    selected [n] bool; centers [K, d] (constants); tau [K] positive-term temperatures;
    center_valid [K] bool. Anchors whose class has no valid center or no negative in the batch drop
    out of numerator and count alike, so the loss is never NaN (0 if no anchor is left).
    """
    losses, usable = bacon_contrastive_terms(
        feats, anchor_labels, is_labeled, topk, centers, tau, tau0, neg_scale, center_valid
    )
    return reduce_anchors(losses, usable & selected.to(usable.device).bool())


def reduce_anchors(losses: Tensor, keep: Tensor, count: Tensor | None = None) -> Tensor:
    """sum_i keep_i l_i / (sum_i keep_i + 1e-8): the release's selected-anchor mean, 0 if none.
    `count`: sum_i keep_i in the losses' dtype, when the caller has it (it logs it)."""
    count = torch.sum(keep, dtype=losses.dtype) if count is None else count
    return (keep * losses).sum() / (count + 1e-8)


@dataclass
class BaconConfig:
    """Every constant of BaCon's contrastive term; defaults are the latest release's values."""

    # projection size d (32 in the first release)
    proj_dim: int = field(default=16, metadata={"range": at_least(1)})
    # base temperature; negatives always use it
    tau0: float = field(default=0.1, metadata={"range": above(0)})
    # BTA strength (below 1 keeps every class temperature positive)
    eta: float = field(default=0.005, metadata={"range": Range(0.0, 1.0, hi_open=True)})
    # Reliable Negative Selection: k not in top-k of q(u^w)
    topk: int = field(default=3, metadata={"range": at_least(1)})
    # constant factor on the class-level negative mean
    neg_scale: float = field(default=64.0, metadata={"range": above(0)})
    # anchor selection and feature-bank writes
    anchor_threshold: float = field(default=0.98, metadata={"range": FRACTION})
    # label-bank writes for unlabeled samples
    bank_threshold: float = field(default=0.95, metadata={"range": FRACTION})
    # contrastive term active when step > start * steps (1/3 in the first release)
    start: float = field(
        default=0.5,
        metadata={"range": Range(0.0, 1.0, hint="; it is a fraction of the total steps")},
    )
    # BTA progress = step / (bta_horizon * steps), clipped to 1
    bta_horizon: float = field(
        default=1.0, metadata={"range": above(0, hint="; it is a multiple of the total steps")}
    )
    weight: float = field(default=1.0, metadata={"range": at_least(0)})  # loss weight of L_con
    rns: bool = True  # Reliable Negative Selection; off = every other-class sample is a negative
    bta: bool = True  # Balanced Temperature Adjusting; off = fixed tau0
    official_quirks: bool = False  # the release's three quirks (docs/method.md, "Memory banks")


@register(aliases={"bacon": "fixmatch+abc+bacon"})
class BaCon(Plugin):
    """L_con on the projection g after `start * T` steps, anchored on the algorithm's balanced head
    (ABC's h_a, ACR's balanced branch); banks are filled from step 0.

    Per step: centers are read (as left by the previous step), the label bank is written, the loss
    is computed; `after_step` writes the feature bank, which moves the centers for the next step.
    """

    name = "bacon"
    kind = "term"
    role = "contrastive"
    Config = BaconConfig
    title = "BaCon's balanced contrastive term"
    summary = (
        "BaCon's balanced feature-level contrastive loss (class centers as positives, reliable "
        "negative selection, balanced temperatures)"
    )
    needs_balanced_head = True
    reported_with = ("fixmatch", "remixmatch")
    threshold_field = "bank_threshold"
    resync_every = 1000  # full center recompute every this many steps (float32 drift); 0 = never

    def __init__(self, cfg: BaconConfig, ctx: Any) -> None:
        super().__init__(cfg, ctx)
        self.bank = MemoryBank(
            ctx.num_classes,
            ctx.num_labeled,
            ctx.num_unlabeled,
            cfg.proj_dim,
            quirks=cfg.official_quirks,
            gather=ctx.gather,
        )
        # this step's feature writes: (slots, z, selected, the label write's plan), for after_step
        self._pending: list[tuple[Tensor, Tensor, Tensor, WritePlan | None]] = []

    @classmethod
    def heads(cls, cfg: BaconConfig) -> tuple[Head, ...]:
        return (Head("proj", dim=cfg.proj_dim, kind="embedding", description="projection g"),)

    @classmethod
    def check_data(cls, cfg: BaconConfig, num_classes: int) -> None:
        if cfg.rns and cfg.topk > num_classes:
            raise UserError(
                f"bacon.topk {cfg.topk} is above the number of classes ({num_classes}); Reliable "
                "Negative Selection needs classes outside the top-k: use "
                f"--set bacon.topk={max(1, num_classes - 1)} or less"
            )

    def temperatures(self, step: int, total_steps: int, device: torch.device | str) -> Tensor:
        """BTA over the label bank's class counts, or a fixed tau0 with bta=False."""
        c = self.cfg
        if not c.bta:
            return torch.full((self.num_classes,), c.tau0, device=device)
        progress = min(1.0, step / max(c.bta_horizon * total_steps, 1e-12))
        return bta_temperatures(self.bank.class_counts(), progress, c.tau0, c.eta).to(device)

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int, algo: Any
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        c = self.cfg
        b, u = self.sizes(batch)
        balanced = getattr(out, algo.eval_output)  # the balanced head's logits (ABC's h_a, ...)
        if out.proj.shape[1] != self.bank.dim:
            raise ValueError(
                f"projection has {out.proj.shape[1]} dims, bank expects {self.bank.dim}"
            )
        z = out.proj[: b + u]  # labeled + weak views: the anchors (strong views unused)

        with torch.no_grad():
            # labeled and weak rows in one softmax (row-wise: the values of two separate calls)
            probs, conf, labels = pseudo_labels(balanced[: b + u])
            selected = conf >= c.anchor_threshold
            labels[:b] = batch["y_lb"]  # the anchors' labels: true, then pseudo-labels
            if c.official_quirks:  # quirk 1: raw logits vs probabilities
                ok_w = balanced[b : b + u].float().max(1).values >= c.bank_threshold
                # quirk 3: labeled writes only if some unlabeled sample passed
                ok = torch.cat([ok_w.any().expand(b), ok_w])
            else:
                ok = conf >= c.bank_threshold
                ok[:b].fill_(True)  # labeled samples always write their label
            slots = self.bank.slots(batch["idx_lb"], batch["idx_ulb"])

        active = step > c.start * total_steps
        # centers as left by step t-1 (read before this step's label writes move them)
        centers, valid = self.bank.centers() if active else (None, None)
        plan = self.bank.update_labels(slots, labels, ok)
        self._pending.append((slots, z.detach(), selected, plan))

        if active:
            k = min(c.topk, self.num_classes)
            topk_w = probs[b:].topk(k, dim=1).indices if c.rns else labels[b:, None]
            onehot, neg = batch_negatives(labels, b, topk_w, self.num_classes, _compute_dtype(z))
            tau = self.temperatures(step, total_steps, z.device)
            losses, usable = contrastive_terms(
                z, labels, onehot, neg, centers, tau, c.tau0, c.neg_scale, valid
            )
            keep = selected & usable
            n_used = torch.sum(keep, dtype=losses.dtype)
            loss_con = reduce_anchors(losses, keep, n_used)
            n_used, n_centers = n_used.float(), torch.sum(valid, dtype=torch.float32)
            used = n_used / (b + u)
        else:
            loss_con = used = n_used = n_centers = z.new_zeros((), dtype=torch.float32)

        n_slots = self.bank.labels.numel()
        logs = dict(
            loss_con=loss_con.detach(),
            anchors=torch.mean(selected, dtype=torch.float32),
            anchors_used=used,
            bank_fill=self.bank.class_counts().sum() / max(n_slots, 1),
            centers_valid=torch.mean(self.bank.counts > 0, dtype=torch.float32),
            con_anchors=n_used,  # anchors in L_con this step (0: the term did not engage)
            con_centers=n_centers,  # valid class centers L_con could use this step
        )
        return (scaled(c.weight, loss_con) if active else None), logs

    def after_step(self, step: int, total_steps: int) -> None:
        """Write the feature bank with this step's anchors (all pending micro-batches, in order)."""
        # a plan holds the slots as its label write left them: reused when no other write followed
        reuse = len(self._pending) == 1
        for slots, z, selected, plan in self._pending:
            self.bank.update_features(slots, z, selected, plan if reuse else None)
        self._pending.clear()
        if self.resync_every and (step + 1) % self.resync_every == 0:
            self.bank.resync()
