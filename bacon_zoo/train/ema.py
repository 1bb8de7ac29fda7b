"""The EMA of the whole BaconNet: timm's `ModelEmaV3`, with its buffer copy batched.

As in USB, parameters are averaged and buffers (BatchNorm statistics) copied. timm lerps the parameters
with one `torch._foreach_lerp_` but copies the buffers one `copy_` at a time (about 160 kernel launches
per step for a WRN-28-2); `torch._foreach_copy_` does the same copy in one call, with identical values.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3


class ModelEma(ModelEmaV3):
    """`ModelEmaV3(exclude_buffers=True)` whose buffer copy is one foreach call."""

    @torch.no_grad()
    def apply_update_no_buffers_(self, model: torch.nn.Module, decay: float) -> None:
        ema_params = list(self.module.parameters())
        self._foreach_lerp_(ema_params, list(model.parameters()), weight=1.0 - decay)
        ema_bufs = list(self.module.buffers())
        model_bufs = [b.to(device=e.device) for e, b in zip(ema_bufs, model.buffers())]
        if ema_bufs:
            torch._foreach_copy_(ema_bufs, model_bufs)
