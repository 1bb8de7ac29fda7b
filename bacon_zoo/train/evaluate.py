"""The one evaluation loop: a BaconNet head over the (rank-sharded) test batches, gathered from every
process. The trainer calls it every `eval_every` steps; `bacon-zoo analyze` calls it with features."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from bacon_zoo.metrics import classification_metrics
from bacon_zoo.models.bacon_net import output_field


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[dict],
    head: str,
    accelerator: Accelerator | None = None,
    channels_last: bool = False,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """Predictions of classifier `head` ("main", "abc", ...) over every test image once, sorted by
    image index.

    Each rank runs its own shard (`make_eval_loader(..., rank, world_size)`); the shards are gathered
    once at the end, so there is one host transfer per evaluation, not one per batch. With
    `features=True` the backbone features and the projections come back too (analysis).
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"probs": [], "labels": [], "indices": []}
    if features:
        parts |= {"features": [], "projections": []}
    for batch in batches:
        x = batch["x"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (
            accelerator.autocast()
            if accelerator is not None
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            out = model(x)
        logits = getattr(out, output_field(head)).float()
        parts["probs"].append(logits.softmax(dim=-1))
        parts["labels"].append(batch["y"])
        parts["indices"].append(batch["idx"])
        if features:
            parts["features"].append(out.feat.float())
            # [n, 0] for a net whose algorithm has no projection (FixMatch): no projection space
            proj = getattr(out, "proj", None)
            parts["projections"].append(
                proj.float() if proj is not None else out.feat.new_zeros(len(out.feat), 0).float()
            )
    model.train(was_training)
    local = {k: torch.cat(v).cpu().numpy() if v else np.empty(0) for k, v in parts.items()}
    shards = gather_object([local]) if accelerator is not None else [local]
    merged = {k: np.concatenate([s[k] for s in shards if len(s[k])] or [local[k]]) for k in local}
    keep = merged["indices"] >= 0  # rows that only pad a rank's last batch have idx -1
    merged = {k: v[keep] for k, v in merged.items()}
    if not len(merged["indices"]):
        return {"probs": np.empty((0, 0)), "preds": np.empty(0, dtype=np.int64)} | {
            k: np.empty(0, dtype=np.int64) for k in ("labels", "indices")
        }
    order = np.argsort(merged["indices"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    merged["labels"] = merged["labels"].astype(np.int64)
    merged["indices"] = merged["indices"].astype(np.int64)
    merged["preds"] = merged["probs"].argmax(axis=1)
    return merged


def evaluate(
    model: nn.Module,
    batches: Iterable[dict],
    head: str,
    accelerator: Accelerator | None,
    num_classes: int,
    labeled_counts: list[int],
    channels_last: bool = False,
    features: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics and raw predictions of one evaluation pass."""
    out = predict(model, batches, head, accelerator, channels_last, features)
    return classification_metrics(out["preds"], out["labels"], num_classes, labeled_counts), out
