"""Feature-space analysis: training-time diagnostics (cheap, every evaluation) and `bacon-zoo analyze`.

`diagnostics` is light (torch only) and imported by the trainer; `analyze` and `plots` need
scikit-learn and matplotlib (the `plots` extra) and are only imported by the command.
"""

from __future__ import annotations

from bacon_zoo.analysis.diagnostics import (
    TrainingDiagnostics,
    center_drift,
    intra_class_spread,
    pseudo_label_quality,
)

__all__ = [
    "TrainingDiagnostics",
    "center_drift",
    "intra_class_spread",
    "pseudo_label_quality",
]
