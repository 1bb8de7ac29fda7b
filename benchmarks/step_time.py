"""Wall time of one training step: backbone alone vs FixMatch vs ABC vs BaCon (contrastive term on).

Same random batch, same WRN-28-2 and same SGD for all four variants:
  a  backbone  timm backbone forward + a linear head + CE over every row, backward, SGD step
  b  fixmatch  BaconNet forward over cat([x_lb, x_w, x_s]) + FixMatch loss + backward + SGD + after_step
  c  abc       same with ABC's losses
  d  bacon     same with BaCon, contrastive term active (see below)
The variants are measured interleaved -- one step of each per round, the order rotated every round --
so a slow spell on a shared machine hits all of them; ratios are the median of the per-round ratios.

How BaCon's contrastive path is made to run on random data (stated in the JSON too): the step index is
past `cfg.bacon.start * T`, every bank slot is pre-filled (random label, random feature) so every class
center is valid, and `bacon.anchor_threshold = bacon.bank_threshold = 0` so every anchor is selected
and every sample writes the label and feature banks each step (the most bank work a step can do).
Bank sizes: K=10 -> the CIFAR-10-LT split (N1=1000, M1=4000, gamma 100: 12.4k slots); other K ->
50k slots (K=100: the whole CIFAR-100 train set), labeled counts long-tailed (N1=200, gamma 20).

Defaults: on CUDA B=64, mu=2, 5 warm-up + 20 timed rounds. On CPU a WRN-28-2 step at B=64 takes
tens of seconds (and bf16 convolutions without AVX-512-BF16/AMX fall back to a slow reference kernel),
so the CPU default is B=2, 1 warm-up + up to 8 timed rounds within a time budget (--budget-s).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bacon_zoo.algorithms import create_algorithm  # noqa: E402
from bacon_zoo.config import TrainConfig  # noqa: E402
from bacon_zoo.data.splits import lt_class_counts  # noqa: E402
from bacon_zoo.models import BaconNet, BaconOutput  # noqa: E402

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


def bank_layout(num_classes: int, slots: int | None) -> tuple[list[int], int, int]:
    """(labeled_counts, N_L, N_U) for a class count; see the module docstring."""
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


class Runner:
    """One variant: model, optimizer, algorithm; `step()` runs one full training step."""

    def __init__(
        self,
        variant: str,
        num_classes: int,
        layout: tuple[list[int], int, int],
        device: torch.device,
        amp: torch.dtype | None,
        args: argparse.Namespace,
    ) -> None:
        self.variant, self.device, self.amp = variant, device, amp
        torch.manual_seed(args.seed)  # identical initial weights for every variant
        net = BaconNet(args.backbone, num_classes=num_classes, proj_dim=16)
        self.num_features = net.num_features
        if variant == "backbone":
            model: nn.Module = nn.Sequential(net.backbone, nn.Linear(net.num_features, num_classes))
        else:
            model = net
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.ema = None
        if args.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=0.999, exclude_buffers=True)
        self.algo = None
        self.algo_info: dict[str, Any] = {}
        if variant != "backbone":
            labeled_counts, n_l, n_u = layout
            cfg = TrainConfig(algorithm=variant, batch_size=args.batch_size, mu=args.mu)
            if variant == "bacon":
                cfg.bacon.anchor_threshold = 0.0
                cfg.bacon.bank_threshold = 0.0
            self.algo = create_algorithm(
                variant,
                cfg=cfg,
                num_classes=num_classes,
                labeled_counts=labeled_counts,
                num_labeled=n_l,
                num_unlabeled=n_u,
                seed=args.seed,
            ).to(device)
            if variant == "bacon":
                self._prefill_bank(num_classes)
        self.last_logs: dict[str, float] = {}

    @torch.no_grad()
    def _prefill_bank(self, num_classes: int) -> None:
        bank = self.algo.bank
        n = bank.labels.numel()
        g = torch.Generator().manual_seed(1234)
        labels = torch.randint(num_classes, (n,), generator=g)
        labels[: min(n, num_classes)] = torch.arange(min(n, num_classes))  # every class present
        feats = torch.randn(n, bank.dim, generator=g)
        slots, ones = torch.arange(n), torch.ones(n, dtype=torch.bool)
        dev = bank.labels.device
        bank.update_labels(slots.to(dev), labels.to(dev), ones.to(dev))
        bank.update_features(slots.to(dev), feats.to(dev), ones.to(dev))
        self.algo_info = {
            "bank_slots": n,
            "bank_prefilled": True,
            "centers_valid_fraction": float((bank.counts > 0).float().mean()),
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One training step; returns its phase times (seconds), read after a device sync."""
        timer = common.PhaseTimer(self.device)
        x = batch["x"]
        with self._autocast():
            if self.algo is None:
                logits = self.model(x)
                timer.mark("forward")
                loss = F.cross_entropy(logits.float(), batch["y_all"])
            else:
                out = self.model(x)
                timer.mark("forward")
                loss, logs = self.algo.loss(out, batch, step, TOTAL_STEPS)
        timer.mark("loss")
        loss.backward()
        timer.mark("backward")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        timer.mark("optimizer")
        if self.algo is not None:
            self.algo.after_step(step, TOTAL_STEPS)
        if self.ema is not None:
            self.ema.update(self.model)
        timer.mark("after_step")
        common.synchronize(self.device)
        if self.algo is not None and step == FIRST_STEP:
            self.last_logs = {k: float(v) for k, v in logs.items()}
        return timer.result()

    def algo_step(self, feat0: torch.Tensor, batch: dict[str, torch.Tensor], step: int) -> None:
        """The step minus the backbone: heads on fixed features + loss + backward to the features +
        SGD (only the heads have gradients) + after_step. What the variants differ in."""
        feat = feat0.clone().requires_grad_(True)
        with self._autocast():
            if self.algo is None:
                loss = F.cross_entropy(self.model[1](feat).float(), batch["y_all"])
            else:
                m = self.model
                out = BaconOutput(feat, m.head(feat), m.head_abc(feat), m.proj(feat))
                loss, _ = self.algo.loss(out, batch, step, TOTAL_STEPS)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.algo is not None:
            self.algo.after_step(step, TOTAL_STEPS)


def make_batches(
    rounds: int, b: int, mu: int, layout: tuple[list[int], int, int], k: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Random inputs (the data pipeline is benchmarked by loader.py), fresh bank slots per round."""
    _, n_l, n_u = layout
    g = torch.Generator().manual_seed(0)
    u = mu * b
    x = torch.randn(b + 2 * u, 3, 32, 32, generator=g)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y_all = torch.randint(k, (b + 2 * u,), generator=g).to(device)
    out = []
    for _ in range(rounds):
        out.append(
            {
                "x": x,
                "y_all": y_all,
                "y_lb": y_all[:b],
                "y_ulb": torch.randint(k, (u,), generator=g).to(device),
                "idx_lb": torch.randperm(n_l, generator=g)[:b].to(device),
                "idx_ulb": torch.randperm(n_u, generator=g)[:u].to(device),
            }
        )
    return out


def run_config(
    k: int, dtype_name: str, device: torch.device, args: argparse.Namespace, budget: float | None
) -> dict[str, Any]:
    amp = common.default_autocast_dtype(dtype_name)
    layout = bank_layout(k, args.bank_slots)
    runners = {v: Runner(v, k, layout, device, amp, args) for v in args.variants}
    batches = make_batches(args.warmup + args.steps, args.batch_size, args.mu, layout, k, device)
    times: dict[str, list[float]] = {v: [] for v in runners}
    cpu_times: dict[str, list[float]] = {v: [] for v in runners}
    phases: dict[str, list[dict[str, float]]] = {v: [] for v in runners}
    cuda_peak: dict[str, float | None] = dict.fromkeys(runners)
    names = list(runners)
    t_start = common.now()
    rounds_done = 0
    last: dict[str, float] = {}
    for r in range(args.warmup + args.steps):
        timed = r >= args.warmup
        if timed and budget is not None:
            n_timed = r - args.warmup
            round_s = sum(last.values())  # the next round will take about as long as the last
            if n_timed >= args.min_steps and common.now() - t_start + round_s > budget:
                break
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no position bias
        for v in order:
            common.synchronize(device)
            common.reset_cuda_peak(device)
            c0, t0 = time.process_time(), common.now()
            ph = runners[v].step(batches[r], FIRST_STEP + r)
            dt, dc = common.now() - t0, time.process_time() - c0
            last[v] = dt
            if timed:
                times[v].append(dt)
                cpu_times[v].append(dc)
                phases[v].append(ph)
                peak = common.cuda_peak_mb(device)
                if peak is not None:
                    cuda_peak[v] = max(cuda_peak[v] or 0.0, peak)
        if timed:
            rounds_done += 1
        print(
            f"  K={k} {dtype_name} round {r + 1}{'' if timed else ' (warm-up)'}: "
            + ", ".join(f"{v} {last[v] * 1e3:.0f} ms" for v in names),
            flush=True,
        )

    # the backbone-free part of each step, many short interleaved repeats: a low-noise estimate of
    # what each algorithm adds, combined below with the backbone step (a) into decomposed ratios
    dim = runners[names[0]].num_features
    counter = iter(range(FIRST_STEP + 1000, FIRST_STEP + 10**9))

    def backbone_free(bs: int) -> dict[str, dict[str, Any]]:
        bb = (
            batches[0]
            if bs == args.batch_size
            else make_batches(1, bs, args.mu, layout, k, device)[0]
        )
        g = torch.Generator().manual_seed(1)
        feat0 = torch.randn(bb["x"].shape[0], dim, generator=g).to(device)
        return common.time_interleaved(
            {v: (lambda v=v: runners[v].algo_step(feat0, bb, next(counter))) for v in names},
            device,
            warmup=3,
            max_calls=args.algo_repeats,
            min_calls=5,
            budget_s=args.algo_budget_s,
        )

    algo_only = backbone_free(args.batch_size)
    # the same at the paper's batch (cheap without the backbone): to set against a backbone step
    # measured elsewhere (e.g. a GPU at B=64) when this machine can only afford a tiny batch
    algo_ref = None
    if args.ref_batch_size and args.ref_batch_size != args.batch_size:
        algo_ref = backbone_free(args.ref_batch_size)

    res: dict[str, Any] = {
        "num_classes": k,
        "dtype": dtype_name,
        "timed_rounds": rounds_done,
        "bank": {"num_labeled": layout[1], "num_unlabeled": layout[2]},
        "variants": {},
        "ratios": {},
        "peak_rss_mb_so_far": round(common.peak_rss_mb(), 1),
    }
    for v in names:
        ph = {name: statistics.median(p[name] for p in phases[v]) * 1e3 for name in phases[v][0]}
        res["variants"][v] = {
            "letter": LETTER[v],
            **common.summarize(times[v]),
            "process_cpu_time": common.summarize(cpu_times[v]),
            "phases_median_ms": {n: round(x, 3) for n, x in ph.items()},
            "cuda_max_allocated_mb": common._round(cuda_peak[v]),
            "algo_only": _brief(algo_only[v]),
            "algo_only_ref_batch": None if algo_ref is None else _brief(algo_ref[v]),
        }
        if runners[v].algo_info:
            res["variants"][v]["bank_state"] = runners[v].algo_info
        if runners[v].last_logs:
            keep = ("loss_con", "anchors", "anchors_used", "bank_fill", "centers_valid")
            res["variants"][v]["logs_first_step"] = {
                n: round(runners[v].last_logs[n], 4) for n in keep if n in runners[v].last_logs
            }
    for num, den in RATIOS:
        if num in times and den in times and times[num] and times[den]:
            paired = [a / b for a, b in zip(times[num], times[den])]
            diffs = [(a - b) * 1e3 for a, b in zip(times[num], times[den])]
            key = f"{LETTER[num]}/{LETTER[den]}"
            res["ratios"][key] = {
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
            if (
                "backbone" in times
            ):  # (backbone step + algo-only num) / (backbone step + algo-only den)
                base = statistics.median(times["backbone"]) * 1e3
                res["ratios"][key]["decomposed"] = (base + algo_only[num]["median_ms"]) / (
                    base + algo_only[den]["median_ms"]
                )
    return res


def images_per_step(batch_size: int, mu: int) -> int:
    """Images one step consumes: B labeled + mu*B unlabeled x 2 views."""
    return batch_size * (1 + 2 * mu)


def consumption_from_result(data: dict[str, Any], dtype: str = "bf16") -> dict[str, Any] | None:
    """Images/s the `dtype` BaCon step consumes (K=10 if measured, else the first K) from a result."""
    rows = [c for c in data.get("configs", []) if c["dtype"] == dtype and "bacon" in c["variants"]]
    if not rows:
        return None
    row = next((c for c in rows if c["num_classes"] == 10), rows[0])
    s = data["settings"]
    ms = row["variants"]["bacon"]["median_ms"]
    n = images_per_step(s["batch_size"], s["mu"])
    return {
        "dtype": dtype,
        "num_classes": row["num_classes"],
        "batch_size": s["batch_size"],
        "mu": s["mu"],
        "images_per_step": n,
        "step_median_ms": ms,
        "images_per_s": n / (ms / 1e3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="default: accelerate's choice (cuda if present)")
    p.add_argument("--batch-size", type=int, default=None, help="B (default: 64 on CUDA, 2 on CPU)")
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
        "default 300 on CPU, none on CUDA; 0 = none",
    )
    p.add_argument(
        "--ref-batch-size",
        type=int,
        default=64,
        help="also time the backbone-free part at this B (0: don't)",
    )
    p.add_argument("--algo-repeats", type=int, default=50, help="max backbone-free repeats")
    p.add_argument(
        "--algo-budget-s", type=float, default=4.0, help="seconds for the backbone-free repeats"
    )
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    p.add_argument("--classes", default="10,100", help="comma list of K")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--bank-slots", type=int, default=None, help="override the bank size")
    p.add_argument("--backbone", default="wrn28_2")
    p.add_argument("--ema", action="store_true", help="add an EMA update to every variant's step")
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
    return args


def apply_device_defaults(args: argparse.Namespace, device: torch.device) -> None:
    gpu = device.type == "cuda"
    if args.batch_size is None:
        args.batch_size = 64 if gpu else 2
    if args.steps is None:
        args.steps = 20 if gpu else 8
    if args.warmup is None:
        args.warmup = 5 if gpu else 1
    if args.budget_s is None:
        args.budget_s = 0.0 if gpu else 300.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = common.now()
    args = parse_args(argv)
    device = common.get_device(args.device)
    apply_device_defaults(args, device)
    threads = common.configure_threads(args.threads, device)
    print(f"threads: {threads['reason']}", flush=True)
    classes = [int(k) for k in args.classes.split(",") if k.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        common.default_autocast_dtype(d)
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
            dec = r.get("decomposed")
            targets.append(
                {
                    "name": f"bacon/fixmatch step time at K=100, {c['dtype']}",
                    "value": round(r["paired_median"], 4),
                    "threshold": f"<= {TARGET_BACON_OVER_FIXMATCH}",
                    "met": r["paired_median"] <= TARGET_BACON_OVER_FIXMATCH,
                    "decomposed_value": None if dec is None else round(dec, 4),
                    "decomposed_met": None if dec is None else dec <= TARGET_BACON_OVER_FIXMATCH,
                    "spread": _spread(c),
                }
            )
    print("\nmedian step time (ms); ratios: median of paired per-round ratios [decomposed]")
    header = f"{'K':>4} {'dtype':>5} " + " ".join(f"{LETTER[v] + ' ' + v:>12}" for v in VARIANTS)
    print(header + "  " + " ".join(f"{k:>15}" for k, _ in _ratio_keys()))
    for c in configs:
        cells = " ".join(
            f"{common.fmt_ms(c['variants'][v]['median_ms']) if v in c['variants'] else '-':>12}"
            for v in VARIANTS
        )
        rat = " ".join(f"{_ratio_cell(c, key):>15}" for key, _ in _ratio_keys())
        print(f"{c['num_classes']:>4} {c['dtype']:>5} {cells}  {rat}")
        algo = ", ".join(
            f"{v} {common.fmt_ms(x['algo_only']['median_ms'])}" for v, x in c["variants"].items()
        )
        print(f"{'':>10} backbone-free part of the step (ms): {algo}")
        ref = c["variants"][next(iter(c["variants"]))].get("algo_only_ref_batch")
        if ref is not None:
            algo = ", ".join(
                f"{v} {common.fmt_ms(x['algo_only_ref_batch']['median_ms'])}"
                for v, x in c["variants"].items()
            )
            print(f"{'':>10} the same at B={args.ref_batch_size} (ms): {algo}")
    for t in targets:
        print(
            f"target {t['name']}: {t['value']} (decomposed {t['decomposed_value']}) "
            f"{t['threshold']} -> {'met' if t['met'] else 'MISSED'} "
            f"(decomposed: {'met' if t['decomposed_met'] else 'MISSED'}); {t['spread']}"
        )

    payload = {
        "settings": {
            "threads": threads,
            "backbone": args.backbone,
            "batch_size": args.batch_size,
            "mu": args.mu,
            "images_per_step": images_per_step(args.batch_size, args.mu),
            "image_size": 32,
            "channels_last": True,
            "optimizer": "SGD lr 0.03 momentum 0.9 nesterov wd 5e-4",
            "ema": args.ema,
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
            "ref_batch_size": args.ref_batch_size,
            "backbone_free_part": (
                "heads on fixed random features + algo.loss + backward to the features + SGD "
                "(heads only) + after_step, interleaved repeats; decomposed ratio = (a + part_x) / "
                "(a + part_y) with a the backbone step's median"
            ),
            "inputs": "random tensors (the data pipeline is measured by loader.py)",
        },
        "configs": configs,
        "targets": targets,
        "consumption": {d: consumption_from_result({"configs": configs, "settings": {
            "batch_size": args.batch_size, "mu": args.mu}}, d) for d in dtypes},
    }  # fmt: skip
    if not args.no_write:
        common.write_result("step_time", device, payload, started)
    return payload


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {key: r[key] for key in ("n", "median_ms", "min_ms", "iqr_ms", "cpu_median_ms")}


def _ratio_cell(c: dict[str, Any], key: str) -> str:
    r = c["ratios"].get(key)
    if r is None:
        return "-"
    dec = r.get("decomposed")
    return f"{r['paired_median']:.3f}" + ("" if dec is None else f" [{dec:.3f}]")


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
