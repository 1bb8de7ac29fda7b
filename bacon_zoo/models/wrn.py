"""CIFAR WideResNets exactly as in USB and the BaCon release, registered as timm models.

WRN-28-2 is the backbone of every CISSL paper table. This is USB's `WideResNet` (semilearn/nets/wrn): a
biased 3x3 stem, stages of pre-activation basic blocks with bias-free convs, BN momentum 0.001 (the
EMA-teacher methods need slowly moving BN statistics) and eps 1e-5 inside the blocks, a final BN with eps
1e-3, LeakyReLU(0.1) everywhere, and USB's init. Parameter names follow USB (`block1.layer.0.conv1.weight`,
..., `convShortcut`, final `bn1`); only the classifier is timm's `fc` (USB calls it `classifier`), see
`bacon_zoo.models.usb` for converting USB / BaCon-release checkpoints.
"""

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from bacon_zoo.errors import UserError

__all__ = ["WideResNet"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
STL10_MEAN = (0.4408, 0.4279, 0.3867)  # USB's STL-10 statistics
STL10_STD = (0.2682, 0.2610, 0.2686)


class BasicBlock(nn.Module):
    """Pre-activation block: BN-LReLU-conv3x3, BN-LReLU-conv3x3, plus the identity or a 1x1 shortcut.

    USB's pre-activation detail, kept because trained weights depend on it: a block that keeps its width
    adds the raw x to the residual and feeds BN-LReLU(x) to conv1. A block that changes width feeds the
    same tensor to conv1 and the 1x1 shortcut: BN-LReLU(x) when `activate_before_residual` (only the very
    first block of the net), otherwise the *raw* x; the latter's bn1 output is then unused.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        activate_before_residual: bool = False,
        drop_rate: float = 0.0,
        bn_momentum: float = 0.001,
        bn_eps: float = 1e-5,
        slope: float = 0.1,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(in_chs, momentum=bn_momentum, eps=bn_eps, **dd)
        self.act1 = nn.LeakyReLU(slope)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, momentum=bn_momentum, eps=bn_eps, **dd)
        self.act2 = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.drop_rate = drop_rate
        self.activate_before_residual = activate_before_residual
        self.convShortcut = (  # USB's parameter name
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd)
            if in_chs != out_chs or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.convShortcut is None:
            shortcut = x
            x = self.act1(self.bn1(x))
        else:
            if self.activate_before_residual:
                x = self.act1(self.bn1(x))
            shortcut = self.convShortcut(x)
            if self.training and not self.activate_before_residual:
                # USB computes bn1 here without using it: that still moves bn1's running statistics, and
                # a zero-weighted tie gives its parameters a zero gradient (DDP without
                # find_unused_parameters and timm's tests need every parameter in the graph). Exact:
                # adding +-0.0 leaves every value unchanged.
                shortcut = shortcut + self.act1(self.bn1(x)).mean() * 0.0
        out = self.act2(self.bn2(self.conv1(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class Stage(nn.Module):
    """A run of blocks at one width (USB's `NetworkBlock`); the `layer` attribute keeps USB's names."""

    def __init__(
        self,
        depth: int,
        in_chs: int,
        out_chs: int,
        stride: int,
        activate_before_residual: bool = False,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_chs if i == 0 else out_chs,
                    out_chs,
                    stride if i == 0 else 1,
                    activate_before_residual=activate_before_residual,
                    **block_kwargs,
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
    """USB's CIFAR WideResNet with timm's model API (`forward_features`, `forward_intermediates`, ...).

    Args:
        layers: blocks per stage; WRN-28 is (4, 4, 4), USB's STL-10 `wrn_var` adds a 4th stage (3 or 4).
        widen_factor: k of WRN-d-k; stage widths are 16k, 32k, 64k (, 128k).
        first_stride: stride of the first stage (2 in the STL-10 variant, for 96 px inputs).
        drop_rate: dropout inside each block (the WRN paper's dropout, USB's `drop_rate`).
        bn_eps / final_bn_eps: BN eps inside the blocks (PyTorch's 1e-5) and of the final BN (1e-3).
    """

    # TorchScript compiles properties; `stages` is a Python-side convenience
    __jit_unused_properties__ = ["stages"]

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
        bn_eps: float = 1e-5,
        final_bn_eps: float = 1e-3,
        leaky_slope: float = 0.1,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if len(layers) not in (3, 4):
            raise UserError(f"WideResNet has 3 or 4 stages (layers=...), got {len(layers)}")
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        block_kwargs = dict(
            drop_rate=drop_rate, bn_momentum=bn_momentum, bn_eps=bn_eps, slope=leaky_slope, **dd
        )

        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=True, **dd)
        self.feature_info = [dict(num_chs=16, reduction=1, module="conv1")]
        in_chs, reduction = 16, 1
        for i, depth in enumerate(layers):
            out_chs = 16 * widen_factor * 2**i
            stride = first_stride if i == 0 else 2
            reduction *= stride
            stage = Stage(depth, in_chs, out_chs, stride, i == 0, **block_kwargs)
            self.add_module(f"block{i + 1}", stage)
            # the last stage is taken after the final norm/act, like timm's pre-activation ResNetV2
            module = "act" if i == len(layers) - 1 else f"block{i + 1}"
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=module))
            in_chs = out_chs
        if len(layers) == 3:
            self.block4 = None
        self.num_stages = len(layers)
        self.bn1 = nn.BatchNorm2d(in_chs, momentum=bn_momentum, eps=final_bn_eps, **dd)
        self.act = nn.LeakyReLU(leaky_slope)

        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(
            in_chs, num_classes, pool_type=global_pool, **dd
        )
        self.head_hidden_size = (
            in_chs * self.global_pool.feat_mult()
        )  # pooled width ('catavgmax': 2x)
        self.apply(init_weights)

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"block{i + 1}") for i in range(self.num_stages)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^block(\d+)" if coarse else r"^block(\d+)\.layer\.(\d+)"
        return dict(stem=r"^conv1", blocks=[(blocks, None), (r"^bn1", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            if isinstance(stage, Stage):
                stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New `fc` for `num_classes` (0: Identity, the model then returns pooled features)."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc.apply(init_weights)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediates API: index 0 is the stem, 1.. the stages; `norm` applies the final
        BN-LReLU to the last stage's map (as timm's pre-activation ResNetV2)."""
        if output_fmt != "NCHW":
            raise UserError(f"WideResNet intermediates are NCHW, not {output_fmt}")
        intermediates = []
        take_indices, max_index = feature_take_indices(self.num_stages + 1, indices)
        x = self.conv1(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for idx, stage in enumerate(stages, start=1):
            x = stage(x)
            if idx in take_indices:
                last = idx == self.num_stages
                intermediates.append(self.act(self.bn1(x)) if last and norm else x)
        if intermediates_only:
            return intermediates
        if len(stages) == self.num_stages:
            x = self.act(self.bn1(x))
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and the final norm / head) that the kept intermediates don't need."""
        take_indices, max_index = feature_take_indices(self.num_stages + 1, indices)
        prune_end = max_index < self.num_stages
        for i in range(max_index, self.num_stages):
            setattr(self, f"block{i + 1}", nn.Sequential())  # empty: passes x through, no params
        if (
            prune_norm or prune_end
        ):  # the final norm is sized for (and only applied to) the last stage
            self.bn1, self.act = nn.Identity(), nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [N, C, H, W] after the final BN + LeakyReLU (pre-activation nets end with one)."""
        x = self.conv1(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        if self.block4 is not None:
            x = self.block4(x)
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
        # USB leaves the stem conv's bias at PyTorch's default
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
    """WRN-28-2 (1,467,626 params at 10 classes, as USB's): the CIFAR-10/SVHN backbone of FixMatch, ABC, BaCon."""
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
