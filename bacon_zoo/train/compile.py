"""`--compile`: the training step under `torch.compile` with inductor.

Compiled, each once per run and reused every step (every shape in a step is fixed):
- the views: each stream's `augment` (crop/flip, RandAugment + Cutout) and `finish` (normalise,
  resize), `fullgraph=True`;
- the network: `torch.compile(model)` (its backward too, through AOTAutograd);
- the losses: `Algorithm.loss`, every plug-in's loss with BaCon's label-bank write, `fullgraph=True`;
- the feature-bank write: each memory bank's `update_features`, `fullgraph=True`.
What stays eager: everything random (the streams' `draws`, the plug-ins' `draws`: seeded generators,
so a seed gives the same draws compiled or not and a resumed run draws what a straight one does), the
host's index sampling, the optimizer (foreach; fused on CUDA), the EMA (foreach) and logging.

`step` reaches the losses as a Python int, marked dynamic from the first call where torch has
`torch.compiler.config.dynamic_sources`: the losses compile once, and once more when BaCon's term
switches on (a resumed run compiles the same graphs as a straight one). Modes: "default";
"reduce-overhead", the same plus CUDA graphs on CUDA (shapes are fixed; a graph CUDA graphs cannot
capture runs without them); "max-autotune", which also tunes kernels. On the CPU the three measured
alike (docs/benchmarks.md). Inductor's CPU code reduces uint8 minima wrongly (torch 2.14): the views
take their per-channel extremes on int32 when compiled (`augment._extremes`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bacon_zoo.algorithms.bank import MemoryBank

_DYNAMIC_STEP = "L['step']"  # the `step` argument of the compiled frame


def compile_mode(value: bool | str | None) -> str | None:
    """The torch.compile mode of a config's `compile` (False/None: eager, True: "default")."""
    if value is None or value is False:
        return None
    return "default" if value is True else str(value)


Backend = str | Callable  # "inductor", or a dynamo backend (tests count graphs with their own)


def _compiled(fn: Callable, mode: str, fullgraph: bool = True, backend: Backend = "inductor"):
    """fn under torch.compile with static shapes (each stream, each view size its own graph)."""
    if backend != "inductor":  # modes are inductor's
        return torch.compile(fn, backend=backend, fullgraph=fullgraph, dynamic=False)
    return torch.compile(fn, mode=mode, fullgraph=fullgraph, dynamic=False)


def _with_dynamic_step(fn: Callable) -> Callable:
    """fn, traced with its `step` argument symbolic from the first call (one graph for all steps)."""
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "dynamic_sources"):  # older torch: dynamic from call 2
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with config.patch(dynamic_sources=_DYNAMIC_STEP):
            return fn(*args, **kwargs)

    return call


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """The network under torch.compile (forward and backward)."""
    return torch.compile(model, mode=mode, dynamic=False)


def compile_algorithm(
    algo: nn.Module, mode: str, fullgraph: bool = True, backend: Backend = "inductor"
) -> None:
    """Replace `algo.loss` and every memory bank's `update_features` by compiled versions, in place
    (the modules, their buffers and state_dict stay the same objects)."""
    algo.loss = _with_dynamic_step(_compiled(algo.loss, mode, fullgraph, backend))
    for module in algo.modules():
        if isinstance(module, MemoryBank):
            module.update_features = _compiled(module.update_features, mode, fullgraph, backend)


def compile_streams(*streams: Any, mode: str, backend: Backend = "inductor") -> None:
    """Replace each training stream's pure parts (`augment`, `finish`) by compiled versions."""
    for stream in streams:
        stream.augment = _compiled(stream.augment, mode, backend=backend)
        stream.finish = _compiled(stream.finish, mode, backend=backend)


def step_begin(mode: str | None) -> None:
    """Call at the start of each loop iteration: with CUDA graphs, the outputs of the last step's
    graphs may be overwritten from here on."""
    if mode == "reduce-overhead" and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        torch.compiler.cudagraph_mark_step_begin()
