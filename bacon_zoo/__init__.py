"""bacon-zoo: a timm model zoo and fine-tuning tool for class-imbalanced semi-supervised learning.

Importing the package does what `import timm` does for its own models, no more: it registers the
small-image backbones (`wrn28_2`, `resnet18_cifar`, `vit_tiny_patch4_32`, ...) in timm, so
`timm.create_model("wrn28_2")` works after `import bacon_zoo`. It reads no zoo index and changes no
timm configuration; zoo checkpoints load through timm's `hf-hub:` / `local-dir:` paths, or by zoo name
with `bacon_zoo.hub.load_pretrained(name)`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from bacon_zoo import models  # noqa: E402,F401  (registers the backbones in timm)
