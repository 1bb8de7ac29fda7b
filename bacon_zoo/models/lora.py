"""LoRA on a timm backbone, through `peft` (the optional extra `bacon-zoo[lora]`).

`apply_lora` wraps the backbone with low-rank adapters on the linears that `targets` names (by default a
ViT's attention `qkv` / `proj` and MLP `fc1` / `fc2`, not the patch embedding); peft freezes every other
backbone weight, while BaconNet's heads and projection stay outside the backbone and train fully. At export
`merged` folds the adapters into a plain copy of the timm model (`merge_and_unload`), so the published
checkpoint loads with `timm.create_model` alone.
"""

from __future__ import annotations

import copy
import re

import torch.nn as nn

from bacon_zoo.errors import UserError

# timm ViTs (and Swin/EVA/DeiT, which share the names): attention and MLP linears of every block
VIT_TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError(
            "--lora-rank needs the 'peft' package: pip install 'bacon-zoo[lora]' (or pip install peft)"
        ) from None
    return peft


def apply_lora(
    backbone: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: str = VIT_TARGETS,
) -> nn.Module:
    """The backbone with LoRA adapters (rank r, scale alpha / r) on the modules matching `targets`."""
    peft = _peft()
    names = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    if not any(re.fullmatch(targets, n) for n in names):
        raise UserError(
            f"--lora-targets '{targets}' matches no linear layer of this backbone (e.g. "
            f"{', '.join(names[:4])}); give a regex over its module names"
        )
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    return peft.get_peft_model(backbone, config)


def is_lora(backbone: nn.Module) -> bool:
    return type(backbone).__module__.startswith("peft.")


def merged(backbone: nn.Module) -> nn.Module:
    """A plain timm model with the adapters folded into its weights (the backbone itself if no LoRA)."""
    if not is_lora(backbone):
        return backbone
    return copy.deepcopy(backbone).merge_and_unload()
