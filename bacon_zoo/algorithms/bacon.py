"""BaCon (Feng et al., AAAI 2024): ABC + a balanced feature-level contrastive loss.

Each anchor z_i is pulled toward its class center c_{a_i} (from the memory bank, no gradient) with a
class-dependent temperature (Balanced Temperature Adjusting) and pushed from the batch's reliable
negatives of its class (Reliable Negative Selection). See docs/method.md ("Losses"): every formula below is from
there, computed with a few matrix products instead of loops over classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .abc import ABC
from .bank import MemoryBank


def bta_temperatures(
    class_counts: Tensor, progress: float | Tensor, tau0: float = 0.1, eta: float = 0.005
) -> Tensor:
    """tau_k = tau0 * (1 - eta * (1 - progress)^2 * sqrt(n_k / max_m n_m)).

    Frequent classes get a slightly lower temperature (a sharper pull to their center) early on; the
    adjustment fades to tau0 as progress -> 1. progress is clipped to [0, 1]; an all-empty bank
    (max n = 0) gives tau0 everywhere.
    """
    n = class_counts.float()
    n_max = n.max()
    ratio = torch.where(n_max > 0, n / n_max.clamp_min(1e-12), torch.zeros_like(n))
    if isinstance(progress, Tensor):
        fade = (1.0 - progress.to(n).clamp(0.0, 1.0)) ** 2
    else:  # a Python number stays on the host: no tensor is made from it (a copy on a GPU)
        fade = (1.0 - min(max(float(progress), 0.0), 1.0)) ** 2
    return tau0 * (1.0 - eta * fade * ratio.sqrt())


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """bool [n, K]; `F.one_hot` reads min() and max() back to the host on the CPU to check them."""
    return labels.long().unsqueeze(1) == torch.arange(num_classes, device=labels.device)


def reliable_negatives(
    anchor_labels: Tensor, is_labeled: Tensor, topk: Tensor, num_classes: int
) -> Tensor:
    """neg[k, j]: is sample j a negative of class k?  [K, n] bool.

    E_k = {labeled j: y_j != k} u {unlabeled j: k not in topk_j}, and never a sample whose own
    (pseudo-)label is k, so self-pairs cannot enter nu. `topk` = the pseudo-label alone
    ([n, 1]) gives plain label-based negatives (RNS off).
    """
    n = anchor_labels.numel()
    own = _one_hot(anchor_labels, num_classes)  # [n, K]
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
    dtype = torch.promote_types(feats.dtype, torch.float32)
    num_classes = centers.shape[0]
    with torch.autocast(device_type=feats.device.type, enabled=False):
        valid_c = (
            torch.ones(num_classes, dtype=torch.bool, device=feats.device)
            if center_valid is None
            else center_valid.to(feats.device).bool()
        )
        z = F.normalize(feats.to(dtype), dim=1)
        c = centers.detach().to(device=feats.device, dtype=dtype)
        c = F.normalize(torch.where(valid_c[:, None], c, torch.zeros_like(c)), dim=1)
        tau = tau.detach().to(device=feats.device, dtype=dtype)
        a = anchor_labels.long()

        shift = tau.min().reciprocal().clamp_min(1.0 / tau0)  # max(1 / min tau, 1 / tau0)
        log_pi = (z * c[a]).sum(1) / tau[a] - shift  # log pi_i - m
        sim = torch.exp(z @ z.T / tau0 - shift)  # exp(cos/tau0 - m), [n, n]

        onehot = _one_hot(a, num_classes).to(dtype)  # [n, K]
        neg = reliable_negatives(a, is_labeled, topk, num_classes).to(dtype)  # [K, n]
        neg_sum = ((onehot.T @ sim) * neg).sum(1)  # [K]: sum over {i: a_i = k} x E_k
        pairs = onehot.sum(0) * neg.sum(1)  # [K]: |{i: a_i = k}| * |E_k|
        nu = neg_sum / pairs.clamp_min(1.0)

        eps = torch.exp(math.log(1e-8) - shift)
        rest = (neg_scale * nu[a] + eps).clamp_min(torch.finfo(dtype).tiny)
        losses = torch.logaddexp(log_pi, rest.log()) - log_pi
        usable = valid_c[a] & (pairs[a] > 0)
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


def reduce_anchors(losses: Tensor, keep: Tensor) -> Tensor:
    """sum_i keep_i l_i / (sum_i keep_i + 1e-8): the release's selected-anchor mean, 0 if none."""
    w = keep.to(losses.dtype)
    return (w * losses).sum() / (w.sum() + 1e-8)


class BaCon(ABC):
    """ABC + L_con after `cfg.bacon.start * T` steps; banks are filled from step 0.

    Per step: centers are read (as left by the previous step), the label bank is written, the loss
    is computed; `after_step` writes the feature bank, which moves the centers for the next step.
    """

    name = "bacon"
    eval_head = "abc"
    resync_every = 1000  # full center recompute every this many steps (float32 drift); 0 = never

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.cfg.bacon
        self.bank = MemoryBank(
            self.num_classes,
            self.num_labeled,
            self.num_unlabeled,
            c.proj_dim,
            quirks=c.official_quirks,
            gather=self.gather,
        )
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []

    def temperatures(self, step: int, total_steps: int, device: torch.device) -> Tensor:
        """BTA over the label bank's class counts, or a fixed tau0 with bta=False."""
        c = self.cfg.bacon
        if not c.bta:
            return torch.full((self.num_classes,), c.tau0, device=device)
        progress = min(1.0, step / max(c.bta_horizon * total_steps, 1e-12))
        return bta_temperatures(self.bank.class_counts(), progress, c.tau0, c.eta).to(device)

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg.bacon
        b, u = self.sizes(batch)
        loss_fm, logs = self.fixmatch_losses(out, batch)
        loss_abc, logs_abc, q_w = self.abc_losses(out, batch, step, total_steps)
        logs.update(logs_abc)
        if out.proj.shape[1] != self.bank.dim:
            raise ValueError(
                f"projection has {out.proj.shape[1]} dims, bank expects {self.bank.dim}"
            )
        z = out.proj[: b + u]  # labeled + weak views: the anchors (strong views unused)
        y_lb = batch["y_lb"]

        with torch.no_grad():
            abc_lb = out.logits_abc[:b].detach().float()
            conf_w, yhat_w = q_w.max(1)
            selected = torch.cat([abc_lb.softmax(1).max(1).values, conf_w]) >= c.anchor_threshold
            test_w = (
                out.logits_abc[b : b + u].detach().float().max(1).values
                if c.official_quirks
                else conf_w
            )
            ok_w = test_w >= c.bank_threshold  # quirk 1: raw logits vs probabilities
            ok_lb = torch.ones_like(y_lb, dtype=torch.bool)
            if c.official_quirks:  # quirk 3: labeled writes only if some unlabeled sample passed
                ok_lb = ok_lb & ok_w.any()
            labels = torch.cat([y_lb, yhat_w])
            slots = self.bank.slots(batch["idx_lb"], batch["idx_ulb"])

        active = step > c.start * total_steps
        # centers as left by step t-1 (read before this step's label writes move them)
        centers, valid = self.bank.centers() if active else (None, None)
        self.bank.update_labels(slots, labels, torch.cat([ok_lb, ok_w]))
        self._pending.append((slots, z.detach(), selected))

        if active:
            is_labeled = torch.arange(b + u, device=z.device) < b
            k = min(c.topk, self.num_classes)
            topk_w = q_w.topk(k, dim=1).indices if c.rns else yhat_w[:, None]
            topk = torch.cat([topk_w.new_zeros(b, topk_w.shape[1]), topk_w])
            tau = self.temperatures(step, total_steps, z.device)
            losses, usable = bacon_contrastive_terms(
                z, labels, is_labeled, topk, centers, tau, c.tau0, c.neg_scale, valid
            )
            loss_con = reduce_anchors(losses, selected & usable)
            used = (selected & usable).float().mean()
            n_used, n_centers = (selected & usable).sum().float(), valid.sum().float()
        else:
            loss_con = used = n_used = n_centers = z.new_zeros((), dtype=torch.float32)

        loss = loss_fm + self.cfg.abc.weight * loss_abc
        if active:
            loss = loss + c.weight * loss_con
        n_slots = self.bank.labels.numel()
        logs.update(
            loss=loss.detach(),
            loss_con=loss_con.detach(),
            anchors=selected.float().mean(),
            anchors_used=used.detach(),
            bank_fill=self.bank.class_counts().sum().float() / max(n_slots, 1),
            centers_valid=(self.bank.counts > 0).float().mean(),
            con_anchors=n_used,  # anchors in L_con this step (0: the term did not engage)
            con_centers=n_centers,  # valid class centers L_con could use this step
        )
        return loss, logs

    def after_step(self, step: int, total_steps: int) -> None:
        """Write the feature bank with this step's anchors (all pending micro-batches, in order)."""
        for slots, z, selected in self._pending:
            self.bank.update_features(slots, z, selected)
        self._pending.clear()
        if self.resync_every and (step + 1) % self.resync_every == 0:
            self.bank.resync()
