"""Studies: grids of ordinary training runs (backbones x algorithms x seeds, imbalance, ablations).

`grid` expands specs into named cells (pure), `runner` runs each cell as a `bacon-zoo train --resume`
subprocess in its own run dir, `report` turns the cells' summaries into results.csv, report.md and plots.
"""

from bacon_zoo.study.grid import Cell, StudySpec, expand, parse_grid, select_shard
from bacon_zoo.study.report import write_report
from bacon_zoo.study.runner import Study, plan_study, run_study

__all__ = [
    "Cell",
    "Study",
    "StudySpec",
    "expand",
    "parse_grid",
    "plan_study",
    "run_study",
    "select_shard",
    "write_report",
]
