"""The training loop: read it top to bottom.

One step = one labeled batch (weak view) + one unlabeled batch (weak and strong views), concatenated into
a single forward pass so BatchNorm sees the mixture (as FixMatch does); the algorithm turns the outputs
into a loss and updates its own state (memory banks); SGD, an optional schedule and an EMA of the whole
BaconNet follow. Evaluation uses the EMA model and the algorithm's evaluation head.

Exact resume: the data streams are a pure function of (seed, step, rank), the algorithm draws its
randomness from (seed, rank, step), and everything else (weights, EMA, optimizer, schedule, banks,
RNG states) is in the checkpoint, so stopping and resuming gives the same weights as one straight run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from bacon_zoo.algorithms import create_algorithm
from bacon_zoo.train.diagnostics import TrainingDiagnostics
from bacon_zoo.config import TrainConfig, fingerprint, load_run_config, save_config
from bacon_zoo.data import make_eval_loader, make_train_loaders, prepare_data
from bacon_zoo.errors import UserError
from bacon_zoo.models import BaconNet
from bacon_zoo.train.checkpoint import (
    CUSTOM_OBJECTS,
    TrainState,
    find_resume_dir,
    list_checkpoints,
    save_checkpoint,
)
from bacon_zoo.train.evaluate import evaluate
from bacon_zoo.fileio import read_jsonl as read_metrics
from bacon_zoo.metrics import summarize


def default_run_dir(cfg: TrainConfig) -> Path:
    name = Path(cfg.dataset).name if os.sep in cfg.dataset else cfg.dataset.replace("/", "_")
    return Path("runs") / f"{name}_{cfg.algorithm}_{cfg.backbone}_seed{cfg.seed}"


def data_card(data, cfg: TrainConfig) -> dict:
    """What export and analysis need to know about the data without reloading it."""
    return {
        "dataset": cfg.dataset,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "mean": list(map(float, data.mean)),
        "std": list(map(float, data.std)),
        "image_size": cfg.image_size,
        "labeled_counts": list(map(int, data.labeled_counts)),
        "unlabeled_counts": list(map(int, data.split.unlabeled_counts)),
        "num_test": int(len(data.test.labels)),
    }


def build_model(cfg: TrainConfig, num_classes: int) -> BaconNet:
    """The BaconNet of a config: backbone, both heads and the projection, optionally initialised."""
    model = BaconNet(
        cfg.backbone,
        num_classes=num_classes,
        proj_dim=cfg.bacon.proj_dim,
        pretrained=cfg.pretrained,
        backbone_kwargs=cfg.backbone_kwargs,
    )
    if (
        cfg.bn_momentum is not None
    ):  # short budgets: WRN's 0.001 leaves eval statistics at their init
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    if cfg.init_from:
        from bacon_zoo.hub.export import load_bacon_net_weights

        load_bacon_net_weights(model, cfg.init_from)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def lr_lambda(cfg: TrainConfig):
    """Per-step LR factor: linear warm-up, then constant or FixMatch's cosine (cos(7*pi*t / 16T))."""

    def fn(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            return math.cos(7.0 * math.pi * step / (16.0 * cfg.steps))
        return 1.0

    return fn


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and exits at the end of the current step.

    A context manager, so the previous handlers come back when training ends.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> _StopFlag:
        self.set = False
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame) -> None:
        self.set = True


def _prepare_run_dir(cfg: TrainConfig, accelerator: Accelerator) -> tuple[Path, Path | None]:
    """Create the run dir (or check it belongs to this experiment) and find the checkpoint to resume."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg)
    ckpt_root = run_dir / "checkpoints"
    resume_dir = find_resume_dir(cfg.resume, ckpt_root) if cfg.resume else None
    if (run_dir / "config.yaml").is_file():
        saved = load_run_config(run_dir)
        if fingerprint(saved) != fingerprint(cfg):
            a, b = saved.to_dict(), cfg.to_dict()
            diff = [k for k in a if a[k] != b.get(k) and k not in ("resume", "output_dir", "cpu")]
            raise UserError(
                f"{run_dir} holds a run with a different config (differs in: {', '.join(diff)}); "
                "choose another --output-dir or repeat the original settings"
            )
        if not cfg.resume and list_checkpoints(ckpt_root):
            raise UserError(
                f"{run_dir} already has checkpoints; pass --resume to continue it or choose another --output-dir"
            )
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return run_dir, resume_dir


def _log_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    """Evaluation records already written, dropping any after the checkpoint being resumed."""
    return [r for r in read_metrics(path) if r["step"] <= up_to_step]


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training run; returns the summary written to `summary.json`."""
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_config=ProjectConfiguration(project_dir="."),
        # FixMatch never uses the ABC head or the projection, and BaCon's projection only joins the
        # loss after `bacon.start`: DDP must tolerate parameters without gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    run_dir, resume_dir = _prepare_run_dir(cfg, accelerator)
    accelerator.project_configuration.set_directories(str(run_dir))  # trackers log here
    set_seed(cfg.seed)

    # ---- data: the long-tailed split is saved with the run and reloaded on resume
    split_path = run_dir / "split.json"
    data = prepare_data(cfg, split_path=split_path if split_path.is_file() else None)
    if accelerator.is_main_process and not split_path.is_file():
        data.split.to_json(split_path)
    if accelerator.is_main_process:
        (run_dir / "data.json").write_text(json.dumps(data_card(data, cfg), indent=2))
    rank, world = accelerator.process_index, accelerator.num_processes

    # ---- model, EMA, algorithm, optimiser
    model = build_model(cfg, data.num_classes)
    algo = create_algorithm(
        cfg.algorithm,
        cfg=cfg,
        num_classes=data.num_classes,
        labeled_counts=data.labeled_counts,
        num_labeled=len(data.labeled.labels),
        num_unlabeled=len(data.unlabeled.labels),
        seed=cfg.seed,
        rank=rank,
        gather=accelerator.gather,
    )
    # pseudo-label quality and memory-bank geometry between evaluations (metrics.jsonl "diagnostics")
    diag = TrainingDiagnostics(
        data.num_classes,
        algo.eval_head,
        cfg.abc.threshold if algo.eval_head == "abc" else cfg.fixmatch.threshold,
        data.labeled_counts,
        data.split.unlabeled_counts,
        len(data.labeled.labels),
        len(data.unlabeled.labels),
        rank=rank,
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,  # on all parameters, as the release does
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    eval_loader = make_eval_loader(
        data.test, cfg.eval_batch_size, data.mean, data.std, cfg.num_workers
    )
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    # EMA of the parameters, buffers (BN statistics) copied, as in USB
    ema = ModelEmaV3(
        accelerator.unwrap_model(model),
        decay=cfg.ema_decay,
        use_warmup=cfg.ema_warmup,
        exclude_buffers=True,
    )
    algo.to(accelerator.device)
    diag.to(accelerator.device)
    state = TrainState()
    # the scheduler is stepped once per global step, so it is checkpointed but not `prepare`d
    objects = {
        "scheduler": scheduler,
        "ema": ema,
        "algorithm": algo,
        "state": state,
        "diagnostics": diag,
    }
    accelerator.register_for_checkpointing(*(objects[name] for name in CUSTOM_OBJECTS))

    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        accelerator.print(f"resumed from {resume_dir} at step {state.step}")
    start = state.step
    lb_loader, ulb_loader = make_train_loaders(
        data.labeled, data.unlabeled, cfg.batch_size, cfg.mu, data.mean, data.std,
        seed=cfg.seed, rank=rank, world_size=world, num_workers=cfg.num_workers, start_step=start,
    )  # fmt: skip
    lb_iter, ulb_iter = iter(lb_loader), iter(ulb_loader)

    metrics_path = run_dir / "metrics.jsonl"
    history = _read_history(metrics_path, start)
    if accelerator.is_main_process:  # drop evaluations newer than the checkpoint we resumed from
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    if cfg.log_with != "none":
        accelerator.init_trackers(run_dir.name, config=json.loads(json.dumps(cfg.to_dict())))
    if accelerator.is_main_process:
        n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
        accelerator.print(
            f"{cfg.algorithm} | {cfg.backbone} ({n_params / 1e6:.2f}M params) | {cfg.dataset}: "
            f"{len(data.labeled.labels)} labeled, {len(data.unlabeled.labels)} unlabeled, "
            f"{len(data.test.labels)} test | {world} process(es), {accelerator.mixed_precision} | {run_dir}"
        )

    with _StopFlag() as stop:
        images_per_step = cfg.batch_size * (1 + 2 * cfg.mu) * world
        log_sums: dict[str, torch.Tensor] = {}
        log_count, t_log, ips = 0, time.perf_counter(), float("nan")
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        model.train()

        for step in range(start, cfg.steps):
            # ---- one step: forward on [labeled weak | unlabeled weak | unlabeled strong]
            lb, ulb = next(lb_iter), next(ulb_iter)
            x = torch.cat([lb["x"], ulb["x_w"], ulb["x_s"]]).to(
                accelerator.device, non_blocking=True
            )
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch = {
                "y_lb": lb["y"].to(accelerator.device),
                "idx_lb": lb["idx"].to(accelerator.device),
                "idx_ulb": ulb["idx"].to(accelerator.device),
                "y_ulb": ulb["y"].to(accelerator.device),
            }
            with accelerator.autocast():
                out = model(x)
                loss, logs = algo.loss(out, batch, step, cfg.steps)
            diag.update(out, batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            algo.after_step(step, cfg.steps)
            ema.update(accelerator.unwrap_model(model), step=state.step if cfg.ema_warmup else None)
            state.step = step + 1

            # ---- logging (tensors are summed on device; one sync per log window)
            logs = {"loss": loss.detach(), **logs}
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0) + v.detach().float()
            log_count += 1
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                now = time.perf_counter()
                ips = images_per_step * log_count / max(now - t_log, 1e-9)
                avg = {k: (v / log_count).item() for k, v in log_sums.items()}
                bar.set_postfix(
                    loss=f"{avg['loss']:.3f}",
                    mask=f"{avg.get('mask', float('nan')):.2f}",
                    img_s=f"{ips:.0f}",
                )
                accelerator.log(
                    {f"train/{k}": v for k, v in avg.items()} | {"train/images_per_s": ips},
                    step=state.step,
                )
                log_sums, log_count, t_log = {}, 0, now

            # ---- evaluation with the EMA model and the algorithm's head
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                metrics, preds = evaluate(
                    ema.module, eval_loader, algo.eval_head, accelerator,
                    data.num_classes, data.labeled_counts, cfg.channels_last,
                )  # fmt: skip
                record = {
                    "step": state.step,
                    **metrics,
                    "diagnostics": diag.compute(algo),
                    "images_per_s": ips,
                    "lr": scheduler.get_last_lr()[0],
                }
                history.append(record)
                if accelerator.is_main_process:
                    _log_line(metrics_path, record)
                    np.savez(run_dir / "predictions.npz", **preds, step=state.step)
                accelerator.log(
                    {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)},
                    step=state.step,
                )
                if accelerator.is_local_main_process:
                    bar.write(
                        f"step {state.step}: top1 {metrics['top1']:.2f} | balanced {metrics['balanced_acc']:.2f}"
                        f" | head/medium/tail {metrics['head']:.1f}/{metrics['medium']:.1f}/{metrics['tail']:.1f}"
                    )

            # ---- checkpoints: periodic, at the end, and when asked to stop
            finished = state.step == cfg.steps
            if state.step % cfg.checkpoint_every == 0 or finished or stop.set:
                save_checkpoint(
                    accelerator, run_dir / "checkpoints", state.step, cfg.keep_checkpoints
                )
            if stop.set and not finished:
                bar.close()
                accelerator.print(
                    f"stopped at step {state.step}; checkpoint saved. Resume with: --resume --output-dir {run_dir}"
                )
                accelerator.end_training()
                raise KeyboardInterrupt

    bar.close()
    summary = summarize(history) | {
        "status": "complete",
        "steps": cfg.steps,
        "algorithm": cfg.algorithm,
        "backbone": cfg.backbone,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "params": sum(p.numel() for p in ema.module.parameters()),
        "images_per_s": float(np.nanmedian([r["images_per_s"] for r in history]))
        if history
        else None,
        "num_processes": world,
        "mixed_precision": accelerator.mixed_precision,
        "labeled_counts": data.labeled_counts,
        "eval_head": algo.eval_head,
    }
    if accelerator.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(
            json.dumps({k: summary[k] for k in ("best_top1", "best_step", "last")}, indent=None)
        )
        if cfg.export:
            from bacon_zoo.hub.export import export_run

            out = export_run(run_dir)
            accelerator.print(f"exported to {out}")
    accelerator.end_training()
    return summary
