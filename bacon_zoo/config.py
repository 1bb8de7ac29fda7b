"""The experiment config: one dataclass tree, YAML recipes, command-line flags and `--set key=value`.

Precedence: dataclass defaults (the paper's CIFAR-10-LT BaCon setting) < recipe chain (a recipe may
name a `base:` recipe) < explicit flags < `--set`. The resolved config is written to every run dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from bacon_zoo.errors import UserError


@dataclass
class FixMatchConfig:
    """FixMatch's unlabeled consistency loss (hard pseudo-labels)."""

    threshold: float = 0.95
    lambda_u: float = 1.0


@dataclass
class ABCConfig:
    """The auxiliary class-balanced classifier (ABC, Lee et al. 2021)."""

    threshold: float = 0.95
    weight: float = 1.0


@dataclass
class BaconConfig:
    """Every constant of BaCon's contrastive term; defaults are the latest release's values."""

    proj_dim: int = 16  # projection size d (32 in the first release)
    tau0: float = 0.1  # base temperature; negatives always use it
    eta: float = 0.005  # BTA strength
    topk: int = 3  # Reliable Negative Selection: k not in top-k of q(u^w)
    neg_scale: float = 64.0  # constant factor on the class-level negative mean
    anchor_threshold: float = 0.98  # anchor selection and feature-bank writes
    bank_threshold: float = 0.95  # label-bank writes for unlabeled samples
    start: float = (
        0.5  # contrastive term active when step > start * steps (1/3 in the first release)
    )
    bta_horizon: float = 1.0  # BTA progress = step / (bta_horizon * steps), clipped to 1
    weight: float = 1.0  # loss weight of L_con
    rns: bool = True  # Reliable Negative Selection; off = every other-class sample is a negative
    bta: bool = True  # Balanced Temperature Adjusting; off = fixed tau0
    official_quirks: bool = False  # reproduce the release's three quirks (spec, "Quirks")


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults reproduce the paper's CIFAR-10-LT BaCon setting."""

    # model
    backbone: str = "wrn28_2"
    backbone_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    bn_momentum: float | None = (
        None  # override every BatchNorm's momentum (None: the backbone's own)
    )
    init_from: str | None = (
        None  # an exported folder or hub id whose BaconNet weights start training
    )
    head_init: str = "default"  # ABC head + projection: "default" (PyTorch's, as the release) | "family"
    algorithm: str = "bacon"
    # data
    dataset: str = "cifar10"
    dataset_revision: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    n1: int = 1000
    m1: int | None = 4000  # None: every remaining image is unlabeled (STL-10 style)
    imb_ratio_l: float = 100.0
    imb_ratio_u: float = 100.0
    reverse_u: bool = False
    include_labeled_in_unlabeled: bool = False
    test_per_class: int | None = (
        None  # held-out test images per class when a data set has no test split
    )
    max_eval_samples: int | None = None  # evaluate on a class-balanced subset (quick runs)
    image_size: int = 32
    num_workers: int = 4
    data_device: str = "auto"  # where the uint8 images live and views are made: auto (the accelerator's) | cpu
    skip_unreadable_images: bool = False  # drop images that fail to decode (counted) instead of stopping
    # optimisation
    steps: int = 300_000
    batch_size: int = 64  # labeled, per process
    mu: int = 2
    lr: float = 0.03
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    weight_decay_all: bool = False  # False: the release's groups (no decay on ndim <= 1 and biases)
    ema_decay: float = 0.999
    ema_warmup: bool = (
        False  # timm's EMA warm-up (decay grows towards ema_decay); for short budgets
    )
    # bookkeeping
    eval_every: int = 1000
    eval_batch_size: int = 256
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    output_dir: str | None = None
    resume: str | None = None  # "auto" (latest in output_dir) or a checkpoint directory
    channels_last: bool = True
    compile: bool = False
    cpu: bool = False
    log_with: str = "none"
    # auto: bf16 where the device has native bf16 (CUDA, AVX-512-BF16/AMX CPUs), else fp32;
    # None = what `accelerate launch` says
    mixed_precision: str | None = "auto"
    export: bool = True  # export the model (safetensors + card) at the end of training
    # algorithms
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    abc: ABCConfig = field(default_factory=ABCConfig)
    bacon: BaconConfig = field(default_factory=BaconConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "algorithm": ("fixmatch", "abc", "bacon"),
    "lr_schedule": ("constant", "cosine"),
    "log_with": ("none", "tensorboard", "trackio", "wandb"),
    "mixed_precision": (None, "auto", "no", "fp16", "bf16"),
    "head_init": ("default", "family"),
    "data_device": ("auto", "cpu"),
}
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RUNTIME_KEYS = (
    "resume",
    "output_dir",
    "cpu",
    "num_workers",
    "log_with",
    "export",
)  # not part of an experiment


# ---------------------------------------------------------------------------------------------
# parsing values


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false are booleans, so `mixed_precision: no` stays the string "no"."""


_YamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str) -> Any:
    """Parse recipe / --set text (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_YamlLoader)


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise a one-line UserError."""
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in args if a is not type(None))
        origin = get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return (
                int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            )
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if typ is dict or origin is dict:
            if isinstance(value, str):
                value = yaml_load(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, yaml.YAMLError):
        pass
    else:
        return value
    name = getattr(typ, "__name__", str(typ))
    raise UserError(f"config key '{key}': {value!r} is not a valid {name}")


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> None:
    """Apply a (possibly nested) dict of overrides to a config dataclass, validating every key."""
    types = _field_types(type(cfg))
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if key not in types:
            raise UserError(
                f"unknown config key '{full}'{_suggest(key, list(types))}; "
                "run `bacon-zoo train --print-config` to see every key"
            )
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{full}' is a section; give it a mapping of keys")
            apply_overrides(current, value, prefix=f"{full}.")
        else:
            setattr(cfg, key, _coerce(value, types[key], full))


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=1 c=x` -> {"a": {"b": 1}, "c": "x"} (values parsed as YAML scalars)."""
    merged: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}' (e.g. --set bacon.tau0=0.2)")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        deep_merge(merged, _nested(key.strip(), value))
    return merged


def deep_merge(dst: dict, src: dict) -> dict:
    """Merge nested dict `src` into `dst` in place (src wins); used for recipe chains and --set."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


# ---------------------------------------------------------------------------------------------
# recipes


def resolve_recipe_path(name: str, relative_to: Path | None = None) -> Path:
    """A recipe is a path, or a bare name looked up in `recipes/` (with or without `.yaml`)."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    candidates += [RECIPES_DIR / name, RECIPES_DIR / f"{name}.yaml"]
    for cand in candidates:
        if cand.is_file():
            return cand
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise UserError(
        f"recipe '{name}' not found{_suggest(Path(name).stem, known)}; "
        f"give a YAML path or one of: {', '.join(known) or '(none)'}"
    )


def load_recipe(name: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML recipe and its `base:` chain into one nested dict (the child wins)."""
    path = resolve_recipe_path(name, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise UserError(
            f"recipe '{path.name}' names itself as a base (cycle: {' -> '.join(p.name for p in _seen)})"
        )
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"recipe '{path}' is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(
            f"recipe '{path}' must be a mapping of config keys, not {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        deep_merge(merged, load_recipe(str(b), _seen + (path,)))
    return deep_merge(merged, data)


def validate(cfg: TrainConfig) -> TrainConfig:
    for key, options in CHOICES.items():
        if getattr(cfg, key) not in options:
            names = [str(o) for o in options if o is not None]
            raise UserError(
                f"{key} '{getattr(cfg, key)}' is not one of {', '.join(names)}"
                f"{_suggest(str(getattr(cfg, key)), names)}"
            )
    positive = ("steps", "batch_size", "mu", "eval_every", "checkpoint_every", "image_size", "n1")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(cfg, key)}")
    if cfg.imb_ratio_l < 1 or cfg.imb_ratio_u < 1:
        raise UserError(
            "imbalance ratios must be >= 1; use --reverse-u for a reversed unlabeled profile"
        )
    if not 0.0 <= cfg.bacon.start <= 1.0:
        raise UserError(
            f"bacon.start is a fraction of the total steps in [0, 1], got {cfg.bacon.start}"
        )
    if cfg.bacon.bta_horizon <= 0:
        raise UserError(f"bacon.bta_horizon must be positive, got {cfg.bacon.bta_horizon}")
    return cfg


def build_config(
    recipe: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> TrainConfig:
    """Defaults < recipe chain < flags < --set, validated."""
    cfg = TrainConfig()
    if recipe:
        apply_overrides(cfg, load_recipe(recipe))
    if flags:
        apply_overrides(cfg, flags)
    if sets:
        apply_overrides(cfg, parse_set(sets))
    return validate(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved in a run directory (config.yaml / config.json)."""
    cfg = TrainConfig()
    apply_overrides(cfg, data)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(
            f"'{run_dir}' is not a run directory (no config.yaml); point at a train output dir"
        )
    return config_from_dict(yaml_load(path.read_text()))


# ---------------------------------------------------------------------------------------------
# command-line flags: one flag per top-level scalar field, generated from the dataclass


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add `--recipe`, `--set`, `--print-config` and a `--kebab-name` flag per top-level field."""
    parser.add_argument("--recipe", help="YAML recipe (path or name in recipes/)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, nested with dots (e.g. --set bacon.tau0=0.2)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    types = _field_types(TrainConfig)
    for f in fields(TrainConfig):
        typ = types[f.name]
        if dataclasses.is_dataclass(typ):
            continue  # sections are set from recipes or --set
        flag = "--" + f.name.replace("_", "-")
        if f.name == "resume":
            parser.add_argument(
                flag,
                nargs="?",
                const="auto",
                default=None,
                metavar="DIR",
                help="resume from the latest checkpoint in --output-dir, or from DIR",
            )
        elif typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            default = f.default if f.default is not dataclasses.MISSING else "{}"
            options = CHOICES.get(f.name)
            shown = "|".join(str(o) for o in options if o is not None) if options else None
            parser.add_argument(
                flag, default=None, metavar=shown or "X", help=f"(default: {default})"
            )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    flags = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    return build_config(args.recipe, flags, args.set)


def dumps(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def fingerprint(cfg: TrainConfig) -> str:
    """A stable JSON of the experiment (runtime-only keys dropped) for comparing runs."""
    d = cfg.to_dict()
    for k in RUNTIME_KEYS:
        d.pop(k, None)
    return json.dumps(d, sort_keys=True)
