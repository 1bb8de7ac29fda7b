"""The headline ratio: images/s of the real training loop over images/s of the bare backbone.

Numerator: `bacon_zoo.train.trainer.train(cfg)` itself -- the `cifar10_lt` recipe on real CIFAR-10-LT
(the `cifar10` preset pointed at a local copy by BACON_ZOO_CIFAR10), BaCon, B=16 (CPU) / 64 (CUDA),
mu=2, the run's `mixed_precision` (fp32 = "no", and "auto", which is bf16 on CUDA and on CPUs with
AVX-512-BF16/AMX), on-device data streams, EMA, diagnostics, logging: everything the loop does per step.
BaCon's contrastive term is active from step 1 on (`bacon.start=0`; `bacon.anchor_threshold=0` and
`bacon.bank_threshold=0`, so every sample is an anchor and writes both banks and the class centers
exist after the first steps); the JSON records `loss_con`, `anchors_used` and `centers_valid` at the
first and the last timed step.

Denominator: `common.BareBackbone` -- the same backbone + a linear head, CE, backward, the trainer's SGD
on the same number of images (B * (1 + 2 mu)), same precision (the run's accelerator's autocast),
same channels_last, in the same process.

How the loop is timed (directly, not from metrics.jsonl): `train_step` -- the function the loop calls
once per step -- is wrapped for the run. After `--warmup` untimed steps, the wrapper marks a boundary
every `--window` steps (device synchronised); the time between two boundaries is `--window` full loop
iterations (fetching the batch, the step, diagnostics, logging). At every boundary the wrapper runs a
block of `--window` bare-backbone steps, which is not counted in the trainer's windows. So the two
measurements alternate B T B T ... B on the same machine state, and each trainer window is paired with
the mean of the two backbone blocks around it; the ratio reported is the median of those paired ratios
(with min / max / IQR), next to the ratio of the totals. Evaluation (only at the last step) and the
final checkpoint come after the last boundary. The trainer's own `images_per_s` (metrics.jsonl) is not
used: its log windows would include the backbone blocks.

Goal (issue 14): >= 0.97 on CPU (fp32 and bf16), >= 0.95 on CUDA at B=64, with steps/s and the hours the
paper's 300k steps would take. Skips (exit 0, no JSON) when the CIFAR-10 copy is absent.
`--data` may also be an .npz of decoded images (`sources.save_npz`; the device check's
.device/cifar10_lt.npz). `--compile` compiles the trainer's step (`--set compile=...` for other
settings; the bare backbone stays eager), `--name`/`--results-dir` say where the JSON goes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

DEFAULT_CIFAR10 = common.REPO.parent / "shared" / "datasets" / "cifar10-jpeg"
PAPER_STEPS = 300_000
GOALS = {"cpu": 0.97, "cuda": 0.95}
NOISY_IQR = 0.05  # paired-window ratios this spread out: the machine was too busy to trust the run
CONTRASTIVE_SETS = ["bacon.start=0", "bacon.anchor_threshold=0", "bacon.bank_threshold=0"]
LOG_KEYS = ("loss_con", "anchors", "anchors_used", "centers_valid", "bank_fill", "mask")


def run_steps(args: argparse.Namespace) -> int:
    """Steps the run needs: warm-up, the windows, and one more whose start closes the last window."""
    return args.warmup + args.window * args.windows + 1


class InterleavedTimer:
    """Wraps `train_step`: untimed warm-up, then trainer windows of `window` loop iterations
    alternating with blocks of `window` bare-backbone steps (see the module docstring)."""

    def __init__(self, real_step: Any, cfg: Any, num_classes: int, args: argparse.Namespace):
        self.real_step, self.cfg, self.num_classes = real_step, cfg, num_classes
        self.warmup, self.window, self.windows = args.warmup, args.window, args.windows
        self.backbone_warmup = args.backbone_warmup
        self.bare: common.BareBackbone | None = None
        self.trainer_s: list[float] = []
        self.trainer_cpu_s: list[float] = []
        self.backbone_s: list[float] = []
        self.backbone_cpu_s: list[float] = []
        self.logs: dict[str, dict[str, Any]] = {}
        self._open: tuple[float, float] | None = None
        self._last_timed = self.warmup + self.window * self.windows - 1

    def __call__(self, parts: Any, lb: dict, ulb: dict, step: int) -> tuple:
        k = step - self.warmup
        if k >= 0 and k % self.window == 0 and k // self.window <= self.windows:
            self._boundary(parts)
        logs, out, batch = self.real_step(parts, lb, ulb, step)
        if step in (self.warmup, self._last_timed):  # read (synced) after the run, not here
            name = "first_timed_step" if step == self.warmup else "last_timed_step"
            self.logs[name] = {"step": step, **{n: logs[n] for n in LOG_KEYS if n in logs}}
        return logs, out, batch

    def _boundary(self, parts: Any) -> None:
        device = parts.accelerator.device
        common.synchronize(device)
        t, c = common.now(), time.process_time()
        if self._open is not None:
            self.trainer_s.append(t - self._open[0])
            self.trainer_cpu_s.append(c - self._open[1])
        if len(self.backbone_s) <= self.windows:
            self._backbone_block(parts)
        common.synchronize(device)
        self._open = (common.now(), time.process_time())

    def _backbone_block(self, parts: Any) -> None:
        acc, cfg = parts.accelerator, self.cfg
        if self.bare is None:
            self.bare = common.BareBackbone(cfg, self.num_classes, acc.device)
            n = cfg.batch_size * (1 + 2 * cfg.mu)
            self.x, self.y = common.random_images(n, self.num_classes, cfg.image_size, acc.device)
            for _ in range(self.backbone_warmup):
                self.bare.step(self.x, self.y, acc)
            common.synchronize(acc.device)
        t0, c0 = common.now(), time.process_time()
        for _ in range(self.window):
            self.bare.step(self.x, self.y, acc)
        common.synchronize(acc.device)
        self.backbone_s.append(common.now() - t0)
        self.backbone_cpu_s.append(time.process_time() - c0)


def make_config(args: argparse.Namespace, precision: str, steps: int, out_dir: Path) -> Any:
    """The `cifar10_lt` recipe at the benchmark's batch, steps and precision, contrastive term on,
    one evaluation (on a small balanced subset) and one checkpoint, both at the very end."""
    from bacon_zoo.config import build_config

    flags = {
        "algorithm": "bacon",
        "batch_size": args.batch_size,
        "mu": args.mu,
        "steps": steps,
        "mixed_precision": precision,
        "output_dir": str(out_dir),
        "eval_every": steps,
        "checkpoint_every": steps,
        "max_eval_samples": args.eval_samples,
        "export": False,
        "seed": args.seed,
    }
    if args.device == "cpu":
        flags["cpu"] = True
    if args.compile:
        flags["compile"] = True
    return build_config(args.recipe, flags, CONTRASTIVE_SETS + list(args.set))


def measure(args: argparse.Namespace, precision: str, device: torch.device) -> dict[str, Any]:
    """One `train()` run at `precision` with the bare backbone interleaved; the row of the JSON."""
    from accelerate.state import AcceleratorState

    import bacon_zoo.train.trainer as trainer
    from bacon_zoo.train.precision import resolve_precision

    resolved, why = resolve_precision(precision, device)
    label = {"no": "fp32"}.get(resolved, resolved)
    with tempfile.TemporaryDirectory(prefix="bacon_headline_") as tmp:
        cfg = make_config(args, precision, run_steps(args), Path(tmp) / "run")
        num_classes = 10  # the cifar10 preset
        timer = InterleavedTimer(trainer.train_step, cfg, num_classes, args)
        print(
            f"\n== {label} ({why}): {cfg.steps} trainer steps (warm-up {args.warmup}, "
            f"{args.windows} windows of {args.window}) interleaved with {args.windows + 1} blocks "
            f"of {args.window} bare-backbone steps",
            flush=True,
        )
        t0 = common.now()
        trainer.train_step = timer
        try:
            result = trainer.train(cfg)
        finally:
            trainer.train_step = timer.real_step
            AcceleratorState._reset_state(True)
        wall = common.now() - t0
    if result.status != "complete" or len(timer.trainer_s) != args.windows:
        raise SystemExit(f"headline: the {label} run ended {result.status} at step {result.step}")

    n_img = cfg.batch_size * (1 + 2 * cfg.mu)
    w = args.window
    tr, bb = timer.trainer_s, timer.backbone_s
    paired = [((bb[i] + bb[i + 1]) / 2) / tr[i] for i in range(len(tr))]
    paired_cpu = [
        ((timer.backbone_cpu_s[i] + timer.backbone_cpu_s[i + 1]) / 2) / timer.trainer_cpu_s[i]
        for i in range(len(tr))
    ]
    trainer_ips = [n_img * w / t for t in tr]
    backbone_ips = [n_img * w / t for t in bb]
    steps_per_s = w / statistics.median(tr)
    goal = GOALS.get(device.type, GOALS["cpu"])
    ratio = statistics.median(paired)
    row = {
        "precision": label,
        "requested": precision,
        "why": why,
        "ratio": ratio,
        "ratio_spread": common.spread(paired),
        "ratio_of_means": statistics.fmean(bb) / statistics.fmean(tr),
        "ratio_process_cpu_time": common.spread(paired_cpu) if device.type == "cpu" else None,
        "trainer_images_per_s": common.spread(trainer_ips),
        "backbone_images_per_s": common.spread(backbone_ips),
        "trainer_steps_per_s": steps_per_s,
        "trainer_step_ms_median": 1e3 * statistics.median(tr) / w,
        "backbone_step_ms_median": 1e3 * statistics.median(bb) / w,
        "projected_hours_paper_steps": PAPER_STEPS / steps_per_s / 3600,
        "goal": f">= {goal}",
        "met": ratio >= goal,
        "noisy": common.spread(paired)["iqr"] > NOISY_IQR,
        "contrastive": {
            name: {k: v if k == "step" else round(float(v), 4) for k, v in logs.items()}
            for name, logs in timer.logs.items()
        },
        "wall_time_s": round(wall, 1),
        "load_average_after": common.load_average(),
    }
    print(
        f"{label}: trainer {statistics.median(trainer_ips):.1f} images/s, backbone "
        f"{statistics.median(backbone_ips):.1f} images/s -> ratio {ratio:.3f} (paired windows: "
        f"min {min(paired):.3f}, max {max(paired):.3f}; goal >= {goal}: "
        f"{'met' if row['met'] else 'MISSED'}); {steps_per_s:.2f} steps/s -> "
        f"{row['projected_hours_paper_steps']:.1f} h for {PAPER_STEPS:,} steps"
        + (
            f"; NOISY (window ratios IQR > {NOISY_IQR}): rerun on a quieter machine"
            if row["noisy"]
            else ""
        ),
        flush=True,
    )
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="cpu to force it (default: accelerate's choice)")
    p.add_argument("--data", type=Path, default=None, help=f"CIFAR-10 copy (default: BACON_ZOO_CIFAR10, else {DEFAULT_CIFAR10})")  # fmt: skip
    p.add_argument("--recipe", default="cifar10_lt")
    p.add_argument("--batch-size", type=int, default=None, help="B (default 64 CUDA, 16 CPU)")
    p.add_argument("--mu", type=int, default=2)
    p.add_argument(
        "--precisions",
        default=None,
        help="comma list of mixed_precision values (default: no,auto on CPU; auto on CUDA); "
        "values resolving to the same precision run once",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (10 CPU, 50 CUDA)")
    p.add_argument("--window", type=int, default=None, help="steps per window (10 CPU, 100 CUDA)")
    p.add_argument("--windows", type=int, default=None, help="timed windows (6 CPU, 10 CUDA)")
    p.add_argument("--backbone-warmup", type=int, default=3, help="untimed bare-backbone steps")
    p.add_argument("--eval-samples", type=int, default=200, help="test images of the final eval")
    p.add_argument(
        "--threads", default="auto", help="torch intra-op threads: auto (common.py) or N"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile", action="store_true", help="the run's --compile (the trainer's step)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config override"
    )
    p.add_argument("--name", default="headline", help="the JSON is <name>_<device>.json")
    p.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    p.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    started = common.now()
    args = parse_args(argv)
    data = args.data or Path(os.environ.get("BACON_ZOO_CIFAR10") or DEFAULT_CIFAR10)
    if not data.exists():  # a folder, or an .npz of decoded images
        print(f"headline: skipped, no CIFAR-10 copy at {data} (set BACON_ZOO_CIFAR10 or --data)")
        return None
    os.environ["BACON_ZOO_CIFAR10"] = str(data)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = common.get_device(args.device)
    gpu = device.type == "cuda"
    for name, cpu_default, gpu_default in (
        ("batch_size", 16, 64), ("warmup", 10, 50), ("window", 10, 100), ("windows", 6, 10),
    ):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, gpu_default if gpu else cpu_default)
    if args.precisions is None:
        args.precisions = "auto" if gpu else "no,auto"
    threads = common.configure_threads(args.threads, device)
    print(f"headline on {device} ({common.device_name(device)}); threads: {threads['reason']}")
    load_before = common.load_average()

    from bacon_zoo.train.precision import resolve_precision

    rows, seen = [], set()
    for p in (x.strip() for x in args.precisions.split(",") if x.strip()):
        resolved = resolve_precision(p, device)[0]
        if resolved in seen:
            print(f"--precisions {p}: same as {resolved}, already measured")
            continue
        seen.add(resolved)
        rows.append(measure(args, p, device))

    payload = {
        "settings": {
            "threads": threads,
            "recipe": args.recipe,
            "data": str(data),
            "algorithm": "bacon",
            "batch_size": args.batch_size,
            "mu": args.mu,
            "images_per_step": args.batch_size * (1 + 2 * args.mu),
            "warmup_steps": args.warmup,
            "window_steps": args.window,
            "windows": args.windows,
            "eval_samples": args.eval_samples,
            "compile": args.compile,
            "sets": list(args.set),
            "contrastive_active": (
                " ".join(f"--set {s}" for s in CONTRASTIVE_SETS) + ": the contrastive term is "
                "on from step 1 (step > start * steps), every sample is an anchor and writes both "
                "banks; `contrastive` in each row shows loss_con / anchors_used / centers_valid at "
                "the first and last timed step"
            ),
            "trainer": (
                "bacon_zoo.train.trainer.train(cfg), the real loop; timed directly: train_step is "
                "wrapped, a boundary (device sync) every window_steps after warmup_steps, a window = "
                "window_steps full loop iterations (batch fetch, step, diagnostics, logging); "
                "evaluation and the final checkpoint come after the last boundary"
            ),
            "backbone": (
                "common.BareBackbone: the run's backbone + linear head, CE, backward, the trainer's "
                "SGD, same images per step, same autocast and channels_last, random inputs; one "
                "block of window_steps at every boundary (not counted in the trainer's windows)"
            ),
            "ratio": (
                "median over windows of (mean of the two backbone blocks around the window) / "
                "(the trainer window), i.e. trainer images/s over backbone images/s"
            ),
            "load_average_before": load_before,
        },
        "rows": rows,
        "targets": [
            {
                "name": f"trainer / backbone images/s, {r['precision']}, B={args.batch_size}",
                "value": round(r["ratio"], 4),
                "threshold": r["goal"],
                "met": r["met"],
                "spread": ("too noisy to trust, " if r["noisy"] else "")
                + (
                    f"paired windows {r['ratio_spread']['min']:.3f}-"
                    f"{r['ratio_spread']['max']:.3f}, IQR {r['ratio_spread']['iqr']:.3f}"
                ),
            }
            for r in rows
        ],
    }
    if not args.no_write:
        if args.results_dir is not None:
            common.RESULTS = args.results_dir  # write_result's folder
        common.write_result(args.name, device, payload, started)
    return payload


if __name__ == "__main__":
    main()
