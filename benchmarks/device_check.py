"""The GPU checks a CPU cannot do, in one call of the lent device machine (docs/device-check.md).

Here (the project's venv, network for PyPI):
  python benchmarks/device_check.py pack   # .device/: CIFAR-10-LT as one .npz + the wheels the lent
                                           # image lacks; prints what the call carries (< 64 MiB)
  python benchmarks/device_check.py venv   # build/device-venv: a stand-in for the lent image
There (or here, in that venv, for the rehearsal): `bash benchmarks/device_check.sh`, which runs
  python3 benchmarks/device_check.py run --out $OUT
with the phases below, in order of value. Each runs as its own process with its own time limit (and
all of them within --deadline-s), from a clean folder runs/device/<phase>, and writes its files into
$OUT the moment it ends; a failing or timed-out phase does not stop the next. $OUT/status.json is
rewritten after every phase (return code, seconds, the phase's key numbers).

  a   the CUDA tests (pytest -k cuda over every test file with a CUDA test, but test_syncs.py)
  b   host syncs: tests/test_syncs.py's CUDA tests, then the real recipe's step (cifar10_lt data,
      B=64, mu=2, bf16 and fp32, L_con on from step 1) under torch.cuda.set_sync_debug_mode("warn"),
      every sync counted with the project line that made it; on a CPU, tests/syncs.SyncDetector
  c1  the headline (benchmarks/headline.py): trainer / bare backbone, steps/s and the 300k-step
      projection, B=64, mu=2, bf16, eager
  c2  the same with --compile (skipped on a CPU: compiling takes minutes there)
  d   a short real CIFAR-10-LT run (recipe cifar10_lt_n1500_m3000_g100, 2,000 steps, bf16): top-1
      and on how many steps L_con had anchors (metrics.jsonl diagnostics con_steps)

On a CPU (the rehearsal) the same phases run at toy sizes; the CUDA tests skip themselves.
$OUT gets at most 8 files (the device tool's limit): status.json, log.txt (written by the .sh),
a_cuda_tests.txt, b_syncs.json, c1_headline.json, c2_headline.json, d_run.json, d_metrics.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / ".device"  # git-ignored; the `run` tool's carry brings it along
DATA = DEVICE_DIR / "cifar10_lt.npz"
WHEELS = DEVICE_DIR / "wheels"
RUNS = REPO / "runs" / "device"
TRAVEL_LIMIT_MIB = 64.0
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"
# the pool: the images of the cifar10_lt split (N1=1000, M1=4000, gamma 100, seed 0), i.e. per class
# 5000 * 100^(-k/9); every CIFAR-10-LT split with gamma 100 and N1 + M1 <= 5000 can be drawn from it
POOL_SPLIT = {"n1": 1000, "m1": 4000, "imb_ratio_l": 100, "imb_ratio_u": 100, "seed": 0}
TEST_IMAGES = 2000  # class-balanced, the --max-eval-samples 2000 subset (all 10,000 would not fit)
SETS = ["bacon.start=0", "bacon.anchor_threshold=0", "bacon.bank_threshold=0"]  # L_con from step 1

# The lent image's Python packages (.library/device/KINDS.md, read 2026-11-17): what `python3` has
# there. The rehearsal venv links exactly these (plus what they need here); wheels carry the rest.
IMAGE_PACKAGES = re.split(
    r"\s+",
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""",
)
DEVICE_PYTHON = "3.12"  # the lent image's python3
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# here: what the call carries


def pack_data(source: Path, out: Path) -> None:
    """CIFAR-10-LT's pool and 2,000 balanced test images as one .npz (`sources.save_npz`)."""
    import numpy as np

    from bacon_zoo.data import eval_subset, load_source, make_lt_split
    from bacon_zoo.data.sources import save_npz

    os.environ["BACON_ZOO_CIFAR10"] = str(source)
    src = load_source("cifar10", image_size=32)
    lab, unl = make_lt_split(src.train.labels, src.num_classes, **POOL_SPLIT)
    pool = np.sort(np.concatenate([lab, unl]))
    test = eval_subset(src.test, src.num_classes, TEST_IMAGES)
    note = (
        f"CIFAR-10 from {source.name}: the {len(pool)} train images of the split "
        f"{POOL_SPLIT} (any gamma-100 split with N1 + M1 <= 5000 fits in it) and {len(test)} "
        "class-balanced test images (bacon_zoo.data.eval_subset); made by device_check.py pack"
    )
    save_npz(out, src.train.subset(pool), test, src.class_names, src.mean, src.std, note)
    print(
        f"wrote {out.relative_to(REPO)}: {len(pool)} train + {len(test)} test images, {mib(out):.1f} MiB"
    )


def missing_requirements(root: str = "datasets") -> list[str]:
    """`root` and what it needs (installed here, transitively) that the lent image does not have."""
    from importlib import metadata

    from packaging.requirements import Requirement

    have, todo, out = {norm(p) for p in IMAGE_PACKAGES}, [root], []
    while todo:
        name = todo.pop()
        if norm(name) in have or name in out:
            continue
        out.append(name)
        for r in metadata.requires(name) or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def pack_wheels(dest: Path) -> list[str]:
    """pip download of those packages, at this venv's versions, for the lent python and this one."""
    from importlib import metadata

    pins = [f"{n}=={metadata.version(n)}" for n in missing_requirements()]
    dest.mkdir(parents=True, exist_ok=True)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for py in dict.fromkeys([DEVICE_PYTHON, here]):  # the rehearsal installs them too
        plat = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", py, "--implementation", "cp", *plat, "-d", str(dest), *pins]  # fmt: skip
        subprocess.run(cmd, check=True)
    (dest / "requirements.txt").write_text("\n".join(pins) + "\n")
    print(f"wheels in {dest.relative_to(REPO)}: {', '.join(pins)}")
    return pins


def mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def travel_size(carry: tuple[Path, ...] = (DEVICE_DIR,)) -> dict[str, Any]:
    """What one `run` call sends: tracked and untracked-not-ignored files, shared/, the carried paths."""
    try:
        files = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
            capture_output=True, env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"),
        ).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"tree_mib": None, "note": "no git checkout here: size not computed"}
    tree = sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file()) / 2**20
    shared = mib(REPO / "shared") if (REPO / "shared").is_dir() else 0.0
    carried = {str(p.relative_to(REPO)): round(mib(p), 2) for p in carry if p.exists()}
    total = tree + shared + sum(carried.values())
    return {
        "tree_mib": round(tree, 2),
        "shared_mib": round(shared, 2),
        "carried_mib": carried,
        "total_mib": round(total, 2),
        "limit_mib": TRAVEL_LIMIT_MIB,
        "fits": total < TRAVEL_LIMIT_MIB,
    }


def print_travel(size: dict[str, Any]) -> None:
    if size.get("total_mib") is None:
        print(f"travel size: {size['note']}")
        return
    carried = ", ".join(f"{k} {v:.1f}" for k, v in size["carried_mib"].items()) or "nothing"
    print(
        f"travel size: {size['total_mib']:.1f} MiB of {TRAVEL_LIMIT_MIB:.0f} (tree "
        f"{size['tree_mib']:.1f}, shared/ {size['shared_mib']:.1f}, carried: {carried} MiB)"
        + ("" if size["fits"] else " -- TOO LARGE for one call")
    )


def cmd_pack(args: argparse.Namespace) -> int:
    if args.force or not DATA.is_file():
        if not args.cifar.is_dir():
            print(f"pack: no CIFAR-10 copy at {args.cifar} (--cifar)", file=sys.stderr)
            return 1
        pack_data(args.cifar, DATA)
    else:
        print(f"{DATA.relative_to(REPO)} is there ({mib(DATA):.1f} MiB; --force remakes it)")
    if args.force or not (WHEELS / "requirements.txt").is_file():
        pack_wheels(WHEELS)
    size = travel_size()
    (DEVICE_DIR / "pack.json").write_text(json.dumps(size, indent=2) + "\n")
    print_travel(size)
    return 0 if size.get("fits", True) else 1


def cmd_venv(args: argparse.Namespace) -> int:
    """A venv whose packages are the lent image's list, linked from this venv (no copy, no network):
    each package's top-level files and its .dist-info, plus what those need here; never `datasets`,
    never this project (the check runs it from PYTHONPATH, as there)."""
    import venv
    from importlib import metadata

    from packaging.requirements import Requirement

    dest = args.dest
    venv.create(dest, with_pip=False, clear=True, symlinks=True)
    site = next(dest.glob("lib/python*/site-packages"))
    dists = {norm(d.metadata["Name"]): d for d in metadata.distributions()}
    wanted = [n for n in map(norm, IMAGE_PACKAGES) if n in dists]
    extra, todo, done = [], list(wanted), set()
    while todo:
        name = todo.pop()
        if name in done or name not in dists:
            continue
        done.add(name)
        for r in dists[name].requires or []:
            req = Requirement(r)
            dep = norm(req.name)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and dep not in done:
                if dep not in wanted and dep in dists and dep not in extra:
                    extra.append(dep)
                todo.append(dep)
    forbidden = {norm(n) for n in missing_requirements()} | {"bacon-zoo"}
    linked = 0
    for name in sorted(done - forbidden):
        d = dists[name]
        tops = {Path(str(f)).parts[0] for f in d.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(d.locate_file(top))
            if top.endswith(".pth") or top.startswith("__editable__") or not src.exists():
                continue
            link = site / top
            if not link.exists():
                link.symlink_to(src)
                linked += 1
    print(
        f"venv {dest}: {len(done - forbidden)} of the lent image's packages (and their needs) "
        f"linked from {Path(sys.prefix).name} ({linked} entries); not the image's but needed "
        f"here: {', '.join(sorted(set(extra) - forbidden)) or 'none'}; left out: "
        f"{', '.join(sorted(forbidden))}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# there: the phases


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def write_json(path: Path, obj: Any) -> None:
    from bacon_zoo.fileio import write_json as write

    write(path, obj)


def phase_a(out: Path, work: Path, gpu: bool) -> dict[str, Any]:
    """The CUDA tests (named *cuda*) of every test file that has one, test_syncs.py aside (phase b)."""
    files = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "tests").glob("test_*.py"))
        if "torch.cuda.is_available()" in p.read_text() and p.name != "test_syncs.py"
    ]
    if not gpu:
        print(
            "no CUDA device: the CUDA tests skip themselves (this checks they import and collect)"
        )
    return pytest_run(files, out / "a_cuda_tests.txt")


def pytest_run(files: list[str], log: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "",
           "-k", "cuda", *files]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    log.write_text(f"$ {' '.join(cmd)}\n{text}")
    print(text[-3000:])
    tail = [
        line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)
    ]
    return {"files": files, "rc": proc.returncode, "summary": tail[-1] if tail else None}


def real_step_parts(cfg: Any, device: str) -> dict[str, Any]:
    """The trainer's step parts for `cfg` (its data, model, algorithm, streams), like tests/test_syncs.build."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bacon_zoo.algorithms import create_algorithm
    from bacon_zoo.data import make_train_loaders, prepare_data
    from bacon_zoo.run import build_model
    from bacon_zoo.train.diagnostics import TrainingDiagnostics
    from bacon_zoo.train.trainer import make_step_parts

    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=device == "cpu", mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    algo = create_algorithm(
        cfg.algorithm, cfg=cfg, num_classes=data.num_classes, labeled_counts=data.labeled_counts,
        num_labeled=len(data.labeled.labels), num_unlabeled=len(data.unlabeled.labels), seed=cfg.seed,
    )  # fmt: skip
    parts = make_step_parts(cfg, build_model(cfg, data.num_classes), algo, acc)
    algo.to(acc.device)
    diag = TrainingDiagnostics(
        data.num_classes, algo.eval_head, algo.threshold, data.labeled_counts,
        data.split.unlabeled_counts, len(data.labeled.labels), len(data.unlabeled.labels),
    )  # fmt: skip
    diag.to(acc.device)
    lb, ulb = make_train_loaders(
        data.labeled, data.unlabeled, cfg.batch_size, cfg.mu, data.mean, data.std, seed=cfg.seed,
        device=acc.device, unlabeled_views=algo.unlabeled_views,
    )  # fmt: skip
    parts.model.train()
    return {"parts": parts, "diag": diag, "lb": iter(lb), "ulb": iter(ulb), "log_sums": {}}


def project_frame() -> str:
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(REPO) and path != Path(__file__).resolve():
            return f"{path.relative_to(REPO)}:{frame.lineno} ({frame.name})"
    return "?"


def sync_check(precision: str, batch_size: int, steps: int, gpu: bool) -> dict[str, Any]:
    """Host syncs in `steps` non-logging iterations of the real loop (after one warm-up iteration)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from syncs import SyncDetector
    from test_syncs import loop_step

    from bacon_zoo.config import build_config

    flags = {"batch_size": batch_size, "mu": 2, "steps": 1000, "mixed_precision": precision,
             "cpu": not gpu, "seed": 0}  # fmt: skip
    cfg = build_config("cifar10_lt", flags, SETS)
    run = real_step_parts(cfg, "cuda" if gpu else "cpu")
    loop_step(run, 0)  # moves state to the device, fills the constant caches
    events: list[str] = []
    t0 = time.perf_counter()
    if gpu:
        torch.cuda.synchronize()
        with warnings.catch_warnings():  # restores showwarning and the filters on the way out
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, *a, **k: events.append(f"{project_frame()}: {m}")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for step in range(1, steps + 1):
                    logs = loop_step(run, step)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        how = 'torch.cuda.set_sync_debug_mode("warn"), each warning counted'
    else:
        with SyncDetector() as det:
            for step in range(1, steps + 1):
                logs = loop_step(run, step)
        events = [f"{e.where}: {e.what} -- {e.why}" for e in det.events]
        how = "tests/syncs.SyncDetector (CPU stand-in)"
    seconds = time.perf_counter() - t0
    return {
        "recipe": "cifar10_lt",
        "precision": precision,
        "batch_size": batch_size,
        "mu": 2,
        "sets": SETS,
        "steps_checked": steps,
        "detector": how,
        "syncs": len(events),
        "syncs_per_step": len(events) / steps,
        "first_syncs": sorted(set(events))[:30],
        "con_anchors_last_step": float(logs["con_anchors"]) if "con_anchors" in logs else None,
        "seconds": round(seconds, 2),
    }


def phase_b(out: Path, work: Path, gpu: bool) -> dict[str, Any]:
    res: dict[str, Any] = {"test_syncs": pytest_run(["tests/test_syncs.py"], work / "pytest.txt")}
    res["test_syncs"]["output_tail"] = (work / "pytest.txt").read_text()[-4000:]
    sizes = [("bf16", 64, 5), ("no", 64, 5)] if gpu else [("no", 4, 2)]
    res["real_step"] = []
    for precision, b, steps in sizes:
        try:
            row = sync_check(precision, b, steps, gpu)
        except Exception as e:  # a sync in error mode or a broken step: record it, go on
            row = {"precision": precision, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        print(f"real step, {precision}, B={b}: {json.dumps(row)[:600]}")
        res["real_step"].append(row)
        write_json(out / "b_syncs.json", res)
    ok = res["test_syncs"]["rc"] in (0, 5) and all(r.get("syncs") == 0 for r in res["real_step"])
    return {"ok": ok, "syncs_per_step": [r.get("syncs_per_step") for r in res["real_step"]],
            "test_syncs": res["test_syncs"]["summary"]}  # fmt: skip


def headline(out: Path, work: Path, gpu: bool, name: str, compiled: bool) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import headline as h

    argv = ["--data", str(DATA), "--name", "headline", "--results-dir", str(work)]
    if gpu:  # B=64, mu=2 (headline's CUDA default), fewer windows than its default: the call's time
        argv += ["--precisions", "bf16", "--warmup", "30", "--window", "50"]
        argv += ["--windows", "5" if compiled else "8"]
    else:  # the rehearsal: a toy size on a shared CPU
        argv += ["--precisions", "no", "--batch-size", "4", "--warmup", "1", "--window", "2",
                 "--windows", "2", "--eval-samples", "20", "--threads", "1"]  # fmt: skip
    if compiled:
        argv += ["--compile"]
    payload = h.main(argv)
    written = next(work.glob("headline_*.json"), None)
    if written is not None:
        shutil.copy(written, out / f"{name}_headline.json")
    if not payload:
        return {"ok": False, "note": "headline wrote nothing"}
    rows = payload["rows"]
    keys = ("precision", "ratio", "trainer_steps_per_s", "projected_hours_paper_steps", "noisy")
    return {"ok": True, "rows": [{k: r[k] for k in keys} for r in rows]}


def phase_c1(out: Path, work: Path, gpu: bool) -> dict[str, Any]:
    return headline(out, work, gpu, "c1", compiled=False)


def phase_c2(out: Path, work: Path, gpu: bool) -> dict[str, Any]:
    return headline(out, work, gpu, "c2", compiled=True)


def phase_d(out: Path, work: Path, gpu: bool) -> dict[str, Any]:
    from bacon_zoo.cli import main as cli

    steps = 2000 if gpu else 12
    argv = ["train", "--recipe", "cifar10_lt_n1500_m3000_g100", "--steps", str(steps),
            "--eval-every", str(steps // 4), "--checkpoint-every", str(steps), "--no-export",
            "--output-dir", str(work / "run"), "--seed", "0"]  # fmt: skip
    argv += (
        ["--mixed-precision", "bf16"]
        if gpu
        else ["--mixed-precision", "no", "--batch-size", "4", "--max-eval-samples", "100", "--cpu"]
    )
    t0 = time.perf_counter()
    code = cli(argv)
    wall = time.perf_counter() - t0
    return summarize_run(out, work, code, wall, argv)


def summarize_run(out: Path, work: Path, code: int | None, wall: float | None, argv: list) -> dict:
    """d_run.json from what the run left (also after a timeout: the metrics written so far)."""
    import yaml

    from bacon_zoo.hub.card import contrastive_summary

    run = work / "run"
    metrics = run / "metrics.jsonl"
    history = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []  # fmt: skip
    if metrics.is_file():
        shutil.copy(metrics, out / "d_metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None  # fmt: skip
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}  # fmt: skip
    evals = [(r["step"], r.get("top1")) for r in history if "top1" in r]
    res = {
        "command": ["train.py", *argv[1:]],
        "exit_code": code,
        "wall_s": None if wall is None else round(wall, 1),
        "top1_by_step": evals,
        "best_top1": summary.get("best_top1")
        if summary
        else max((t for _, t in evals), default=None),
        "summary": summary,
        "contrastive": None,
    }
    try:
        res["contrastive"] = contrastive_summary(config, history) if config else None
    except Exception as e:  # a config it cannot read: the run's numbers still count
        res["contrastive"] = {"error": f"{type(e).__name__}: {e}"}
    write_json(out / "d_run.json", res)
    keys = ("best_top1", "wall_s")
    con = res["contrastive"] or {}
    return {"ok": code == 0, **{k: res[k] for k in keys}, "steps_con_engaged":
            con.get("engaged_steps"), "steps_con_scheduled": con.get("scheduled_steps")}  # fmt: skip


PHASES = {"a": phase_a, "b": phase_b, "c1": phase_c1, "c2": phase_c2, "d": phase_d}
# seconds each phase may take on a GPU; the CPU rehearsal's in the second column (a slow, shared CPU)
LIMITS = {"a": (90, 600), "b": (100, 600), "c1": (120, 600), "c2": (180, 0), "d": (160, 900)}


def cmd_phase(args: argparse.Namespace) -> int:
    """One phase, in this process (started by `run`): writes $OUT files and work/result.json."""
    gpu = cuda()
    work = RUNS / args.name
    os.environ.setdefault("BACON_ZOO_CIFAR10", str(DATA))
    result = PHASES[args.name](args.out, work, gpu)
    write_json(work / "result.json", result)
    return 0 if result.get("ok", result.get("rc", 1) in (0, 5)) else 1


def stream(proc: subprocess.Popen, log: Path) -> threading.Thread:
    def pump() -> None:
        with log.open("w") as f:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
            sys.stdout.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def run_phase(name: str, out: Path, limit: float) -> dict[str, Any]:
    work = RUNS / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "phase", name, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    pump = stream(proc, work / "phase.log")
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    pump.join(timeout=5)
    seconds = time.perf_counter() - t0
    res: dict[str, Any] = {"rc": proc.returncode, "seconds": round(seconds, 1),
                           "limit_s": round(limit), "timed_out": timed_out}  # fmt: skip
    result = work / "result.json"
    if result.is_file():
        res["result"] = json.loads(result.read_text())
    elif name == "d" and (work / "run").is_dir():  # what the run wrote before it was stopped
        res["result"] = summarize_run(out, work, None, None, ["train", "(stopped)"])
    if name == "a" and not (out / "a_cuda_tests.txt").is_file():
        shutil.copy(work / "phase.log", out / "a_cuda_tests.txt")
    return res


def environment() -> dict[str, Any]:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": cuda(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if info["cuda"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    for name in ("timm", "accelerate", "datasets", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:
            info[name] = f"not importable ({type(e).__name__})"
    return info


def cmd_run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"device check: {json.dumps(env)}")
    size = travel_size()
    if size.get("total_mib") is None and (DEVICE_DIR / "pack.json").is_file():
        size = json.loads((DEVICE_DIR / "pack.json").read_text()) | {"measured": "here, by pack"}
    print_travel(size)
    status: dict[str, Any] = {"environment": env, "travel": size, "phases": {}}
    if not DATA.is_file():
        print(f"no {DATA.relative_to(REPO)}: run `make device-pack` here and carry .device")
    col = 0 if env["cuda"] else 1
    for name in args.phases.split(","):
        left = args.deadline_s - (time.perf_counter() - start)
        limit = min(LIMITS[name][col], left - 10)
        if LIMITS[name][col] == 0:
            res = {"skipped": "no CUDA device: compiling the step on a CPU takes minutes (the "
                   "test suite covers --compile on the CPU)"}  # fmt: skip
        elif limit < 30:
            res = {"skipped": f"out of time ({left:.0f} s of --deadline-s {args.deadline_s} left)"}
        else:
            print(f"\n===== phase {name} (limit {limit:.0f} s) =====", flush=True)
            res = run_phase(name, out, limit)
        if "skipped" in res:
            print(f"\n===== phase {name}: skipped: {res['skipped']}")
        else:
            print(f"===== phase {name}: {json.dumps(res)[:800]}", flush=True)
        status["phases"][name] = res
        status["seconds"] = round(time.perf_counter() - start, 1)
        (out / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    failed = [n for n, r in status["phases"].items() if "skipped" not in r and r["rc"] != 0]
    print(
        f"\ndevice check done in {status['seconds']:.0f} s; failed: {', '.join(failed) or 'none'}"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pack", help="make .device/ (data + wheels) and print the travel size")
    s.add_argument("--cifar", type=Path, default=Path(os.environ.get("BACON_ZOO_CIFAR10") or CIFAR))
    s.add_argument("--force", action="store_true", help="remake what is already there")
    s = sub.add_parser("venv", help="make the rehearsal venv (the lent image's packages, linked)")
    s.add_argument("--dest", type=Path, default=REPO / "build" / "device-venv")
    s = sub.add_parser("run", help="all phases, each in its own process with its own limit")
    s.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or RUNS / "out"))
    s.add_argument("--phases", default=",".join(PHASES), help="comma list of a,b,c1,c2,d")
    s.add_argument("--deadline-s", type=float, default=None, help="all phases together (default "
                   "540 with CUDA: the device tool's 600 s a call; 3000 on a CPU)")  # fmt: skip
    s = sub.add_parser("phase", help="one phase in this process (what `run` starts)")
    s.add_argument("name", choices=list(PHASES))
    s.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out = args.out.resolve() if hasattr(args, "out") else None
    if args.cmd == "run":
        bad = [n for n in args.phases.split(",") if n not in PHASES]
        if bad:
            p.error(f"unknown phase(s) {bad}; choose from {', '.join(PHASES)}")
        if args.deadline_s is None:
            args.deadline_s = 540.0 if cuda() else 3000.0
    return {"pack": cmd_pack, "venv": cmd_venv, "run": cmd_run, "phase": cmd_phase}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
