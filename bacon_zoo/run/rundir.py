"""`RunDir`: one training run's directory (the layout is `bacon_zoo.run.layout`), read and written.

Every reader raises a one-line UserError naming the file and the fix; every writer is atomic
(`bacon_zoo.fileio`). `RunDir.checkpoint` is the one way a tool (export, analyze) picks a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bacon_zoo.config import TrainConfig, config_from_dict, dumps, yaml_load, yaml_problem
from bacon_zoo.errors import UserError
from bacon_zoo.fileio import (
    append_jsonl,
    atomic_write,
    atomic_write_text,
    dumps_json,
    read_json,
    read_jsonl,
    write_json,
)
from bacon_zoo.run.layout import (
    ANALYSIS,
    CANCELLED_LOG,
    CHECKPOINTS,
    CONFIG,
    DATA,
    ERROR_LOG,
    EXPORT,
    METRICS,
    PREDICTIONS,
    SPLIT,
    STDERR_LOG,
    STDOUT_LOG,
    SUMMARY,
    step_of,
)
from bacon_zoo.run.summary import LEGACY_PROTOCOL, PROTOCOL, eval_head_of, summary_record

if TYPE_CHECKING:
    import numpy as np

    from bacon_zoo.models import BaconNet

ERROR_TAIL = "\n--- stderr tail ---\n"  # error.log: the error line, then this, then the tail


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
    def analysis_dir(self) -> Path:
        return self.path / ANALYSIS

    @property
    def error_log(self) -> Path:
        return self.path / ERROR_LOG

    @property
    def stdout_path(self) -> Path:
        return self.path / STDOUT_LOG

    @property
    def stderr_path(self) -> Path:
        return self.path / STDERR_LOG

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
        import numpy as np

        atomic_write(self.predictions_path, lambda f: np.savez(f, **preds, step=step))

    # ---- a study cell's error.log / cancelled.log
    def write_error(self, line: str, tail: str = "") -> None:
        """Mark the run failed: the error line, then the stderr tail (`bacon-zoo study`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.error_log, line + "\n" + (ERROR_TAIL + tail if tail else ""))

    def mark_cancelled(self, line: str) -> None:
        """Mark the run's job cancelled (reported until the run starts again)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CANCELLED_LOG, line + "\n")

    def failed(self) -> bool:
        return self.error_log.is_file()

    def cancelled(self) -> bool:
        return (self.path / CANCELLED_LOG).is_file()

    def status_line(self) -> str:
        """The first line of error.log, else of cancelled.log ("" when there is neither)."""
        for name in (ERROR_LOG, CANCELLED_LOG):
            path = self.path / name
            if path.is_file():
                return (path.read_text(errors="replace").splitlines() or [""])[0]
        return ""

    def clear_status(self, cancelled: bool = True) -> None:
        """Forget a failure (and a cancellation, unless `cancelled` is False): the run starts again."""
        self.error_log.unlink(missing_ok=True)
        if cancelled:
            (self.path / CANCELLED_LOG).unlink(missing_ok=True)

    # ---- checkpoints
    def checkpoints(self) -> list[Path]:
        from bacon_zoo.run.checkpoint import list_checkpoints

        return list_checkpoints(self.checkpoints_dir)

    def checkpoint(self, checkpoint: str | int | Path | None = None) -> Path:
        """The verified checkpoint a tool should use: `checkpoint` (a step number, a step_N folder
        name or path) or the newest complete one (damaged newer ones are named and skipped); a
        one-line error naming what there is when it does not exist."""
        from bacon_zoo.run.checkpoint import find_resume_dir, latest_complete

        none = (
            f"{self.path} has no complete checkpoint ({CHECKPOINTS}/step_N); train or resume it "
            "first"
        )
        if checkpoint is None:
            found = latest_complete(self.checkpoints_dir)
            if found is None:
                raise UserError(none)
            return found
        text = str(checkpoint)
        if isinstance(checkpoint, int) or text.isdigit():
            ckpts = self.checkpoints()
            if not ckpts:
                raise UserError(none)
            match = [p for p in ckpts if step_of(p) == int(text)]
            if not match:
                steps = ", ".join(str(step_of(p)) for p in ckpts)
                raise UserError(
                    f"{self.path} has no checkpoint at step {text}; available steps: {steps}"
                )
            return find_resume_dir(str(match[0]), self.checkpoints_dir)
        for path in (Path(text), self.checkpoints_dir / text):
            if path.is_dir():
                return find_resume_dir(str(path), self.checkpoints_dir)
        raise UserError(
            f"--checkpoint {text} is not a directory; give a step number or "
            f"RUN_DIR/{CHECKPOINTS}/step_N"
        )

    # ---- the model
    def eval_head(self) -> str:
        return eval_head_of(self.read_config().algorithm)

    def build_model(self, cfg: TrainConfig | None = None) -> BaconNet:
        """The run's BaconNet, untrained (no pretrained download: weights come from a checkpoint)."""
        from bacon_zoo.run.model import build_model

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


__all__ = ["RunDir"]
