"""The zoo: `model_cards/index.json` lists every checkpoint this project trained, one entry per export.

Entries are only ever written by `bacon-zoo zoo add EXPORT_DIR` (or `push --add-to-zoo`), from the
export's own summary and config, so the table holds real runs only. Entries with status "pushed" become
timm pretrained tags at `import bacon_zoo`: `timm.create_model("wrn28_2.bacon_cifar10_lt",
pretrained=True)` downloads the entry's Hub repo the timm way.

How a tag is added to an existing architecture: timm's `register_model(fn)` registers every tag found in
`default_cfgs[fn.__name__]` of the entrypoint's module (a `DefaultCfg`, as `generate_default_cfgs`
builds). `register_pretrained_tag` appends the new tag (never as the default) to a copy of that
`DefaultCfg` and calls `register_model` on the same entrypoint again: timm clears the old entries and
re-registers all tags, so `list_pretrained`, `is_model_pretrained`, `get_pretrained_cfg` and
`create_model("arch.tag", pretrained=True)` see it; only public timm API is used.
`BACON_ZOO_INDEX` points at another index file (tests, private zoos).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError

INDEX_ENV = "BACON_ZOO_INDEX"
STATUSES = ("trained here", "pushed")
INDEX_FORMAT = 1
NOTE = "top-1: best evaluation over training (the paper's convention); balanced, tail: at that evaluation."
_TAG = re.compile(r"[a-z0-9][a-z0-9_]*")
# pretrained_cfg keys copied from an export's config.json into a zoo tag
_CFG_KEYS = (
    "input_size",
    "mean",
    "std",
    "crop_pct",
    "crop_mode",
    "interpolation",
    "num_classes",
    "license",
)


def index_path() -> Path:
    """`$BACON_ZOO_INDEX`, else `model_cards/index.json` next to the package."""
    env = os.environ.get(INDEX_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "model_cards" / "index.json"


def load_index(path: Path | None = None) -> dict:
    path = path or index_path()
    if not path.is_file():
        return {"format": INDEX_FORMAT, "models": []}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}); fix or restore it") from None
    if not isinstance(index, dict) or not isinstance(index.get("models"), list):
        raise UserError(f'{path} must be {{"format": 1, "models": [...]}}; fix or restore it')
    return index


def save_index(index: dict, path: Path | None = None) -> None:
    """Write atomically (temp file + rename), entries sorted by name."""
    path = path or index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    index["models"] = sorted(index["models"], key=lambda e: e["name"])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# adding an export


def _read(export_dir: Path) -> dict[str, Any]:
    import yaml

    from bacon_zoo.hub.export import NET_CONFIG, read_json

    fix = f"{export_dir} is not a complete export; run `bacon-zoo export RUN_DIR` again"
    if not (export_dir / "recipe.yaml").is_file() or not (export_dir / "README.md").is_file():
        raise UserError(f"{export_dir} has no recipe.yaml / README.md; {fix.split('; ', 1)[1]}")
    return {
        "net": read_json(export_dir / NET_CONFIG, "the BaconNet description", fix),
        "summary": read_json(export_dir / "summary.json", "the run summary", fix),
        "config": read_json(export_dir / "config.json", "the timm config", fix),
        "recipe": yaml.safe_load((export_dir / "recipe.yaml").read_text()) or {},
    }


def _entry_name(net: dict, hub_id: str | None, tag: str | None) -> str:
    arch = net["architecture"]
    if tag:
        if not _TAG.fullmatch(tag):
            raise UserError(
                f"--tag '{tag}' must be lower-case letters, digits and _ (e.g. bacon_cifar10_lt)"
            )
        return f"{arch}.{tag}"
    repo_name = hub_id.rsplit("/", 1)[-1] if hub_id else ""
    if repo_name.startswith(f"{arch}.") and _TAG.fullmatch(repo_name.split(".", 1)[1]):
        return repo_name
    return net.get("name") or f"{arch}.bacon_zoo"


def _copy_card(export_dir: Path, cards_dir: Path, name: str, hub_id: str | None) -> Path:
    """model_cards/<name>.md (+ model_cards/<name>/ for its images), links rewritten to match."""
    from bacon_zoo.hub.card import build_card

    assets = cards_dir / name
    shutil.rmtree(assets, ignore_errors=True)
    text = (
        str(build_card(export_dir, hub_id=hub_id))
        if hub_id
        else (export_dir / "README.md").read_text()
    )
    copied = []
    if (export_dir / "per_class_accuracy.png").is_file():
        assets.mkdir(parents=True, exist_ok=True)
        shutil.copy2(export_dir / "per_class_accuracy.png", assets / "per_class_accuracy.png")
        copied.append("per_class_accuracy.png")
    if (export_dir / "analysis").is_dir():
        shutil.copytree(export_dir / "analysis", assets / "analysis")
        copied.append("analysis/")
    for rel in copied:
        text = text.replace(f"]({rel}", f"]({name}/{rel}")
    card = cards_dir / f"{name}.md"
    card.write_text(text)
    return card


def add(
    export_dir: str | Path,
    hub_id: str | None = None,
    tag: str | None = None,
    pushed: bool = False,
    path: Path | None = None,
) -> dict:
    """Add (or update) the index entry of an export and copy its card; returns the entry."""
    from bacon_zoo.hub.card import setting_string

    export_dir = Path(export_dir)
    if pushed and not hub_id:
        raise UserError("status 'pushed' needs --hub-id ORG/NAME (the repo it was pushed to)")
    if hub_id and not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id.removeprefix("hf-hub:")):
        raise UserError(f"--hub-id '{hub_id}' is not a repo id; use ORG/NAME")
    hub_id = hub_id.removeprefix("hf-hub:") if hub_id else None
    f = _read(export_dir)
    net, summary, config, recipe = f["net"], f["summary"], f["config"], f["recipe"]
    path = path or index_path()
    index = load_index(path)
    name = _entry_name(net, hub_id, tag)
    best, last = summary.get("best") or {}, summary.get("last") or {}
    pretrained_cfg = {
        k: config["pretrained_cfg"][k] for k in _CFG_KEYS if k in config["pretrained_cfg"]
    }
    pretrained_cfg["label_names"] = config.get("label_names") or net.get("class_names")
    entry = {
        "name": name,
        "hub_id": hub_id,
        "backbone": recipe.get("backbone"),
        "architecture": net["architecture"],
        "algorithm": recipe.get("algorithm"),
        "dataset": recipe.get("dataset"),
        "setting": setting_string(recipe),
        "seed": recipe.get("seed"),
        "steps": recipe.get("steps"),
        "batch_size": recipe.get("batch_size"),
        "mu": recipe.get("mu"),
        "num_processes": summary.get("num_processes"),
        "top1": summary.get("best_top1", best.get("top1")),
        "balanced": best.get("balanced_acc"),
        "tail": best.get("tail"),
        "best_step": summary.get("best_step"),
        "last_top1": last.get("top1"),
        "status": "pushed" if pushed else "trained here",
        "card": "",
        "model_args": {k: v for k, v in (net.get("backbone_kwargs") or {}).items()},
        "pretrained_cfg": pretrained_cfg,
    }
    old = next((e for e in index["models"] if e["name"] == name), None)
    if old is not None:
        same = all(
            old.get(k) == entry[k]
            for k in ("architecture", "algorithm", "dataset", "setting", "seed")
        )
        if not same:
            raise UserError(
                f"the zoo already has '{name}' from another run ({old.get('algorithm')}, "
                f"{old.get('dataset')}, {old.get('setting')}, seed {old.get('seed')}); pass --tag to name this one"
            )
        if not pushed and old.get("status") == "pushed" and old.get("hub_id") == hub_id:
            entry["status"] = "pushed"
        if hub_id is None:
            entry["hub_id"] = old.get("hub_id")
            entry["status"] = old.get("status", entry["status"])
    card = _copy_card(export_dir, path.parent, name, entry["hub_id"])
    entry["card"] = os.path.relpath(card, path.parent.parent)  # model_cards/<name>.md
    index["models"] = [e for e in index["models"] if e["name"] != name] + [entry]
    save_index(index, path)
    return entry


# ---------------------------------------------------------------------------------------------
# the table


def _fmt(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, float) else ("-" if x is None else str(x))


def format_table(index: dict, markdown: bool = False) -> str:
    """The zoo as a text (or Markdown) table; top-1 is the best evaluation, balanced/tail at that step."""
    entries = index.get("models") or []
    if not entries:
        return "The zoo is empty: add an export with `bacon-zoo zoo add EXPORT_DIR [--hub-id ORG/NAME]`."
    header = [
        "model",
        "hub id",
        "algorithm",
        "setting",
        "budget",
        "top-1",
        "balanced",
        "tail",
        "status",
    ]
    rows = [
        [
            e["name"],
            e.get("hub_id") or "-",
            e.get("algorithm") or "-",
            f"{e.get('dataset')} {e.get('setting')}",
            f"{e.get('steps')} x {e.get('batch_size')}"
            + (f" x {e['num_processes']}p" if (e.get("num_processes") or 1) > 1 else ""),
            _fmt(e.get("top1")),
            _fmt(e.get("balanced")),
            _fmt(e.get("tail")),
            e.get("status") or "-",
        ]
        for e in entries
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows] + ["", NOTE])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join([line.rstrip() for line in lines + [fmt.format(*r) for r in rows]] + [NOTE])


# ---------------------------------------------------------------------------------------------
# timm pretrained tags


def register_pretrained_tag(model_tag: str, cfg: dict[str, Any]) -> None:
    """Add `arch.tag` to timm's registry as a (non-default) pretrained cfg: the arch's default cfg
    with `cfg` (e.g. hf_hub_id, num_classes, mean/std, label_names) on top. See the module docstring."""
    import dataclasses
    from collections import deque

    from timm.models import (
        DefaultCfg,
        PretrainedCfg,
        get_arch_pretrained_cfgs,
        get_pretrained_cfg,
        is_model,
        model_entrypoint,
        register_model,
        split_model_name_tag,
    )

    arch, tag = split_model_name_tag(model_tag)
    if not tag or not is_model(arch):
        raise ValueError(f"'{model_tag}' is not ARCH.TAG with a registered timm architecture ARCH")
    fn = model_entrypoint(arch)
    if fn.__name__ != arch:
        raise ValueError(f"'{arch}' is an alias in timm; use its current name")
    module = sys.modules[fn.__module__]
    if not isinstance(getattr(module, "default_cfgs", None), dict):
        module.default_cfgs = {}
    current = module.default_cfgs.get(arch)
    if isinstance(current, DefaultCfg):
        default = DefaultCfg(deque(current.tags), dict(current.cfgs), current.is_pretrained)
    elif isinstance(current, dict):  # old-style single cfg per architecture
        default = DefaultCfg(deque([""]), {"": PretrainedCfg(**current)})
    else:  # not declared in its module: rebuild from what the registry holds
        default = DefaultCfg()
        for full, pcfg in get_arch_pretrained_cfgs(arch).items():
            t = split_model_name_tag(full)[1]
            default.tags.append(t)
            default.cfgs[t] = pcfg
    base = get_pretrained_cfg(arch) or PretrainedCfg()
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields}
    new = dataclasses.replace(
        base,
        url=None,
        file=None,
        state_dict=None,
        hf_hub_filename=None,
        custom_load=False,
        **overrides,
    )
    if tag not in default.cfgs:
        default.tags.append(tag)
    default.cfgs[tag] = new
    default.is_pretrained = default.is_pretrained or bool(new.has_weights)
    module.default_cfgs[arch] = default
    with warnings.catch_warnings():  # "Overwriting <arch> in registry": intended, same entrypoint
        warnings.simplefilter("ignore")
        register_model(fn)


def register_zoo_tags(path: Path | None = None) -> list[str]:
    """Register a timm tag for every "pushed" entry of the index; returns the names registered.

    Called at `import bacon_zoo`, so it never raises: a broken index or entry is a warning.
    """
    import timm

    try:
        entries = load_index(path).get("models", [])
    except UserError as e:
        warnings.warn(f"bacon-zoo: zoo index not loaded: {e}", stacklevel=2)
        return []
    done = []
    for e in entries:
        if e.get("status") != "pushed" or not e.get("hub_id"):
            continue
        name = e.get("name", "")
        if e.get("model_args"):  # a tag can't carry constructor args; hf-hub:ORG/NAME can
            continue
        try:
            existing = (
                timm.models.get_pretrained_cfg(name) if timm.is_model(name.split(".")[0]) else None
            )
        except RuntimeError:
            existing = None
        if existing is not None and existing.hf_hub_id == e["hub_id"]:
            done.append(name)
            continue
        cfg = dict(e.get("pretrained_cfg") or {})
        cfg |= {
            "hf_hub_id": e["hub_id"],
            "description": f"{e.get('algorithm')} on {e.get('dataset')}-LT ({e.get('setting')}), bacon-zoo",
            "paper_ids": "arXiv:2403.12986",
        }
        try:
            register_pretrained_tag(name, cfg)
            done.append(name)
        except (ValueError, TypeError, KeyError) as err:
            warnings.warn(
                f"bacon-zoo: zoo entry '{name}' not registered in timm: {err}", stacklevel=2
            )
    return done
