"""Backbones and the BaCon network. Importing this package registers the small-image models in timm."""

from . import resnet_cifar, vit_small, wrn  # noqa: F401  (registers the models in timm)
from .bacon_net import BaconNet, BaconOutput, Head, output_field
from .factory import create_backbone, list_backbones
from .usb import UsbWeights, bacon_net_from_usb, convert_usb_state_dict
from .vit_small import plain_timm_spec

__all__ = [
    "BaconNet",
    "BaconOutput",
    "Head",
    "UsbWeights",
    "bacon_net_from_usb",
    "convert_usb_state_dict",
    "create_backbone",
    "list_backbones",
    "output_field",
    "plain_timm_spec",
]
