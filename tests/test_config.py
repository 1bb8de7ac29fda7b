"""Config resolution: defaults < recipe chain < flags < --set, and one-line errors for bad input."""

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
        (["algorithm=foo"], "algorithm 'foo' is not one of fixmatch, fixmatch+abc, "),
        (["steps=0"], "steps must be >= 1 (got 0)"),
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


def test_cli_reports_bad_key_in_one_line(tmp_path, run_cli):
    bad = tmp_path / "r.yaml"
    bad.write_text("n_one: 5\n")
    r = run_cli(["train", "--recipe", str(bad), "--print-config"])
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "unknown config key 'n_one'" in r.err
    assert "Traceback" not in r.err


def test_cli_version_and_help(run_cli):
    r = run_cli(["--version"])
    assert r.code == 0 and r.out.startswith("bacon-zoo ")
    r = run_cli(["--help"])
    assert r.code == 0 and "train" in r.out


# ---- ranges: every numeric field is checked in one place (RANGES), with a message naming it


def test_every_numeric_field_has_a_range():
    from bacon_zoo.config import RANGES, numeric_fields

    assert set(numeric_fields()) == set(RANGES)


def _outside(rng) -> list[float]:
    out = []
    if rng.lo is not None:
        out.append(rng.lo if rng.lo_open else rng.lo - 1)
    if rng.hi is not None:
        out.append(rng.hi if rng.hi_open else rng.hi + 1)
    return out


@pytest.mark.parametrize("key", sorted(__import__("bacon_zoo.config").config.RANGES))
def test_each_range_rejects_its_bounds_and_names_the_field(key):
    from bacon_zoo.config import RANGES

    rng = RANGES[key]
    for bad in _outside(rng) + [float("nan")]:
        if bad != bad and _is_int_field(key):
            continue  # NaN is no int: refused by the type check already
        with pytest.raises(UserError) as err:
            build_config(None, None, [f"{key}={bad!r}" if bad == bad else f"{key}=.nan"])
        msg = str(err.value)
        assert msg.startswith(f"{key} must be ") and rng.describe() in msg and "\n" not in msg
    if rng.optional:
        build_config(None, None, [f"{key}=null"])


def _is_int_field(key: str) -> bool:
    """The field's declared type is int (or int | None), from the dataclass hints."""
    from typing import get_args, get_type_hints

    from bacon_zoo.config import SECTIONS

    cls: type = TrainConfig
    *sections, name = key.split(".")
    for section in sections:  # algorithm sections are registered by the plug-ins
        cls = SECTIONS[section]
    typ = get_type_hints(cls)[name]
    return typ is int or int in get_args(typ)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["lr=-0.1"], "lr must be > 0 (got -0.1)"),
        (["eval_batch_size=0"], "eval_batch_size must be >= 1 (got 0)"),
        (["log_every=0"], "log_every must be >= 1 (got 0)"),
        (["seed=-1"], "seed must be in [0, 4294967295] (got -1)"),
        (["ema_decay=1.5"], "ema_decay must be in [0, 1) (got 1.5)"),
        (["bacon.tau0=-1"], "bacon.tau0 must be > 0 (got -1)"),
        (["max_eval_samples=0"], "max_eval_samples must be >= 1 or null (got 0)"),
        (["test_per_class=-3"], "test_per_class must be >= 1 or null (got -3)"),
        (["lr=.inf"], "lr must be > 0 (got inf)"),
        (["momentum=0"], "nesterov needs momentum > 0"),
        (["mixed_precision=fp17"], "mixed_precision 'fp17' is not one of auto, no, fp16, bf16"),
    ],
)
def test_issue_numbers_are_refused(sets, message):
    with pytest.raises(UserError) as err:
        build_config(None, None, sets)
    assert message in str(err.value)


def test_edge_values_inside_the_ranges_are_accepted():
    cfg = build_config(
        None, None, ["ema_decay=0", "momentum=0", "nesterov=false", "keep_checkpoints=0",
                     "warmup_steps=0", "seed=4294967295", "bn_momentum=1", "bacon.eta=0"],
    )  # fmt: skip
    assert cfg.keep_checkpoints == 0 and cfg.seed == 2**32 - 1


# ---- YAML: what dumps / RunDir.write_config write, yaml_load reads back identically


def test_mixed_precision_no_round_trips(tmp_path):
    from bacon_zoo.config import dumps, yaml_load
    from bacon_zoo.run import RunDir

    recipe = tmp_path / "r.yaml"
    recipe.write_text("mixed_precision: no\nlog_with: none\n")
    cfg = build_config(str(recipe))
    assert cfg.mixed_precision == "no" and cfg.log_with == "none"
    assert build_config(None, None, ["mixed_precision=no"]).mixed_precision == "no"
    assert build_config(None, {"mixed_precision": "no"}).mixed_precision == "no"
    RunDir(tmp_path).write_config(cfg, "bf16")
    assert RunDir(tmp_path).read_config() == cfg
    assert yaml_load(dumps(cfg)) == cfg.to_dict()


@pytest.mark.parametrize(
    "value", ["no", "yes", "on", "off", "y", "n", "null", "~", "1e-3", "0x1F", "2024-01-01", "1_000",
              ".inf", "true", "False", "", " a ", "a: b", "#x", "'q'", "010", "3.0"],
)  # fmt: skip
def test_strings_round_trip(value):
    from bacon_zoo.config import dumps, yaml_load

    cfg = TrainConfig()
    cfg.dataset = value
    cfg.backbone_kwargs = {"s": value, "n": [1, 2.5, None, True]}
    assert yaml_load(dumps(cfg)) == cfg.to_dict()


def test_every_recipe_round_trips():
    from bacon_zoo.config import config_from_dict, dumps, yaml_load

    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        if path.name.startswith("study_"):
            continue
        cfg = build_config(path.name)
        assert config_from_dict(yaml_load(dumps(cfg))) == cfg, path.name


@pytest.mark.parametrize(
    "text, message",
    [
        ("n1: [1, 2\n", "is not valid YAML (line 2"),
        ("- a\n- b\n", "must be a mapping of config keys, not list"),
        ("", "must be a mapping of config keys, not NoneType"),
        ("n_one: 5\n", "unknown config key 'n_one'"),
        ("lr: abc\n", "'lr': 'abc' is not a valid float"),
        ("\tbad: 1\n", "is not valid YAML"),
    ],
)
def test_malformed_run_config_is_one_line(tmp_path, text, message):
    from bacon_zoo.run import RunDir

    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        RunDir(tmp_path).read_config()
    msg = str(err.value)
    assert str(tmp_path / "config.yaml") in msg and message in msg and "\n" not in msg


# ---- fingerprint: what a resume compares


def test_fingerprint_ignores_runtime_options_and_given_keys():
    from bacon_zoo.config import RUNTIME_KEYS, config_diff, fingerprint

    for key in ("log_every", "eval_batch_size", "num_workers", "log_with", "checkpoint_every",
                "keep_checkpoints", "export", "data_device", "skip_unreadable_images"):  # fmt: skip
        assert key in RUNTIME_KEYS
    a = TrainConfig()
    b = build_config(None, None, ["log_every=7", "eval_batch_size=3", "num_workers=0",
                                  "keep_checkpoints=9", "checkpoint_every=11", "export=false"])  # fmt: skip
    assert fingerprint(a) == fingerprint(b) and config_diff(a, b) == []
    c = build_config(None, None, ["steps=400000", "bacon.tau0=0.2", "lr=0.1"])
    assert config_diff(a, c) == ["bacon.tau0", "lr", "steps"]
    assert config_diff(a, c, ignore=("steps", "bacon.tau0")) == ["lr"]
    d = build_config(None, None, ["steps=400000"])
    assert fingerprint(a) != fingerprint(d)
    assert fingerprint(a, ignore=("steps",)) == fingerprint(d, ignore=("steps",))
