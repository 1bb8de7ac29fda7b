"""Backbones and the BaCon network. Importing this package registers the small-image models in timm."""

from . import resnet_cifar, vit_small, wrn  # noqa: F401  (registers the models in timm)
from .bacon_net import BaconNet, BaconOutput
from .factory import create_backbone, list_backbones

__all__ = ["BaconNet", "BaconOutput", "create_backbone", "list_backbones"]
