"""Training-time diagnostics of the feature space and of the pseudo-labels, cheap enough for every eval.

BaCon's claim is about geometry: class centers that settle, tight classes, and tail classes that the
pseudo-labels do not starve. These numbers watch exactly that while training runs:

- pseudo-label precision / recall per class over the last evaluation window (confusion[true, pseudo]
  of the weak unlabeled views, from the evaluation head, accumulated on device without host syncs);
- center drift: how far each memory-bank class center moved since the previous evaluation;
- intra-class spread: mean cosine distance of the bank's features to their class center;
- the label bank's class counts n_k (which drive BTA), split into labeled and unlabeled slots, next to
  the true counts, and the precision of the bank's unlabeled entries.

The math is pure functions on tensors (the bank's own statistics come from `MemoryBank`); this is
training code and lives with the trainer. `TrainingDiagnostics` is the small stateful wrapper the trainer
drives with `update(out, batch)` every step and `compute(algo)` at every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bacon_zoo.algorithms.bank import MemoryBank
from bacon_zoo.models.bacon_net import output_field

# ---------------------------------------------------------------------------------------------
# pure functions


def center_drift(prev_centers: Tensor, centers: Tensor, valid: Tensor) -> Tensor:
    """Cosine distance 1 - cos(c_k^prev, c_k) per class [K]; NaN where `valid` is False.

    Cosine because the contrastive loss only sees directions (it normalises z and c). It equals half
    the squared L2 distance of the normalised centers, 0.5 * ||c^prev/|c^prev| - c/|c| ||^2, so it lies in
    [0, 2]. `valid` should say that both centers exist (prev_valid & valid): an empty center is a zero
    vector with no direction.
    """
    a = F.normalize(prev_centers.float(), dim=-1)
    b = F.normalize(centers.float(), dim=-1)
    d = (1.0 - (a * b).sum(-1)).clamp_min(0.0)  # float rounding can give -1e-8
    return torch.where(valid.bool(), d, torch.full_like(d, math.nan))


def pseudo_label_quality(confusion: Tensor, support: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(precision [K], recall [K]) from confusion[true, pseudo] of the confident pseudo-labels.

    precision_k = confusion[k, k] / sum_t confusion[t, k]  (how many pseudo-labels k are right);
    recall_k    = confusion[k, k] / support_k, where support_k is the number of samples of true class
    k seen (confident or not) when given, else the row sum (the confident ones only). NaN where the
    denominator is 0.
    """
    c = confusion.double()
    tp = c.diagonal()
    col = c.sum(0)
    row = c.sum(1) if support is None else support.double()
    nan = torch.full_like(tp, math.nan)
    precision = torch.where(col > 0, tp / col.clamp_min(1.0), nan)
    recall = torch.where(row > 0, tp / row.clamp_min(1.0), nan)
    return precision, recall


def split_joint(joint: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """joint[(K+1)^2] -> (confusion [K*K + 1], seen [K + 1], confident [K + 1]), each with its trash
    bin last: the pairs that are not (known, confident), the unknown truths, the unsure pseudo-labels."""
    j = joint.view(k + 1, k + 1)
    block = j[:k, :k].reshape(-1)
    confusion = torch.cat([block, (joint.sum() - block.sum())[None]])
    return confusion, j.sum(1), j.sum(0)


def join_counts(confusion: Tensor, seen: Tensor, confident: Tensor) -> Tensor:
    """The inverse of `split_joint`: joint[(K+1)^2] from the three counters."""
    k = seen.shape[0] - 1
    j = torch.zeros(k + 1, k + 1, dtype=torch.long, device=confusion.device)
    j[:k, :k] = confusion[: k * k].view(k, k)
    j[:k, k] = seen[:k] - j[:k, :k].sum(1)  # known truth, unsure pseudo-label
    j[k, :k] = confident[:k] - j[:k, :k].sum(0)  # unknown truth, confident pseudo-label
    j[k, k] = seen[k] - j[k, :k].sum()
    return j.view(-1)


# ---------------------------------------------------------------------------------------------
# the stateful wrapper the trainer drives


def _json_list(t: Tensor, scale: float = 1.0, digits: int = 6) -> list[float | None]:
    """A JSON-safe list: NaN -> None, floats rounded (metrics.jsonl stays small and valid JSON)."""
    return [None if math.isnan(v) else round(scale * v, digits) for v in t.double().tolist()]


def _json_float(x: float, digits: int = 6) -> float | None:
    return None if math.isnan(x) else round(x, digits)


def _identity(t: Tensor) -> Tensor:
    return t


class TrainingDiagnostics:
    """Pseudo-label and memory-bank diagnostics, one window per evaluation.

    diag = TrainingDiagnostics(K, algo.eval_head, threshold, labeled_counts, unlabeled_counts, N_L, N_U)
    diag.update(out, batch)        # every step: on-device counters, no host sync
    record["diagnostics"] = diag.compute(algo)   # every evaluation: lists, floats; resets the window

    Pseudo-labels are those of the evaluation head (`logits_<head>`, `logits` for "main") on the weak
    unlabeled views, confident when max softmax >= `threshold`. Under several processes `compute` sums
    the windows of all ranks with `algo.gather` (a collective: call it on every rank, as the evaluation
    is). `state_dict`/`load_state_dict` make a resume exact; registered with the checkpoint or not, a
    checkpoint taken right after an evaluation (checkpoint_every a multiple of eval_every) has an empty
    window, so only the center-drift reference and the seen true labels are at stake.
    """

    def __init__(
        self,
        num_classes: int,
        eval_head: str,
        threshold: float,
        labeled_counts: Sequence[int],
        unlabeled_counts: Sequence[int],
        num_labeled: int,
        num_unlabeled: int | None = None,
        rank: int = 0,
    ) -> None:
        if not eval_head.isidentifier():
            raise ValueError(f"eval_head must be a head name, got {eval_head!r}")
        k = int(num_classes)
        self.num_classes, self.eval_head, self.threshold = k, eval_head, float(threshold)
        self.labeled_counts = [int(c) for c in labeled_counts]
        self.unlabeled_counts = [int(c) for c in unlabeled_counts]
        self.num_labeled = int(num_labeled)
        # unlabeled samples with unknown labels (-1) are not in unlabeled_counts: pass num_unlabeled
        self.num_unlabeled = int(
            num_unlabeled if num_unlabeled is not None else sum(self.unlabeled_counts)
        )
        self.rank = rank
        # one counter for the window, joint[true, pseudo] over (K + 1) x (K + 1) bins, the last row
        # for an unknown truth and the last column for a pseudo-label below the threshold: the
        # confusion matrix, the samples seen per true class and the confident pseudo-labels per
        # class are its block, row sums and column sums, so a step is one unconditional index_add_
        # (torch.bincount would read max() back to the host on CUDA)
        self.joint = torch.zeros((k + 1) * (k + 1), dtype=torch.long)
        # the true label of each unlabeled sample seen, and a trash slot
        self.true_ulb = torch.full((self.num_unlabeled + 1,), -1, dtype=torch.long)
        self.prev_centers: Tensor | None = None
        self.prev_valid: Tensor | None = None
        self.steps = 0
        # BaCon's contrastive term: [steps it engaged, anchors summed, valid centers summed] over them
        self.con = torch.zeros(3, dtype=torch.float64)
        self._consts: tuple[Tensor, Tensor] | None = None  # (ones [U], K), on the outputs' device

    # -- device handling: follow the model's outputs lazily (a no-op once there)
    def to(self, device: torch.device | str) -> TrainingDiagnostics:
        for name in ("joint", "true_ulb", "prev_centers", "prev_valid", "con"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self._consts = None
        return self

    def _constants(self, u: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(ones [u], K) on `device`: made once, not every step."""
        if self._consts is None or self._consts[0].shape[0] != u:
            k = torch.tensor(self.num_classes, device=device)
            self._consts = (torch.ones(u, dtype=torch.long, device=device), k)
        return self._consts

    @torch.no_grad()
    def update(
        self, out: Any, batch: dict[str, Tensor], logs: dict[str, Tensor] | None = None
    ) -> None:
        """Count this step's confident pseudo-labels of the weak unlabeled views and, from the
        algorithm's logs, whether BaCon's contrastive term engaged (no host sync)."""
        b, u = int(batch["y_lb"].shape[0]), int(batch["idx_ulb"].shape[0])
        logits = getattr(out, output_field(self.eval_head))
        if self.joint.device != logits.device:
            self.to(logits.device)
        k, n, dev = self.num_classes, self.num_unlabeled, logits.device
        ones, unsure = self._constants(u, dev)
        conf, pseudo = logits[b : b + u].float().softmax(1).max(1)
        pseudo = torch.where(conf >= self.threshold, pseudo, unsure)  # K: not confident (or NaN)
        y = batch["y_ulb"].to(dev).long()
        true = y.clamp(-1, k).remainder(k + 1)  # -1 (unknown) and anything outside [0, K) -> K
        self.joint.index_add_(0, torch.add(pseudo, true, alpha=k + 1), ones)
        # the true label of each unlabeled sample seen; an index outside [0, N_U) goes to the trash
        # slot (never read)
        self.true_ulb[batch["idx_ulb"].to(dev).long().clamp(-1, n).remainder(n + 1)] = y
        if logs is not None and "con_anchors" in logs:
            anchors, engaged = logs["con_anchors"], logs["con_anchors"] > 0
            self.con += torch.stack([engaged, anchors, logs["con_centers"]]) * engaged
        self.steps += 1

    @torch.no_grad()
    def compute(self, algo: Any = None) -> dict[str, Any]:
        """The window's numbers as JSON-ready lists/floats (precision/recall in %), then reset it."""
        gather: Callable[[Tensor], Tensor] = getattr(algo, "gather", None) or _identity
        k = self.num_classes

        def total(t: Tensor) -> Tensor:  # sum over ranks
            return gather(t[None]).sum(0)

        joint = total(self.joint).view(k + 1, k + 1)
        confusion = joint[:k, :k]
        seen_all = joint.sum(1)  # the last bin: samples whose true label is unknown
        seen, confident = seen_all[:k], joint[:, :k].sum(0)
        precision, recall = pseudo_label_quality(confusion, support=seen)
        n_seen, n_conf_known = int(seen_all.sum()), int(confusion.sum())
        out: dict[str, Any] = {
            "window_steps": int(self.steps),
            "threshold": self.threshold,
            "pl_precision": _json_list(precision, 100.0, 4),
            "pl_recall": _json_list(recall, 100.0, 4),
            "pl_confident": confident.tolist(),
            "pl_seen": seen.tolist(),
            "pl_accuracy": _json_float(
                100.0 * float(confusion.diagonal().sum()) / n_conf_known
                if n_conf_known
                else math.nan,
                4,
            ),
            # share of the weak unlabeled views with a confident pseudo-label (known truth or not)
            "pl_mask": _json_float(float(confident.sum()) / n_seen if n_seen else math.nan),
        }
        # all ranks keep the union of the true labels seen, so a checkpoint of rank 0 holds them all
        self.true_ulb = gather(self.true_ulb[None]).max(0).values
        bank = getattr(algo, "bank", None)
        if bank is not None:
            out |= self._bank_numbers(bank)
            con = total(self.con)
            steps = int(con[0])
            out |= {  # the window's steps with L_con > 0, and its mean anchors / centers then
                "con_steps": steps,
                "con_anchors": _json_float(float(con[1]) / steps if steps else math.nan),
                "con_centers": _json_float(float(con[2]) / steps if steps else math.nan),
            }
        self.con.zero_()
        self.joint.zero_()
        self.steps = 0
        return out

    def _bank_numbers(self, bank: MemoryBank) -> dict[str, Any]:
        k = self.num_classes
        centers, valid = bank.centers()
        centers = centers.detach().float()
        if self.prev_centers is not None and self.prev_centers.shape == centers.shape:
            prev = self.prev_centers.to(centers.device)
            drift = center_drift(prev, centers, valid & self.prev_valid.to(valid.device))
        else:
            drift = torch.full((k,), math.nan)
        self.prev_centers, self.prev_valid = centers.clone(), valid.clone()
        spread = bank.intra_class_spread()
        bank_l, bank_u = bank.label_counts_by_part()
        # precision of the unlabeled label-bank entries against the true labels seen so far
        idx_u = bank.unlabeled_labels()
        m = min(idx_u.numel(), self.num_unlabeled)
        truth = self.true_ulb[:m].to(idx_u.device)
        ok = (idx_u[:m] >= 0) & (truth >= 0)
        hits = torch.bincount(idx_u[:m][ok], weights=(idx_u[:m] == truth)[ok].double(), minlength=k)
        judged = torch.bincount(idx_u[:m][ok], minlength=k).double()
        bank_precision = torch.where(
            judged > 0, hits / judged.clamp_min(1.0), torch.full_like(judged, math.nan)
        )
        return {
            "center_drift": _json_list(drift.cpu()),
            "center_valid": valid.tolist(),
            "intra_spread": _json_list(spread.cpu()),
            "bank_labeled": bank_l.tolist(),
            "bank_unlabeled": bank_u.tolist(),
            "bank_precision": _json_list(bank_precision.cpu(), 100.0, 4),
            "labeled_counts": self.labeled_counts,
            "unlabeled_counts": self.unlabeled_counts,
        }

    # -- checkpointing (accelerator.register_for_checkpointing accepts any object with these two)
    def state_dict(self) -> dict[str, Any]:
        """The window as three counters with a trash bin each (the checkpoint format): confusion
        [K*K + 1], seen [K + 1] and confident [K + 1]."""
        confusion, seen, confident = split_joint(self.joint, self.num_classes)
        return {
            "confusion": confusion,
            "seen": seen,
            "confident": confident,
            "true_ulb": self.true_ulb.clone(),
            "prev_centers": None if self.prev_centers is None else self.prev_centers.clone(),
            "prev_valid": None if self.prev_valid is None else self.prev_valid.clone(),
            "steps": self.steps,
            "con": self.con.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; ranks other than 0 restart their window (only rank 0's state is checkpointed)."""
        dev, k = self.joint.device, self.num_classes
        shapes = {"confusion": k * k + 1, "seen": k + 1, "confident": k + 1}
        shapes["true_ulb"] = self.true_ulb.shape[0]
        for name, size in shapes.items():
            if tuple(state[name].shape) != (size,):
                raise ValueError(
                    f"diagnostics state '{name}' has shape {tuple(state[name].shape)}, "
                    f"expected {(size,)}"
                )
        self.joint = join_counts(state["confusion"], state["seen"], state["confident"]).to(dev)
        self.true_ulb = state["true_ulb"].to(dev).clone()
        self.prev_centers = state["prev_centers"]
        self.prev_valid = state["prev_valid"]
        self.steps = int(state["steps"])
        self.con = state.get("con", torch.zeros(3, dtype=torch.float64)).to(dev).clone()
        if self.rank != 0:
            self.con.zero_()
            self.joint.zero_()
            self.steps = 0
