"""A study's grid, as pure functions: parse specs, expand (grid x variants x seeds) into named cells, shard.

Vocabulary (the same in YAML and on the command line):

- an *axis* maps one config key to a list of values: `backbone: [wrn28_2, resnet18_cifar]`, or
  `--grid backbone=wrn28_2,resnet18_cifar`. Keys may be dotted (`bacon.rns`), and an axis may tie several
  keys to one value with `+`: `imb_ratio_l+imb_ratio_u: [100, 150]` sets both ratios in every cell.
- *variants* are named bundles of settings and form one more axis called `variant` (an ablation:
  `no_rns: {algorithm: bacon, bacon.rns: false}`); `--grid variant=bacon,no_rns` runs a subset of them.
- *exclude* drops cells matching all keys of an entry (`{backbone: wrn28_2, pretrained: true}`: WRNs have
  no ImageNet weights).
- *seeds* repeat every grid point.

Values are parsed like `--set` (YAML scalars). Cells come in a fixed order (seed outermost, so a partial
study has every grid point at the first seed; then axes sorted by key, values in the order given) and
`--shard i/n` takes every n-th, so n shards are disjoint and together complete.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from bacon_zoo.config import yaml_load
from bacon_zoo.errors import UserError

VARIANT = "variant"
STUDY_KEYS = ("grid", "variants", "exclude", "seeds")
FORBIDDEN = {
    "seed": "use --seeds (or `seeds:` in the study) instead of a seed axis",
    "output_dir": "every cell gets its own run dir under STUDY_DIR/cells",
    "resume": "cells always resume; rerun the study to continue it",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
MAX_NAME = 160


@dataclass
class StudySpec:
    """What a study varies. `grid` keeps the order axes were given in (reports use it)."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])

    def axes(self) -> dict[str, list[Any]]:
        """Every axis, the variant axis (when there are variants) last."""
        axes = dict(self.grid)
        if self.variants and VARIANT not in axes:
            axes[VARIANT] = list(self.variants)
        return axes

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": self.axes(),
            "variants": self.variants,
            "exclude": self.exclude,
            "seeds": self.seeds,
        }


@dataclass
class Cell:
    """One training run: a grid point at one seed, and the `--set` items that make it."""

    name: str
    values: dict[str, Any]  # axis -> value (the variant axis holds the variant's name)
    seed: int
    sets: list[str]  # key=value items for `bacon-zoo train --set`

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values, "seed": self.seed, "sets": self.sets}


# ---------------------------------------------------------------------------------------------
# parsing


def split_top_level(raw: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets and quotes, so `{a: 1, b: 2}` stays one value."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_value(raw: str) -> Any:
    """A value as `--set` reads it: a YAML 1.2 scalar (or flow collection; `no` stays "no"), else the
    raw string."""
    try:
        return yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """`["backbone=a,b", "bacon.rns=true,false"]` -> {"backbone": ["a", "b"], "bacon.rns": [True, False]}."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise UserError(
                f"--grid expects key=v1,v2,..., got '{spec}' (e.g. --grid algorithm=abc,bacon)"
            )
        if key in grid:
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid")
        value = parse_value(raw) if raw.strip().startswith("[") else None
        values = (
            value if isinstance(value, list) else [parse_value(v) for v in split_top_level(raw)]
        )
        grid[key] = values
    return grid


def parse_seeds(raw: str | int | list | None) -> list[int]:
    """`"0,1,2"`, `"0-4"` (inclusive), `3` or `[0, 1]` -> a list of distinct ints."""
    if raw is None:
        return [0]
    items = raw if isinstance(raw, list) else split_top_level(str(raw))
    seeds: list[int] = []
    for item in items:
        text = str(item).strip()
        try:
            if re.fullmatch(r"\d+-\d+", text):
                lo, hi = map(int, text.split("-"))
                seeds += list(range(lo, hi + 1))
            else:
                seeds.append(int(text))
        except ValueError:
            raise UserError(f"seeds must be integers like 0,1,2 or 0-4, got '{raw}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct integers like 0,1,2, got '{raw}'")
    return seeds


def parse_shard(raw: str | None) -> tuple[int, int]:
    """`"i/n"` (0-based i) -> (i, n); None -> (0, 1)."""
    if raw is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(raw))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(
            f"--shard expects i/n with 0 <= i < n, got '{raw}' (e.g. --shard 0/4, or "
            "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-3)"
        )
    return int(m.group(1)), int(m.group(2))


def parse_exclude(raw: str) -> dict[str, Any]:
    """`"backbone=wrn28_2,pretrained=true"` -> {"backbone": "wrn28_2", "pretrained": True}."""
    entry = {}
    for item in split_top_level(raw):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"--exclude expects key=value[,key=value], got '{raw}' (e.g. backbone=wrn28_2,pretrained=true)"
            )
        entry[key.strip()] = parse_value(value)
    return entry


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"bacon": {"rns": False}} -> {"bacon.rns": False}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "backbone_kwargs":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def spec_from_recipe(study: Any, where: str = "recipe") -> StudySpec:
    """Read a recipe's `study:` block (see the module docstring)."""
    if study is None:
        return StudySpec()
    if not isinstance(study, dict):
        raise UserError(f"{where}: `study:` must be a mapping with keys {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)} in `study:` (allowed: {', '.join(STUDY_KEYS)}; "
            "settings shared by every cell go at the top level of the recipe)"
        )
    grid = study.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{where}: `study.grid` must map keys to non-empty lists of values")
    variants = study.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise UserError(
            f"{where}: `study.variants` must map names to settings, e.g. no_rns: {{bacon.rns: false}}"
        )
    exclude = study.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
        raise UserError(f"{where}: `study.exclude` must be a list of mappings axis: value")
    return StudySpec(
        grid={str(k): list(v) for k, v in grid.items()},
        variants={str(k): _flatten(v) for k, v in variants.items()},
        exclude=[dict(e) for e in exclude],
        seeds=parse_seeds(study.get("seeds")),
    )


def merge_cli(
    spec: StudySpec,
    grid: dict[str, list[Any]] | None = None,
    seeds: list[int] | None = None,
    exclude: list[dict[str, Any]] | None = None,
) -> StudySpec:
    """Command-line axes replace same-named recipe axes (`variant=a,b` picks variants); others add."""
    axes = dict(spec.grid)
    variants = dict(spec.variants)
    for key, values in (grid or {}).items():
        if key == VARIANT and not spec.variants:
            raise UserError(
                "--grid variant=... picks among a recipe's `study: variants:`; this recipe has none "
                "(vary config keys directly, e.g. --grid bacon.rns=true,false)"
            )
        if key == VARIANT:
            unknown = [v for v in values if str(v) not in spec.variants]
            if unknown:
                raise UserError(
                    f"unknown variant(s) {', '.join(map(str, unknown))}; this study defines "
                    f"{', '.join(spec.variants)}"
                )
            variants = {str(v): spec.variants[str(v)] for v in values}
        else:
            axes[key] = values
    return StudySpec(
        grid=axes,
        variants=variants,
        exclude=spec.exclude + list(exclude or []),
        seeds=seeds if seeds is not None else spec.seeds,
    )


# ---------------------------------------------------------------------------------------------
# expansion


def axis_keys(axis: str) -> list[str]:
    """The config keys an axis sets: `imb_ratio_l+imb_ratio_u` -> both."""
    return [k.strip() for k in axis.split("+")]


def format_value(value: Any) -> str:
    """A value for a cell name: `true`, `0.1`, `wrn28_2`, `null`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def set_item(key: str, value: Any) -> str:
    """`key=value` that `--set` parses back to exactly `value`."""
    if isinstance(value, str) and "\n" not in value and parse_value(value) == value:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"  # JSON is YAML: quotes strings such as "true"


def cell_name(values: dict[str, Any], seed: int) -> str:
    """`algorithm=bacon__backbone=wrn28_2__seed=0`: axes sorted by key, unsafe characters as `-`."""
    parts = [f"{k}={format_value(values[k])}" for k in sorted(values)] + [f"seed={seed}"]
    name = _UNSAFE.sub("-", "__".join(parts)).strip(".")
    if len(name) > MAX_NAME:  # keep under filesystem limits; the hash keeps it unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 24]}__{digest}__seed={seed}"
    return name


def _validate(spec: StudySpec) -> None:
    axes = spec.axes()
    owner: dict[str, str] = {}
    for axis, values in axes.items():
        if not values:
            raise UserError(f"grid axis '{axis}' has no values")
        if len({format_value(v) for v in values}) != len(values):
            raise UserError(f"grid axis '{axis}' repeats a value: {values}")
        if axis == VARIANT and spec.variants:
            keys = sorted({k for v in values for k in spec.variants[str(v)]})
        else:
            keys = axis_keys(axis)
        for key in keys:
            root = key.split(".")[0]
            if root in FORBIDDEN:
                raise UserError(f"'{key}' can't vary in a study: {FORBIDDEN[root]}")
            if key in owner and owner[key] != axis:
                raise UserError(
                    f"config key '{key}' is set by two axes ('{owner[key]}' and '{axis}'); keep it in one"
                )
            owner[key] = axis
    for entry in spec.exclude:
        unknown = [k for k in entry if k not in axes]
        if unknown:
            raise UserError(
                f"exclude entry {entry} names '{unknown[0]}', which is not a grid axis "
                f"(axes: {', '.join(axes) or 'none'})"
            )


def _excluded(values: dict[str, Any], exclude: list[dict[str, Any]]) -> bool:
    return any(
        all(format_value(values[k]) == format_value(v) for k, v in entry.items())
        for entry in exclude
    )


def expand(spec: StudySpec) -> list[Cell]:
    """Every cell, seed outermost, then the product of the axes sorted by key."""
    _validate(spec)
    axes = spec.axes()
    keys = sorted(axes)
    cells: list[Cell] = []
    for seed in spec.seeds:
        for combo in itertools.product(*(axes[k] for k in keys)):
            values = dict(zip(keys, combo))
            if _excluded(values, spec.exclude):
                continue
            sets: list[str] = []
            for axis, value in values.items():
                if axis == VARIANT and spec.variants:
                    sets += [set_item(k, v) for k, v in spec.variants[str(value)].items()]
                else:
                    sets += [set_item(k, value) for k in axis_keys(axis)]
            cells.append(Cell(cell_name(values, seed), values, seed, sets))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(
            f"two cells get the same directory name '{dup}'; make the grid values distinct"
        )
    if not cells:
        raise UserError("the study has no cells: every grid point is excluded")
    return cells


def select_shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Every `count`-th cell from `index`: n shards are disjoint and cover every cell."""
    return cells[index::count]
