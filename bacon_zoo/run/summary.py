"""Which protocol produced a run, which head it is evaluated with, and its summary.json record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bacon_zoo.config import TrainConfig

# The training protocol this code implements; recorded in every run's config.yaml and model card.
# "release-v2": USB's exact WRN, the release's two weight-decay groups, the release's RandAugment/Cutout,
# SVHN train+extra, STL-10 unlabeled + labeled-train. Runs without the key predate it ("v1": the earlier
# network, weight decay on every parameter and timm's RandAugment).
PROTOCOL = "release-v2"
LEGACY_PROTOCOL = "v1"


def eval_head_of(algorithm: str) -> str:
    """Which head a run of `algorithm` is evaluated with, as the algorithm registry says."""
    from bacon_zoo.algorithms import eval_head_of as registry_eval_head

    return registry_eval_head(algorithm)


def summary_record(cfg: TrainConfig, history: list[dict], status: str, **extra: Any) -> dict:
    """The summary.json schema: the paper's best top-1 and the run's identity, plus `extra` fields
    (params, images_per_s, device, precision, wall_time_s, device_hours, ...)."""
    from bacon_zoo.metrics import summarize

    return (
        summarize(history)
        | {
            "status": status,
            "steps": cfg.steps,
            "algorithm": cfg.algorithm,
            "backbone": cfg.backbone,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "protocol": PROTOCOL,
            "eval_head": eval_head_of(cfg.algorithm),
        }
        | extra
    )
