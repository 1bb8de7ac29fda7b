"""Evaluation of a BaconNet head on a (sharded) test loader."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from bacon_zoo.metrics import classification_metrics


@torch.no_grad()
def predict(
    model: nn.Module,
    loader,
    head: str,
    accelerator: Accelerator,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Predictions of `head` ("main" or "abc") over the whole loader, gathered from every process.

    `gather_for_metrics` drops the samples the distributed sampler repeats to even out the shards,
    so every test image counts exactly once.
    """
    was_training = model.training
    model.eval()
    preds, labels, probs, indices = [], [], [], []
    for batch in loader:
        x = batch["x"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            out = model(x)
        logits = (out.logits_abc if head == "abc" else out.logits).float()
        p = logits.softmax(dim=-1)
        p, y, idx = accelerator.gather_for_metrics((p, batch["y"], batch["idx"]))
        probs.append(p.cpu())
        labels.append(y.cpu())
        indices.append(idx.cpu())
    model.train(was_training)
    probs_t = torch.cat(probs) if probs else torch.empty(0)
    preds = probs_t.argmax(dim=-1) if len(probs_t) else torch.empty(0, dtype=torch.long)
    return {
        "probs": probs_t.numpy(),
        "preds": preds.numpy(),
        "labels": torch.cat(labels).numpy() if labels else np.empty(0, dtype=np.int64),
        "indices": torch.cat(indices).numpy() if indices else np.empty(0, dtype=np.int64),
    }


def evaluate(
    model: nn.Module,
    loader,
    head: str,
    accelerator: Accelerator,
    num_classes: int,
    labeled_counts: list[int],
    channels_last: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics and raw predictions of one evaluation pass."""
    out = predict(model, loader, head, accelerator, channels_last)
    return classification_metrics(out["preds"], out["labels"], num_classes, labeled_counts), out
