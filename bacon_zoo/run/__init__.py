"""The run directory: its file names, how each file is read and written, and how a run's model comes back.

A run directory (`bacon-zoo train --output-dir RUN_DIR`) holds:

    config.yaml      the resolved TrainConfig (+ `protocol`: which training protocol produced the run,
                     + `precision`: the precision `mixed_precision` resolved to on the latest start)
    split.json       the long-tailed split (indices), reloaded on resume
    data.json        what export and analysis need to know about the data without reloading it
    metrics.jsonl    one strict-JSON record per evaluation
    summary.json     written when the run completes (`summary_record`)
    predictions.npz  the latest evaluation's predictions
    checkpoints/     step_XXXXXXX folders (accelerate state + manifest), see `bacon_zoo.run.checkpoint`
    export/          the timm Hub folder (`bacon-zoo export`)

Everything else in the package reads and writes these through `RunDir`, so the contract lives here once.
Layering: this module sits above config/data/models/algorithms and below train, hub, analysis and study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bacon_zoo.config import TrainConfig, config_from_dict, dumps, yaml_load, yaml_problem
from bacon_zoo.errors import UserError
from bacon_zoo.fileio import append_jsonl, atomic_write_text, read_json, read_jsonl, write_json

if TYPE_CHECKING:
    import numpy as np

    from bacon_zoo.models import BaconNet

CONFIG = "config.yaml"
SPLIT = "split.json"
DATA = "data.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
CHECKPOINTS = "checkpoints"
EXPORT = "export"

# The training protocol this code implements; recorded in every run's config.yaml and model card.
# "release-v2": USB's exact WRN, the release's two weight-decay groups, the release's RandAugment/Cutout,
# SVHN train+extra, STL-10 unlabeled + labeled-train. Runs without the key predate it ("v1": the earlier
# network, weight decay on every parameter and timm's RandAugment).
PROTOCOL = "release-v2"
LEGACY_PROTOCOL = "v1"


def eval_head_of(algorithm: str) -> str:
    """Which head a run of `algorithm` is evaluated with, as the algorithm registry says."""
    from bacon_zoo.algorithms import ALGORITHMS

    cls = ALGORITHMS.get(algorithm)
    if cls is None:
        raise UserError(f"unknown algorithm '{algorithm}'; known: {', '.join(ALGORITHMS)}")
    return cls.eval_head


@dataclass(frozen=True)
class RunDir:
    """One training run's directory. Paths are properties; readers raise one-line UserErrors."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ---- file names
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def split_path(self) -> Path:
        return self.path / SPLIT

    @property
    def data_path(self) -> Path:
        return self.path / DATA

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunDir:
        """Self, or a one-line error when this is no run directory."""
        if not self.path.is_dir():
            raise UserError(
                f"'{self.path}' does not exist; point at a training output dir (RUN_DIR)"
            )
        if not self.is_run():
            raise UserError(
                f"'{self.path}' is not a run directory (no {CONFIG}); point at a training output dir"
            )
        return self

    # ---- config.yaml
    def read_config_dict(self) -> dict[str, Any]:
        self.require()
        path = self.config_path
        try:
            data = yaml_load(path.read_text())
        except yaml.YAMLError as e:
            raise UserError(
                f"{path} is not valid YAML ({yaml_problem(e)}); fix or restore it"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path} ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict):
            raise UserError(
                f"{path} must be a mapping of config keys, not {type(data).__name__}; fix or restore it"
            )
        return data

    def read_config(self) -> TrainConfig:
        data = self.read_config_dict()
        data.pop("protocol", None)
        data.pop("precision", None)
        try:
            return config_from_dict(data)
        except UserError as e:
            raise UserError(f"{self.config_path}: {e}") from None

    def protocol(self) -> str:
        """The training protocol recorded in config.yaml (`v1` for runs that predate the record)."""
        return str(self.read_config_dict().get("protocol", LEGACY_PROTOCOL))

    def write_config(self, cfg: TrainConfig, precision: str | None = None) -> None:
        """The config, headed by the protocol and (when known) the precision actually used."""
        head = f"protocol: {PROTOCOL}\n" + (f"precision: {precision}\n" if precision else "")
        atomic_write_text(self.config_path, head + dumps(cfg))

    # ---- data.json / split.json
    def read_data(self) -> dict[str, Any]:
        return read_json(self.data_path, "the run's data card", "resume the run to rewrite it")

    def write_data(self, card: dict[str, Any]) -> None:
        write_json(self.data_path, card)

    # ---- metrics.jsonl
    def read_metrics(self, up_to_step: int | None = None) -> list[dict]:
        rows = read_jsonl(self.metrics_path)
        return rows if up_to_step is None else [r for r in rows if r.get("step", 0) <= up_to_step]

    def append_metrics(self, record: dict) -> None:
        append_jsonl(self.metrics_path, record)

    def rewrite_metrics(self, records: list[dict]) -> None:
        from bacon_zoo.fileio import dumps_json

        atomic_write_text(
            self.metrics_path, "".join(dumps_json(r, indent=None) + "\n" for r in records)
        )

    # ---- summary.json
    def read_summary(self) -> dict | None:
        if not self.summary_path.is_file():
            return None
        return read_json(self.summary_path, "the run summary", "resume the run to rewrite it")

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def summary_or_partial(self) -> dict:
        """summary.json, or for a run still in progress the same schema rebuilt from metrics.jsonl."""
        summary = self.read_summary()
        if summary is not None:
            return summary
        history = self.read_metrics()
        if not history:
            raise UserError(
                f"{self.path} has no {SUMMARY} and no evaluations in {METRICS}; train until the "
                "first evaluation (--eval-every) first"
            )
        cfg = self.read_config()
        return summary_record(cfg, history, status="incomplete")

    # ---- predictions.npz
    def write_predictions(self, preds: dict[str, np.ndarray], step: int) -> None:
        import io

        import numpy as np

        from bacon_zoo.fileio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **preds, step=step)
        atomic_write_bytes(self.predictions_path, buf.getvalue())

    # ---- checkpoints
    def checkpoints(self) -> list[Path]:
        from bacon_zoo.run.checkpoint import list_checkpoints

        return list_checkpoints(self.checkpoints_dir)

    def checkpoint(self, checkpoint: str | int | Path | None = None) -> Path:
        """A verified checkpoint: `checkpoint` (a step number or a step_N folder) or the newest
        complete one (damaged newer ones are named and skipped); a one-line error if there is none."""
        from bacon_zoo.run.checkpoint import find_resume_dir, latest_complete

        if checkpoint is None:
            found = latest_complete(self.checkpoints_dir)
            if found is None:
                raise UserError(
                    f"{self.path} has no complete checkpoint ({CHECKPOINTS}/step_N); train or "
                    "resume it first"
                )
            return found
        if isinstance(checkpoint, int) or str(checkpoint).isdigit():
            checkpoint = self.checkpoints_dir / f"step_{int(checkpoint):07d}"
        return find_resume_dir(str(checkpoint), self.checkpoints_dir)

    # ---- the model
    def eval_head(self) -> str:
        return eval_head_of(self.read_config().algorithm)

    def build_model(self, cfg: TrainConfig | None = None) -> BaconNet:
        """The run's BaconNet, untrained (no pretrained download: weights come from a checkpoint)."""
        return build_model(cfg or self.read_config(), int(self.read_data()["num_classes"]), False)

    def load_ema_model(self, checkpoint: str | Path | None = None) -> tuple[BaconNet, Path]:
        """The EMA BaconNet of a checkpoint (the weights that are evaluated and exported), in eval mode."""
        from bacon_zoo.run.checkpoint import load_ema_weights

        ckpt = self.checkpoint(checkpoint)
        model = self.build_model()
        state = load_ema_weights(ckpt)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise UserError(
                f"{ckpt}: the EMA weights do not fit the run's model ({len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors, e.g. {first}); the run was made by another version"
            )
        return model.eval(), ckpt


def build_model(cfg: TrainConfig, num_classes: int, for_training: bool = True) -> BaconNet:
    """The one way to build a run's BaconNet: backbone, both heads and the projection.

    `for_training` adds what only a fresh training run wants: timm's pretrained weights
    (`--pretrained`), a full BaconNet to start from (`--init-from`), the BN-momentum override and
    SyncBatchNorm across GPU processes (`--sync-bn`).
    """
    import torch

    from bacon_zoo.models import BaconNet

    model = BaconNet(
        cfg.backbone,
        num_classes=num_classes,
        proj_dim=cfg.bacon.proj_dim,
        pretrained=cfg.pretrained and for_training,
        backbone_kwargs=cfg.backbone_kwargs,
        head_init=cfg.head_init,
        pretrained_file=cfg.pretrained_file if for_training else None,
    )
    if for_training and cfg.bn_momentum is not None:  # short budgets: WRN's 0.001 is too slow
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    if for_training and cfg.init_from:
        from bacon_zoo.run.weights import load_bacon_net_weights

        load_bacon_net_weights(model, cfg.init_from)
    if cfg.lora_rank:  # after --init-from (a plain BaconNet's weights), before training and EMA
        from bacon_zoo.models.lora import apply_lora

        model.backbone = apply_lora(
            model.backbone, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets
        )
    if for_training and cfg.sync_bn:
        model = sync_batchnorm(model)
    return model


def sync_batchnorm(model: BaconNet) -> BaconNet:
    """BatchNorm -> SyncBatchNorm when this process is one of several on GPUs (the release converts
    under several GPUs); unchanged for one process. SyncBatchNorm does not run on CPUs, so a
    multi-process CPU run keeps per-process statistics and says so."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    if dist.get_backend() == "gloo":
        if dist.get_rank() == 0:
            logging.getLogger("bacon_zoo").warning(
                "sync_bn: SyncBatchNorm needs GPUs; this CPU run keeps per-process BatchNorm statistics"
            )
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def summary_record(cfg: TrainConfig, history: list[dict], status: str, **extra: Any) -> dict:
    """The summary.json schema: the paper's best top-1 and the run's identity, plus `extra` fields
    (params, images_per_s, device, precision, wall_time_s, device_hours, ...)."""
    from bacon_zoo.metrics import summarize

    return (
        summarize(history)
        | {
            "status": status,
            "steps": cfg.steps,
            "algorithm": cfg.algorithm,
            "backbone": cfg.backbone,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "protocol": PROTOCOL,
            "eval_head": eval_head_of(cfg.algorithm),
        }
        | extra
    )


__all__ = [
    "CHECKPOINTS",
    "CONFIG",
    "DATA",
    "EXPORT",
    "LEGACY_PROTOCOL",
    "METRICS",
    "PREDICTIONS",
    "PROTOCOL",
    "SPLIT",
    "SUMMARY",
    "RunDir",
    "build_model",
    "eval_head_of",
    "summary_record",
]
