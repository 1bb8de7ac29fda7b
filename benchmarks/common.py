"""Shared helpers of the benchmark scripts: device, synchronised timing, peak memory, JSON output.

Every result JSON carries the machine it was measured on (date, torch version, device name, CPU count,
load average, git commit) and the exact command, so `update_readme.py` can say where a number came from.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"

if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` without installing the package
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# device


def get_device(name: str | None = None) -> torch.device:
    """`name` if given, else what accelerate picks (CUDA when present, else CPU)."""
    if name:
        return torch.device(name)
    try:
        from accelerate import PartialState

        return PartialState().device
    except Exception:  # accelerate missing or misconfigured: same rule by hand
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_tag(device: torch.device) -> str:
    """The <device> part of a result file name: cpu, cuda, mps, ..."""
    return device.type


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_threads(spec: str | int | None, device: torch.device) -> dict[str, Any]:
    """Set torch's intra-op threads. "auto" on a CPU device: torch's default, capped at the CPUs that
    are not already busy (usable CPUs minus the rounded 1-min load average, at least 1), because
    OpenMP regions whose threads get descheduled make every small op wait (measured here: a WRN-28-2
    step 6-10x slower with 2 threads than with 1 on a 2-core machine under load, and a run that
    started with 2 threads at load 1 fell to a sixth of its speed when more work arrived). An int
    forces that count. The load is read once, at the start.
    """
    default = torch.get_num_threads()
    if spec in (None, "", "auto"):
        load = load_average()
        cpus = usable_cpus()
        free = max(1, cpus - round(load[0])) if load is not None else default
        if device.type == "cpu" and free < default:
            torch.set_num_threads(free)
            reason = (
                f"auto: load average {load[0]} on {cpus} CPUs, {free} thread(s) (default {default})"
            )
        else:
            reason = f"auto: torch default ({default})"
    else:
        torch.set_num_threads(int(spec))
        reason = f"--threads {int(spec)}"
    return {"threads": torch.get_num_threads(), "reason": reason}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_autocast_dtype(name: str) -> torch.dtype | None:
    """ "fp32" -> None (no autocast), "bf16"/"fp16" -> the autocast dtype."""
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise SystemExit(f"unknown dtype '{name}'; choose from {', '.join(table)}")
    return table[name]


# ---------------------------------------------------------------------------------------------
# timing


def now() -> float:
    return time.perf_counter()


def summarize(times_s: Sequence[float]) -> dict[str, Any]:
    """Median (the figure reported), min, mean, spread and the raw samples, all in milliseconds."""
    ms = [t * 1e3 for t in times_s]
    if not ms:
        return {"n": 0, "median_ms": None, "min_ms": None, "mean_ms": None, "samples_ms": []}
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "mean_ms": statistics.fmean(ms),
        "iqr_ms": _iqr(ms),
        "samples_ms": [round(x, 4) for x in ms],
    }


def _iqr(ms: Sequence[float]) -> float:
    if len(ms) < 4:
        return max(ms) - min(ms)
    q = statistics.quantiles(ms, n=4)
    return q[2] - q[0]


def time_fn(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 3,
    repeats: int = 10,
    max_seconds: float | None = None,
    min_repeats: int = 1,
) -> dict[str, Any]:
    """Run `fn` `warmup` times untimed, then time up to `repeats` synchronised calls.

    With `max_seconds`, stops early once that much time went into the timed calls (after at least
    `min_repeats`), so a slow configuration can't blow the run's budget; `n` says how many ran.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    for i in range(repeats):
        t0 = now()
        fn()
        synchronize(device)
        dt = now() - t0
        times.append(dt)
        spent += dt
        if max_seconds is not None and i + 1 >= min_repeats and spent >= max_seconds:
            break
    return summarize(times)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: int = 2,
    max_calls: dict[str, int] | int = 25,
    min_calls: int = 3,
    budget_s: float = 5.0,
) -> dict[str, dict[str, Any]]:
    """Time several callables in rounds (one call of each per round, order rotated every round).

    On a shared machine a slow spell then hits every measurement alike instead of whichever one
    happened to run during it. Each callable gets an equal share of `budget_s`: it leaves the rotation
    once it ran `max_calls` times, or `min_calls` times and used up its share, so a slow callable
    (the O(N K) baseline) can't starve the cheap ones of samples nor blow the budget by much.
    Warm-up: one untimed call each, and `warmup - 1` more for those faster than 50 ms. Each result
    also has the process CPU time per call (`cpu_median_ms`), which a busy machine inflates less
    than wall time on CPU (meaningless on CUDA).
    """
    names = list(fns)
    caps = {n: (max_calls if isinstance(max_calls, int) else max_calls.get(n, 25)) for n in names}
    share = budget_s / max(1, len(names))
    for n in names:
        t0 = now()
        fns[n]()
        synchronize(device)
        if now() - t0 < 0.05:
            for _ in range(warmup - 1):
                fns[n]()
    synchronize(device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    r = 0
    while True:
        active = [
            n
            for n in names
            if len(wall[n]) < caps[n] and (len(wall[n]) < min_calls or sum(wall[n]) < share)
        ]
        if not active:
            break
        k = r % len(active)
        for n in active[k:] + active[:k]:
            c0, t0 = time.process_time(), now()
            fns[n]()
            synchronize(device)
            wall[n].append(now() - t0)
            cpu[n].append(time.process_time() - c0)
        r += 1
    out = {}
    for n in names:
        res = summarize(wall[n])
        res["cpu_median_ms"] = statistics.median(cpu[n]) * 1e3 if cpu[n] else None
        out[n] = res
    return out


class PhaseTimer:
    """Per-phase times inside one step without extra host syncs on CUDA (events), exact on CPU.

    `mark(name)` closes the phase that started at the previous mark; `result()` (call after a sync)
    returns {phase: seconds}.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.marks: list[Any] = [self._stamp()]

    def _stamp(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return now()

    def mark(self, name: str) -> None:
        self.names.append(name)
        self.marks.append(self._stamp())

    def result(self) -> dict[str, float]:
        out = {}
        for name, a, b in zip(self.names, self.marks[:-1], self.marks[1:]):
            out[name] = a.elapsed_time(b) / 1e3 if self.cuda else b - a
        return out


# ---------------------------------------------------------------------------------------------
# memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_rss_children_mb() -> float:
    """Peak RSS of the largest waited-for child process (DataLoader workers, once they exit).

    Forked children start with the parent's pages, so this includes what they share with it."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def peak_memory(device: torch.device) -> dict[str, Any]:
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cuda_max_allocated_mb": _round(cuda_peak_mb(device)),
    }


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# ---------------------------------------------------------------------------------------------
# machine info and output


def _git(*args: str) -> str | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never take the index lock
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    affinity = usable_cpus()
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": _cpu_capability(),
        "cpu_native_bf16": _cpu_native_bf16(),
        "load_average_1_5_15": load_average(),
        **{"git_" + k: v for k, v in git_commit().items()},
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def _cpu_native_bf16() -> bool | None:
    """AVX-512-BF16 or AMX (what `mixed_precision: auto` looks at on a CPU)."""
    try:
        from bacon_zoo.train.precision import cpu_has_native_bf16

        return cpu_has_native_bf16()
    except Exception:
        return None


def _cpu_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


def command_line() -> str:
    """The command that produced the file, as it would be typed from the repository root."""
    script = Path(sys.argv[0])
    if script.resolve().is_relative_to(REPO):
        script = script.resolve().relative_to(REPO)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def write_result(name: str, device: torch.device, payload: dict[str, Any], started: float) -> Path:
    """results/<name>_<device>.json with machine info, command, wall time and peak memory."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{device_tag(device)}.json"
    info = machine_info(device)
    data = {
        "benchmark": name,
        "command": command_line(),
        "machine": info,
        "wall_time_s": round(now() - started, 1),
        "peak_memory": peak_memory(device),
        **payload,
    }
    from bacon_zoo.fileio import atomic_write_text  # a reader never sees half a file

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def read_result(name: str, device: torch.device) -> dict[str, Any] | None:
    path = RESULTS / f"{name}_{device_tag(device)}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


# ---------------------------------------------------------------------------------------------
# the reference step: the bare backbone


class BareBackbone:
    """The network alone, the denominator of every "trainer / backbone" ratio: the run's timm
    backbone + one linear head, cross-entropy over every image, backward, the trainer's SGD
    (`make_optimizer`: same groups, lr, momentum, weight decay). No EMA, no algorithm, no data
    pipeline: what a step would cost if the network were the only work.

    Built from `build_model(cfg, K)` (the run's own backbone and init) under a forked RNG, so making
    it inside a training process does not move that process's random stream.
    """

    def __init__(self, cfg: Any, num_classes: int, device: torch.device) -> None:
        from bacon_zoo.run import build_model
        from bacon_zoo.train.optim import make_optimizer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = build_model(cfg, num_classes)
            model = torch.nn.Sequential(
                net.backbone, torch.nn.Linear(net.num_features, num_classes)
            )
        self.channels_last = bool(cfg.channels_last)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=fmt).train()
        self.optimizer = make_optimizer(self.model, cfg)
        self.device = device

    def step(self, x: torch.Tensor, y: torch.Tensor, accelerator: Any) -> None:
        """Forward under the accelerator's autocast (the trainer's precision), CE in fp32 (as
        accelerate's prepared models return fp32 outputs), backward, SGD."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = self.model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def random_images(
    n: int, num_classes: int, image_size: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 [n, 3, S, S] ~ N(0, 1), the scale of normalised images; y int64 [n]) on `device`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, image_size, image_size, generator=g)
    y = torch.randint(num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and inter-quartile range of a list of ratios (or any figure)."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "iqr": None, "samples": []}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": _iqr(values),
        "samples": [round(v, 4) for v in values],
    }
