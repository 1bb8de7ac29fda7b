"""bacon-zoo: a timm model zoo and fine-tuning tool for class-imbalanced semi-supervised learning.

Importing the package does what `import timm` does for its own models, no more: it registers the
small-image backbones (`wrn28_2`, `resnet18_cifar`, `vit_tiny_patch4_32`, ...) in timm, so
`timm.create_model("wrn28_2")` works after `import bacon_zoo`, and the built-in algorithm plug-ins
(whose config sections `bacon_zoo.config` then knows). It reads no zoo index and changes no
timm configuration; zoo checkpoints load through timm's `hf-hub:` / `local-dir:` paths, or by zoo name
with `bacon_zoo.hub.load_pretrained(name)`. The subpackages (`bacon_zoo.hub`, `bacon_zoo.data`, ...)
are imported on first attribute access, so `import bacon_zoo; bacon_zoo.hub.load_pretrained(...)`
works without making `import bacon_zoo` load them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from bacon_zoo import (
    algorithms,  # noqa: E402,F401  (registers the algorithms and their config sections)
    models,  # noqa: E402,F401  (registers the backbones in timm)
)

_LAZY = ("algorithms", "analysis", "config", "data", "hub", "run", "study", "train")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"bacon_zoo.{name}")
    raise AttributeError(f"module 'bacon_zoo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
