"""The training loop: read it top to bottom.

One step = one labeled batch (weak view) + one unlabeled batch (weak and strong views), concatenated into
a single forward pass so BatchNorm sees the mixture (as FixMatch does); the algorithm turns the outputs
into a loss and updates its own state (memory banks); SGD, an optional schedule and an EMA of the whole
BaconNet follow (`train_step`). Evaluation uses the EMA model and the algorithm's evaluation head.

`train(cfg)` checks everything that can be checked (config, output dir, data and split, that the
backbone runs at this image size, the resume point) before it writes a single file, so a failed start
never leaves a run directory behind that the corrected command would refuse.

Exact resume: the data streams are a pure function of (seed, step, rank), the algorithm draws its
randomness from (seed, rank, step), and everything else (weights, EMA, optimizer, schedule, banks,
RNG states) is in the checkpoint, so stopping and resuming gives the same weights as one straight run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch import Tensor

from bacon_zoo.algorithms import Algorithm, check_against_data, components, create_algorithm
from bacon_zoo.config import TrainConfig, config_diff, fingerprint
from bacon_zoo.data import SSLData, make_eval_loader, make_train_loaders, prepare_data
from bacon_zoo.data.views import RESIZE_INTERPOLATION
from bacon_zoo.errors import UserError
from bacon_zoo.fileio import check_writable_dir
from bacon_zoo.models import BaconNet
from bacon_zoo.run import RunDir, build_model, summary_record
from bacon_zoo.run.checkpoint import (
    TrainState,
    find_resume_dir,
    load_checkpoint,
    run_record,
    save_checkpoint,
)
from bacon_zoo.run.layout import step_of
from bacon_zoo.run.lock import RunLock
from bacon_zoo.run.weights import local_folder
from bacon_zoo.train.compile import (
    compile_algorithm,
    compile_mode,
    compile_model,
    compile_streams,
    step_begin,
)
from bacon_zoo.train.diagnostics import TrainingDiagnostics
from bacon_zoo.train.ema import ModelEma
from bacon_zoo.train.evaluate import evaluate
from bacon_zoo.train.optim import check_optimizer, lr_lambda, make_optimizer
from bacon_zoo.train.precision import device_name, resolve_precision

logger = get_logger("bacon_zoo")
# Each stops every rank at the same step after a checkpoint; the run exits 128 + the signal: 143 SIGTERM,
# 130 SIGINT, 140 SIGUSR2 (SLURM's warning before the time limit, which submitit asks for and SLURM
# sends to every process of the job). All three mean "stopped, resume with --resume", never failed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


@dataclass
class TrainResult:
    """How `train` ended: "complete" (with the summary) or "stopped" by a signal at a checkpointed step."""

    status: str
    step: int
    run_dir: Path
    summary: dict | None = None
    signum: int | None = None
    trained: bool = True  # False: the run was already complete and was only reported

    @property
    def exit_code(self) -> int:
        """0, or the signal's convention (143 for SIGTERM) so a scheduler requeues, never "failed"."""
        return 0 if self.signum is None else 128 + self.signum


def default_run_dir(cfg: TrainConfig) -> Path:
    name = Path(cfg.dataset).name if os.sep in cfg.dataset else cfg.dataset.replace("/", "_")
    return Path("runs") / f"{name}_{cfg.algorithm}_{cfg.backbone}_seed{cfg.seed}"


def input_norm(cfg: TrainConfig, model: BaconNet, data: SSLData) -> tuple[tuple, tuple]:
    """The (mean, std) the views are normalised with: the backbone's pretrained config when it starts
    from pretrained weights (so fine-tuning sees what pre-training saw), else the data set's."""
    pretrained = cfg.pretrained or cfg.pretrained_file is not None
    use_backbone = cfg.normalize == "backbone" or (cfg.normalize == "auto" and pretrained)
    pcfg = model.pretrained_cfg
    if use_backbone and "mean" in pcfg and "std" in pcfg:
        return tuple(map(float, pcfg["mean"])), tuple(map(float, pcfg["std"]))
    if cfg.normalize == "backbone":
        raise UserError(
            f"--normalize backbone: '{cfg.backbone}' has no mean/std in its pretrained_cfg; "
            "use --normalize data"
        )
    return tuple(map(float, data.mean)), tuple(map(float, data.std))


def input_size(cfg: TrainConfig) -> int:
    """The network's input size: `--input-size`, or the data's `--image-size`."""
    return cfg.input_size or cfg.image_size


def data_card(data: SSLData, cfg: TrainConfig, mean: tuple, std: tuple) -> dict:
    """What export and analysis need to know about the data without reloading it. `image_size`,
    `mean` and `std` are what the network sees (they become the export's pretrained_cfg)."""
    card = {
        "dataset": cfg.dataset,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "mean": list(mean),
        "std": list(std),
        "image_size": input_size(cfg),
        "labeled_counts": list(map(int, data.labeled_counts)),
        "unlabeled_counts": list(map(int, data.split.unlabeled_counts)),
        "num_test": int(len(data.test.labels)),
    }
    if cfg.input_size not in (None, cfg.image_size):  # resized on the device from the data's size
        card |= {"data_image_size": cfg.image_size, "interpolation": RESIZE_INTERPOLATION}
    return card


# ---------------------------------------------------------------------------------------------
# one step


@dataclass
class StepParts:
    """Everything one training step touches."""

    model: torch.nn.Module
    algo: Algorithm
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ModelEma
    accelerator: Accelerator
    total_steps: int
    channels_last: bool = False
    ema_warmup: bool = False
    compile_mode: str | None = None  # torch.compile's mode, None: eager (bacon_zoo.train.compile)


def make_step_parts(
    cfg: TrainConfig, model: torch.nn.Module, algo: Algorithm, accelerator: Accelerator
) -> StepParts:
    """The model (channels_last, compiled, `prepare`d), the release's SGD groups, the LR schedule and
    timm's EMA (parameters averaged, buffers copied, as in USB): what `train_step` needs."""
    # on the device before the optimizer: CUDA's fused optimizers check where the parameters live
    model = model.to(accelerator.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # fused CUDA kernels, but not under fp16: a GradScaler-skipped first step leaves fused SGD's
    # momentum buffers uninitialised (torch/optim/sgd.py); foreach there
    fused_ok = accelerator.mixed_precision != "fp16"
    optimizer = make_optimizer(model, cfg, accelerator.device if fused_ok else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    mode = compile_mode(cfg.compile)
    if mode:  # the network, the losses and the bank writes (the views: `compile_streams`)
        model = compile_model(model, mode)
        compile_algorithm(algo, mode, fullgraph=accelerator.num_processes == 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEma(
        accelerator.unwrap_model(model),
        decay=cfg.ema_decay,
        use_warmup=cfg.ema_warmup,
        exclude_buffers=True,
    )
    return StepParts(
        model, algo, optimizer, scheduler, ema, accelerator, cfg.steps, cfg.channels_last,
        cfg.ema_warmup, mode,
    )  # fmt: skip


def train_step(
    parts: StepParts, lb: dict[str, Tensor], ulb: dict[str, Tensor], step: int
) -> tuple[dict[str, Tensor], object, dict[str, Tensor]]:
    """The algorithm's forward pass(es) and loss (by default one forward on [labeled weak | unlabeled
    weak | unlabeled strong]), backward, SGD, schedule, the algorithm's after-step update and the EMA.
    Returns (logs as device tensors, outputs, batch)."""
    acc = parts.accelerator
    batch = parts.algo.make_batch(lb, ulb)
    batch["channels_last"] = parts.channels_last
    with acc.autocast():
        loss, logs, out = parts.algo.forward_loss(parts.model, batch, step, parts.total_steps)
    acc.backward(loss)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.algo.after_step(step, parts.total_steps)
    parts.ema.update(acc.unwrap_model(parts.model), step=step if parts.ema_warmup else None)
    return {"loss": logs["loss"], **logs}, out, batch  # `Algorithm.loss` logs the detached total


@torch.no_grad()
def accumulate_logs(sums: dict[str, Tensor], logs: dict[str, Tensor]) -> None:
    """sums[k] += float(logs[k]) on the device, in place: one foreach add for all the logs (one
    kernel, not one per log). Keys new to `sums` start at 0, all from one zeros tensor."""
    new = [k for k in logs if k not in sums]
    if new:
        sums.update(zip(new, torch.zeros(len(new), device=logs[new[0]].device).unbind()))
    torch._foreach_add_([sums[k] for k in logs], [v.float() for v in logs.values()])


class RunState(TrainState):
    """The loop position plus the wall time spent so far (summed over resumes, for budgeting)."""

    def __init__(self) -> None:
        super().__init__()
        self.wall_time_s = 0.0

    def state_dict(self) -> dict:
        return super().state_dict() | {"wall_time_s": self.wall_time_s}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.wall_time_s = float(state.get("wall_time_s", 0.0))


# ---------------------------------------------------------------------------------------------
# checks before anything is written


def _note(text: str) -> None:
    """One line to stderr, from the main process only."""
    if PartialState().is_main_process:
        print(text, file=sys.stderr)


def _resume_point(cfg: TrainConfig, run: RunDir) -> Path | None:
    """The checkpoint to resume (None: start at step 0), after checking that the directory holds
    this experiment. Only `steps` may differ (a finished run can be extended)."""
    if not run.is_run():
        if cfg.resume not in (None, "auto"):
            return find_resume_dir(cfg.resume, run.checkpoints_dir)
        if cfg.resume == "auto":
            _note(f"--resume: no run in {run.path} yet; starting a new run")
        return None
    saved = run.read_config()
    diff = config_diff(saved, cfg, ignore=("steps",))
    if diff:
        raise UserError(
            f"{run.path} holds a run with a different config (differs in: {', '.join(diff)}); "
            "choose another --output-dir or repeat the original settings"
        )
    if not cfg.resume and run.checkpoints():
        raise UserError(
            f"{run.path} already has checkpoints; pass --resume to continue it or choose another "
            "--output-dir"
        )
    # says on stderr which damaged checkpoints it skipped, or that it starts from step 0
    return find_resume_dir(cfg.resume, run.checkpoints_dir) if cfg.resume else None


# the package each `--log-with` tracker needs (accelerate only warns and trains without it)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
}


def _check_tracker(log_with: str) -> None:
    """Refuse a tracker whose package is missing before anything runs or is written."""
    import importlib.util

    packages = TRACKER_PACKAGES.get(log_with, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise UserError(
            f"--log-with {log_with} needs the '{packages[0]}' package (pip install {packages[0]}); "
            "or use --log-with none"
        )


def tracker_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """The config as trackers take it: dotted keys (`bacon.tau0`), scalar values, None and lists as
    text (TensorBoard's hparams refuse nested dicts and None; wandb, mlflow, comet take the same)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat |= tracker_config(value, f"{prefix}{key}.")
        else:
            ok = isinstance(value, (bool, int, float, str))
            flat[prefix + key] = value if ok else str(value)
    return flat


def _check_backbone_runs(model: BaconNet, cfg: TrainConfig) -> None:
    """One dummy forward at the run's image size, so a backbone/size mismatch fails before the data
    is touched, in one line saying which sizes the backbone takes."""
    size = input_size(cfg)
    x = torch.zeros(2, 3, size, size)
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as e:  # timm asserts, conv kernel larger than the input, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        built = model.pretrained_cfg.get("input_size", (3, "?", "?"))[-1]
        raise UserError(
            f"backbone '{cfg.backbone}' does not run at input size {size} ({reason}); it is built "
            f"for {built}x{built} inputs: set --input-size {built} or choose another backbone"
        ) from None
    finally:
        model.train()


def _check_step_memory(cfg: TrainConfig, device: torch.device, precision: str) -> None:
    """Refuse an image size whose activations for one training step cannot fit in the device's free
    memory, with the estimate. A forward on the meta device (shapes only: no memory, no compute) sums
    every layer's output, about what autograd keeps for the backward pass."""
    size = getattr(cfg, "input_size", None) or cfg.image_size
    per_image = 0

    def count(module: torch.nn.Module, inputs: object, output: object) -> None:
        nonlocal per_image
        if isinstance(output, Tensor) and not getattr(module, "inplace", False):
            per_image += output.numel()

    try:
        with torch.device("meta"):
            net = build_model(cfg, 10, for_training=False)
        for m in net.modules():
            if not any(m.children()):
                m.register_forward_hook(count)
        net.train()(torch.empty(1, 3, size, size, device="meta"))
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        elif device.type == "cpu":
            import psutil

            free = psutil.virtual_memory().available
        else:
            return
    except Exception:  # a backbone the meta device cannot run: `_check_backbone_runs` will tell
        return
    images = cfg.batch_size * (1 + _views(cfg) * cfg.mu)
    need = per_image * images * (2 if precision in ("bf16", "fp16") else 4)
    if need > free:
        raise UserError(
            f"input size {size}: one training step keeps about {need / 2**30:.1f} GiB of "
            f"activations ({images} images x {need / images / 2**20:.0f} MiB, {cfg.backbone}), more "
            f"than the {free / 2**30:.1f} GiB free on {device_name(device)}; lower --image-size or "
            "--batch-size"
        )


def _check_against_data(cfg: TrainConfig, data: SSLData, world: int) -> None:
    """Values whose valid range depends on the data, checked against it before anything is written."""
    n_lab, n_unl, k = len(data.labeled.labels), len(data.unlabeled.labels), data.num_classes
    procs = f" x {world} processes" if world > 1 else ""
    if cfg.batch_size * world > n_lab:
        raise UserError(
            f"batch_size {cfg.batch_size}{procs} is more than the labeled set ({n_lab} images): "
            f"every batch would repeat images; use --batch-size {max(1, n_lab // world)} or less, "
            "or a larger --n1"
        )
    if cfg.mu * cfg.batch_size * world > n_unl:
        raise UserError(
            f"mu x batch_size = {cfg.mu * cfg.batch_size}{procs} unlabeled images per step is more "
            f"than the unlabeled set ({n_unl} images); lower --mu or --batch-size, or raise --m1"
        )
    check_against_data(cfg, k)  # each algorithm plug-in's own checks (e.g. bacon.topk <= K)


def _views(cfg: TrainConfig) -> int:
    """Views per unlabeled image that the algorithm's base asks the stream for."""
    return len(components(cfg.algorithm)[0].unlabeled_views)


# ---------------------------------------------------------------------------------------------
# progress: a bar on a terminal, one line per log window in a scheduler's log file


class Progress:
    def __init__(self, cfg: TrainConfig, start: int, enabled: bool) -> None:
        self.steps, self.enabled = cfg.steps, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start, dynamic_ncols=True)
        self.t0, self.start = time.perf_counter(), start

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, avg: dict[str, float], ips: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{avg['loss']:.3f}",
                mask=f"{avg.get('mask', float('nan')):.2f}",
                img_s=f"{ips:.0f}",
            )
            return
        rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.steps - step) / rate if rate > 0 else float("nan")
        logger.info(
            f"step {step}/{self.steps} | loss {avg['loss']:.4f} | mask {avg.get('mask', float('nan')):.3f}"
            f" | {ips:.0f} img/s | ETA {_hms(eta)}"
        )

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            logger.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _configure_logging(main_process: bool) -> None:
    """Our progress lines (the `bacon_zoo` logger) to stderr at INFO on the main process; accelerate's
    own INFO chatter (every checkpoint file) stays at the root logger's level."""
    base = logging.getLogger("bacon_zoo")
    if not main_process:
        base.setLevel(logging.WARNING)
    elif not base.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        base.addHandler(handler)
        base.setLevel(logging.INFO)
        base.propagate = False


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class StopSignal:
    """Notes SIGTERM/SIGINT; every rank stops at the same step through accelerate's trigger."""

    def __init__(self, accelerator: Accelerator, check_every: int) -> None:
        self.accelerator, self.check_every = accelerator, max(1, check_every)
        self.signum: int | None = None

    def __enter__(self) -> StopSignal:
        self._previous = {sig: signal.signal(sig, self._handler) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame) -> None:
        self.signum = signum
        self.accelerator.set_trigger()

    def should_stop(self, step: int) -> bool:
        """Single process: the flag. Several: an all-reduce of the trigger every `check_every` steps
        (every rank checks at the same steps, so all of them stop together)."""
        if self.accelerator.num_processes == 1:
            return self.signum is not None
        if step % self.check_every:
            return False
        stop = self.accelerator.check_trigger()
        if stop and self.signum is None:
            self.signum = signal.SIGTERM  # another rank got the signal
        return stop


def _hold_run_lock(accelerator: Accelerator, run: RunDir, held: contextlib.ExitStack) -> None:
    """One writer per run: the main process creates the run directory and holds its lock (`RunLock`)
    until `train` ends; if another process holds it, every rank stops with the holder named."""
    refused = None
    if accelerator.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        try:
            held.enter_context(RunLock(run.path))
        except UserError as e:
            refused = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refused = broadcast_object_list([refused])[0]
    if refused:
        raise UserError(refused)


def _stop_if_diverged(
    accelerator: Accelerator,
    log_sums: dict[str, Tensor],
    step: int,
    run: RunDir,
    model: torch.nn.Module | None = None,
) -> None:
    """Stop in one line when the loss summed since the last check is NaN or infinite (on any rank),
    or, with `model` (before a checkpoint), when a weight is: a step's loss is computed before its
    update, so the weights can go bad one step before the loss shows it.

    Called at each log window and before each checkpoint, so a diverged state is never saved: one
    host sync there, none per step.
    """
    loss = log_sums.get("loss")
    bad = torch.zeros((), device=accelerator.device)
    if loss is not None:
        bad = bad + (~torch.isfinite(loss)).float()
    if model is not None:
        state = [t for t in model.state_dict().values() if t.is_floating_point()]  # + BN stats
        finite = torch.stack([t.isfinite().all() for t in state]).all()
        bad = bad + (~finite).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if not bad.item():
        return
    kept = run.checkpoints()
    last = f"its last checkpoint, {kept[-1].name}, is kept" if kept else "it saved no checkpoint"
    raise UserError(
        f"the training loss or weights became NaN or infinite by step {step}: the run diverged "
        f"and stopped without saving; {last}. Lower --lr (or check the data) and train in a new "
        "--output-dir"
    )


# ---------------------------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig, init_from: Path | None = None) -> TrainResult:
    """Run (or resume) one training run. A complete run's result holds the summary written to
    `summary.json`; a SIGTERM/SIGINT stops every rank at the same step, after a checkpoint.
    `init_from`: the local folder `cfg.init_from` names, when the caller fetched it from the Hub
    (`bacon_zoo.hub.weights.resolve_init_from`); otherwise `cfg.init_from` must be a folder."""
    with contextlib.ExitStack() as held:  # the run's lock, released however training ends
        return _train(cfg, held, init_from)


def _train(
    cfg: TrainConfig, held: contextlib.ExitStack, init_from: Path | None = None
) -> TrainResult:
    # ---- checks, before anything is written
    state = PartialState(cpu=cfg.cpu)
    _configure_logging(state.is_main_process)
    run = RunDir(cfg.output_dir or default_run_dir(cfg))
    check_writable_dir(run.path, "--output-dir")
    _check_tracker(cfg.log_with)
    check_optimizer(cfg.opt)
    resume_dir = _resume_point(cfg, run)
    resume_step = step_of(resume_dir) if resume_dir is not None else 0
    if cfg.init_from and init_from is None:
        init_from = local_folder(cfg.init_from)  # a Hub name is fetched by the caller, not here
    done = run.read_summary() if resume_step == cfg.steps else None
    if done and done.get("status") == "complete" and done.get("steps") == cfg.steps:
        _note(
            f"{run.path} is already complete ({cfg.steps} steps, best top-1 {done['best_top1']:.2f}); "
            "raise --steps to train further, or choose another --output-dir"
        )
        return TrainResult("complete", cfg.steps, run.path, done, trained=False)
    if resume_step > cfg.steps:
        raise UserError(
            f"{resume_dir} is past --steps {cfg.steps}; --steps can only grow on resume"
        )

    precision, why = resolve_precision(cfg.mixed_precision, state.device)
    _check_step_memory(cfg, state.device, precision)
    set_seed(cfg.seed)  # the initial weights are a function of the seed
    data = prepare_data(cfg, split_path=run.split_path if run.split_path.is_file() else None)
    _check_against_data(cfg, data, state.num_processes)
    model = build_model(cfg, data.num_classes, init_from=init_from)
    _check_backbone_runs(model, cfg)
    mean, std = input_norm(cfg, model, data)

    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=precision,
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(run.path)),
        # a head may sit out a step (BaCon's projection only joins the loss after `bacon.start`):
        # DDP must tolerate parameters without gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes

    # ---- the run directory is written only now, when the run really starts (by one writer)
    _hold_run_lock(accelerator, run, held)
    if accelerator.is_main_process:
        # rewritten on every start: a grown --steps, and the precision this start resolved to
        run.write_config(cfg, "fp32" if precision == "no" else precision)
        if not run.split_path.is_file():
            data.split.to_json(run.split_path)
        run.write_data(data_card(data, cfg, mean, std))
    accelerator.wait_for_everyone()

    # ---- algorithm, diagnostics, optimiser, EMA
    algo = create_algorithm(
        cfg.algorithm,
        cfg=cfg,
        num_classes=data.num_classes,
        labeled_counts=data.labeled_counts,
        num_labeled=len(data.labeled.labels),
        num_unlabeled=len(data.unlabeled.labels),
        seed=cfg.seed,
        rank=rank,
        gather=accelerator.gather if world > 1 else None,  # one process: nothing to gather
        # which unlabeled images are labeled ones too (include_labeled_in_unlabeled; ACR's estimate)
        unlabeled_is_labeled=torch.from_numpy(
            np.isin(data.split.unlabeled_idx, data.split.labeled_idx)
        ),
    )
    # pseudo-label quality and memory-bank geometry between evaluations (metrics.jsonl "diagnostics")
    diag = TrainingDiagnostics(
        data.num_classes,
        algo.eval_head,
        algo.threshold,
        data.labeled_counts,
        data.split.unlabeled_counts,
        len(data.labeled.labels),
        len(data.unlabeled.labels),
        rank=rank,
    )
    parts = make_step_parts(cfg, model, algo, accelerator)
    model, scheduler, ema = parts.model, parts.scheduler, parts.ema
    algo.to(accelerator.device)
    diag.to(accelerator.device)
    progress_state = RunState()
    # the scheduler is stepped once per global step, so it is checkpointed but not `prepare`d
    objects = {
        "scheduler": scheduler,
        "ema": ema,
        "algorithm": algo,
        "state": progress_state,
        "diagnostics": diag,
    }
    # saved as safetensors + JSON by our checkpoint code, never pickled (a run folder may be hostile)
    if resume_dir is not None:
        load_checkpoint(accelerator, resume_dir, objects)
        accelerator.print(f"resumed from {resume_dir} at step {progress_state.step}")
    start = progress_state.step

    # ---- data streams on the device; batch i depends only on (seed, i, rank, world size)
    data_device = "cpu" if cfg.data_device == "cpu" else accelerator.device
    lb_stream, ulb_stream = make_train_loaders(
        data.labeled, data.unlabeled, cfg.batch_size, cfg.mu, mean, std,
        seed=cfg.seed, rank=rank, world_size=world, start_step=start,
        device=accelerator.device, data_device=data_device, input_size=input_size(cfg),
        unlabeled_views=algo.unlabeled_views,
    )  # fmt: skip
    if parts.compile_mode:
        compile_streams(lb_stream, ulb_stream, mode=parts.compile_mode)
    lb_iter, ulb_iter = iter(lb_stream), iter(ulb_stream)
    eval_batches = make_eval_loader(
        data.test, cfg.eval_batch_size, mean, std,
        device=accelerator.device, rank=rank, world_size=world, input_size=input_size(cfg),
    )  # fmt: skip

    history = run.read_metrics(up_to_step=start)
    if accelerator.is_main_process:  # drop evaluations newer than the checkpoint we resumed from
        run.rewrite_metrics(history)
    if cfg.log_with != "none":
        accelerator.init_trackers(run.name, config=tracker_config(cfg.to_dict()))
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    accelerator.print(
        f"{cfg.algorithm} | {cfg.backbone} ({n_params / 1e6:.2f}M params) | {cfg.dataset}: "
        f"{len(data.labeled.labels)} labeled, {len(data.unlabeled.labels)} unlabeled, "
        f"{len(data.test.labels)} test | {world} process(es) on {device_name(accelerator.device)} | "
        f"precision {accelerator.mixed_precision} ({why}) | {run.path}"
    )

    images_per_step = cfg.batch_size * (1 + _views(cfg) * cfg.mu) * world
    log_sums: dict[str, Tensor] = {}
    log_count, t_log, ips = 0, time.perf_counter(), float("nan")
    t_start, wall_before = time.perf_counter(), progress_state.wall_time_s
    progress = Progress(cfg, start, accelerator.is_local_main_process)
    model.train()

    with StopSignal(accelerator, cfg.log_every) as stop:
        for step in range(start, cfg.steps):
            step_begin(parts.compile_mode)
            logs, out, batch = train_step(parts, next(lb_iter), next(ulb_iter), step)
            diag.update(out, batch, logs)
            progress_state.step = step + 1
            progress_state.wall_time_s = wall_before + time.perf_counter() - t_start
            progress.step()

            # ---- logging (tensors are summed on device; one sync per log window)
            accumulate_logs(log_sums, logs)
            log_count += 1
            if progress_state.step % cfg.log_every == 0 or progress_state.step == cfg.steps:
                now = time.perf_counter()
                ips = images_per_step * log_count / max(now - t_log, 1e-9)
                _stop_if_diverged(accelerator, log_sums, progress_state.step, run)
                avg = {k: (v / log_count).item() for k, v in log_sums.items()}
                progress.log(progress_state.step, avg, ips)
                accelerator.log(
                    {f"train/{k}": v for k, v in avg.items()} | {"train/images_per_s": ips},
                    step=progress_state.step,
                )
                log_sums, log_count, t_log = {}, 0, now

            # ---- evaluation with the EMA model and the algorithm's head
            if progress_state.step % cfg.eval_every == 0 or progress_state.step == cfg.steps:
                metrics, preds = evaluate(
                    ema.module, eval_batches, algo.eval_head, accelerator,
                    data.num_classes, data.labeled_counts, cfg.channels_last,
                )  # fmt: skip
                record = {
                    "step": progress_state.step,
                    **metrics,
                    "diagnostics": diag.compute(algo) | algo.diagnostics(),
                    "images_per_s": ips,
                    "lr": scheduler.get_last_lr()[0],
                }
                history.append(record)
                if accelerator.is_main_process:
                    run.append_metrics(record)
                    run.write_predictions(preds, progress_state.step)
                accelerator.log(
                    {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)},
                    step=progress_state.step,
                )
                progress.write(
                    f"step {progress_state.step}: top1 {metrics['top1']:.2f} | balanced "
                    f"{metrics['balanced_acc']:.2f} | head/medium/tail {metrics['head']:.1f}/"
                    f"{metrics['medium']:.1f}/{metrics['tail']:.1f}"
                )

            # ---- checkpoints: periodic, at the end, and when asked to stop (all ranks together)
            finished = progress_state.step == cfg.steps
            stopping = not finished and stop.should_stop(progress_state.step)
            if progress_state.step % cfg.checkpoint_every == 0 or finished or stopping:
                _stop_if_diverged(accelerator, log_sums, progress_state.step, run, model)
                save_checkpoint(
                    accelerator, run.checkpoints_dir, progress_state.step, cfg.keep_checkpoints,
                    objects, run_record(fingerprint(cfg, ignore=("steps",))),
                )  # fmt: skip
            if stopping:
                progress.close()
                accelerator.print(
                    f"stopped at step {progress_state.step}; checkpoint saved. Resume with: "
                    f"--resume --output-dir {run.path}"
                )
                accelerator.end_training()
                return TrainResult(
                    "stopped", progress_state.step, run.path, signum=stop.signum or signal.SIGTERM
                )

    progress.close()
    summary = summary_record(
        cfg,
        history,
        status="complete",
        params=sum(p.numel() for p in ema.module.parameters()),
        images_per_s=_median([r["images_per_s"] for r in history]),
        num_processes=world,
        mixed_precision=accelerator.mixed_precision,
        precision="fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision,
        device=device_name(accelerator.device),
        wall_time_s=progress_state.wall_time_s,  # all parts of the run, resumes included
        labeled_counts=data.labeled_counts,
    )
    summary["device_hours"] = summary["wall_time_s"] * world / 3600.0
    if accelerator.is_main_process:
        run.write_summary(summary)
        accelerator.print(
            json.dumps({k: summary[k] for k in ("best_top1", "best_step", "last")}, indent=None)
        )
    accelerator.end_training()
    return TrainResult("complete", cfg.steps, run.path, summary)


def _median(values: list[float]) -> float | None:
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    return finite[len(finite) // 2] if finite else None
