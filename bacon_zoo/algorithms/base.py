"""The interface every algorithm implements, and the helpers they share.

An `Algorithm` is an `nn.Module` without parameters: whatever state it keeps (BaCon's memory banks)
lives in buffers, so it follows `.to(device)` and is saved by `state_dict()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bacon_zoo.config import TrainConfig

Gather = Callable[[Tensor], Tensor]

_MASK64 = (1 << 64) - 1


def _identity(t: Tensor) -> Tensor:
    return t


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed from (seed, rank, step), so every step's randomness is reproducible without
    saving RNG state (an exact resume only needs the step). splitmix64 finaliser: distinct inputs
    give unrelated streams."""
    x = (seed * 0x9E3779B97F4A7C15 + rank * 0xD1B54A32D192ED03 + step) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


def split_batch(t: Tensor, num_lb: int, num_ulb: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split a forward over cat([x_lb, u_w, u_s]) into its three parts."""
    if t.shape[0] != num_lb + 2 * num_ulb:
        raise ValueError(
            f"expected {num_lb} + 2 x {num_ulb} rows (labeled, weak, strong), got {t.shape[0]}"
        )
    return t[:num_lb], t[num_lb : num_lb + num_ulb], t[num_lb + num_ulb :]


class Algorithm(nn.Module):
    """Base class: `loss` once per step (before backward), `after_step` once after the optimizer.

    Subclasses set `name` and `eval_head` ("main" or "abc": which head the evaluator should use).
    """

    name: str = ""
    eval_head: str = "main"

    def __init__(
        self,
        cfg: TrainConfig,
        num_classes: int,
        labeled_counts: Sequence[int],
        num_labeled: int,
        num_unlabeled: int,
        seed: int = 0,
        rank: int = 0,
        gather: Gather | None = None,
    ) -> None:
        super().__init__()
        if len(labeled_counts) != num_classes:
            raise ValueError(
                f"labeled_counts has {len(labeled_counts)} entries, expected {num_classes}"
            )
        self.cfg = cfg
        self.num_classes = num_classes
        self.labeled_counts = [int(c) for c in labeled_counts]
        self.num_labeled = num_labeled
        self.num_unlabeled = num_unlabeled
        self.seed = seed
        self.rank = rank
        self.gather: Gather = gather if gather is not None else _identity

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar loss to backprop and detached 0-dim tensors to log."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """State updates that must follow the optimizer step (nothing by default)."""

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        """A generator on `device` seeded from (seed, rank, step): same step, same draws."""
        g = torch.Generator(device=device)
        g.manual_seed(step_seed(self.seed, self.rank, step))
        return g

    @staticmethod
    def sizes(batch: dict[str, Tensor]) -> tuple[int, int]:
        """(B, U): labeled and unlabeled batch sizes."""
        return int(batch["y_lb"].shape[0]), int(batch["idx_ulb"].shape[0])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, eval_head={self.eval_head!r}"
