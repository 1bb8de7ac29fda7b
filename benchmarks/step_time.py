"""Wall time of one training step: the bare backbone vs the trainer's real step for FixMatch, ABC, BaCon.

Same random batch, same WRN-28-2, same SGD (`make_optimizer`) for all four variants:
  a  backbone  `common.BareBackbone`: backbone + a linear head + CE over every image, backward, SGD
               (not `train_step`: the network alone, the reference)
  b  fixmatch  `bacon_zoo.train.trainer.train_step`: forward of the BaconNet on cat([x_lb, x_w, x_s]),
               the algorithm's loss, backward, SGD, schedule, `after_step`, EMA -- what the loop runs
  c  abc       the same with ABC
  d  bacon     the same with BaCon, contrastive term active (see below)
Each variant has its own `StepParts` (model from `build_model`, optimizer, LambdaLR, timm EMA, the
algorithm) and the same `Accelerator` (precision = its `mixed_precision`). The variants are measured
interleaved -- one step of each per round, the order rotated every round -- so a slow spell on a shared
machine hits all of them; ratios are the median of the per-round ratios.

How BaCon's contrastive path is made to run on random data (stated in the JSON too): the step index is
past `cfg.bacon.start * T`, every bank slot is pre-filled (random label, random feature) so every class
center is valid, and `bacon.anchor_threshold = bacon.bank_threshold = 0` so every anchor is selected
and every sample writes the label and feature banks each step (the most bank work a step can do).
Bank sizes: K=10 -> the CIFAR-10-LT split (N1=1000, M1=4000, gamma 100: 12.4k slots); other K ->
50k slots (K=100: the whole CIFAR-100 train set), labeled counts long-tailed (N1=200, gamma 20).

Defaults: on CUDA B=64, mu=2, 5 warm-up + 20 timed rounds. On CPU B=16, mu=2, 1 warm-up + up to 8
timed rounds within a time budget (--budget-s); bf16 only where the CPU runs it natively (AVX-512-BF16
or AMX: elsewhere bf16 convolutions fall back to a reference kernel ~50x slower than fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

VARIANTS = ("backbone", "fixmatch", "abc", "bacon")
LETTER = {"backbone": "a", "fixmatch": "b", "abc": "c", "bacon": "d"}
RATIOS = (
    ("fixmatch", "backbone"),
    ("abc", "backbone"),
    ("bacon", "backbone"),
    ("bacon", "fixmatch"),
)
TOTAL_STEPS = 10_000
FIRST_STEP = 6_000  # > bacon.start (0.5) * TOTAL_STEPS: the contrastive term is active
TARGET_BACON_OVER_FIXMATCH = 1.03  # at K=100
DTYPE_TO_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
BACON_SETS = ["bacon.anchor_threshold=0", "bacon.bank_threshold=0"]


def bank_layout(num_classes: int, slots: int | None) -> tuple[list[int], int, int]:
    """(labeled_counts, N_L, N_U) for a class count; see the module docstring."""
    from bacon_zoo.data.splits import lt_class_counts

    if num_classes == 10 and slots is None:
        lab = lt_class_counts(1000, 10, 100)
        return lab, sum(lab), sum(lt_class_counts(4000, 10, 100))
    total = slots or 50_000
    lab = lt_class_counts(200, num_classes, 20) if num_classes > 1 else [200]
    n_l = min(sum(lab), total // 2)
    if n_l < sum(lab):  # small bank: scale the labeled profile down, keep every class
        lab = [max(1, c * n_l // sum(lab)) for c in lab]
        n_l = sum(lab)
    return lab, n_l, max(1, total - n_l)


@torch.no_grad()
def prefill_bank(bank: Any, num_classes: int) -> dict[str, Any]:
    """Every slot written (random label, every class present; random feature): all centers valid."""
    n = bank.labels.numel()
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(num_classes, (n,), generator=g)
    labels[: min(n, num_classes)] = torch.arange(min(n, num_classes))
    feats = torch.randn(n, bank.dim, generator=g)
    slots, ones = torch.arange(n), torch.ones(n, dtype=torch.bool)
    dev = bank.labels.device
    bank.update_labels(slots.to(dev), labels.to(dev), ones.to(dev))
    bank.update_features(slots.to(dev), feats.to(dev), ones.to(dev))
    return {
        "bank_slots": n,
        "bank_prefilled": True,
        "centers_valid_fraction": float((bank.counts > 0).float().mean()),
    }


class Variant:
    """One variant: the bare backbone, or an algorithm's `StepParts` driven by the real `train_step`."""

    def __init__(
        self,
        name: str,
        num_classes: int,
        layout: tuple[list[int], int, int],
        accelerator: Any,
        precision: str,
        args: argparse.Namespace,
    ) -> None:
        from bacon_zoo.algorithms import create_algorithm
        from bacon_zoo.config import build_config
        from bacon_zoo.run import build_model
        from bacon_zoo.train.trainer import make_step_parts

        self.name, self.acc = name, accelerator
        flags = {
            "algorithm": "fixmatch" if name == "backbone" else name,
            "backbone": args.backbone,
            "batch_size": args.batch_size,
            "mu": args.mu,
            "steps": TOTAL_STEPS,
            "mixed_precision": precision,
            "seed": args.seed,
        }
        cfg = build_config(None, flags, BACON_SETS if name == "bacon" else None)
        self.cfg, self.bare, self.parts = cfg, None, None
        self.algo_info: dict[str, Any] = {}
        self.first_logs: dict[str, float] = {}
        device = accelerator.device
        if name == "backbone":
            self.bare = common.BareBackbone(cfg, num_classes, device)
            return
        torch.manual_seed(args.seed)  # identical initial weights for every variant
        model = build_model(cfg, num_classes)
        labeled_counts, n_l, n_u = layout
        algo = create_algorithm(
            name,
            cfg=cfg,
            num_classes=num_classes,
            labeled_counts=labeled_counts,
            num_labeled=n_l,
            num_unlabeled=n_u,
            seed=args.seed,
        ).to(device)
        if name == "bacon":
            self.algo_info = prefill_bank(algo.bank, num_classes)
        self.parts = make_step_parts(cfg, model, algo, accelerator)  # exactly the trainer's setup

    def step(self, batch: tuple[dict, dict, torch.Tensor], step: int) -> None:
        from bacon_zoo.train.trainer import train_step

        lb, ulb, y_all = batch
        if self.bare is not None:
            self.bare.step(torch.cat([lb["x"], ulb["x_w"], ulb["x_s"]]), y_all, self.acc)
            return
        logs, _, _ = train_step(self.parts, lb, ulb, step)
        if step == FIRST_STEP:
            keep = ("loss_con", "anchors", "anchors_used", "bank_fill", "centers_valid")
            self.first_logs = {k: round(float(logs[k]), 4) for k in keep if k in logs}


def make_batches(
    rounds: int, b: int, mu: int, layout: tuple[list[int], int, int], k: int, device: torch.device
) -> list[tuple[dict, dict, torch.Tensor]]:
    """Random inputs (the data pipeline is benchmarked by loader.py), fresh bank slots per round:
    (labeled {"x", "y", "idx"}, unlabeled {"x_w", "x_s", "y", "idx"}, labels of all rows)."""
    _, n_l, n_u = layout
    u = mu * b
    x, y_all = common.random_images(b + 2 * u, k, 32, device, seed=0)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(rounds):
        lb = {"x": x[:b], "y": y_all[:b], "idx": torch.randperm(n_l, generator=g)[:b].to(device)}
        ulb = {
            "x_w": x[b : b + u],
            "x_s": x[b + u :],
            "y": torch.randint(k, (u,), generator=g).to(device),
            "idx": torch.randperm(n_u, generator=g)[:u].to(device),
        }
        out.append((lb, ulb, y_all))
    return out


def new_accelerator(precision: str, device: torch.device) -> Any:
    """A fresh Accelerator at `precision` (accelerate keeps one process-wide state: reset it)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision)


def run_config(
    k: int, dtype_name: str, device: torch.device, args: argparse.Namespace, budget: float | None
) -> dict[str, Any]:
    from bacon_zoo.train.precision import resolve_precision

    precision, why = resolve_precision(DTYPE_TO_PRECISION[dtype_name], device)
    acc = new_accelerator(precision, device)
    layout = bank_layout(k, args.bank_slots)
    runners = {v: Variant(v, k, layout, acc, precision, args) for v in args.variants}
    batches = make_batches(args.warmup + args.steps, args.batch_size, args.mu, layout, k, device)
    times: dict[str, list[float]] = {v: [] for v in runners}
    cpu_times: dict[str, list[float]] = {v: [] for v in runners}
    cuda_peak: dict[str, float | None] = dict.fromkeys(runners)
    names = list(runners)
    t_start = common.now()
    rounds_done = 0
    last: dict[str, float] = {}
    for r in range(args.warmup + args.steps):
        timed = r >= args.warmup
        if timed and budget is not None:
            round_s = sum(last.values())  # the next round will take about as long as the last
            if r - args.warmup >= args.min_steps and common.now() - t_start + round_s > budget:
                break
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no position bias
        for v in order:
            common.synchronize(device)
            common.reset_cuda_peak(device)
            c0, t0 = time.process_time(), common.now()
            runners[v].step(batches[r], FIRST_STEP + r)
            common.synchronize(device)
            dt, dc = common.now() - t0, time.process_time() - c0
            last[v] = dt
            if timed:
                times[v].append(dt)
                cpu_times[v].append(dc)
                peak = common.cuda_peak_mb(device)
                if peak is not None:
                    cuda_peak[v] = max(cuda_peak[v] or 0.0, peak)
        rounds_done += timed
        print(
            f"  K={k} {dtype_name} round {r + 1}{'' if timed else ' (warm-up)'}: "
            + ", ".join(f"{v} {last[v] * 1e3:.0f} ms" for v in names),
            flush=True,
        )

    res: dict[str, Any] = {
        "num_classes": k,
        "dtype": dtype_name,
        "precision": {"mixed_precision": precision, "why": why},
        "timed_rounds": rounds_done,
        "bank": {"num_labeled": layout[1], "num_unlabeled": layout[2]},
        "variants": {},
        "ratios": {},
        "peak_rss_mb_so_far": round(common.peak_rss_mb(), 1),
    }
    for v in names:
        res["variants"][v] = {
            "letter": LETTER[v],
            **common.summarize(times[v]),
            "process_cpu_time": common.summarize(cpu_times[v]),
            "cuda_max_allocated_mb": common._round(cuda_peak[v]),
        }
        if runners[v].algo_info:
            res["variants"][v]["bank_state"] = runners[v].algo_info
        if runners[v].first_logs:
            res["variants"][v]["logs_first_step"] = runners[v].first_logs
    for num, den in RATIOS:
        if num in times and den in times and times[num] and times[den]:
            paired = [a / b for a, b in zip(times[num], times[den])]
            diffs = [(a - b) * 1e3 for a, b in zip(times[num], times[den])]
            res["ratios"][f"{LETTER[num]}/{LETTER[den]}"] = {
                "name": f"{num}/{den}",
                "paired_median": statistics.median(paired),
                "of_medians": statistics.median(times[num]) / statistics.median(times[den]),
                "of_minimums": min(times[num]) / min(times[den]),
                "overhead_ms_paired_median": statistics.median(diffs),
                "cpu_time_paired_median": statistics.median(
                    a / b for a, b in zip(cpu_times[num], cpu_times[den])
                )
                if device.type == "cpu"
                else None,
            }
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="default: accelerate's choice (cuda if present)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="B (default: 64 on CUDA, 16 on CPU)"
    )
    p.add_argument("--mu", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed rounds (default 20 CUDA, 8 CPU)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed rounds (default 5 CUDA, 1 CPU)"
    )
    p.add_argument("--min-steps", type=int, default=2, help="timed rounds run whatever the budget")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="time budget of the whole run: each (K, dtype) config gets what is left / configs "
        "left and stops starting timed rounds once the next would overrun it (after --min-steps); "
        "default 240 on CPU, none on CUDA; 0 = none",
    )
    p.add_argument(
        "--dtypes",
        default=None,
        help="comma list of fp32, bf16, fp16 (default: fp32,bf16 where bf16 is native, else fp32)",
    )
    p.add_argument("--classes", default="10,100", help="comma list of K")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--bank-slots", type=int, default=None, help="override the bank size")
    p.add_argument("--backbone", default="wrn28_2")
    p.add_argument(
        "--threads", default="auto", help="torch intra-op threads: auto (see common.py) or N"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    if args.dtypes is not None:
        bad = [d for d in args.dtypes.split(",") if d.strip() not in DTYPE_TO_PRECISION]
        if bad:
            p.error(f"unknown dtype(s) {bad}; choose from {', '.join(DTYPE_TO_PRECISION)}")
    return args


def apply_device_defaults(args: argparse.Namespace, device: torch.device) -> None:
    from bacon_zoo.train.precision import device_supports_bf16

    gpu = device.type == "cuda"
    if args.batch_size is None:
        args.batch_size = 64 if gpu else 16
    if args.steps is None:
        args.steps = 20 if gpu else 8
    if args.warmup is None:
        args.warmup = 5 if gpu else 1
    if args.budget_s is None:
        args.budget_s = 0.0 if gpu else 240.0
    if args.dtypes is None:
        args.dtypes = "fp32,bf16" if device_supports_bf16(device) else "fp32"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = common.now()
    args = parse_args(argv)
    device = common.get_device(args.device)
    apply_device_defaults(args, device)
    threads = common.configure_threads(args.threads, device)
    print(f"threads: {threads['reason']}", flush=True)
    classes = [int(k) for k in args.classes.split(",") if k.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    n_configs = len(classes) * len(dtypes)
    print(
        f"step_time on {device} ({common.device_name(device)}): B={args.batch_size} mu={args.mu} "
        f"warm-up {args.warmup} + up to {args.steps} timed rounds, K={classes}, dtypes={dtypes}",
        flush=True,
    )
    configs = []
    t_bench = common.now()
    for k in classes:
        for d in dtypes:
            budget = None
            if args.budget_s and args.budget_s > 0:  # what is left, shared by the configs left
                left = args.budget_s - (common.now() - t_bench)
                budget = max(0.0, left) / (n_configs - len(configs))
            configs.append(run_config(k, d, device, args, budget))

    targets = []
    for c in configs:
        r = c["ratios"].get("d/b")
        if r is not None and c["num_classes"] == 100:
            targets.append(
                {
                    "name": f"bacon/fixmatch step time at K=100, {c['dtype']}",
                    "value": round(r["paired_median"], 4),
                    "threshold": f"<= {TARGET_BACON_OVER_FIXMATCH}",
                    "met": r["paired_median"] <= TARGET_BACON_OVER_FIXMATCH,
                    "cpu_time_value": None
                    if r["cpu_time_paired_median"] is None
                    else round(r["cpu_time_paired_median"], 4),
                    "spread": _spread(c),
                }
            )
    print("\nmedian step time (ms); ratios: median of paired per-round ratios")
    header = f"{'K':>4} {'dtype':>5} " + " ".join(f"{LETTER[v] + ' ' + v:>12}" for v in VARIANTS)
    print(header + "  " + " ".join(f"{k:>8}" for k, _ in _ratio_keys()))
    for c in configs:
        cells = " ".join(
            f"{common.fmt_ms(c['variants'][v]['median_ms']) if v in c['variants'] else '-':>12}"
            for v in VARIANTS
        )
        rat = " ".join(
            f"{c['ratios'][k]['paired_median'] if k in c['ratios'] else float('nan'):>8.3f}"
            for k, _ in _ratio_keys()
        )
        print(f"{c['num_classes']:>4} {c['dtype']:>5} {cells}  {rat}")
    for t in targets:
        print(
            f"target {t['name']}: {t['value']} {t['threshold']} -> "
            f"{'met' if t['met'] else 'MISSED'} (process CPU time: {t['cpu_time_value']}); "
            f"{t['spread']}"
        )

    from bacon_zoo.config import TrainConfig

    cfg = TrainConfig()  # the defaults every variant trains with (the settings below)
    payload = {
        "settings": {
            "threads": threads,
            "backbone": args.backbone,
            "batch_size": args.batch_size,
            "mu": args.mu,
            "images_per_step": args.batch_size * (1 + 2 * args.mu),
            "image_size": 32,
            "channels_last": cfg.channels_last,
            "optimizer": (
                f"SGD lr {cfg.lr} momentum {cfg.momentum}{' nesterov' if cfg.nesterov else ''} "
                f"wd {cfg.weight_decay} (make_optimizer)"
            ),
            "step": (
                "b-d: bacon_zoo.train.trainer.train_step (forward on cat([x_lb, x_w, x_s]), "
                f"algo.loss, backward, SGD, LambdaLR, after_step, EMA {cfg.ema_decay}); "
                "a: common.BareBackbone (backbone + linear head, CE, backward, SGD; no EMA)"
            ),
            "warmup_rounds": args.warmup,
            "max_timed_rounds": args.steps,
            "min_timed_rounds": args.min_steps,
            "budget_s": args.budget_s,
            "total_steps_T": TOTAL_STEPS,
            "first_step": FIRST_STEP,
            "interleaved": "one step of each variant per round, order rotated each round",
            "bacon_contrastive_active": (
                "step > bacon.start*T; every bank slot pre-filled (random label + feature) so all "
                "centers are valid; bacon.anchor_threshold = bacon.bank_threshold = 0 so every "
                "anchor is selected and every sample writes both banks each step"
            ),
            "inputs": "random tensors (the data pipeline is measured by loader.py)",
        },
        "configs": configs,
        "targets": targets,
    }
    if not args.no_write:
        common.write_result("step_time", device, payload, started)
    return payload


def _spread(c: dict[str, Any]) -> str:
    """How noisy the direct figure is: the fixmatch and bacon steps' IQR relative to their median."""
    parts = []
    for v in ("fixmatch", "bacon"):
        x = c["variants"].get(v)
        if x and x["median_ms"]:
            parts.append(f"{v} IQR {100 * x['iqr_ms'] / x['median_ms']:.1f}% of median")
    return ", ".join(parts)


def _ratio_keys() -> list[tuple[str, str]]:
    return [(f"{LETTER[n]}/{LETTER[d]}", f"{n}/{d}") for n, d in RATIOS]


if __name__ == "__main__":
    main()
