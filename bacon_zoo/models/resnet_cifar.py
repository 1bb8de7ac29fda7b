"""timm ResNets with a CIFAR stem (3x3 stride-1 conv, no max-pool), for 32 px inputs.

The ImageNet stem downsamples 4x before the first stage, which leaves a 1x1 map at 32 px; the CIFAR stem
keeps the full resolution (final map 4x4). The model is timm's own `ResNet` with `conv1` and `maxpool`
swapped, so every timm tool (features_only, group_matcher, push_to_hf, ...) works unchanged.

`pretrained=True` loads timm's ImageNet weights of the parent model (e.g. `timm/resnet18.a1_in1k`) with
timm's loader; `conv1` is adapted by `checkpoint_filter_fn` below, `fc` is dropped by timm when the class
count differs.
"""

from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_patch_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from bacon_zoo.errors import UserError

__all__ = ["cifar_resnet", "checkpoint_filter_fn"]

_STEM_ARGS = ("stem_type", "stem_width", "replace_stem_pool")


def cifar_resnet(**kwargs: Any) -> ResNet:
    """timm `ResNet(**kwargs)` with the CIFAR stem: conv1 -> 3x3/1, maxpool -> Identity."""
    fixed = [k for k in _STEM_ARGS if k in kwargs]
    if fixed:
        raise UserError(
            f"the *_cifar ResNets have a fixed 3x3 stem; drop {', '.join(fixed)} from --backbone-kwargs "
            "or use a plain timm ResNet (e.g. resnet18d)"
        )
    model = ResNet(**kwargs)
    old = model.conv1.weight  # the new conv goes where timm put the old one (device, dtype, meta)
    model.conv1 = nn.Conv2d(
        model.in_chans,
        old.shape[0],
        3,
        stride=1,
        padding=1,
        bias=False,
        device=old.device,
        dtype=old.dtype,
    )
    nn.init.kaiming_normal_(
        model.conv1.weight, mode="fan_out", nonlinearity="relu"
    )  # as ResNet.init_weights
    model.maxpool = nn.Identity()
    for info in model.feature_info:  # stem no longer reduces: act1 2 -> 1, stages 4..32 -> 1..8
        info["reduction"] //= 2 if info["module"] == "act1" else 4
    return model


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: ResNet
) -> dict[str, torch.Tensor]:
    """Fit an ImageNet ResNet checkpoint to the CIFAR stem.

    The 7x7 stride-2 `conv1` kernel can't be used as is. Rather than re-initialising it (and losing the
    first layer's colour/edge filters), it is resized to 3x3 with timm's `resample_patch_embed` (FlexiViT's
    pseudo-inverse resize, the same tool timm uses for ViT patch embeddings): the 3x3 kernel responds to a
    downscaled image patch as the 7x7 one did to the original. Every other tensor loads strictly.
    """
    state_dict = dict(state_dict)
    weight = state_dict.get("conv1.weight")
    target = model.conv1.weight.shape
    if weight is not None and weight.shape[-2:] != target[-2:]:
        resized = resample_patch_embed(weight.float(), list(target[-2:]), verbose=False)
        state_dict["conv1.weight"] = resized.to(weight.dtype)
    return state_dict


def _cfg(source: str, **kwargs: Any) -> dict[str, Any]:
    """32 px cfg whose weights are the ImageNet checkpoint `source` on the timm Hub org."""
    return {
        "hf_hub_id": f"timm/{source}",
        "num_classes": 1000,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,  # the statistics the source weights were trained with
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        "notes": (f"ImageNet weights of {source}; conv1 resized 7x7 -> 3x3 on load",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "resnet18_cifar.a1_in1k": _cfg("resnet18.a1_in1k"),
        "resnet34_cifar.a1_in1k": _cfg("resnet34.a1_in1k"),
        "resnet50_cifar.a1_in1k": _cfg("resnet50.a1_in1k"),
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ResNet:
    return build_model_with_cfg(
        cifar_resnet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs
    )


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with a CIFAR stem (11.2 M params at 10 classes)."""
    return _create(
        "resnet18_cifar", pretrained, **dict(dict(block=BasicBlock, layers=(2, 2, 2, 2)), **kwargs)
    )


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 with a CIFAR stem."""
    return _create(
        "resnet34_cifar", pretrained, **dict(dict(block=BasicBlock, layers=(3, 4, 6, 3)), **kwargs)
    )


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 with a CIFAR stem."""
    return _create(
        "resnet50_cifar", pretrained, **dict(dict(block=Bottleneck, layers=(3, 4, 6, 3)), **kwargs)
    )
