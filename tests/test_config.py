"""Config resolution: defaults < recipe chain < flags < --set, and one-line errors for bad input."""

import subprocess
import sys

import pytest

from bacon_zoo.config import RECIPES_DIR, TrainConfig, build_config, load_recipe, parse_set
from bacon_zoo.errors import UserError


def test_defaults_are_the_paper_setting():
    cfg = TrainConfig()
    assert (cfg.backbone, cfg.algorithm, cfg.n1, cfg.m1) == ("wrn28_2", "bacon", 1000, 4000)
    assert (cfg.imb_ratio_l, cfg.imb_ratio_u, cfg.batch_size, cfg.mu) == (100, 100, 64, 2)
    assert (cfg.lr, cfg.weight_decay, cfg.ema_decay, cfg.steps) == (0.03, 5e-4, 0.999, 300_000)
    assert (cfg.bacon.tau0, cfg.bacon.eta, cfg.bacon.topk, cfg.bacon.neg_scale) == (
        0.1,
        0.005,
        3,
        64.0,
    )
    assert (cfg.bacon.anchor_threshold, cfg.bacon.bank_threshold, cfg.bacon.start) == (
        0.98,
        0.95,
        0.5,
    )


def test_precedence_recipe_flags_set(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("n1: 10\nm1: 20\nbacon:\n  tau0: 0.3\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nm1: 30\n")
    cfg = build_config(str(child), {"n1": "11"}, ["bacon.eta=0.01", "m1=null"])
    assert cfg.n1 == 11 and cfg.m1 is None
    assert cfg.bacon.tau0 == 0.3 and cfg.bacon.eta == 0.01


def test_every_shipped_recipe_resolves():
    names = sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))
    assert "cifar10_lt.yaml" in names and "demo_digits.yaml" in names
    for name in names:
        assert isinstance(load_recipe(name), dict)
        if not name.startswith("study_"):
            build_config(name)


def test_recipe_tables_match_the_spec():
    c100 = build_config("cifar100_lt")
    assert (c100.dataset, c100.n1, c100.m1, c100.imb_ratio_l, c100.steps) == (
        "cifar100",
        200,
        300,
        20,
        300_000,
    )
    rev = build_config("cifar10_lt_g150_rev")
    assert (rev.imb_ratio_l, rev.imb_ratio_u, rev.reverse_u) == (150, 150, True)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["bacon.tua=1"], "unknown config key 'bacon.tua'"),
        (["bacon.tau0=abc"], "not a valid float"),
        (["algorithm=foo"], "algorithm 'foo' is not one of fixmatch, abc, bacon"),
        (["steps=0"], "steps must be positive"),
        (["bacon=3"], "is a section"),
        (["novalue"], "--set expects key=value"),
    ],
)
def test_bad_values_raise_one_line(sets, message):
    with pytest.raises(UserError) as err:
        build_config(None, None, sets)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_recipe_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n1: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        build_config(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        build_config(str(loop))
    with pytest.raises(UserError, match="not found"):
        build_config("no_such_recipe")


def test_parse_set_nests_and_types():
    assert parse_set(["a.b=1", "a.c=true", "d=x"]) == {"a": {"b": 1, "c": True}, "d": "x"}


def test_cli_reports_bad_key_in_one_line(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("n_one: 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bacon_zoo.cli", "train", "--recipe", str(bad), "--print-config"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key 'n_one'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "bacon_zoo.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("bacon-zoo ")
    out = subprocess.run(
        [sys.executable, "-m", "bacon_zoo.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "train" in out.stdout
