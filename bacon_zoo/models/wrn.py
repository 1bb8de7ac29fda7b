"""CIFAR WideResNets as used by FixMatch, USB and the BaCon release, registered as timm models.

WRN-28-2 is the backbone of every CISSL paper table: pre-activation basic blocks, BN with momentum 0.001
and eps 0.001 (the EMA-teacher methods need slowly moving BN statistics), LeakyReLU(0.1), and USB's
initialisation. Parameter names follow USB's `WideResNet` (`block1.layer.0.conv1.weight`, ...,
`convShortcut`, `bn1`, `fc`) so USB/BaCon-release state dicts load without renaming.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

__all__ = ["WideResNet"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
STL10_MEAN = (0.4408, 0.4279, 0.3867)  # USB's STL-10 statistics
STL10_STD = (0.2682, 0.2610, 0.2686)


class BasicBlock(nn.Module):
    """Pre-activation block: BN-LReLU-conv3x3, BN-LReLU-conv3x3, plus the identity or a 1x1 shortcut.

    When the shape changes, the shortcut sees the *pre-activated* input (USB's variant), so the first
    block of a stage normalises its input once for both paths.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        drop_rate: float = 0.0,
        bn_momentum: float = 0.001,
        bn_eps: float = 0.001,
        slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs, momentum=bn_momentum, eps=bn_eps)
        self.act1 = nn.LeakyReLU(slope)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_chs, momentum=bn_momentum, eps=bn_eps)
        self.act2 = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=True)
        self.drop_rate = drop_rate
        self.convShortcut = (  # USB's parameter name
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=True)
            if in_chs != out_chs or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = self.act2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class Stage(nn.Module):
    """A run of blocks at one width; the `layer` attribute keeps USB's parameter names."""

    def __init__(self, depth: int, in_chs: int, out_chs: int, stride: int, **block_kwargs: Any):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, **block_kwargs
                )
                for i in range(depth)
            ]
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.layer, x)
        return self.layer(x)


class WideResNet(nn.Module):
    """CIFAR WideResNet with timm's model API (`forward_features`, `forward_head`, `reset_classifier`, ...).

    Args:
        layers: blocks per stage; WRN-28 is (4, 4, 4), USB's STL-10 variant adds a 4th stage.
        widen_factor: k of WRN-d-k; stage widths are 16k, 32k, 64k (, 128k).
        first_stride: stride of the first stage (2 in the STL-10 variant, for 96 px inputs).
        drop_rate: dropout inside each block (the WRN paper's dropout, USB's `drop_rate`).
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (4, 4, 4),
        widen_factor: int = 2,
        first_stride: int = 1,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        bn_momentum: float = 0.001,
        bn_eps: float = 0.001,
        leaky_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        block_kwargs = dict(
            drop_rate=drop_rate, bn_momentum=bn_momentum, bn_eps=bn_eps, slope=leaky_slope
        )

        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=True)
        self.feature_info = [dict(num_chs=16, reduction=1, module="conv1")]
        in_chs, reduction = 16, 1
        for i, depth in enumerate(layers):
            out_chs = 16 * widen_factor * 2**i
            stride = first_stride if i == 0 else 2
            reduction *= stride
            self.add_module(f"block{i + 1}", Stage(depth, in_chs, out_chs, stride, **block_kwargs))
            # the last stage is taken after the final norm/act, like timm's pre-activation ResNetV2
            module = "act" if i == len(layers) - 1 else f"block{i + 1}"
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=module))
            in_chs = out_chs
        self.num_stages = len(layers)
        self.bn1 = nn.BatchNorm2d(in_chs, momentum=bn_momentum, eps=bn_eps)
        self.act = nn.LeakyReLU(leaky_slope)

        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool)
        self.head_hidden_size = (
            in_chs * self.global_pool.feat_mult()
        )  # pooled width ('catavgmax': 2x)
        self.apply(init_weights)

    @property
    def stages(self) -> list[Stage]:
        return [getattr(self, f"block{i + 1}") for i in range(self.num_stages)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^block(\d+)" if coarse else r"^block(\d+)\.layer\.(\d+)"
        return dict(stem=r"^conv1", blocks=[(blocks, None), (r"^bn1", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New `fc` for `num_classes` (0: Identity, the model then returns pooled features)."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc.apply(init_weights)
        self.fc.to(device=self.bn1.weight.device, dtype=self.bn1.weight.dtype)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [N, C, H, W] after the final BN + LeakyReLU (pre-activation nets end with one)."""
        x = self.conv1(x)
        for stage in self.stages:
            x = stage(x)
        return self.act(self.bn1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def init_weights(m: nn.Module) -> None:
    """USB's WRN init: kaiming-normal (fan_out, leaky_relu) convs, unit BN, xavier-normal Linear, zero biases."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        # USB leaves conv biases at PyTorch's default; they are tiny and immediately followed by BN
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:1605.07146",
        "origin_url": "https://github.com/microsoft/Semi-supervised-learning",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "wrn28_2": _cfg(),
        "wrn28_8": _cfg(num_classes=100),
        # STL-10 variant: 96 px inputs, 4 stages, first stage strided
        "wrn37_2": _cfg(input_size=(3, 96, 96), pool_size=(6, 6), mean=STL10_MEAN, std=STL10_STD),
    }
)


def _create_wrn(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    num_stages = len(kwargs.get("layers", (4, 4, 4)))
    return build_model_with_cfg(
        WideResNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=tuple(range(num_stages + 1))),
        **kwargs,
    )


@register_model
def wrn28_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-2 (1.47 M params): the CIFAR-10/SVHN backbone of FixMatch, ABC and BaCon."""
    return _create_wrn(
        "wrn28_2", pretrained, **dict(dict(layers=(4, 4, 4), widen_factor=2), **kwargs)
    )


@register_model
def wrn28_8(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-8 (23.4 M params): the CIFAR-100 backbone of FixMatch/USB."""
    return _create_wrn(
        "wrn28_8", pretrained, **dict(dict(layers=(4, 4, 4), widen_factor=8), **kwargs)
    )


@register_model
def wrn37_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """USB's STL-10 `wrn_var_37_2`: WRN-28-2 blocks plus a 4th 256-wide stage, first stage strided."""
    args = dict(layers=(4, 4, 4, 4), widen_factor=2, first_stride=2)
    return _create_wrn("wrn37_2", pretrained, **dict(args, **kwargs))
