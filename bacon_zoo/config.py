"""The experiment config: one dataclass tree, YAML recipes, command-line flags and `--set key=value`.

Precedence: dataclass defaults (the paper's CIFAR-10-LT BaCon setting) < recipe chain (a recipe may
name a `base:` recipe) < explicit flags < `--set`. The resolved config is written to every run dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.resources
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from bacon_zoo.errors import UserError

# ---------------------------------------------------------------------------------------------
# algorithm sections: each algorithm plug-in (bacon_zoo.algorithms, a layer above) registers its own
# config dataclass here on import; `TrainConfig` holds one instance per registered section, read and
# written as `cfg.<name>` and `--set <name>.<field>=...`, and each numeric field's valid range comes
# from its dataclass field metadata (`field(default=..., metadata={"range": Range(...)})`).

SECTIONS: dict[str, type] = {}
# extra whole-config checks registered by the plug-ins (e.g. that `algorithm` names a registered one)
VALIDATORS: list[Callable[[Any], None]] = []
# choices a plug-in registry knows for a top-level field, shown in `--help` (e.g. the algorithm names)
HELP_CHOICES: dict[str, Callable[[], tuple[str, ...]]] = {}


def register_section(name: str, cls: type) -> None:
    """Add an algorithm's config dataclass as section `name`, and its fields' ranges to RANGES.

    Every int / float field needs `metadata={"range": Range(...)}` (a test checks that every numeric
    field of the config tree has a range)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config section '{name}' must be a dataclass, got {cls!r}")
    if name in _STATIC_FIELDS:
        raise ValueError(f"config section '{name}' clashes with a TrainConfig field")
    SECTIONS[name] = cls
    for f in fields(cls):
        rng = f.metadata.get("range")
        if rng is not None:
            RANGES[f"{name}.{f.name}"] = rng


def _default_sections() -> dict[str, Any]:
    return {name: cls() for name, cls in SECTIONS.items()}


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults reproduce the paper's CIFAR-10-LT BaCon setting."""

    # model
    backbone: str = "wrn28_2"
    backbone_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    # a local weights file for the backbone (timm's pretrained_cfg_overlay=dict(file=...)); implies
    # --pretrained. `bacon-zoo import-weights` writes one from a foreign checkpoint
    pretrained_file: str | None = None
    bn_momentum: float | None = (
        None  # override every BatchNorm's momentum (None: the backbone's own)
    )
    # BatchNorm -> SyncBatchNorm when training on several GPUs (the release does; on in the paper
    # recipes); a no-op for one process, and skipped with a note on CPUs (SyncBatchNorm needs a GPU)
    sync_bn: bool = False
    init_from: str | None = (
        None  # an exported folder or hub id whose BaconNet weights start training
    )
    # LoRA through peft (extra `lora`): rank 0 = off; adapters on the linears matching lora_targets (a
    # regex over module names: a timm ViT's attention and MLP by default); exported merged
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
    head_init: str = (
        "default"  # ABC head + projection: "default" (PyTorch's, as the release) | "family"
    )
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
    image_size: int = 32  # the data's resolution: images are decoded and augmented at this size
    # the network's input: views are resized on the device from image_size (None: image_size)
    input_size: int | None = None
    # input normalisation: "auto" (the backbone's pretrained mean/std when it starts from pretrained
    # weights, else the data set's) | "data" | "backbone"
    normalize: str = "auto"
    num_workers: int = (
        4  # ignored: views are made in batches on the device (kept so older configs load)
    )
    data_device: str = (
        "auto"  # where the uint8 images live and views are made: auto (the accelerator's) | cpu
    )
    skip_unreadable_images: bool = (
        False  # drop images that fail to decode (counted) instead of stopping
    )
    # optimisation
    steps: int = 300_000
    batch_size: int = 64  # labeled, per process
    mu: int = 2
    opt: str = "sgd"  # any timm.optim name (sgd, adamw, lamb, ...); sgd honours --nesterov
    lr: float = 0.03
    lr_schedule: str = "constant"  # constant | cosine (FixMatch's 7/16 cycle) | full_cosine (to 0)
    warmup_steps: int = 0
    layer_decay: float | None = None  # timm's layer-wise LR decay (the backbone's group_matcher)
    head_lr_scale: float = 1.0  # LR multiplier of the new parts (heads, projection)
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
    # torch.compile the step with inductor: false, true (= default), default, reduce-overhead (+ CUDA
    # graphs), max-autotune (bacon_zoo/train/compile.py)
    compile: bool | str = False
    cpu: bool = False
    log_with: str = "none"
    # auto: bf16 where the device has native bf16 (CUDA, AVX-512-BF16/AMX CPUs), else fp32;
    # None = what `accelerate launch` says
    mixed_precision: str | None = "auto"
    export: bool = True  # export the model (safetensors + card) at the end of training
    # the algorithms' own sections (`cfg.fixmatch`, `cfg.bacon`, ...): one per registered plug-in,
    # written to YAML as top-level keys like any section
    sections: dict = field(default_factory=_default_sections, repr=False)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"'TrainConfig' object has no attribute '{name}'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d | d.pop("sections")


_STATIC_FIELDS = {f.name for f in fields(TrainConfig)}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CHOICES = {
    "lr_schedule": ("constant", "cosine", "full_cosine"),
    "normalize": ("auto", "data", "backbone"),
    "log_with": ("none", "tensorboard", "trackio", "wandb"),
    "mixed_precision": (None, "auto", "no", "fp16", "bf16"),
    "head_init": ("default", "family"),
    "data_device": ("auto", "cpu"),
    "compile": (False, *COMPILE_MODES),
}


def package_data(name: str) -> Path:
    """A data folder shipped as the package `bacon_zoo.<name>`: pyproject maps the checkout's top-level
    `<name>/` there, so an editable install and a wheel read the same files (importlib.resources).
    A bare source tree on PYTHONPATH (no install) falls back to the folder beside the package."""
    try:
        return Path(str(importlib.resources.files(f"bacon_zoo.{name}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / name


RECIPES_DIR = package_data("recipes")
# options that do not change the experiment: a resume with other values of these is the same run
RUNTIME_KEYS = (
    "resume",
    "output_dir",
    "cpu",
    "num_workers",
    "log_with",
    "export",
    "log_every",
    "eval_batch_size",
    "checkpoint_every",
    "keep_checkpoints",
    "data_device",
    "skip_unreadable_images",
)


@dataclass(frozen=True)
class Range:
    """The valid interval of one numeric config field; `None` bounds are open-ended."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo < x (else lo <= x)
    hi_open: bool = False  # x < hi (else x <= hi)
    optional: bool = False  # None (YAML null) is allowed too
    hint: str = ""  # appended to the error, e.g. what to use instead

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            lo, hi = self.fmt(self.lo), self.fmt(self.hi)
            text = f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {self.fmt(self.lo)}"
        else:
            text = f"{'<' if self.hi_open else '<='} {self.fmt(self.hi)}"
        return text + (" or null" if self.optional else "")

    @staticmethod
    def fmt(x: Any) -> str:
        if x is None:
            return "null"
        if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
            return str(int(x))
        return repr(x) if isinstance(x, float) else str(x)

    def contains(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if not math.isfinite(value):
            return False
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)


def _ge(lo: float, **kw: Any) -> Range:
    return Range(lo=lo, **kw)


def _gt(lo: float, **kw: Any) -> Range:
    return Range(lo=lo, lo_open=True, **kw)


_FRACTION = Range(0.0, 1.0)  # probabilities and confidence thresholds
# the same, for the algorithm plug-ins' field metadata
FRACTION, at_least, above = _FRACTION, _ge, _gt
# every int / float field of the config tree (dotted for sections); `validate` checks them all and a
# test makes sure a new numeric field cannot be added without a range
RANGES: dict[str, Range] = {
    "bn_momentum": Range(0.0, 1.0, lo_open=True, optional=True),
    "n1": _ge(1),
    "m1": _ge(1, optional=True),
    "imb_ratio_l": _ge(1, hint="; use --reverse-u for a reversed unlabeled profile"),
    "imb_ratio_u": _ge(1, hint="; use --reverse-u for a reversed unlabeled profile"),
    "test_per_class": _ge(1, optional=True),
    "max_eval_samples": _ge(1, optional=True),
    "image_size": _ge(8),
    "input_size": _ge(8, optional=True),
    "num_workers": _ge(0),
    "steps": _ge(1),
    "batch_size": _ge(1),
    "mu": _ge(1),
    "lr": _gt(0),
    "warmup_steps": _ge(0),
    "layer_decay": Range(0.0, 1.0, lo_open=True, optional=True),
    "head_lr_scale": _gt(0),
    "lora_rank": _ge(0, hint="; 0 turns LoRA off"),
    "lora_alpha": _gt(0),
    "lora_dropout": Range(0.0, 1.0, hi_open=True),
    "momentum": Range(0.0, 1.0, hi_open=True),
    "weight_decay": _ge(0),
    "ema_decay": Range(0.0, 1.0, hi_open=True),
    "eval_every": _ge(1),
    "eval_batch_size": _ge(1),
    "checkpoint_every": _ge(1),
    "keep_checkpoints": _ge(0, hint="; 0 keeps every checkpoint"),
    "log_every": _ge(1),
    "seed": Range(0, 2**32 - 1),  # numpy's seed range
}


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


def _coerce_compile(value: Any, key: str) -> bool | str:
    """`compile`: a boolean (true means "default") or a torch.compile mode, as one value."""
    text = str(value).strip().lower() if isinstance(value, (str, bool)) else None
    if text in ("0", "false", "no", "off", "none", "null"):
        return False
    if text in ("1", "true", "yes", "on"):
        return "default"
    if text in COMPILE_MODES:
        return text
    raise UserError(
        f"config key '{key}': {value!r} is not one of false, true, {', '.join(COMPILE_MODES)}"
    )


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise a one-line UserError."""
    if key == "compile":
        return _coerce_compile(value, key)
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
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):  # 1e400 overflows int
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
    if isinstance(cfg, TrainConfig):  # the algorithms' sections are keys; the holder is not
        types = {k: v for k, v in types.items() if k != "sections"} | SECTIONS
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if full == "output_dir" and isinstance(value, str) and not value.strip():
            raise UserError(
                "output_dir is empty (--output-dir ''); give a folder, or leave the flag out for "
                "the default runs/<dataset>_<algorithm>_<backbone>_seed<N>"
            )
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
            setattr(cfg, key, _path_value(_coerce(value, types[key], full), full))


# fields that are local paths: `~` is expanded (a quoted '~/x' reaches us unexpanded)
PATH_KEYS = ("output_dir", "resume", "init_from", "dataset", "pretrained_file")


def _path_value(value: Any, key: str) -> Any:
    if key not in PATH_KEYS or not isinstance(value, str):
        return value
    return os.path.expanduser(value) if value.startswith("~") else value


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
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        utf16 = path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise UserError(
            f"recipe '{path}' is not UTF-8 text{' (it is UTF-16, as Windows PowerShell writes)' if utf16 else ''}; "
            "save it as UTF-8"
        ) from None
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


def numeric_fields(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Dotted names of every int / float field (optional ones too) of a config dataclass tree."""
    out = []
    types = _field_types(cls)
    if cls is TrainConfig:
        types = {k: v for k, v in types.items() if k != "sections"} | SECTIONS
    for name, typ in types.items():
        if dataclasses.is_dataclass(typ):
            out += numeric_fields(typ, f"{prefix}{name}.")
        elif typ in (int, float) or (set(get_args(typ)) - {type(None)}) & {int, float}:
            out.append(prefix + name)
    return out


def get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every choice, every numeric range (RANGES) and the plug-ins' checks (VALIDATORS: the
    algorithm name); raise one UserError line naming the field."""
    for check in VALIDATORS:
        check(cfg)
    for key, options in CHOICES.items():
        if getattr(cfg, key) not in options:
            names = [str(o) for o in options if o is not None]
            raise UserError(
                f"{key} '{getattr(cfg, key)}' is not one of {', '.join(names)}"
                f"{_suggest(str(getattr(cfg, key)), names)}"
            )
    for key, rng in RANGES.items():
        value = get_dotted(cfg, key)
        if not rng.contains(value):
            raise UserError(f"{key} must be {rng.describe()} (got {rng.fmt(value)}){rng.hint}")
    if cfg.nesterov and cfg.momentum == 0:
        raise UserError(
            "nesterov needs momentum > 0 (got momentum 0); pass --no-nesterov or a momentum"
        )
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


def yaml_problem(e: yaml.YAMLError) -> str:
    """`line 3: could not find expected ':'` from a PyYAML error, on one line."""
    mark = getattr(e, "problem_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).split())
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


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
        if f.name == "sections" or dataclasses.is_dataclass(typ):
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
        elif f.name == "compile":
            parser.add_argument(
                flag,
                nargs="?",
                const="default",
                default=None,
                metavar="MODE",
                help="torch.compile the training step with inductor; MODE: "
                f"{' | '.join(COMPILE_MODES)} (default: off)",
            )
            parser.add_argument("--no-compile", dest="compile", action="store_const", const="false")
        elif typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            default = f.default if f.default is not dataclasses.MISSING else "{}"
            options = CHOICES.get(f.name) or (
                HELP_CHOICES[f.name]() if f.name in HELP_CHOICES else None
            )
            shown = "|".join(str(o) for o in options if o is not None) if options else None
            parser.add_argument(
                flag, default=None, metavar=shown or "X", help=f"(default: {default})"
            )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    flags = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if f.name != "sections" and getattr(args, f.name, None) is not None
    }
    return build_config(args.recipe, flags, args.set)


def dumps(cfg: TrainConfig) -> str:
    """The config as YAML that `yaml_load` reads back to the same config.

    PyYAML's dumper quotes every string a YAML 1.1 reader would take for something else ('no', 'on',
    '1e-3'), which is a superset of what `yaml_load`'s YAML 1.2 booleans resolve, so the round trip is
    exact and other YAML readers see the same values.
    """
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _experiment_dict(cfg: TrainConfig, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    d = cfg.to_dict()
    for key in (*RUNTIME_KEYS, *ignore):
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return d


def fingerprint(cfg: TrainConfig, ignore: tuple[str, ...] = ()) -> str:
    """A stable JSON of the experiment for comparing runs.

    RUNTIME_KEYS (options that do not change the results) are dropped, and so are the `ignore` keys
    (dotted for sections), e.g. `ignore=("steps",)` to let a resume raise the step budget.
    """
    return json.dumps(_experiment_dict(cfg, ignore), sort_keys=True)


def config_diff(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two experiments (RUNTIME_KEYS and `ignore` left out)."""

    def walk(x: dict, y: dict, prefix: str) -> list[str]:
        out = []
        for k in sorted(set(x) | set(y)):
            u, v = x.get(k), y.get(k)
            if isinstance(u, dict) and isinstance(v, dict) and k in SECTIONS:
                out += walk(u, v, f"{prefix}{k}.")
            elif u != v:
                out.append(prefix + k)
        return out

    return walk(_experiment_dict(a, ignore), _experiment_dict(b, ignore), "")
