"""What a study's cells cost: a per-backbone cost factor, device-hour estimates, and cost-balanced shards.

The cost model (labelled an estimate wherever it is shown):

    train images   = steps x batch_size x (1 + 2 mu)               (labeled weak + unlabeled weak and strong)
    eval images    = ceil(steps / eval_every) x test images          (forward only: counted as 1/3 of a train image)
    device-seconds = (train images + eval images / 3) / images/s of one device

The images/s of one device for a backbone comes, best first, from

1. **measured**: the median `images_per_s / num_processes` of finished cells with the same backbone and
   image size (this study's, or another study's with `--images-per-s-from`);
2. **FLOP-scaled**: a measured (or the assumed) reference throughput scaled by forward FLOPs per image,
   `ips(b) = ips(ref) x flops(ref) / flops(b)`. FLOPs come from building the backbone once on the meta
   device (no weights, no memory) and counting one forward at the cell's image size; parameter counts
   are recorded too, but FLOPs are the better proxy (ResNet-18-CIFAR has 7.6x WRN-28-2's parameters
   and 2.6x its FLOPs);
3. **assumed**: `ASSUMED_REFERENCE`, a documented guess for WRN-28-2 on one H100-class GPU. No GPU
   number has been measured for this project; replace it with `--images-per-s-from` a finished study.

Shards (`--shard i/n`) use longest-processing-time-first on the static part of the model only (FLOPs x
images, never timings), so every shard of one command computes the same assignment whenever it starts.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bacon_zoo.config import TrainConfig
from bacon_zoo.data.presets import num_test_images
from bacon_zoo.errors import UserError

# the `source` of a cell whose data set has no known test-set size (see `eval_images`)
UNKNOWN_TEST_SIZE = "unknown: test-set size of the data set (set max_eval_samples)"


@dataclass(frozen=True)
class Reference:
    """A throughput to scale every backbone from: `images_per_s` of one device training `backbone`."""

    backbone: str
    image_size: int
    images_per_s: float
    source: str


# An ASSUMPTION, not a measurement: WRN-28-2 at 32 px, FixMatch-style batches (64 + 2 x 128), bf16,
# channels_last, one H100-class GPU. Order of magnitude from published FixMatch/USB wall times
# (a V100 trains WRN-28-2 at roughly 3k images/s in fp32) and a 2-3x newer-GPU + bf16 speed-up.
ASSUMED_REFERENCE = Reference(
    "wrn28_2",
    32,
    8000.0,
    "assumed: WRN-28-2 at 8,000 images/s on one H100-class GPU (not measured)",
)


@dataclass(frozen=True)
class CostFactor:
    """A backbone at an image size: forward FLOPs per image and parameter count (meta device)."""

    backbone: str
    image_size: int
    flops: float
    params: int


@dataclass
class CellCost:
    """One cell's estimate. `source`: measured | flop-scaled | assumed | unknown (backbone not buildable)
    | UNKNOWN_TEST_SIZE."""

    name: str
    backbone: str
    image_size: int
    images: float  # train-image equivalents (train + eval / 3)
    work: float  # FLOP-weighted images: images x forward FLOPs per image (NaN when unknown)
    images_per_s: float  # one device, estimated or measured
    device_hours: float
    source: str


# ---------------------------------------------------------------------------------------------
# pure formulas


def train_images(cfg: TrainConfig) -> float:
    """Images one process pushes through the network in training (labeled + weak and strong unlabeled)."""
    return float(cfg.steps * cfg.batch_size * (1 + 2 * cfg.mu))


def eval_images(cfg: TrainConfig) -> float:
    """Images evaluated over a run (forward only): `max_eval_samples`, else the preset's test-set
    size; a UserError for a data set no preset describes (never counted as 0)."""
    per_eval = cfg.max_eval_samples or num_test_images(cfg.dataset)
    return float(math.ceil(cfg.steps / cfg.eval_every) * per_eval)


def cell_images(cfg: TrainConfig) -> float:
    """Train-image equivalents: an evaluated image costs about a third of a trained one (no backward)."""
    return train_images(cfg) + eval_images(cfg) / 3.0


def lpt_shards(costs: Sequence[float], n: int) -> list[list[int]]:
    """Longest-processing-time-first: indices of `costs` in `n` shards with balanced totals.

    Deterministic (ties by index): each shard of a study computes the same assignment. Each shard's
    indices come back in increasing order, so a shard runs its cells in the study's order.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    order = sorted(range(len(costs)), key=lambda i: (-_finite(costs[i]), i))
    heap = [(0.0, s) for s in range(n)]  # (total, shard): the lightest shard, lowest index on ties
    shards: list[list[int]] = [[] for _ in range(n)]
    for i in order:
        total, s = heapq.heappop(heap)
        shards[s].append(i)
        heapq.heappush(heap, (total + _finite(costs[i]), s))
    return [sorted(s) for s in shards]


def _finite(x: float) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


# ---------------------------------------------------------------------------------------------
# the cost factor: one meta-device build per (backbone, image size, kwargs)


@functools.cache
def _cost_factor(backbone: str, image_size: int, kwargs_json: str) -> CostFactor:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import bacon_zoo  # noqa: F401  (registers the small-image backbones in timm)
    from bacon_zoo.models.factory import create_backbone

    kwargs = json.loads(kwargs_json)
    kwargs.setdefault("num_classes", 0)
    with torch.device("meta"):
        model = create_backbone(backbone, pretrained=False, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        model.eval()  # batch 1: BatchNorm in training mode refuses a 1x1 feature map
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size))
    return CostFactor(backbone, image_size, float(counter.get_total_flops()), int(params))


def cost_factor(
    backbone: str, image_size: int = 32, backbone_kwargs: dict | None = None
) -> CostFactor:
    """Forward FLOPs per image and parameters; a one-line UserError for a name timm does not know."""
    try:
        return _cost_factor(backbone, image_size, json.dumps(backbone_kwargs or {}, sort_keys=True))
    except UserError:
        raise
    except Exception as e:  # hf-hub names offline, kwargs the model rejects, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"can't build backbone '{backbone}' to estimate its cost: {first}"
        ) from None


def check_backbones(cfgs: Iterable[TrainConfig]) -> list[str]:
    """One error line per backbone (or missing pretrained weights) that a cell would fail on."""
    from timm.models import is_model_pretrained

    errors, seen = [], set()
    for cfg in cfgs:
        key = (cfg.backbone, cfg.image_size, cfg.pretrained, json.dumps(cfg.backbone_kwargs))
        if key in seen:
            continue
        seen.add(key)
        try:
            cost_factor(cfg.backbone, cfg.input_size or cfg.image_size, cfg.backbone_kwargs)
        except UserError as e:
            errors.append(str(e))
            continue
        if cfg.pretrained and ":" not in cfg.backbone and not is_model_pretrained(cfg.backbone):
            errors.append(f"backbone '{cfg.backbone}' has no pretrained weights in timm")
    return list(dict.fromkeys(errors))


# ---------------------------------------------------------------------------------------------
# measured throughput


def measured_throughput(summaries: Iterable[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(backbone, image size) -> median images/s of ONE device, over complete summaries that have it."""
    seen: dict[tuple[str, int], list[float]] = {}
    for s in summaries:
        ips, procs = s.get("images_per_s"), s.get("num_processes") or 1
        if s.get("status") != "complete" or not isinstance(ips, (int, float)) or ips <= 0:
            continue
        if not s.get("backbone"):
            continue
        key = (str(s.get("backbone")), int(s.get("image_size") or 32))
        seen.setdefault(key, []).append(float(ips) / float(procs))
    return {k: statistics.median(v) for k, v in seen.items()}


def study_summaries(study_dir: str | Path) -> list[dict[str, Any]]:
    """The complete summaries under STUDY_DIR/cells (with the cell's image size added), for throughput."""
    from bacon_zoo.run import RunDir

    root = Path(study_dir) / "cells"
    if not root.is_dir():
        raise UserError(f"'{study_dir}' is not a study directory (no cells/); point at a STUDY_DIR")
    out = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        run = RunDir(path)
        try:
            summary = run.read_summary()
            if not summary or summary.get("status") != "complete":
                continue
            cfg = run.read_config_dict()
        except UserError:
            continue
        out.append(
            summary
            | {
                "backbone": summary.get("backbone") or cfg.get("backbone"),
                "image_size": cfg.get("image_size", 32),
            }
        )
    return out


def pick_reference(measured: dict[tuple[str, int], float]) -> Reference:
    """The measured backbone closest to WRN-28-2 (itself if measured), else the assumption."""
    if not measured:
        return ASSUMED_REFERENCE
    key = (
        (ASSUMED_REFERENCE.backbone, ASSUMED_REFERENCE.image_size)
        if (ASSUMED_REFERENCE.backbone, ASSUMED_REFERENCE.image_size) in measured
        else sorted(measured)[0]
    )
    return Reference(
        key[0], key[1], measured[key], f"measured: {key[0]} at {measured[key]:,.0f} images/s"
    )


# ---------------------------------------------------------------------------------------------
# estimates


def estimate_cell(
    name: str,
    cfg: TrainConfig,
    measured: dict[tuple[str, int], float] | None = None,
    reference: Reference | None = None,
) -> CellCost:
    """One cell's device-hours on one device (see the module docstring for the formula). A data set
    whose test-set size is unknown (no preset, no max_eval_samples) has no estimate: NaN, with
    `source` saying why (shards count it as the median cell)."""
    measured = measured or {}
    reference = reference or pick_reference(measured)
    try:
        images = cell_images(cfg)
    except UserError:
        nan = math.nan
        return CellCost(name, cfg.backbone, cfg.image_size, nan, nan, nan, nan, UNKNOWN_TEST_SIZE)
    try:
        factor = cost_factor(cfg.backbone, cfg.input_size or cfg.image_size, cfg.backbone_kwargs)
        work = images * factor.flops
    except UserError:
        factor, work = None, math.nan
    key = (cfg.backbone, cfg.image_size)
    if key in measured:
        ips, source = measured[key], "measured"
    elif factor is not None:
        try:
            ref = cost_factor(reference.backbone, reference.image_size)
        except UserError:  # a measured reference not buildable here: use the assumption
            reference = ASSUMED_REFERENCE
            ref = cost_factor(reference.backbone, reference.image_size)
        ips = reference.images_per_s * ref.flops / factor.flops
        source = "assumed" if reference is ASSUMED_REFERENCE else "flop-scaled"
    else:
        ips, source = math.nan, "unknown"
    hours = images / ips / 3600.0 if ips and math.isfinite(ips) else math.nan
    return CellCost(name, cfg.backbone, cfg.image_size, images, work, ips, hours, source)


def shard_cells(costs: Sequence[float], index: int, count: int) -> list[int]:
    """The indices of shard `index` of `count` (LPT on `costs`; unknown costs count as the median)."""
    known = [c for c in costs if math.isfinite(c)]
    fill = statistics.median(known) if known else 1.0
    return lpt_shards([c if math.isfinite(c) else fill for c in costs], count)[index]


__all__ = [
    "ASSUMED_REFERENCE",
    "CellCost",
    "CostFactor",
    "Reference",
    "cell_images",
    "check_backbones",
    "cost_factor",
    "estimate_cell",
    "estimate_table",
    "eval_images",
    "lpt_shards",
    "measured_throughput",
    "pick_reference",
    "shard_cells",
    "study_summaries",
    "train_images",
]


def estimate_table(costs: Sequence[CellCost], reference: Reference) -> list[str]:
    """Markdown lines: device-hours per backbone and in total (labelled an estimate)."""
    groups: dict[tuple[str, int], list[CellCost]] = {}
    for c in costs:
        groups.setdefault((c.backbone, c.image_size), []).append(c)
    lines = [
        "| backbone | px | cells | images/s (1 device) | source | device-hours / cell | device-hours |",
        "|---|---|---|---|---|---|---|",
    ]
    for (backbone, px), cs in groups.items():
        ips = statistics.median(c.images_per_s for c in cs)
        hours = [c.device_hours for c in cs]
        per = statistics.median(hours)
        lines.append(
            f"| {backbone} | {px} | {len(cs)} | {_fmt(ips, ',.0f')} | {cs[0].source} | "
            f"{_fmt(per, ',.1f')} | {_fmt(sum(hours), ',.0f')} |"
        )
    total = sum(c.device_hours for c in costs)
    lines.append(f"| **total (estimate)** | | {len(costs)} | | | | **{_fmt(total, ',.0f')}** |")
    lines += ["", f"Reference throughput: {reference.source}."]
    return lines


def _fmt(x: float, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "—"
