"""Export, model cards and the Hub: a run becomes a timm Hub repo; the zoo index lists them.

`export_run` (run dir -> timm folder + full BaconNet + card), `push` / `pull` (huggingface_hub),
`load_pretrained` / `predict` (timm), `load_bacon_net_weights` (`--init-from`). Attributes load lazily
so importing this package costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_run": "bacon_zoo.hub.export",
    "load_bacon_net_weights": "bacon_zoo.hub.export",
    "load_bacon_net": "bacon_zoo.hub.export",
    "push": "bacon_zoo.hub.hubio",
    "pull": "bacon_zoo.hub.hubio",
    "load_pretrained": "bacon_zoo.hub.hubio",
    "predict": "bacon_zoo.hub.hubio",
    "register_zoo_tags": "bacon_zoo.hub.zoo",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bacon_zoo.hub' has no attribute '{name}'")
