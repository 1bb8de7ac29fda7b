"""bacon-zoo: a timm model zoo and fine-tuning tool for class-imbalanced semi-supervised learning.

Importing the package does what `import timm` does for its own models, no more: it registers the
small-image backbones (`wrn28_2`, `resnet18_cifar`, `vit_tiny_patch4_32`, ...) in timm, so
`timm.create_model("wrn28_2")` works after `import bacon_zoo`. It reads no zoo index and changes no
timm configuration; zoo checkpoints load through timm's `hf-hub:` / `local-dir:` paths, or by zoo name
with `bacon_zoo.load_pretrained(name)`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from bacon_zoo import models  # noqa: E402,F401  (registers the backbones in timm)


def load_pretrained(name: str) -> tuple[Any, dict]:
    """The exported timm classifier (eval mode) and its timm data config; see
    `bacon_zoo.hub.hubio.load_pretrained` (imported here on first use, so `import bacon_zoo` stays light).
    """
    from bacon_zoo.hub.hubio import load_pretrained as _load

    return _load(name)
