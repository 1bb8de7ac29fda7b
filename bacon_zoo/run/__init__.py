"""The records layer: every file the package keeps on disk for a run, and the run's model.

One module a job:

    layout      every file name: the run directory, its checkpoints, its export, its analysis
    rundir      `RunDir`: a run directory read and written (config, split, data card, metrics,
                summary, predictions, a study cell's error log) and the one checkpoint resolver
    checkpoint  atomic, verified checkpoints that never run code when they are read
    manifest    the one manifest format ({file: sha256}) of checkpoints, exports and analyses
    exportdir   `ExportDir`: the export folder (a timm Hub repo) written atomically and read back
    weights     a local export's weights: verified, loaded strictly (the Hub half is bacon_zoo.hub)
    model       `build_model`: the one way to build a run's BaconNet, and its timm classifier
    summary     the protocol a run records, its evaluated head and its summary.json record
    lock        one writer per run directory

Nothing outside this package (and `bacon_zoo.fileio`, which writes every file atomically) spells a
file name of a run or an export. Layering: above config/data/models/algorithms, below train, hub,
analysis and study.
"""

from bacon_zoo.run.layout import (
    CHECKPOINTS,
    CONFIG,
    DATA,
    EXPORT,
    METRICS,
    PREDICTIONS,
    SPLIT,
    SUMMARY,
)
from bacon_zoo.run.model import build_model, sync_batchnorm
from bacon_zoo.run.rundir import RunDir
from bacon_zoo.run.summary import LEGACY_PROTOCOL, PROTOCOL, eval_head_of, summary_record

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
    "sync_batchnorm",
]
