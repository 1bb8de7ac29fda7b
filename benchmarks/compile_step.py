"""Eager vs `--compile`: wall time of the trainer's loop step, the two measured side by side.

Both are the real step (`make_step_parts` + `train_step`, the data streams' views, diagnostics and the
log sums: `ops.build` / `ops.loop_step`) of BaCon with its contrastive term on from step 1, WRN-28-2,
B=16, mu=2, 32 px digits, fp32, CPU, one thread; the second with `compile=<mode>` (views, network,
losses and bank writes under torch.compile with inductor, `bacon_zoo.train.compile`). Each is warmed
up first (the compiled one compiles there: its time is reported), then they run in rounds, one step
of each per round, the order rotated (`common.time_interleaved`), so a slow spell of a shared machine
hits both; the speed-up is the ratio of the median step times.

    .venv/bin/python benchmarks/compile_step.py            # results/compile_step_cpu.json
    .venv/bin/python benchmarks/compile_step.py --mode max-autotune   # compile_step_max-autotune_cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import ops  # noqa: E402
import torch  # noqa: E402


def _stepper(run: dict[str, Any], start: int) -> Any:
    state = {"step": start}
    log_sums: dict[str, torch.Tensor] = {}

    def step() -> None:
        ops.loop_step(run, state["step"], log_sums)
        state["step"] += 1

    return step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algorithm", default="bacon")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mu", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--mode", default="default", help="the compile mode (--compile MODE)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each (compiles)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each, at most")
    p.add_argument("--budget-s", type=float, default=240.0, help="time for the timed rounds")
    args = p.parse_args(argv)

    started = common.now()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    setting = (args.algorithm, args.batch_size, args.mu, args.image_size, 0)
    runs = {
        "eager": ops.build(*setting),
        "compiled": ops.build(*setting, (f"compile={args.mode}",)),
    }
    steps, warmup_s = {}, {}
    for name, run in runs.items():
        steps[name] = _stepper(run, 0)
        t0 = common.now()
        for _ in range(args.warmup):
            steps[name]()
        warmup_s[name] = round(common.now() - t0, 1)
    timed = common.time_interleaved(
        steps, device, warmup=1, max_calls=args.steps, min_calls=args.steps, budget_s=args.budget_s
    )
    eager, compiled = timed["eager"]["median_ms"], timed["compiled"]["median_ms"]
    payload = {
        "setting": {
            "algorithm": args.algorithm,
            "backbone": "wrn28_2",
            "batch_size": args.batch_size,
            "mu": args.mu,
            "image_size": args.image_size,
            "data": "digits",
            "precision": "fp32",
            "threads": 1,
            "compile_mode": args.mode,
            "sets": ops.CONTRASTIVE_SETS,
            "warmup_steps": args.warmup,
        },  # fmt: skip
        "warmup_s": warmup_s,  # the compiled run's includes compiling (inductor's cache may be warm)
        "step_ms": {"eager": eager, "compiled": compiled},
        "cpu_step_ms": {n: timed[n]["cpu_median_ms"] for n in timed},
        "speedup": eager / compiled,
        "timed": timed,
    }
    name = "compile_step" if args.mode == "default" else f"compile_step_{args.mode}"
    common.write_result(name, device, payload, started)
    print(
        f"eager {eager:.1f} ms, compiled ({args.mode}) {compiled:.1f} ms per step: "
        f"{eager / compiled:.2f}x; warm-up {warmup_s}"
    )
    return payload


if __name__ == "__main__":
    main()
