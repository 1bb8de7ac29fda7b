"""Leaf aten ops per non-logging training step, by part: what bounds a GPU step's launch overhead.

Each aten op that reaches a TorchDispatchMode (below autograd and below the decomposition of composite
ops: one kernel launch on CUDA, views aside) is counted once, in the part that ran it:
  views      the two data streams' `next()` (crop/flip, RandAugment + Cutout, normalise)
  model      the network's forward, and the backward of the nodes it created (+ gradient accumulation)
  algorithm  `algo.loss` and `algo.after_step`, and the backward of the nodes `loss` created
  optimizer  `optimizer.step` and `zero_grad` (the lead's part)
  ema        `ema.update` (the lead's part)
  trainer    the rest of `train_step` and of the loop's step: the input concat, the scheduler,
             `diagnostics.update`, the log sums
Backward ops are attributed through the autograd node that runs them (its sequence number falls in the
forward range of one part). The step is the real one (`make_step_parts` + `train_step` on the bundled
digits data at 32 px, WRN-28-2, fp32, CPU), B=16, mu=2 by default, BaCon's contrastive term active
from step 0 (`bacon.start=0`, anchor and bank thresholds 0). After `--warmup` steps, `--steps` steps
are counted; the JSON gives the per-step counts (and whether every counted step had the same count:
the launches do not depend on the data) and the most frequent ops per part.

    .venv/bin/python benchmarks/ops.py            # writes benchmarks/results/ops.json and prints it
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

PARTS = ("views", "model", "algorithm", "optimizer", "ema", "trainer")
TARGET_TOTAL = 1100  # issue 24: leaf aten ops per non-logging step at B=16, mu=2
OUT = common.RESULTS / "ops.json"
CONTRASTIVE_SETS = ["bacon.start=0", "bacon.anchor_threshold=0", "bacon.bank_threshold=0"]
_ACCUMULATE_GRAD = 2**64 - 1  # the sequence number of AccumulateGrad nodes


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops per part; `part` is switched by the step's hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.part = "trainer"
        self.counting = False
        self.ops: dict[str, collections.Counter] = {p: collections.Counter() for p in PARTS}
        self.views: dict[str, int] = dict.fromkeys(PARTS, 0)
        self._seq: list[int] = []  # sequence numbers at which a forward part started
        self._seq_part: list[str] = []

    def switch(self, part: str) -> str:
        """Make `part` current; returns the previous one. Records where its autograd nodes start."""
        previous, self.part = self.part, part
        with torch.enable_grad(), torch.utils._python_dispatch._disable_current_modes():
            probe = torch.zeros(1, requires_grad=True).view(1)  # the next sequence number
        self._seq.append(probe.grad_fn._sequence_nr())
        self._seq_part.append(part)
        return previous

    def _backward_part(self, node: Any) -> str:
        seq = node._sequence_nr()
        if seq == _ACCUMULATE_GRAD:
            return "model"  # parameter gradients
        i = bisect.bisect_right(self._seq, seq) - 1
        part = self._seq_part[i] if i >= 0 else "trainer"
        return part if part in ("model", "algorithm") else "trainer"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.counting:
            node = torch._C._current_autograd_node()
            part = self.part if node is None else self._backward_part(node)
            self.ops[part][str(func)] += 1
            self.views[part] += int(func.is_view)
        return func(*args, **(kwargs or {}))

    def totals(self) -> dict[str, int]:
        return {p: sum(c.values()) for p, c in self.ops.items()}


def _in_part(counter: OpCounter, part: str, fn: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        previous = counter.switch(part)
        try:
            return fn(*args, **kwargs)
        finally:
            counter.switch(previous)

    return wrapped


def build(
    algorithm: str, batch_size: int, mu: int, image_size: int, seed: int, sets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The trainer's own setup for a short digits run: config, data streams, step parts, diagnostics
    (`sets`: more config items, e.g. "compile=default", which compiles the streams as `train` does)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bacon_zoo.algorithms import create_algorithm
    from bacon_zoo.config import build_config
    from bacon_zoo.data import make_train_loaders, prepare_data
    from bacon_zoo.run import build_model
    from bacon_zoo.train.compile import compile_streams
    from bacon_zoo.train.diagnostics import TrainingDiagnostics
    from bacon_zoo.train.trainer import make_step_parts

    flags = {
        "algorithm": algorithm, "dataset": "digits", "image_size": image_size, "n1": 40, "m1": 80,
        "imb_ratio_l": 10, "imb_ratio_u": 10, "batch_size": batch_size, "mu": mu, "steps": 1000,
        "cpu": True, "mixed_precision": "no", "seed": seed,
    }  # fmt: skip
    cfg = build_config(None, flags, [*CONTRASTIVE_SETS, *sets])
    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True, mixed_precision="no")
    torch.manual_seed(seed)
    data = prepare_data(cfg)
    model = build_model(cfg, data.num_classes)
    algo = create_algorithm(
        algorithm, cfg=cfg, num_classes=data.num_classes, labeled_counts=data.labeled_counts,
        num_labeled=len(data.labeled.labels), num_unlabeled=len(data.unlabeled.labels), seed=seed,
    )  # fmt: skip
    parts = make_step_parts(cfg, model, algo, acc)
    algo.to(acc.device)
    diag = TrainingDiagnostics(
        data.num_classes, algo.eval_head, cfg.abc.threshold, data.labeled_counts,
        data.split.unlabeled_counts, len(data.labeled.labels), len(data.unlabeled.labels),
    )  # fmt: skip
    lb, ulb = make_train_loaders(
        data.labeled, data.unlabeled, cfg.batch_size, cfg.mu, data.mean, data.std, seed=cfg.seed,
        device=acc.device,
    )  # fmt: skip
    if parts.compile_mode:
        compile_streams(lb, ulb, mode=parts.compile_mode)
    parts.model.train()
    return {"cfg": cfg, "parts": parts, "diag": diag, "lb": lb.__next__, "ulb": ulb.__next__}


def loop_step(run: dict[str, Any], step: int, log_sums: dict[str, torch.Tensor]) -> None:
    """One non-logging iteration of the trainer's loop: batches, `train_step`, diagnostics, log sums."""
    from bacon_zoo.train.compile import step_begin
    from bacon_zoo.train.trainer import accumulate_logs, train_step

    step_begin(run["parts"].compile_mode)
    lb, ulb = run["lb"](), run["ulb"]()
    logs, out, batch = train_step(run["parts"], lb, ulb, step)
    run["diag"].update(out, batch, logs)
    accumulate_logs(log_sums, logs)


def count(algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    run = build(algorithm, args.batch_size, args.mu, args.image_size, args.seed)
    counter = OpCounter()
    parts = run["parts"]
    run["lb"], run["ulb"] = (_in_part(counter, "views", run[k]) for k in ("lb", "ulb"))
    algo, opt = parts.algo, parts.optimizer
    for name in ("forward_loss", "loss", "after_step"):  # forward_loss: the model runs inside it
        if hasattr(algo, name):
            setattr(algo, name, _in_part(counter, "algorithm", getattr(algo, name)))
    opt.step = _in_part(counter, "optimizer", opt.step)
    opt.zero_grad = _in_part(counter, "optimizer", opt.zero_grad)
    parts.ema.update = _in_part(counter, "ema", parts.ema.update)
    outer: list[str] = []
    parts.model.register_forward_pre_hook(lambda *_: outer.append(counter.switch("model")))
    parts.model.register_forward_hook(lambda *_: None if counter.switch(outer.pop()) else None)

    per_step: list[dict[str, int]] = []
    log_sums: dict[str, torch.Tensor] = {}
    with counter:
        for step in range(args.warmup + args.steps):
            counter.counting = step >= args.warmup
            before = counter.totals()
            loop_step(run, step, log_sums)
            if counter.counting:
                after = counter.totals()
                per_step.append({p: after[p] - before[p] for p in PARTS})
    n = len(per_step)
    mean = {p: sum(s[p] for s in per_step) / n for p in PARTS}
    return {
        "per_step": {p: round(v, 1) for p, v in mean.items()}
        | {"total": round(sum(mean.values()), 1)},
        "views_ops_per_step": {p: round(counter.views[p] / n, 1) for p in PARTS},
        # without the view ops (detach, slice, ...), which alias and launch no kernel
        "non_view_total": round(sum(mean.values()) - sum(counter.views.values()) / n, 1),
        "same_count_every_step": all(s == per_step[0] for s in per_step),
        "steps_counted": n,
        "top_ops": {
            p: {k: round(v / n, 1) for k, v in counter.ops[p].most_common(args.top)} for p in PARTS
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=["fixmatch", "abc", "bacon"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mu", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=12, help="most frequent ops listed per part")
    p.add_argument("--output", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bacon_zoo.fileio import write_json

    args = parse_args(argv)
    started = common.now()
    torch.set_num_threads(1)  # op counts do not depend on threads; keep the shared CPU free
    results = {a: count(a, args) for a in args.algorithms}
    worst = max(r["per_step"]["total"] for r in results.values())
    payload = {
        "benchmark": "ops",
        "command": common.command_line(),
        "machine": common.machine_info(torch.device("cpu")),
        "wall_time_s": round(common.now() - started, 1),
        "setting": {
            "batch_size": args.batch_size,
            "mu": args.mu,
            "image_size": args.image_size,
            "backbone": "wrn28_2",
            "precision": "fp32",
            "device": "cpu",
            "data": "digits",
            "sets": CONTRASTIVE_SETS,
            "warmup_steps": args.warmup,
        },  # fmt: skip
        "parts": list(PARTS),
        "target_total": TARGET_TOTAL,
        "max_total": worst,
        "meets_target": worst <= TARGET_TOTAL,
        "algorithms": results,
    }
    write_json(args.output, payload)
    print(json.dumps({a: r["per_step"] for a, r in results.items()}, indent=2))
    print(f"max total {worst} per step (target <= {TARGET_TOTAL}); wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
