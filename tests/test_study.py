"""Studies: grid expansion and naming, sharding, reports from hand-made cells, and real tiny runs."""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys

import pytest
import yaml
from conftest import set_args, tiny_sets

from bacon_zoo.config import TrainConfig, parse_set
from bacon_zoo.errors import UserError
from bacon_zoo.study import cli as study_cli
from bacon_zoo.study.grid import (
    StudySpec,
    cell_name,
    expand,
    parse_grid,
    parse_seeds,
    parse_shard,
    select_shard,
    set_item,
    spec_from_recipe,
)
from bacon_zoo.study.report import write_report
from bacon_zoo.study.runner import cell_config, error_line, plan_study, write_study

# the shared tiny run, 2 steps with an evaluation after each
TINY = tiny_sets(
    "steps=2", "eval_every=1", "checkpoint_every=2", "max_eval_samples=40", "channels_last=false"
)


@pytest.fixture
def offline_single_thread(monkeypatch):
    """Cells inherit the env: offline, and one thread (tiny models; no OpenMP spinning on a busy box)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


STUDY_MAIN = """
import argparse, sys
from bacon_zoo.study import cli
parser = argparse.ArgumentParser()
cli.add_parser(parser.add_subparsers(dest="command"))
args = parser.parse_args(["study", *sys.argv[1:]])
sys.exit(args.func(args))
"""


def study(*argv: str) -> int:
    """`bacon-zoo study ...` in-process, as the CLI runs it."""
    parser = argparse.ArgumentParser()
    study_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", *argv])
    return args.func(args)


def tiny_args(*skip: str) -> list[str]:
    return set_args(s for s in TINY if s.split("=")[0] not in skip)


# ---------------------------------------------------------------------------------------------
# pure: parsing, expansion, names, shards


def test_parse_grid_values_like_set():
    grid = parse_grid(
        ["backbone=wrn28_2,resnet18_cifar", "bacon.rns=true,false", "lr=0.03,1e-3",
         "backbone_kwargs={drop_rate: 0.1, x: 1},{}", "m1=[4000, null]"]
    )  # fmt: skip
    assert grid["backbone"] == ["wrn28_2", "resnet18_cifar"]
    assert grid["bacon.rns"] == [True, False]
    assert grid["lr"] == [0.03, "1e-3"]  # what --set gives too (the config coerces it)
    assert grid["backbone_kwargs"] == [{"drop_rate": 0.1, "x": 1}, {}]
    assert grid["m1"] == [4000, None]
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("0-3") == [0, 1, 2, 3]
    for bad in (["backbone"], ["a=1", "a=2"]):
        with pytest.raises(UserError, match="--grid"):
            parse_grid(bad)
    with pytest.raises(UserError, match="seeds"):
        parse_seeds("0,x")


@pytest.mark.parametrize("value", ["bacon", "true", "1e-3", None, 0.1, 3, False, {"a": [1, 2]}])
def test_set_items_round_trip(value):
    assert parse_set([set_item("a.b", value)]) == {"a": {"b": value}}


def test_expand_orders_names_and_sets():
    spec = spec_from_recipe(
        {
            "grid": {"imb_ratio_l+imb_ratio_u": [100, 150], "algorithm": ["abc", "bacon"]},
            "variants": {"full": {}, "no_rns": {"bacon": {"rns": False}}},
            "exclude": [{"algorithm": "abc", "variant": "no_rns"}],
            "seeds": [0, 1],
        }
    )
    cells = expand(spec)
    assert len(cells) == 2 * (2 * 2 - 1) * 2
    assert [c.seed for c in cells] == [0] * 6 + [1] * 6  # seed outermost
    first = cells[0]
    assert first.name == "algorithm=abc__imb_ratio_l+imb_ratio_u=100__variant=full__seed=0"
    assert first.sets == ["algorithm=abc", "imb_ratio_l=100", "imb_ratio_u=100"]
    no_rns = next(c for c in cells if c.values["variant"] == "no_rns")
    assert "bacon.rns=false" in no_rns.sets and no_rns.values["algorithm"] == "bacon"
    assert cell_name({"backbone": "hf-hub:timm/x y"}, 2) == "backbone=hf-hub-timm-x-y__seed=2"
    assert len(cell_name({f"k{i}": "v" * 30 for i in range(9)}, 0)) <= 160


@pytest.mark.parametrize(
    "study_block, message",
    [
        ({"grid": {"seed": [0, 1]}}, "use --seeds"),
        ({"grid": {"imb_ratio_l": [1], "imb_ratio_l+imb_ratio_u": [2]}}, "set by two axes"),
        ({"grid": {"a": [1]}, "exclude": [{"b": 1}]}, "not a grid axis"),
        ({"grid": {"a": [1]}, "exclude": [{"a": 1}]}, "no cells"),
        ({"grid": {"a": [1, 1]}}, "repeats a value"),
        ({"grdi": {}}, "unknown key"),
    ],
)
def test_bad_study_specs_raise_one_line(study_block, message):
    with pytest.raises(UserError, match=message) as err:
        expand(spec_from_recipe(study_block))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 40])
def test_shards_are_disjoint_and_complete(n):
    cells = expand(StudySpec(grid={"a": [1, 2, 3], "b": ["x", "y", "z"]}, seeds=[0, 1]))
    shards = [select_shard(cells, i, n) for i in range(n)]
    names = [c.name for s in shards for c in s]
    assert sorted(names) == sorted(c.name for c in cells) and len(set(names)) == len(cells)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert parse_shard(f"{n - 1}/{n}") == (n - 1, n)
    with pytest.raises(UserError, match="--shard"):
        parse_shard(f"{n}/{n}")


def test_shipped_study_recipes_plan(tmp_path):
    backbones = plan_study(tmp_path / "b", "study_backbones")
    assert len(backbones.cells) == 10 * 3 * 3
    assert not any(
        c.values["pretrained"] and c.values["backbone"].startswith("wrn") for c in backbones.cells
    )
    assert backbones.common["steps"] == 300_000 and "study" not in backbones.common
    imbalance = plan_study(tmp_path / "i", "study_imbalance", seeds=[0])
    cfg = cell_config(imbalance.common, imbalance.cells[-1], tmp_path)
    assert (cfg.imb_ratio_l, cfg.imb_ratio_u, cfg.reverse_u, cfg.algorithm) == (
        500,
        500,
        True,
        "bacon",
    )
    ablation = plan_study(tmp_path / "a", "study_ablation", grid={"variant": ["bacon", "no_rns"]})
    assert [c.values["variant"] for c in ablation.cells[:2]] == ["bacon", "no_rns"]
    cfg = cell_config(ablation.common, ablation.cells[1], tmp_path)
    assert (cfg.algorithm, cfg.bacon.rns, cfg.bacon.bta) == ("bacon", False, True)
    with pytest.raises(UserError, match="narrow it with --grid"):
        plan_study(tmp_path / "x", "study_backbones", sets=["algorithm=bacon"])
    on_digits = plan_study(tmp_path / "d", "study_ablation", base="demo_digits", seeds=[0])
    assert on_digits.common["dataset"] == "digits" and len(on_digits.cells) == 5
    with pytest.raises(UserError, match="has none"):
        plan_study(tmp_path / "x", "cifar10_lt", grid={"variant": ["a"]})
    with pytest.raises(UserError, match="unknown variant"):
        plan_study(tmp_path / "x", "study_ablation", grid={"variant": ["no_such"]})
    with pytest.raises(UserError, match="unknown config key 'bacon.tua'"):
        plan_study(tmp_path / "x", None, grid={"bacon.tua": [1, 2]})


def test_error_line_finds_the_cause():
    assert error_line("x\nbacon-zoo train: error: unknown backbone 'x'\n", 2) == (
        "unknown backbone 'x'"
    )
    assert error_line("Traceback\n  File a\nRuntimeError: boom\n 50%|##| 1/2 [1.0it/s]", 1) == (
        "RuntimeError: boom"
    )
    assert "SIGKILL" in error_line("", -9)


# ---------------------------------------------------------------------------------------------
# reports from hand-made cells (no training)


def _fake_summary(top1: float, params: int = 1_000_000) -> dict:
    metrics = {"top1": top1, "balanced_acc": top1 - 1, "gmean": top1 - 2, "head": top1 + 5,
               "medium": top1, "tail": top1 - 10}  # fmt: skip
    return {
        "status": "complete", "best_top1": top1, "best_step": 10, "best": metrics,
        "last": metrics | {"step": 20}, "median_last5": metrics, "num_evals": 2, "steps": 20,
        "params": params, "images_per_s": 100.0, "num_processes": 2, "mixed_precision": "bf16",
    }  # fmt: skip


def test_report_from_handmade_cells(tmp_path):
    grid = {"imb_ratio_l+imb_ratio_u": [100, 150], "reverse_u": [False, True],
            "algorithm": ["fixmatch", "abc", "bacon"], "backbone": ["wrn28_2"]}  # fmt: skip
    plan = plan_study(tmp_path, "cifar10_lt", grid=grid, seeds=[0, 1], sets=["steps=20"])
    write_study(plan)
    score = {"fixmatch": 70.0, "abc": 80.0, "bacon": 82.0}
    for i, cell in enumerate(plan.cells):
        run_dir = plan.cell_dir(cell)
        if i == 0:
            continue  # never started: "missing"
        run_dir.mkdir(parents=True)
        cfg = cell_config(plan.common, cell, run_dir).to_dict()
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
        if i == 1:
            (run_dir / "error.log").write_text("CUDA out of memory\n\n--- stderr tail ---\n")
        elif i != 2:  # 2 started but unfinished: "incomplete"
            top1 = score[cell.values["algorithm"]] + cell.seed
            (run_dir / "summary.json").write_text(json.dumps(_fake_summary(top1)))
    path = write_report(tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("**Budget:** 20 steps × batch 64 labeled + 128 unlabeled (mu=2)")
    assert "2 process(es), precision bf16" in lines[0] and "cifar10 N1=1000 M1=4000" in lines[0]
    assert "gamma_l=100/150" in lines[0] and "seeds 0, 1" in lines[0]
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(plan.cells) == 24
    assert [r["status"] for r in rows[:3]] == ["missing", "failed", "incomplete"]
    assert rows[1]["error"] == "CUDA out of memory"
    text = path.read_text()
    # BaCon - ABC with two seeds each: mean +2.00, +- sqrt(std_a^2 + std_b^2) = 1.00
    assert (
        "| 150 | true | wrn28_2 | 1.00M | 100 | 82.50 ± 0.71 | +2.00 ± 1.00 | +12.00 ± 1.00 |"
        in text
    )
    assert "## Missing / failed cells" in text and "— failed: CUDA out of memory" in text
    assert "— missing" in text and "— incomplete" in text
    for png in ("top1.png", "tail.png", "top1_vs_imbalance.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    assert not math.isnan(float(rows[-1]["best_top1"]))


def test_report_needs_a_study_dir(tmp_path):
    with pytest.raises(UserError, match="not a study directory"):
        write_report(tmp_path)


# ---------------------------------------------------------------------------------------------
# end to end: real tiny training runs as subprocesses (about 15 s per cell on a loaded machine)


@pytest.mark.slow  # four real cells in two concurrent shards
def test_tiny_study_in_two_shards_reports_and_skips_finished_cells(
    tmp_path, offline_single_thread, capsys
):
    out = tmp_path / "study"
    argv = ["run", "--grid", "algorithm=fixmatch,bacon", "--grid", "imb_ratio_l=5,10",
            *tiny_args("imb_ratio_l"), "--out", str(out)]  # fmt: skip
    # two shards at once, as two machines (or a SLURM array) would run them: one per core
    other = subprocess.Popen(
        [sys.executable, "-c", STUDY_MAIN, *argv, "--shard", "1/2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert study(*argv, "--shard", "0/2") == 0
    shard1 = other.communicate(timeout=600)[0]
    assert other.returncode == 0, shard1
    shard0 = capsys.readouterr().out
    assert shard0.count(": complete in ") == shard1.count(": complete in ") == 2
    cells = sorted((out / "cells").iterdir())
    assert [c.name for c in cells][0] == "algorithm=bacon__imb_ratio_l=10__seed=0"
    mtimes = {c.name: (c / "summary.json").stat().st_mtime_ns for c in cells}
    assert len(mtimes) == 4 and not (out / "report.md").exists()  # shards leave the report

    assert study("report", str(out)) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"complete"}
    assert {r["imb_ratio_l"] for r in rows} == {"5", "10"}
    for r in rows:  # every number is the cell's own: best top-1 over its evaluations, its params
        cell = out / "cells" / r["cell"]
        evals = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((cell / "summary.json").read_text())
        assert len(evals) == 2 and float(r["best_top1"]) == round(max(e["top1"] for e in evals), 4)
        assert int(r["params"]) == summary["params"] > 0
    report = (out / "report.md").read_text().splitlines()
    assert report[0].startswith("**Budget:** 2 steps × batch 4 labeled + 8 unlabeled (mu=2)")
    assert "1 process(es), precision no" in report[0] and "digits N1=20 M1=40" in report[0]
    assert "None: every cell is complete." in report
    for png in ("top1.png", "tail.png", "top1_vs_imbalance.png"):
        assert (out / png).stat().st_size > 1000, png
    capsys.readouterr()

    assert study(*argv) == 0  # a restart: every cell is complete, nothing retrains
    again = capsys.readouterr().out
    assert again.count("complete (skipped)") == 4 and "4 skipped" in again
    assert {c.name: (c / "summary.json").stat().st_mtime_ns for c in cells} == mtimes

    with pytest.raises(UserError, match="different shared settings"):
        study(*argv[:-2], "--set", "bacon.tau0=0.2", "--out", str(out))


def test_study_of_a_complete_and_a_failed_cell(tmp_path, offline_single_thread, capsys):
    """The default suite's end-to-end study: one real tiny cell completes, one fails at its start;
    the study goes on, and its report, table and plots keep both."""
    out = tmp_path / "study"
    grid = ["--grid", "backbone=wrn28_2,no_such_net"]
    assert study("run", *grid, *tiny_args(), "--out", str(out)) == 1
    assert "FAILED" in capsys.readouterr().out
    run_dir = out / "cells" / "backbone=no_such_net__seed=0"
    assert (run_dir / "error.log").read_text().startswith("unknown backbone 'no_such_net'")
    with (out / "results.csv").open() as f:
        rows = {r["backbone"]: r for r in csv.DictReader(f)}
    failed, done = rows["no_such_net"], rows["wrn28_2"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("unknown backbone 'no_such_net'")
    cell = out / "cells" / done["cell"]
    evals = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert done["status"] == "complete" and len(evals) == 2
    assert float(done["best_top1"]) == round(max(e["top1"] for e in evals), 4)
    report = (out / "report.md").read_text()
    assert "`backbone=no_such_net__seed=0` — failed: unknown backbone 'no_such_net'" in report
    assert "1 complete" in report and "1 failed" in report
    assert (out / "top1.png").stat().st_size > 1000  # the plots of the one complete point


# ---------------------------------------------------------------------------------------------
# cost model, LPT shards, --cell, --devices, YAML 1.2 values


def test_lpt_puts_expensive_cells_on_different_shards_and_balances_totals():
    from bacon_zoo.study.cost import lpt_shards

    costs = [1.0, 16.0, 1.0, 1.0, 16.0, 2.6, 2.6, 1.0, 6.0]
    shards = lpt_shards(costs, 2)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    assert [1 in s for s in shards] != [4 in s for s in shards]  # the two 16s split
    totals = [sum(costs[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= min(costs)  # balanced to within the smallest cell
    round_robin = [sum(costs[i::2]) for i in range(2)]  # 26.6 vs 20.6
    assert max(totals) - min(totals) < max(round_robin) - min(round_robin)
    assert lpt_shards(costs, 2) == shards  # deterministic: every shard computes the same split
    assert lpt_shards([5.0], 3) == [[0], [], []]


def test_cost_factor_and_estimate_formula():
    from bacon_zoo.study.cost import ASSUMED_REFERENCE, cost_factor, estimate_cell

    small, big = cost_factor("wrn28_2"), cost_factor("wrn28_8")
    assert 1.4e6 < small.params < 1.6e6 and big.flops / small.flops > 10
    cfg = TrainConfig(backbone="wrn28_2", steps=1000, batch_size=64, mu=2, eval_every=500)
    est = estimate_cell("c", cfg)
    images = 1000 * 64 * 5 + 2 * 10_000 / 3  # train + eval/3 (cifar10's 10k test images)
    assert est.source == "assumed" and est.images == pytest.approx(images)
    assert est.device_hours == pytest.approx(images / ASSUMED_REFERENCE.images_per_s / 3600)
    measured = estimate_cell("c", cfg, {("wrn28_2", 32): 1000.0})
    assert measured.source == "measured" and measured.images_per_s == 1000.0
    scaled = estimate_cell("c", TrainConfig(backbone="wrn28_8"), {("wrn28_2", 32): 1000.0})
    assert scaled.source == "flop-scaled"
    assert scaled.images_per_s == pytest.approx(1000.0 * small.flops / big.flops)
    with pytest.raises(UserError, match="unknown backbone"):
        cost_factor("no_such_net")


def test_cost_sharding_and_cell_selection(tmp_path):
    from bacon_zoo.study.runner import select_cells

    grid = {"backbone": ["wrn28_8", "wrn28_2"], "algorithm": ["abc", "bacon"]}
    plan = plan_study(tmp_path, "cifar10_lt", grid=grid, seeds=[0], sets=["steps=20"])
    shards = [select_cells(plan, (i, 2)) for i in range(2)]
    assert sorted(c.name for s in shards for c in s) == sorted(c.name for c in plan.cells)
    for s in shards:  # each shard gets one expensive and one cheap cell, not both wrn28_8s
        assert sorted(c.values["backbone"] for c in s) == ["wrn28_2", "wrn28_8"]
    one = select_cells(plan, cell=plan.cells[2].name)
    assert [c.name for c in one] == [plan.cells[2].name]
    with pytest.raises(UserError, match="did you mean"):
        select_cells(plan, cell=plan.cells[2].name + "x")
    with pytest.raises(UserError, match="drop --shard"):
        select_cells(plan, (0, 2), cell=plan.cells[0].name)


def test_mixed_precision_no_stays_a_string(tmp_path):
    assert parse_grid(["mixed_precision=no,bf16"]) == {"mixed_precision": ["no", "bf16"]}
    plan = plan_study(tmp_path, "cifar10_lt", grid={"mixed_precision": ["no", "bf16"]})
    assert [cell_config(plan.common, c, tmp_path).mixed_precision for c in plan.cells] == [
        "no",
        "bf16",
    ]
    assert plan.cells[0].name == "mixed_precision=no__seed=0"


FAKE_DEVICE_CELL = """
import json, os, sys, time
out = sys.argv[sys.argv.index("--output-dir") + 1]
os.makedirs(out, exist_ok=True)
t0 = time.time()
time.sleep(0.4)
json.dump({"status": "complete", "best_top1": 1.0, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "t0": t0, "t1": time.time()}, open(os.path.join(out, "summary.json"), "w"))
"""


def test_devices_run_one_cell_per_device_at_once(tmp_path):
    from bacon_zoo.study.runner import parse_devices, run_study

    fake = tmp_path / "cell.py"
    fake.write_text(FAKE_DEVICE_CELL)
    plan = plan_study(tmp_path / "s", grid={"lr": [0.01, 0.02, 0.03, 0.04, 0.05]}, sets=TINY)
    devices = parse_devices("3,5")
    outcome = run_study(
        plan, launcher=f"{sys.executable} {fake}", devices=devices, log=lambda m: None, poll_s=0.02
    )
    assert len(outcome["trained"]) == 5
    runs = [json.loads((plan.cell_dir(c) / "summary.json").read_text()) for c in plan.cells]
    assert {r["cuda"] for r in runs} == {"3", "5"}
    for a in runs:
        for b in runs:
            overlap = a is not b and a["t0"] < b["t1"] and b["t0"] < a["t1"]
            assert not (overlap and a["cuda"] == b["cuda"]), (a, b)  # never two cells on one device
    assert any(a["t0"] < b["t1"] and b["t0"] < a["t1"] for a in runs for b in runs if a is not b)
    logs = [(plan.cell_dir(c) / "stdout.log").read_text() for c in plan.cells]
    assert all("CUDA_VISIBLE_DEVICES=" in text for text in logs)
    for bad in ("0,0", "0,,1"):
        with pytest.raises(UserError, match="--devices"):
            parse_devices(bad)


def test_stopped_cell_is_interrupted_not_failed(tmp_path):
    from bacon_zoo.study.runner import cell_outcome

    (tmp_path / "summary.json").write_text("{}")
    for code in (130, 140, 143, -15, -12, -2):
        assert cell_outcome(tmp_path, code, "stopped at step 3") == ("stopped", "")
        assert not (tmp_path / "error.log").exists()
    assert cell_outcome(tmp_path, 1, "RuntimeError: boom")[0] == "failed"
    assert (tmp_path / "error.log").read_text().startswith("RuntimeError: boom")


def test_estimate_and_dry_run_print_the_cost(tmp_path, capsys):
    assert study("estimate", "--recipe", "study_backbones") == 0
    text = capsys.readouterr().out
    assert "ESTIMATE" in text and "| **total (estimate)** | | 90 |" in text and "assumed" in text
    assert study("run", "--recipe", "cifar10_lt", "--out", str(tmp_path), "--dry-run") == 0
    assert "[missing]" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown backbone 'no_such_net'"):
        study("run", "--grid", "backbone=no_such_net", "--out", str(tmp_path / "x"), "--dry-run")
