"""A run's network: the one way to build its BaconNet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bacon_zoo.config import TrainConfig
    from bacon_zoo.models import BaconNet


def build_model(
    cfg: TrainConfig,
    num_classes: int,
    for_training: bool = True,
    init_from: str | Path | None = None,
) -> BaconNet:
    """The one way to build a run's BaconNet: backbone, main head and the heads of its algorithm.

    `for_training` adds what only a fresh training run wants: timm's pretrained weights
    (`--pretrained`), a full BaconNet to start from (`--init-from`), the BN-momentum override and
    SyncBatchNorm across GPU processes (`--sync-bn`). `init_from` is the local export folder
    `cfg.init_from` names (a Hub name is fetched before training starts:
    `bacon_zoo.hub.weights.resolve_init_from`); by default `cfg.init_from` itself, a local folder.
    """
    import torch

    from bacon_zoo.algorithms import model_heads
    from bacon_zoo.models import BaconNet

    model = BaconNet(
        cfg.backbone,
        num_classes=num_classes,
        heads=model_heads(cfg),  # the main head + the heads the algorithm's plug-ins ask for
        pretrained=cfg.pretrained and for_training,
        backbone_kwargs=cfg.backbone_kwargs,
        head_init=cfg.head_init,
        pretrained_file=cfg.pretrained_file if for_training else None,
    )
    if for_training and cfg.bn_momentum is not None:  # short budgets: WRN's 0.001 is too slow
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    if for_training and cfg.init_from:
        from bacon_zoo.run.weights import load_bacon_net_weights

        load_bacon_net_weights(model, init_from or cfg.init_from)
    if cfg.lora_rank:  # after --init-from (a plain BaconNet's weights), before training and EMA
        from bacon_zoo.models.lora import apply_lora

        model.backbone = apply_lora(
            model.backbone, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets
        )
    if for_training and cfg.sync_bn:
        model = sync_batchnorm(model)
    return model


def sync_batchnorm(model: BaconNet) -> BaconNet:
    """BatchNorm -> SyncBatchNorm when this process is one of several on GPUs (the release converts
    under several GPUs); unchanged for one process. SyncBatchNorm does not run on CPUs, so a
    multi-process CPU run keeps per-process statistics and says so."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    if dist.get_backend() == "gloo":
        if dist.get_rank() == 0:
            logging.getLogger("bacon_zoo").warning(
                "sync_bn: SyncBatchNorm needs GPUs; this CPU run keeps per-process BatchNorm statistics"
            )
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


__all__ = ["build_model", "sync_batchnorm"]
