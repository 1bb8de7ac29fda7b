"""Is the loop step slower than an older commit's? Both measured at the same time, one core each.

Wall times from two sessions (or two moments of one) cannot be compared on a shared machine, so the
older commit (`--ref`, default 1d8a7c9: main when issue 24 was filed) is checked out in a throwaway
`git worktree` and the same measurement runs in both trees **simultaneously**, each process pinned to
its own core, then again with the cores swapped; `--rounds` such pairs. A slow spell of the machine
hits both sides of a pair alike, and the swap cancels a difference between the cores.

The measurement is the trainer's own step parts (`make_step_parts` + `train_step`, the data streams,
`TrainingDiagnostics.update` and the log sums: one loop iteration without logging) for BaCon with its
contrastive term on from step 0, WRN-28-2, B=16, mu=2, 32-px digits, fp32, one thread; per part
(views, forward + loss, backward, optimizer, EMA, after-step, diagnostics + logs) the median over
`--steps` steps after 3 warm-up steps. Reported: every pair's current/ref ratio of each part and of
the whole iteration, and their medians. The network's forward and backward are the same code in both
trees; everything around them is what changed.

    .venv/bin/python benchmarks/step_vs_ref.py [--ref 1d8a7c9] [--rounds 3] [--steps 15]

Needs a ref with `make_step_parts` (2fb5a02 or later) and two usable CPUs (with one, the two sides
run one after the other, which the JSON says).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ISSUE_24_REF = "1d8a7c9"  # main when issue 24 ("the CPU step is not slower than today's") was filed
WARMUP = 3
PARTS = (
    "views",
    "forward_loss",
    "backward",
    "optimizer",
    "ema",
    "after_step",
    "diag_logs",
    "total",
)


def measure(steps: int) -> dict[str, float]:
    """Median ms per part of one loop iteration, with whatever `bacon_zoo` is first on sys.path.
    The setup is `ops.build`'s, written with only the APIs older commits have (no `common`, whose
    import would put this tree's package first)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bacon_zoo.algorithms import create_algorithm
    from bacon_zoo.config import build_config
    from bacon_zoo.data import make_train_loaders, prepare_data
    from bacon_zoo.run import build_model
    from bacon_zoo.train import trainer
    from bacon_zoo.train.diagnostics import TrainingDiagnostics

    torch.set_num_threads(1)
    flags = {
        "algorithm": "bacon", "dataset": "digits", "image_size": 32, "n1": 40, "m1": 80,
        "imb_ratio_l": 10, "imb_ratio_u": 10, "batch_size": 16, "mu": 2, "steps": 1000,
        "cpu": True, "mixed_precision": "no", "seed": 0,
    }  # fmt: skip
    sets = ["bacon.start=0", "bacon.anchor_threshold=0", "bacon.bank_threshold=0"]
    cfg = build_config(None, flags, sets)
    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True, mixed_precision="no")
    torch.manual_seed(0)
    data = prepare_data(cfg)
    algo = create_algorithm(
        "bacon", cfg=cfg, num_classes=data.num_classes, labeled_counts=data.labeled_counts,
        num_labeled=len(data.labeled.labels), num_unlabeled=len(data.unlabeled.labels), seed=0,
    )  # fmt: skip
    parts = trainer.make_step_parts(cfg, build_model(cfg, data.num_classes), algo, acc)
    algo.to(acc.device)
    diag = TrainingDiagnostics(
        data.num_classes, algo.eval_head, cfg.abc.threshold, data.labeled_counts,
        data.split.unlabeled_counts, len(data.labeled.labels), len(data.unlabeled.labels),
    )  # fmt: skip
    lb, ulb = make_train_loaders(
        data.labeled, data.unlabeled, cfg.batch_size, cfg.mu, data.mean, data.std, seed=0,
        device=acc.device,
    )  # fmt: skip
    parts.model.train()

    times: dict[str, list[float]] = {p: [] for p in PARTS}

    def timed(obj: Any, name: str, part: str) -> None:
        fn = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            times[part].append(time.perf_counter() - t)
            return out

        setattr(obj, name, wrapper)

    # older trees compute the loss outside `forward_loss`: forward + loss = train_step minus the rest
    timed(acc, "backward", "backward")
    timed(parts.optimizer, "step", "optimizer")
    timed(parts.ema, "update", "ema")
    timed(parts.algo, "after_step", "after_step")
    accumulate = getattr(trainer, "accumulate_logs", None)
    sums: dict[str, Any] = {}
    for step in range(WARMUP + steps):
        t0 = time.perf_counter()
        batches = next(lb), next(ulb)
        t1 = time.perf_counter()
        logs, out, batch = trainer.train_step(parts, *batches, step)
        t2 = time.perf_counter()
        diag.update(out, batch, logs)
        if accumulate is not None:
            accumulate(sums, logs)
        else:  # the loop's per-key sums before `accumulate_logs`
            for k, v in logs.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        t3 = time.perf_counter()
        times["views"].append(t1 - t0)
        times["diag_logs"].append(t3 - t2)
        times["total"].append(t3 - t0)
        rest = sum(times[p][-1] for p in ("backward", "optimizer", "ema", "after_step"))
        times["forward_loss"].append(t2 - t1 - rest)
    return {p: statistics.median(v[WARMUP:]) * 1e3 for p, v in times.items()}


def _side(tree: Path, cpu: int | None, steps: int) -> subprocess.Popen:
    """This file's `--measure` in `tree` (its `bacon_zoo` first on sys.path), pinned to `cpu`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", "--steps", str(steps)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict[str, float]:
    stdout, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"step_vs_ref: a measuring process failed (exit {proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict[str, Any]:
    import common

    cpus = sorted(os.sched_getaffinity(0))
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bacon-ref-") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(ref_tree), args.ref],
            cwd=common.REPO, check=True,
        )  # fmt: skip
        try:
            for r in range(args.rounds):
                for swap in (False, True):
                    if len(cpus) >= 2:  # both sides at once, one core each
                        a, b = (cpus[1], cpus[0]) if swap else (cpus[0], cpus[1])
                        ref_p, cur_p = _side(ref_tree, a, args.steps), _side(common.REPO, b, args.steps)  # fmt: skip
                        ref, cur = _result(ref_p), _result(cur_p)
                    else:  # one after the other, the order swapped every pair
                        first, second = (common.REPO, ref_tree) if swap else (ref_tree, common.REPO)
                        x, y = _result(_side(first, None, args.steps)), _result(_side(second, None, args.steps))  # fmt: skip
                        ref, cur = (y, x) if swap else (x, y)
                    ratio = {p: cur[p] / ref[p] for p in PARTS}
                    pairs.append({"ref_ms": ref, "current_ms": cur, "current_over_ref": ratio})
                    print(
                        f"round {r + 1}{'b' if swap else 'a'}: iteration {ref['total']:.1f} ms (ref) "
                        f"vs {cur['total']:.1f} ms (current), {ratio['total']:.3f}; views "
                        f"{ratio['views']:.2f}, diagnostics + logs {ratio['diag_logs']:.2f}"
                    )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=common.REPO)
    median = {p: statistics.median(x["current_over_ref"][p] for x in pairs) for p in PARTS}
    return {
        "ref": args.ref,
        "simultaneous": len(cpus) >= 2,
        "setting": "BaCon (contrastive term on from step 0), WRN-28-2, B=16, mu=2, 32-px digits, "
        f"fp32, one thread per side; median ms per part over {args.steps} steps after {WARMUP}",
        "pairs": pairs,
        "median_current_over_ref": median,
        "median_ms": {
            side: {p: statistics.median(x[f"{side}_ms"][p] for x in pairs) for p in PARTS}
            for side in ("ref", "current")
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ref", default=ISSUE_24_REF, help="the older commit (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="pairs of runs, cores swapped in each")
    p.add_argument("--steps", type=int, default=15, help="timed loop iterations per run")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one side (internal)
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        print(json.dumps(measure(args.steps)))
        return None

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common
    import torch

    started = common.now()
    payload = compare(args)
    common.write_result("step_vs_ref", torch.device("cpu"), payload, started)
    m = payload["median_current_over_ref"]
    print(
        f"current / ref ({args.ref}), median of {len(payload['pairs'])} pairs: iteration "
        f"{m['total']:.3f}, views {m['views']:.3f}, forward + loss {m['forward_loss']:.3f}, "
        f"backward {m['backward']:.3f}, optimizer {m['optimizer']:.3f}, EMA {m['ema']:.3f}, "
        f"after-step {m['after_step']:.3f}, diagnostics + logs {m['diag_logs']:.3f}"
    )
    return payload


if __name__ == "__main__":
    main()
