"""Images/s the training data pipeline delivers, against the images/s a bf16 training step consumes.

One step's data = B labeled weak views + mu*B unlabeled images x (weak + strong) views, i.e.
B * (1 + 2 mu) images (320 at B=64, mu=2), from `bacon_zoo.data.make_train_loaders` -- the two
endless loaders the trainer uses. "N workers" means num_workers=N for each of the two loaders (so 2N
worker processes). The loaders run flat out (no model consumes the batches), after a warm-up that
drains the batches prefetched while the workers started; the figure is the median over timed windows.

Data: real CIFAR-10 (../shared/datasets/cifar10-jpeg) when present -- a CIFAR-10-LT-sized labeled
(2,478) and unlabeled (9,924) set cut from its train split -- else synthetic uint8 32x32 images.
Consumption: the bf16 BaCon step from results/step_time_<device>.json (K=10), else measured here.
Target: at 2 workers the pipeline delivers >= 2x what the bf16 step consumes.

A short cProfile of the pipeline in-process (0 workers) and a per-view micro-benchmark say where the
time goes (RandAugment, PIL conversion, crop/flip, normalisation, Cutout, collate, seeding).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

CIFAR = common.REPO.parent / "shared" / "datasets" / "cifar10-jpeg"
N_LABELED, N_UNLABELED = 2478, 9924  # CIFAR-10-LT (N1=1000, M1=4000, gamma 100)
TARGET_RATIO = 2.0

# cProfile buckets: (label, file fragment, function names); first match wins, cumulative time
BUCKETS = [
    ("RandAugment (timm ops)", "auto_augment", ("__call__",), "RandAugment"),
    ("Cutout (RandomErasing)", "transforms/transforms.py", ("forward",), "RandomErasing"),
    ("ToPILImage (uint8 -> PIL)", "transforms/transforms.py", ("__call__",), "ToPILImage"),
    ("ToTensor (PIL -> float)", "transforms/transforms.py", ("__call__",), "ToTensor"),
    ("Normalize", "transforms/transforms.py", ("forward",), "Normalize"),
    ("RandomCrop (reflect pad)", "transforms/transforms.py", ("forward",), "RandomCrop"),
    ("RandomHorizontalFlip", "transforms/transforms.py", ("forward",), "RandomHorizontalFlip"),
    ("collate", "_utils/collate.py", ("default_collate",)),
    ("per-sample seeding", "bacon_zoo/data/transforms.py", ("seed_all",)),
    ("RNG save/restore", "bacon_zoo/data/transforms.py", ("preserved_rng",)),
    ("batch sampler", "bacon_zoo/data/loaders.py", ("batch",)),
]


def load_images(args: argparse.Namespace) -> tuple[Any, Any, tuple, tuple, str]:
    from bacon_zoo.data import ImageSet, load_source

    n = N_LABELED + N_UNLABELED
    if CIFAR.is_dir() and not args.synthetic:
        src = load_source(str(CIFAR), image_size=32)
        images, labels = src.train.images[:n], src.train.labels[:n]
        mean, std, name = src.mean, src.std, f"cifar10-jpeg ({CIFAR})"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        mean, std, name = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "synthetic uint8 32x32"
    lab = ImageSet(images[:N_LABELED], labels[:N_LABELED])
    unl = ImageSet(images[N_LABELED:n], labels[N_LABELED:n])
    return lab, unl, mean, std, name


def measure_workers(
    workers: int, lab: Any, unl: Any, mean: tuple, std: tuple, args: argparse.Namespace
) -> dict[str, Any]:
    from bacon_zoo.data import make_train_loaders

    per_step = args.batch_size * (1 + 2 * args.mu)
    t0 = common.now()
    loaders = make_train_loaders(
        lab, unl, args.batch_size, args.mu, mean, std, seed=0, num_workers=workers
    )
    it_l, it_u = iter(loaders[0]), iter(loaders[1])
    next(it_l), next(it_u)
    startup = common.now() - t0
    for _ in range(args.warmup + 2 * workers):  # drain what was prefetched during start-up
        next(it_l), next(it_u)
    rates, step_ms = [], []
    for _ in range(args.windows):
        t0 = common.now()
        for _ in range(args.steps):
            tb = common.now()
            lb, ub = next(it_l), next(it_u)
            step_ms.append((common.now() - tb) * 1e3)
        dt = common.now() - t0
        rates.append(per_step * args.steps / dt)
    assert lb["x"].shape[0] == args.batch_size and ub["x_s"].shape[0] == args.mu * args.batch_size
    del it_l, it_u, loaders
    gc.collect()
    res = {
        "workers_per_loader": workers,
        "worker_processes": 2 * workers,
        "startup_s": round(startup, 2),
        "images_per_s": statistics.median(rates),
        "images_per_s_windows": [round(r, 1) for r in rates],
        "steps_per_s": statistics.median(rates) / per_step,
        "batch_wait_ms": common.summarize([m / 1e3 for m in step_ms]),
        "peak_rss_mb_so_far": round(common.peak_rss_mb(), 1),
    }
    print(
        f"  {workers} worker(s)/loader: {res['images_per_s']:.0f} images/s "
        f"(windows {res['images_per_s_windows']}), start-up {startup:.1f} s",
        flush=True,
    )
    return res


def view_costs(lab: Any, mean: tuple, std: tuple, n: int) -> dict[str, float]:
    """Per-image cost of each view on the calling thread, no DataLoader (microseconds)."""
    from bacon_zoo.data import strong_transform, weak_transform

    weak, strong = weak_transform(32, mean, std), strong_transform(32, mean, std)
    imgs = [lab.images[i % len(lab)] for i in range(n)]
    out = {}
    for name, fn in (("weak", weak), ("strong", strong)):
        fn(imgs[0])
        times = []
        for img in imgs:
            t0 = common.now()
            fn(img)
            times.append(common.now() - t0)
        out[f"{name}_us_per_image"] = statistics.median(times) * 1e6
    return out


def profile_pipeline(
    lab: Any, unl: Any, mean: tuple, std: tuple, args: argparse.Namespace
) -> dict[str, Any]:
    """cProfile of `steps` batches pulled in-process (0 workers): time per bucket per step."""
    from bacon_zoo.data import make_train_loaders

    loaders = make_train_loaders(lab, unl, args.batch_size, args.mu, mean, std, seed=0)
    it_l, it_u = iter(loaders[0]), iter(loaders[1])
    next(it_l), next(it_u)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.profile_steps):
        next(it_l), next(it_u)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt
    buckets: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        for spec in BUCKETS:
            label, frag, funcs = spec[0], spec[1], spec[2]
            if frag in file and func in funcs:
                if len(spec) > 3 and not _defines_class(file, _line, spec[3]):
                    continue
                buckets[label] = buckets.get(label, 0.0) + ct
                break
    steps = args.profile_steps
    rows = sorted(buckets.items(), key=lambda kv: -kv[1])
    top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:12]
    return {
        "steps": steps,
        "note": "cProfile inflates Python-heavy code; read the shares, not the absolute times",
        "total_ms_per_step": total / steps * 1e3,
        "buckets_ms_per_step": {k: round(v / steps * 1e3, 2) for k, v in rows},
        "buckets_share": {k: round(v / total, 3) for k, v in rows},
        "top_self_time": [
            {
                "function": f"{Path(f).name}:{line}({fn})",
                "self_ms_per_step": round(tt / steps * 1e3, 2),
                "calls_per_step": round(nc / steps, 1),
            }
            for (f, line, fn), (_cc, nc, tt, _ct, _c) in top
        ],
    }


_CLASS_CACHE: dict[tuple[str, int], str | None] = {}


def _defines_class(file: str, line: int, cls: str) -> bool:
    """Is the method at file:line inside `class cls`? (torchvision's transforms share one file.)"""
    key = (file, line)
    if key not in _CLASS_CACHE:
        owner = None
        try:
            lines = Path(file).read_text().splitlines()[:line]
            for text in reversed(lines):
                if text.startswith("class "):
                    owner = text[6:].split("(")[0].split(":")[0].strip()
                    break
        except OSError:
            pass
        _CLASS_CACHE[key] = owner
    return _CLASS_CACHE[key] == cls


def consumption(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of the bf16 (and fp32) BaCon step: from step_time's JSON, else measured now."""
    import step_time

    out: dict[str, Any] = {}
    data = common.read_result("step_time", device)
    for dtype in ("bf16", "fp32"):
        c = step_time.consumption_from_result(data, dtype) if data else None
        if c is not None:
            c["source"] = (
                f"results/step_time_{common.device_tag(device)}.json ({data['machine']['date']})"
            )
            out[dtype] = c
    if "bf16" not in out:
        print("  no bf16 step time on file: measuring 2 BaCon bf16 steps", flush=True)
        sargs = step_time.parse_args(
            ["--variants", "bacon", "--classes", "10", "--dtypes", "bf16", "--steps", "2",
             "--warmup", "1", "--no-write"]
        )  # fmt: skip
        step_time.apply_device_defaults(sargs, device)
        row = step_time.run_config(10, "bf16", device, sargs, None)
        fake = {"configs": [row], "settings": {"batch_size": sargs.batch_size, "mu": sargs.mu}}
        out["bf16"] = step_time.consumption_from_result(fake, "bf16")
        out["bf16"]["source"] = "measured by loader.py (2 steps)"
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="whose step to compare against (default: auto)")
    p.add_argument("--workers", default="0,1,2", help="comma list of num_workers per loader")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mu", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (+ 2 per worker)")
    p.add_argument("--profile-steps", type=int, default=4, help="0: no cProfile")
    p.add_argument("--view-images", type=int, default=200, help="images for the per-view timing")
    p.add_argument(
        "--synthetic", action="store_true", help="synthetic images even if CIFAR is here"
    )
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = common.now()
    args = parse_args(argv)
    device = common.get_device(args.device)
    per_step = args.batch_size * (1 + 2 * args.mu)
    lab, unl, mean, std, data_name = load_images(args)
    print(
        f"loader: {data_name}, B={args.batch_size} mu={args.mu} -> {per_step} images/step, "
        f"CPUs {common.usable_cpus()}",
        flush=True,
    )
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    results = [measure_workers(w, lab, unl, mean, std, args) for w in workers]
    workers_rss = round(common.peak_rss_children_mb(), 1)  # workers have exited by now
    views = view_costs(lab, mean, std, args.view_images)
    print(
        f"  per image, one thread: weak {views['weak_us_per_image']:.0f} us, "
        f"strong {views['strong_us_per_image']:.0f} us",
        flush=True,
    )
    cons = consumption(device, args)
    need = cons["bf16"]["images_per_s"] if cons.get("bf16") else None
    for r in results:
        r["ratio_to_bf16_step"] = r["images_per_s"] / need if need else None
    at2 = next((r for r in results if r["workers_per_loader"] == 2), None)
    targets = []
    if at2 is not None and need:
        targets.append(
            {
                "name": "loader images/s at 2 workers / bf16 step consumption",
                "value": round(at2["ratio_to_bf16_step"], 2),
                "threshold": f">= {TARGET_RATIO}",
                "met": at2["ratio_to_bf16_step"] >= TARGET_RATIO,
            }
        )
    profile = None
    if args.profile_steps > 0:
        profile = profile_pipeline(lab, unl, mean, std, args)
        print("  where the time goes (cProfile, 0 workers, share of pipeline time):")
        for k, v in profile["buckets_share"].items():
            print(f"    {k:<28} {v * 100:5.1f}%  ({profile['buckets_ms_per_step'][k]:.1f} ms/step)")
    if need:
        print(f"  bf16 step consumes {need:.1f} images/s ({cons['bf16']['source']})")
    for t in targets:
        print(
            f"target {t['name']}: {t['value']}x {t['threshold']} -> {'met' if t['met'] else 'MISSED'}"
        )
    payload = {
        "settings": {
            "data": data_name,
            "labeled": len(lab),
            "unlabeled": len(unl),
            "batch_size": args.batch_size,
            "mu": args.mu,
            "images_per_step": per_step,
            "steps_per_window": args.steps,
            "windows": args.windows,
            "warmup_steps": f"{args.warmup} + 2 per worker",
            "workers_meaning": "num_workers of each of the two loaders (labeled, unlabeled)",
            "main_process_threads": torch.get_num_threads(),
        },
        "results": results,
        "peak_rss_worker_mb": workers_rss,
        "peak_rss_worker_note": "largest worker process (forked: includes pages shared with the main)",
        "view_costs": views,
        "consumption": cons,
        "profile": profile,
        "targets": targets,
    }
    if not args.no_write:
        common.write_result("loader", device, payload, started)
    return payload


if __name__ == "__main__":
    main()
