"""The plug-in interface (`Plugin`), the algorithm that composes plug-ins (`Algorithm`), shared helpers.

An algorithm is a base (FixMatch, ACR, ReMixMatch, ...) plus optional terms in a fixed order (ABC,
BaCon's contrastive term): `fixmatch+abc+bacon`. Each piece is one `Plugin` subclass in one module,
registered with `bacon_zoo.algorithms.register` (the contract is written out in the package docstring).
A plug-in is an `nn.Module` without parameters: whatever state it keeps (memory banks, running
estimates) lives in buffers, so it follows `.to(device)` and is saved by `state_dict()` (tensors only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bacon_zoo.models.bacon_net import Head, output_field

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
    """Split a forward over cat([x_lb, u_w, u_s]) into its three parts (one split: one op, and one
    concatenation in backward, where three slices cost three ops and their gradients' sum)."""
    if t.shape[0] != num_lb + 2 * num_ulb:
        raise ValueError(
            f"expected {num_lb} + 2 x {num_ulb} rows (labeled, weak, strong), got {t.shape[0]}"
        )
    return t.split([num_lb, num_ulb, num_ulb])


def split_views(t: Tensor, num_lb: int, num_ulb: int, num_views: int) -> tuple[Tensor, ...]:
    """Split a forward over cat([x_lb, view_1, ..., view_n]) into its 1 + n parts (one split)."""
    if t.shape[0] != num_lb + num_views * num_ulb:
        raise ValueError(
            f"expected {num_lb} + {num_views} x {num_ulb} rows (labeled, then each unlabeled view), "
            f"got {t.shape[0]}"
        )
    return t.split([num_lb] + [num_ulb] * num_views)


def leading_rows(t: Tensor, n: int) -> Tensor:
    """t[:n], or t itself when it has n rows: a slice is an op, and another one in backward."""
    return t if t.shape[0] == n else t[:n]


def scaled(weight: float, loss: Tensor) -> Tensor:
    """weight * loss; loss itself at weight 1 (the same value, without a multiplication and its
    backward)."""
    return loss if weight == 1.0 else weight * loss


@dataclass
class Context:
    """What every plug-in of a run knows about the data and the process, besides its config section."""

    num_classes: int
    labeled_counts: list[int]
    num_labeled: int
    num_unlabeled: int
    seed: int = 0
    rank: int = 0
    gather: Gather = _identity  # all-gather along dim 0 over the processes (accelerator.gather)
    # [num_unlabeled] bool: unlabeled image j is also a labeled one (include_labeled_in_unlabeled)
    unlabeled_is_labeled: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labeled_counts = [int(c) for c in self.labeled_counts]
        if len(self.labeled_counts) != self.num_classes:
            raise ValueError(
                f"labeled_counts has {len(self.labeled_counts)} entries, expected {self.num_classes}"
            )


class Plugin(nn.Module):
    """One registered piece of an algorithm: a base (`kind = "base"`) or a term (`kind = "term"`).

    Class attributes describe it (the registry, trainer, evaluator, export and card read them):
    `name` (also its config section), `Config` (its config dataclass or None), `title` and `summary`
    (model card), `role` ("base" | "imbalance" | "contrastive"), `balanced_head` (the classifier head it
    trains class-balanced: the evaluated head), `needs_balanced_head` (a term that reads one), and for
    bases `unlabeled_views` (the views of each unlabeled image, in forward order) and `reported_with`
    (terms: the bases a paper reports it with; other combinations say so on the card).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "base"
    Config: ClassVar[type | None] = None
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    role: ClassVar[str] = "base"
    balanced_head: ClassVar[str | None] = None
    needs_balanced_head: ClassVar[bool] = False
    unlabeled_views: ClassVar[dict[str, str]] = {"x_w": "weak", "x_s": "strong"}
    reported_with: ClassVar[tuple[str, ...] | None] = None
    threshold_field: ClassVar[str | None] = "threshold"  # config field of its confidence threshold

    def __init__(self, cfg: Any, ctx: Context) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx

    # ---- what it adds to the network and checks before training
    @classmethod
    def heads(cls, cfg: Any) -> tuple[Head, ...]:
        """The extra heads this piece needs on the network (built in this order)."""
        return ()

    @classmethod
    def check_data(cls, cfg: Any, num_classes: int) -> None:
        """Raise a one-line UserError when its settings do not fit the data (e.g. top-k > K)."""

    # ---- one step
    def forward_pass(self, model: nn.Module, batch: dict[str, Tensor], step: int) -> Any:
        """Bases: the network outputs of this step. Default: one forward over [x_lb | each unlabeled
        view in `unlabeled_views` order] (BatchNorm sees the mixture, as FixMatch). A base that needs
        other passes (MixUp, several BN batches) overrides it; its outputs must still hold, for every
        head the terms read, rows [0, B) labeled, [B, B+U) weak and [B+U, B+2U) the first strong view."""
        x = torch.cat([batch["x_lb"], *(batch[k] for k in self.unlabeled_views)])
        if batch.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int, algo: Algorithm
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Its weighted contribution to the step's loss (None: nothing this step) and detached 0-dim
        tensors to log. Called in plug-in order (base first), before backward."""
        raise NotImplementedError

    def draws(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The random numbers `loss` uses this step, from `self.generator(step, ...)`, under keys
        prefixed with the plug-in's name (none by default). `Algorithm.forward_loss` draws them before
        the losses and passes them in the batch: a generator made inside a compiled region breaks
        its graph, and drawn outside, the same seed gives the same numbers eager or compiled."""
        return {}

    def drawn(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """This step's `draws`: from the batch when `forward_loss` put them there, else drawn now
        (a direct `loss` call), the same numbers either way."""
        prefix = f"{self.name}."
        mine = {k: v for k, v in batch.items() if k.startswith(prefix)}
        return mine or self.draws(batch, step)

    def after_step(self, step: int, total_steps: int) -> None:
        """State updates that must follow the optimizer step (nothing by default)."""

    def diagnostics(self) -> dict[str, Any]:
        """JSON-ready numbers for metrics.jsonl's "diagnostics" at each evaluation (none by default)."""
        return {}

    # ---- helpers
    def generator(self, step: int, device: torch.device | str) -> torch.Generator:
        """A generator on `device` seeded from (seed, rank, step): same step, same draws."""
        g = torch.Generator(device=device)
        g.manual_seed(step_seed(self.ctx.seed, self.ctx.rank, step))
        return g

    @staticmethod
    def sizes(batch: dict[str, Tensor]) -> tuple[int, int]:
        """(B, U): labeled and unlabeled batch sizes."""
        return int(batch["y_lb"].shape[0]), int(batch["idx_ulb"].shape[0])

    @property
    def num_classes(self) -> int:
        return self.ctx.num_classes

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class Algorithm(nn.Module):
    """A base and its terms, run as one algorithm: `forward_loss` once per step (before backward),
    `after_step` once after the optimizer. Built by `create_algorithm`; its state_dict holds each
    plug-in's buffers under the plug-in's name (`bacon.bank.labels`)."""

    def __init__(self, name: str, parts: Sequence[Plugin], alias: str | None = None) -> None:
        super().__init__()
        if not parts or parts[0].kind != "base" or any(p.kind != "term" for p in parts[1:]):
            raise ValueError("an algorithm is one base followed by terms")
        self.name = name  # canonical: "fixmatch+abc+bacon"
        self.alias = alias or name  # as the config wrote it: "bacon"
        self.part_names = tuple(p.name for p in parts)
        for p in parts:
            self.add_module(p.name, p)

    @property
    def parts(self) -> list[Plugin]:
        return [getattr(self, n) for n in self.part_names]

    @property
    def base(self) -> Plugin:
        return getattr(self, self.part_names[0])

    @property
    def ctx(self) -> Context:
        return self.base.ctx

    @property
    def gather(self) -> Gather:
        return self.ctx.gather

    @property
    def eval_head(self) -> str:
        """The evaluated (and exported) head: the last balanced head, else the main head."""
        heads = [p.balanced_head for p in self.parts if p.balanced_head]
        return heads[-1] if heads else "main"

    @property
    def eval_output(self) -> str:
        """The output field of the evaluated head ("logits_abc")."""
        return output_field(self.eval_head)

    @property
    def threshold(self) -> float:
        """The confidence threshold of the evaluated head's pseudo-labels (diagnostics)."""
        owner = next(
            (p for p in reversed(self.parts) if p.balanced_head == self.eval_head), self.base
        )
        return float(getattr(owner.cfg, owner.threshold_field or "", 0.95))

    @property
    def unlabeled_views(self) -> dict[str, str]:
        return dict(self.base.unlabeled_views)

    @property
    def bank(self) -> Any:
        """The memory bank of the plug-in that keeps one (diagnostics), else None."""
        return next(
            (p.bank for p in self.parts if isinstance(getattr(p, "bank", None), nn.Module)), None
        )

    def make_batch(self, lb: dict[str, Tensor], ulb: dict[str, Tensor]) -> dict[str, Tensor]:
        """The step's batch from the labeled and unlabeled streams' dicts."""
        batch = {"x_lb": lb["x"], "y_lb": lb["y"], "idx_lb": lb["idx"]}
        batch |= {"idx_ulb": ulb["idx"], "y_ulb": ulb["y"]}
        return batch | {k: ulb[k] for k in self.unlabeled_views}

    def forward_loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor], Any]:
        """The plug-ins' random draws, the base's forward pass(es), then every plug-in's loss:
        (loss, logs, outputs). `loss` is pure tensor code given the batch and the step (what
        `--compile` compiles, `bacon_zoo.train.compile`)."""
        for part in self.parts:
            batch.update(part.draws(batch, step))
        out = self.base.forward_pass(model, batch, step)
        loss, logs = self.loss(out, batch, step, total_steps)
        return loss, logs, out

    def loss(
        self, out: Any, batch: dict[str, Tensor], step: int, total_steps: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """sum of the plug-ins' losses in order (base first) and their logs, with "loss"."""
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        for part in self.parts:
            value, part_logs = part.loss(out, batch, step, total_steps, self)
            logs.update(part_logs)
            if value is not None:
                total = value if total is None else total + value
        if total is None:
            raise RuntimeError(f"{self.name}: no plug-in returned a loss")
        logs["loss"] = total.detach()
        return total, logs

    def after_step(self, step: int, total_steps: int) -> None:
        for part in self.parts:
            part.after_step(step, total_steps)

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.parts:
            out |= part.diagnostics()
        return out

    def load_state_dict(
        self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False
    ):
        """Also loads checkpoints of the single-class algorithms of older versions, whose keys had no
        plug-in prefix (`bank.labels` -> `bacon.bank.labels`)."""
        own = set(self.state_dict())
        fixed = {}
        for key, value in state_dict.items():
            if key not in own:
                matches = [f"{n}.{key}" for n in self.part_names if f"{n}.{key}" in own]
                key = matches[0] if len(matches) == 1 else key
            fixed[key] = value
        return super().load_state_dict(fixed, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, eval_head={self.eval_head!r}"
