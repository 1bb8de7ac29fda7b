"""`--compile` (bacon_zoo/train/compile.py): the views, the losses and the bank writes compile as whole
graphs (no graph break), with the same draws as eager; the `compile` setting; and, slow, real steps
with inductor on the CPU: views equal to eager, training, and a resume equal to a straight run.

The graph checks use a counting backend that runs each captured graph eagerly: `fullgraph=True`
raises at any graph break, and the counts say how many graphs each part needed over several steps.
"""

from __future__ import annotations

import argparse
import signal

import pytest
import torch
from conftest import tiny_sets
from test_syncs import build
from test_train import _state
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from bacon_zoo.config import add_config_args, build_config, config_from_args
from bacon_zoo.errors import UserError
from bacon_zoo.train.compile import compile_algorithm, compile_mode, compile_streams

ALGORITHMS = ("fixmatch", "abc", "bacon", "acr", "acr+bacon")
STEPS = 4


def _run(run: dict, step: int) -> tuple[dict, dict, dict]:
    """Both batches and one training step (what the loop does), on the given stream objects."""
    from bacon_zoo.train.trainer import train_step

    lb, ulb = run["lb"].batch(step), run["ulb"].batch(step)
    logs, _, _ = train_step(run["parts"], lb, ulb, step)
    return lb, ulb, logs


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_views_losses_and_bank_writes_compile_whole_and_draw_the_same(algorithm: str) -> None:
    torch._dynamo.reset()
    eager, compiled = build(algorithm), build(algorithm)
    streams = CompileCounter()
    compile_streams(compiled["lb"], compiled["ulb"], mode="default", backend=streams)
    losses = CompileCounter()
    compile_algorithm(compiled["parts"].algo, "default", fullgraph=True, backend=losses)
    counts = []
    for step in range(STEPS):
        want, got = _run(eager, step), _run(compiled, step)
        for a, b in zip(want[:2], got[:2]):  # every view and label: the same draws, bit for bit
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for k, v in want[2].items():  # the losses and logs (the counting backend runs eager ops)
            assert torch.equal(v, got[2][k]), k
        counts.append((streams.frame_count, losses.frame_count))
    # views: augment + finish per stream, each one graph from the first step on
    assert [c[0] for c in counts] == [4] * STEPS
    # the losses: one graph with `step` symbolic; one more at step 1, where BaCon's term switches on
    # and ACR's first window ends (these tiny settings); + BaCon's feature-bank write. None later.
    switches, bank = algorithm != "fixmatch" and algorithm != "abc", "bacon" in algorithm
    assert counts[0][1] == 1 + bank
    assert [c[1] for c in counts[1:]] == [1 + switches + bank] * (STEPS - 1)


def test_compile_setting_values_and_flags() -> None:
    for value, want in [(False, False), (True, "default"), ("true", "default"), ("off", False),
                        ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune"),
                        ("default", "default")]:  # fmt: skip
        assert build_config(None, {"compile": value}).compile == want
    assert compile_mode(False) is None and compile_mode("default") == "default"
    with pytest.raises(UserError, match="compile.*not one of false, true, default"):
        build_config(None, {"compile": "fast"})
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    for argv, want in [([], False), (["--compile"], "default"), (["--no-compile"], False),
                       (["--compile", "reduce-overhead"], "reduce-overhead")]:  # fmt: skip
        assert config_from_args(parser.parse_args(argv)).compile == want


@pytest.mark.slow  # inductor compiles RandAugment's graph (~20 s on a 2-core CPU)
def test_inductor_views_equal_eager() -> None:
    """Inductor's uint8 views (crop/flip, RandAugment + Cutout) equal the eager ones bit for bit
    (its CPU code mis-reduces uint8 minima: `augment._extremes` works around it); normalised, they
    differ by at most an ulp (a fused multiply-add in eager `addcmul`)."""
    torch._dynamo.reset()
    eager, compiled = build("fixmatch")["ulb"], build("fixmatch")["ulb"]
    compile_streams(compiled, mode="default")
    for step in range(3):
        draws = eager.draws(step)
        (y_a, views_a), (y_b, views_b) = eager.augment(*draws), compiled.augment(*draws)
        assert torch.equal(y_a, y_b)
        for a, b in zip(views_a, views_b):
            assert torch.equal(a, b)
            torch.testing.assert_close(eager.finish(a), compiled.finish(b), rtol=0, atol=1e-6)


def _tiny(out, *extra: str):
    return build_config(None, {"output_dir": str(out)}, tiny_sets("compile=default", *extra))


@pytest.mark.slow  # inductor compiles the WRN-28-2 step twice over: minutes on a 2-core CPU
def test_compiled_training_runs_and_resumes_like_a_straight_run(tmp_path, monkeypatch) -> None:
    from accelerate.state import AcceleratorState

    from bacon_zoo.algorithms.bacon import BaCon
    from bacon_zoo.train.trainer import train

    torch._dynamo.reset()
    counters.clear()
    straight = train(_tiny(tmp_path / "straight"))
    assert straight.status == "complete"
    # views (augment + finish, per stream), network, losses (before / after L_con starts), bank
    # write: compiled, none of them broken (the network neither)
    assert counters["stats"]["unique_graphs"] >= 8 and not counters["graph_break"]
    original = BaCon.after_step

    def after_step(self, step, total_steps):  # SIGTERM during the second step
        original(self, step, total_steps)
        if step == 1:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(BaCon, "after_step", after_step)
    AcceleratorState._reset_state(True)
    stopped = train(_tiny(tmp_path / "resumed"))
    assert (stopped.status, stopped.step) == ("stopped", 2)
    monkeypatch.setattr(BaCon, "after_step", original)
    AcceleratorState._reset_state(True)
    resumed = train(_tiny(tmp_path / "resumed", "resume=auto"))
    assert resumed.status == "complete"
    a, b = (_state(tmp_path / run / "checkpoints/step_0000006") for run in ("straight", "resumed"))
    assert a.keys() == b.keys()
    for key in a:  # model, EMA and memory bank
        assert torch.equal(a[key], b[key]), key
