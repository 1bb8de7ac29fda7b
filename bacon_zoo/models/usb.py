"""Convert USB / BaCon-release checkpoints into this package's models.

Our WRNs keep USB's parameter names, so a USB `WideResNet` state dict maps almost one to one: only the
classifier (USB's `classifier`, `fc` in older USB) is split off, because BaconNet owns its heads and the
backbone is built with `num_classes=0`. The release's wrapper adds `backbone.` in front of the WRN and
puts the ABC head in `aux_classifier` and BaCon's projection in `projection`; DataParallel/DDP saves add
`module.`. Everything else is an error: a silently dropped or re-initialised tensor would make a
"reproduced" number meaningless.

    state = torch.load("model_best.pth", map_location="cpu")["ema_model"]
    net = bacon_net_from_usb(convert_usb_state_dict(state, "wrn28_2", 10), "wrn28_2", 10)
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from bacon_zoo.errors import UserError

from .bacon_net import BaconNet
from .factory import create_backbone

__all__ = ["UsbWeights", "convert_usb_state_dict", "bacon_net_from_usb"]

_CLASSIFIER_NAMES = ("classifier", "fc")  # current USB, older USB
_HEADS = {"aux_classifier": "abc_head", "projection": "projection"}  # release wrapper -> UsbWeights
_LINEAR_KEYS = ("weight", "bias")


@dataclass
class UsbWeights:
    """A USB / release checkpoint split the way BaconNet is built.

    backbone: state dict for `timm.create_model(arch, num_classes=0)` (strict).
    classifier: the main head's Linear {"weight", "bias"}, None when the checkpoint has none.
    abc_head / projection: the release's ABC head and BaCon projection, None for a plain WRN.
    """

    backbone: dict[str, Tensor]
    classifier: dict[str, Tensor] | None = None
    abc_head: dict[str, Tensor] | None = None
    projection: dict[str, Tensor] | None = None


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _linear(
    parts: dict[str, Tensor], where: str, in_features: int, out_features: int | None
) -> dict[str, Tensor]:
    """Check a Linear's {"weight", "bias"}: both present, weight [out, in], bias [out]."""
    for k in _LINEAR_KEYS:
        if k not in parts:
            raise UserError(f"USB checkpoint: missing key '{where}.{k}'")
    weight, bias = parts["weight"], parts["bias"]
    out = weight.shape[0] if out_features is None else out_features
    for k, want in (("weight", (out, in_features)), ("bias", (out,))):
        if tuple(parts[k].shape) != want:
            raise UserError(
                f"USB checkpoint: shape mismatch for '{where}.{k}': checkpoint "
                f"{tuple(parts[k].shape)}, expected {want}"
            )
    return {"weight": weight, "bias": bias}


def convert_usb_state_dict(state: dict[str, Tensor], arch: str, num_classes: int) -> UsbWeights:
    """Split a USB / BaCon-release state dict into our backbone, main head, ABC head and projection.

    `state` is a plain USB WRN (`conv1.*`, `block1.layer.0.bn1.*`, ..., `bn1.*`, `classifier.*`) or the
    release's wrapper (`backbone.*`, `aux_classifier.*`, `projection.*`), either with an optional
    `module.` prefix; pass `checkpoint["model"]` or `checkpoint["ema_model"]`, not the whole file.
    `arch` is our timm name (`wrn28_2`, `wrn28_8`, `wrn37_2`). Unknown or missing keys and shape
    mismatches raise a UserError naming the first offending key.
    """
    if not isinstance(state, dict) or not state:
        raise UserError("USB checkpoint: expected a non-empty state dict {name: tensor}")
    bad = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise UserError(
            f"USB checkpoint: '{bad}' is not a tensor; pass a state dict such as "
            "checkpoint['ema_model'] or checkpoint['model'], not the whole checkpoint"
        )
    state = {_strip(k, "module."): v for k, v in state.items()}
    wrapped = any(k.startswith("backbone.") for k in state)

    backbone: dict[str, Tensor] = {}
    linears: dict[str, dict[str, Tensor]] = {}  # UsbWeights field -> {"weight", "bias"}
    where: dict[str, str] = {}  # UsbWeights field -> its name in the checkpoint, for errors
    prefix = "backbone." if wrapped else ""
    for key, value in state.items():
        if wrapped:
            top, _, rest = key.partition(".")
            if top in _HEADS and rest in _LINEAR_KEYS:
                linears.setdefault(_HEADS[top], {})[rest] = value
                where[_HEADS[top]] = top
                continue
            if top != "backbone" or not rest:
                raise UserError(
                    f"USB checkpoint: unknown key '{key}' (the release wrapper has backbone.*, "
                    "aux_classifier.* and projection.*)"
                )
            key = rest
        name, _, leaf = key.partition(".")
        if name in _CLASSIFIER_NAMES and leaf in _LINEAR_KEYS:
            if where.setdefault("classifier", prefix + name) != prefix + name:
                raise UserError(
                    f"USB checkpoint: two classifiers, '{where['classifier']}' and '{key}'"
                )
            linears.setdefault("classifier", {})[leaf] = value
        else:
            backbone[key] = value

    # the target: our backbone on the meta device (shapes only, nothing allocated)
    model = create_backbone(arch, num_classes=0, device="meta")
    expected = model.state_dict()
    for key, value in backbone.items():
        if key not in expected:
            raise UserError(
                f"USB checkpoint: unknown key '{prefix}{key}' (not in {arch}; an older USB WRN "
                "with biased convs, or another architecture?)"
            )
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(
                f"USB checkpoint: shape mismatch for '{prefix}{key}': checkpoint "
                f"{tuple(value.shape)}, {arch} has {tuple(expected[key].shape)}"
            )
    missing = next((k for k in expected if k not in backbone), None)
    if missing is not None:
        raise UserError(f"USB checkpoint: missing key '{prefix}{missing}' of {arch}")

    heads = {
        field: _linear(
            parts,
            where[field],
            model.num_features,
            None if field == "projection" else num_classes,
        )
        for field, parts in linears.items()
    }
    return UsbWeights(backbone=backbone, **heads)


@torch.no_grad()
def bacon_net_from_usb(
    weights: UsbWeights, arch: str, num_classes: int, head_init: str = "default"
) -> BaconNet:
    """A BaconNet holding converted weights: backbone, h <- classifier, h_a <- ABC head, g <- projection.

    Heads the checkpoint doesn't have (a plain WRN has no ABC head or projection) keep their fresh init;
    the projection size is taken from the checkpoint (16 if it has none).
    """
    proj_dim = 16 if weights.projection is None else weights.projection["weight"].shape[0]
    net = BaconNet(arch, num_classes=num_classes, proj_dim=proj_dim, head_init=head_init)
    net.backbone.load_state_dict(weights.backbone, strict=True)
    for linear, parts in (
        (net.head, weights.classifier),
        (net.head_abc, weights.abc_head),
        (net.proj, weights.projection),
    ):
        if parts is not None:
            linear.load_state_dict(parts, strict=True)
    return net
