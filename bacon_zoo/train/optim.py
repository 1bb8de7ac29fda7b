"""Optimizer and learning-rate schedule, through timm.

`make_optimizer` builds the parameter groups and hands them to `timm.optim.create_optimizer_v2`, so every
timm optimizer (`--opt sgd|adamw|lamb|...`) works. Groups:

- the release's two weight-decay groups (no decay on parameters with ndim <= 1 or a `.bias` name, timm's
  `param_groups_weight_decay`) when nothing else is asked for: the paper recipes' SGD is exactly the
  release's;
- with `--layer-decay`, timm's layer-wise decay over the *backbone* (`param_groups_layer_decay` through the
  backbone's own `group_matcher`: ViT, ConvNeXt, EfficientNet, ResNet, ...);
- the new parts (main head, ABC head, projection) in groups of their own whenever `--head-lr-scale` or
  `--layer-decay` is set, at `lr * head_lr_scale`.

A group's `lr_scale` is folded into its `lr` here, so the plain `LambdaLR` schedule scales every group alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.optim import (
    create_optimizer_v2,
    list_optimizers,
    param_groups_layer_decay,
    param_groups_weight_decay,
)

from bacon_zoo.config import TrainConfig
from bacon_zoo.errors import UserError


def check_optimizer(name: str) -> None:
    """Refuse an optimizer name timm does not know, in one line (before anything is written)."""
    known = list_optimizers()
    if name.lower() not in known:
        import difflib

        close = difflib.get_close_matches(name.lower(), known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"--opt '{name}' is not a timm optimizer; {hint}see timm.optim.list_optimizers()"
        )


def _decay_groups(params: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """The release's split of a list of named parameters: no decay on ndim <= 1 or biases."""
    decay = [p for n, p in params if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in params if p.ndim <= 1 or n.endswith(".bias")]
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Parameter groups with `weight_decay` and `lr_scale` (see the module docstring)."""
    wd = cfg.weight_decay
    if cfg.layer_decay is None and cfg.head_lr_scale == 1.0:
        if cfg.weight_decay_all:
            return [{"params": list(model.parameters()), "weight_decay": wd}]
        return param_groups_weight_decay(model, wd)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise UserError("--layer-decay / --head-lr-scale need a BaconNet (backbone + heads)")
    ids = {id(p) for p in backbone.parameters()}
    new = [(n, p) for n, p in model.named_parameters() if id(p) not in ids and p.requires_grad]
    if cfg.layer_decay is not None:
        if not hasattr(backbone, "group_matcher"):
            raise UserError(
                f"--layer-decay needs a backbone with timm's group_matcher; "
                f"{type(backbone).__name__} has none: drop --layer-decay"
            )
        skip = getattr(backbone, "no_weight_decay", lambda: set())()
        groups = param_groups_layer_decay(
            backbone, wd, no_weight_decay_list=skip, layer_decay=cfg.layer_decay
        )
        if cfg.weight_decay_all:
            for g in groups:
                g["weight_decay"] = wd
    elif cfg.weight_decay_all:
        groups = [{"params": list(backbone.parameters()), "weight_decay": wd}]
    else:
        groups = param_groups_weight_decay(backbone, wd)
    heads = (
        [{"params": [p for _, p in new], "weight_decay": wd}]
        if cfg.weight_decay_all
        else _decay_groups(new, wd)
    )
    for g in heads:
        g["lr_scale"] = cfg.head_lr_scale
    return [g for g in groups + heads if g["params"]]


# torch optimizers with a fused CUDA kernel (one launch for all parameters)
FUSED_CUDA = ("sgd", "momentum", "adam", "adamw")


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """`timm.optim.create_optimizer_v2` on `param_groups`; SGD honours `momentum` / `nesterov`.

    Multi-tensor (`foreach`) everywhere: on the CPU it gives the single-tensor loop's values exactly
    (tests/test_finetune.py) in a few calls; on CUDA the fused kernel where torch has one (the
    parameters must already be on `device`).
    """
    check_optimizer(cfg.opt)
    groups = param_groups(model, cfg)
    opt = cfg.opt.lower()
    if opt == "sgd":  # timm's "sgd" is Nesterov; "momentum" is plain heavy-ball
        opt = "sgd" if cfg.nesterov else "momentum"
    fused = device is not None and torch.device(device).type == "cuda" and opt in FUSED_CUDA
    optimizer = create_optimizer_v2(
        groups, opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        **({"fused": True} if fused else {"foreach": True}),
    )  # fmt: skip
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
    return optimizer


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """The LR multiplier at `step` (0-based): linear warm-up over `warmup_steps`, then

    - constant: 1;
    - cosine: FixMatch's cos(7 pi t / 16), t the fraction of the post-warm-up steps done (USB's schedule);
    - full_cosine: 0.5 (1 + cos(pi t)), from 1 down to 0 at the last step (timm's / most fine-tuning).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "cosine":
        return math.cos(7.0 * math.pi * t / 16.0)
    if schedule == "full_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """`lr_factor` for this run, as `torch.optim.lr_scheduler.LambdaLR` wants it."""
    return lambda step: lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
