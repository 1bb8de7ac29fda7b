"""Every file name the package writes for a run: the run directory, its checkpoints, its export folder
and its analysis folder. Nothing outside `bacon_zoo.run` (and `bacon_zoo.fileio`) spells one of these
names (tests/test_layers.py checks it); code reads and writes them through `RunDir` and `ExportDir`.

    RUN_DIR/
      config.yaml        the resolved TrainConfig, headed by `protocol` and `precision`
      split.json         the long-tailed split (indices), reloaded on resume
      data.json          what export and analysis need to know about the data without reloading it
      metrics.jsonl      one strict-JSON record per evaluation
      summary.json       written when the run completes
      predictions.npz    the latest evaluation's predictions
      error.log          (a study cell that failed) the error line, then the stderr tail
      cancelled.log      (a study cell whose SLURM job was cancelled) one line
      checkpoints/step_0000100/   accelerate's state + our state + manifest.json
      analysis/          `bacon-zoo analyze`: analysis.md, figures, predictions.npz, analysis.json
      export/            `bacon-zoo export`: a timm Hub repo (see EXPORT_* below)
"""

from __future__ import annotations

import re
from pathlib import Path

# ---- the run directory
CONFIG = "config.yaml"
SPLIT = "split.json"
DATA = "data.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
CHECKPOINTS = "checkpoints"
EXPORT = "export"
ANALYSIS = "analysis"
ERROR_LOG = "error.log"
CANCELLED_LOG = "cancelled.log"
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"

# ---- a checkpoint: checkpoints/step_XXXXXXX, written as checkpoints/.tmp-step_XXXXXXX
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"  # every file's sha256, written last (see bacon_zoo.run.manifest)
_STEP_DIR = re.compile(rf"{STEP_PREFIX}(\d+)")

# ---- the export folder: timm's files, the full BaconNet, copies of the run's records, plot, card
TIMM_WEIGHTS = "model.safetensors"
TIMM_CONFIG = "config.json"
NET_WEIGHTS = "bacon_net.safetensors"
NET_CONFIG = "bacon_net.json"
PLOT = "per_class_accuracy.png"
CARD = "README.md"
RECIPE = "recipe.yaml"  # the run's config.yaml
EXPORT_MANIFEST = "export_manifest.json"  # what the export wrote: never delete anything else
EXPORT_FORMAT = 2
# run file -> its copy in the export (summary.json is rebuilt from metrics.jsonl when missing)
COPIED = {CONFIG: RECIPE, SPLIT: SPLIT, DATA: DATA, METRICS: METRICS}
# files of the run's analysis folder an export copies (analysis/<name>), by suffix
ANALYSIS_SUFFIXES = (".md", ".png", ".json", ".csv")

# ---- the analysis folder (`bacon-zoo analyze`)
ANALYSIS_PAGE = "analysis.md"
ANALYSIS_MANIFEST = "analysis.json"  # marks a folder as analyze's own: --out writes only into those
FIGURES = ("tsne", "confusion", "per_class", "curves", "bank")  # <name>.png of one run


def figure(name: str, prefix: str = "") -> str:
    """`tsne.png`, or `compare_<tag>_tsne.png` with a prefix."""
    return f"{prefix}_{name}.png" if prefix else f"{name}.png"


def compare_page(tag: str) -> str:
    return f"compare_{tag}.md"


def compare_predictions(tag: str) -> str:
    return f"predictions_{tag}.npz"


# ---- step numbers


def step_dir_name(step: int) -> str:
    """`step_0000100`: the folder of the checkpoint at `step`."""
    return f"{STEP_PREFIX}{int(step):07d}"


def step_of(path: str | Path) -> int | None:
    """The step of a `step_N` checkpoint folder (None for any other name): the one step parser."""
    m = _STEP_DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None
