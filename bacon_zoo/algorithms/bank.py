"""BaCon's memory banks: one slot per training sample (labeled first, then unlabeled).

Centers c_k = mean of the feature bank over slots whose label-bank entry is k. The release recomputes
them from the whole bank every step (O(N K)); here per-class sums and counts are updated
incrementally -- each write subtracts the old contribution of the slots it changes and adds the new
one -- which gives the same centers in O(batch d). Writes are sync-free tensor ops: duplicate slots
in one write are resolved with a stable sort (the last masked write wins), never with boolean
indexing, so the host never waits on the device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Gather, _identity


def _sort_by_slot(slots: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(key, order): the entries sorted by slot, unmasked before masked, then by position (a stable
    sort of key = 2 slot + mask): each slot's last sorted entry decides it (the last masked one,
    else the last one)."""
    return torch.add(mask, slots, alpha=2).sort(stable=True)


def _last_writer(slots: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Resolve duplicate slots: returns (order, end, winner).

    `order` sorts the entries (`_sort_by_slot`); for each sorted entry, `end` is the sorted position
    of its slot's last entry and `winner` the original index of that entry. Every entry of a slot
    then writes the winner's value, so duplicate indices in `index_put_` carry identical values and
    the result is deterministic. A fixed number of ops (one stable sort, one binary search).
    """
    key, order = _sort_by_slot(slots, mask)
    end = torch.searchsorted(key, key | 1, right=True) - 1
    return order, end, order[end]


class WritePlan(NamedTuple):
    """What a label write leaves to the feature write of the same entries (`update_features(plan=)`):
    their slots in sorted order, where each slot's entries end, and those slots' state as the label
    write left it. Valid while nothing else writes the bank in between (BaCon: one pending write)."""

    slots: Tensor  # [m] sorted
    end: Tensor  # [m] the sorted position of the last entry of each entry's slot
    is_last: Tensor  # [m] bool: one entry per distinct slot
    labels: Tensor  # [m] the slots' labels
    feats: Tensor  # [m, d] their features
    written: Tensor  # [m] whether they hold a feature


def intra_class_spread(feats: Tensor, labels: Tensor, written: Tensor, num_classes: int) -> Tensor:
    """Mean cosine distance of the features of class k to their class center, per class [K].

    Uses the slots that hold a feature (`written`) and a label (>= 0); the center is their plain mean,
    as the bank keeps it. NaN for a class without such slots. Small = a tight class.
    """
    member = written.bool() & (labels >= 0)
    idx = labels.clamp_min(0).long()
    f = feats.float()
    w = member.float()
    sums = torch.zeros(num_classes, f.shape[1], device=f.device).index_add_(0, idx, f * w[:, None])
    counts = torch.zeros(num_classes, device=f.device).index_add_(0, idx, w)
    centers = F.normalize(sums / counts.clamp_min(1.0)[:, None], dim=1)
    dist = (1.0 - (F.normalize(f, dim=1) * centers[idx]).sum(1)).clamp_min(0.0)
    total = torch.zeros(num_classes, device=f.device).index_add_(0, idx, dist * w)
    spread = total / counts.clamp_min(1.0)
    return torch.where(counts > 0, spread, torch.full_like(spread, math.nan))


class MemoryBank(nn.Module):
    """Label bank, feature bank and incrementally kept class centers.

    quirks=True reproduces the release's feature bank (all-ones init, label-set-but-never-written
    slots averaged into the centers); quirks 1 and 3 concern what is written and live in `BaCon`.
    """

    def __init__(
        self,
        num_classes: int,
        num_labeled: int,
        num_unlabeled: int,
        dim: int,
        quirks: bool = False,
        gather: Gather | None = None,
    ) -> None:
        super().__init__()
        n = num_labeled + num_unlabeled
        self.num_classes, self.num_labeled, self.num_unlabeled = (
            num_classes,
            num_labeled,
            num_unlabeled,
        )
        self.dim, self.quirks = dim, quirks
        self.gather: Gather = gather if gather is not None else _identity
        self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("feats", torch.ones(n, dim) if quirks else torch.zeros(n, dim))
        self.register_buffer("written", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("sums", torch.zeros(num_classes, dim))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("label_counts", torch.zeros(num_classes, dtype=torch.long))
        # the sign of the [leaving, entering] rows of a write's updates (constants, not saved)
        self.register_buffer("_sign", torch.tensor([[-1.0], [1.0]]), persistent=False)
        self.register_buffer("_count_sign", torch.tensor([[-1], [1]]), persistent=False)

    def slots(self, idx_lb: Tensor, idx_ulb: Tensor) -> Tensor:
        """Bank slots of a batch: labeled idx_lb, unlabeled num_labeled + idx_ulb."""
        return torch.cat([idx_lb, idx_ulb + self.num_labeled]).long()

    def _member(self, labels: Tensor, written: Tensor) -> Tensor:
        """Does a slot count toward its class center?"""
        return (labels >= 0) & written if not self.quirks else labels >= 0

    def _gathered(
        self, slots: Tensor, mask: Tensor, labels: Tensor | None, feats: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Every rank's entries, in rank order, on the bank's device (one gather for the metadata)."""
        dev = self.labels.device
        if feats is not None:
            feats = feats.detach() if feats.requires_grad else feats  # (a detach is an op)
            feats = self.gather(feats.to(device=dev, dtype=self.feats.dtype))
        if self.gather is _identity:  # one process: no stacking, no copies
            labels = labels.to(dev).long() if labels is not None else None
            return slots.to(dev).long(), mask.to(dev).bool(), labels, feats
        meta = torch.stack(
            [slots.long(), mask.long(), labels.long() if labels is not None else slots.long()], 1
        ).to(dev)
        meta = self.gather(meta)  # every rank writes every rank's entries, in rank order
        return meta[:, 0], meta[:, 1].bool(), meta[:, 2] if labels is not None else None, feats

    @torch.no_grad()
    def _write(
        self,
        slots: Tensor,
        mask: Tensor,
        labels: Tensor | None,
        feats: Tensor | None,
        plan: WritePlan | None = None,
    ) -> WritePlan | None:
        slots, mask, new_labels, feats = self._gathered(slots, mask, labels, feats)
        m = slots.numel()
        if m == 0:
            return None
        if plan is None:
            order, end, winner = _last_writer(slots, mask)
            s, is_last = slots[order], winner == order  # a winner is its slot's last entry
            old_label, old_feat, old_written = self.labels[s], self.feats[s], self.written[s]
        else:  # the same entries sorted by slot (as the label write had them), another mask
            s, end, is_last, old_label, old_feat, old_written = plan
            winner = _sort_by_slot(slots, mask)[1][end]
        hit = mask[winner]
        label = torch.where(hit, new_labels[winner], old_label) if labels is not None else old_label
        if feats is not None:
            feat = torch.where(hit[:, None], feats[winner], old_feat)
            written = old_written | hit
        else:
            feat, written = old_feat, old_written
        # one update per changed slot (`once`), in slot order, as one index_add_ per statistic over
        # [2, m] entries: row 0 the old contributions (leaving), row 1 the new ones (entering) --
        # the same additions in the same order as two calls, so the same float sums
        once = is_last & hit
        if labels is not None:
            both = torch.stack([old_label, label])
            labelled = (both >= 0) & once
            idx = both.clamp_min(0).view(-1)
        else:  # the same label in both rows
            labelled = (old_label >= 0) & once
            idx = old_label.clamp_min(0).repeat(2)
        member = labelled  # [2, m] or [m], broadcast against the [2, 1] signs
        if not self.quirks:  # (quirk 2 counts label-set but never-written slots as members)
            has_feat = torch.stack([old_written, written]) if feats is not None else old_written
            member = member & has_feat
        w = member * self._sign.to(self.sums.dtype)  # [2, m]: -1 leaving, +1 entering, else 0
        moved = (torch.stack([old_feat, feat]) if feats is not None else old_feat) * w[..., None]
        self.sums.index_add_(0, idx, moved.view(-1, moved.shape[-1]))
        self.counts.index_add_(0, idx, w.long().view(-1))
        if labels is not None:
            self.label_counts.index_add_(0, idx, (labelled * self._count_sign).view(-1))
            self.labels[s] = label
        if feats is not None:
            self.feats[s] = feat
            self.written[s] = written
        return WritePlan(s, end, is_last, label, feat, written)

    def update_labels(self, slots: Tensor, labels: Tensor, mask: Tensor) -> WritePlan | None:
        """Yb[slot] = label where mask (gathered across ranks; last write wins). Returns the plan a
        feature write of the same slots can reuse (None for an empty write)."""
        return self._write(slots, mask, labels, None)

    def update_features(
        self, slots: Tensor, feats: Tensor, mask: Tensor, plan: WritePlan | None = None
    ) -> None:
        """Fb[slot] = stopgrad(feat) where mask (gathered across ranks; last write wins). `plan`:
        what `update_labels` returned for the same slots, if nothing wrote the bank since (it
        saves the sort, the binary search and the reads of those slots)."""
        self._write(slots, mask, None, feats, plan)

    def centers(self) -> tuple[Tensor, Tensor]:
        """(centers [K, d], valid [K]); a class without members has a zero, invalid center."""
        return self.sums / self.counts.clamp_min(1)[:, None], self.counts > 0

    def class_counts(self) -> Tensor:
        """n_k = number of label-bank entries equal to k (for BTA)."""
        return self.label_counts

    # ---- statistics for monitoring (read-only; `bacon_zoo.train.diagnostics`)
    def label_counts_by_part(self) -> tuple[Tensor, Tensor]:
        """(n_k over the labeled slots, n_k over the unlabeled slots), [K] each: who fills the label
        bank that BTA reads -- the true labels or the pseudo-labels."""
        k, n_l = self.num_classes, self.num_labeled
        part = torch.zeros_like(self.labels)
        part[n_l:] = 1
        bins = torch.where(self.labels >= 0, part * k + self.labels, torch.full_like(part, 2 * k))
        counts = torch.zeros(2 * k + 1, dtype=torch.long, device=self.labels.device)
        counts.index_add_(0, bins, torch.ones_like(bins))
        return counts[:k], counts[k : 2 * k]

    def unlabeled_labels(self) -> Tensor:
        """The label-bank entries of the unlabeled slots [N_U], in unlabeled-index order (-1: unset)."""
        return self.labels[self.num_labeled :]

    @torch.no_grad()
    def intra_class_spread(self) -> Tensor:
        """Per class [K]: mean cosine distance of the written features to their class center (NaN:
        no written member). Small = a tight class."""
        return intra_class_spread(self.feats, self.labels, self.written, self.num_classes)

    @torch.no_grad()
    def full_stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """(sums, counts, label_counts) recomputed from the whole bank, O(N d)."""
        idx = self.labels.clamp_min(0)
        member = self._member(self.labels, self.written)
        sums = torch.zeros_like(self.sums).index_add_(0, idx, self.feats * member[:, None])
        counts = torch.zeros_like(self.counts).index_add_(0, idx, member.long())
        labelled = torch.zeros_like(self.label_counts).index_add_(0, idx, (self.labels >= 0).long())
        return sums, counts, labelled

    def recompute_centers(self) -> tuple[Tensor, Tensor]:
        """What `centers()` must equal: the release's full recompute (tests, debugging)."""
        sums, counts, _ = self.full_stats()
        return sums / counts.clamp_min(1)[:, None], counts > 0

    @torch.no_grad()
    def resync(self) -> None:
        """Replace the incremental sums by a full recompute, bounding float32 drift over long runs."""
        sums, counts, labelled = self.full_stats()
        self.sums.copy_(sums)
        self.counts.copy_(counts)
        self.label_counts.copy_(labelled)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, slots={self.labels.numel()}, dim={self.dim}, "
            f"quirks={self.quirks}"
        )
