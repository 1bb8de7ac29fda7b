"""Launches per training step stay within issue 24's bound: at most 1,100 leaf aten ops per
non-logging step at B=16, mu=2, counted by `benchmarks/ops.py` (the count its committed JSON holds),
recomputed here so that a change adding launches fails a test, not only a benchmark nobody reran.
BaCon with its contrastive term on from step 0 is the largest of the three algorithms the bound is
about; the count does not depend on the data (`same_count_every_step`)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ops() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import ops as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_a_bacon_step_launches_at_most_1100_ops(ops: ModuleType) -> None:
    args = ops.parse_args(["--warmup", "2", "--steps", "2"])
    result = ops.count("bacon", args)
    assert result["same_count_every_step"], result["per_step"]
    assert result["per_step"]["total"] <= ops.TARGET_TOTAL == 1100, result["per_step"]
