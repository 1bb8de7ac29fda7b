"""The zoo: `model_cards/index.json` lists every checkpoint this project trained, one entry per export.

Entries are only ever written by `bacon-zoo zoo add EXPORT_DIR` (or `push --add-to-zoo`), from the
export's own summary and config, so the table holds real runs only. The index is read on demand, never
at `import bacon_zoo`: a zoo name (`wrn28_2.bacon_c10lt_n1500m3000g100_s0`) given to
`bacon_zoo.hub.load_pretrained` / `bacon-zoo predict` is looked up here (`hub_id_of`) and loaded through
timm's public `hf-hub:` path; timm's own registry is never modified. `pretrained_cfg_overlay(name)`
gives the same through plain timm:
`timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=overlay)`.

Where the index lives: the bundled one ships inside the package (`bacon_zoo.model_cards`, the checkout's
`model_cards/`). From a source checkout `zoo add` writes there; an installed copy never writes into
site-packages: it writes `$BACON_ZOO_HOME/model_cards/index.json` (default: the user data folder,
`~/.local/share/bacon-zoo` on Linux, `$XDG_DATA_HOME` honoured), and the zoo it lists is the bundled
entries plus those. `BACON_ZOO_INDEX` names one index file to read and write instead of both (tests,
private zoos).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write_text, check_inside, read_json, write_json
from bacon_zoo.hub.names import (
    arch_of,
    check_model_name,
    is_tag,
    setting_string,
)
from bacon_zoo.run import LEGACY_PROTOCOL, PROTOCOL
from bacon_zoo.run.exportdir import ExportDir
from bacon_zoo.run.layout import ANALYSIS, PLOT

INDEX_ENV = "BACON_ZOO_INDEX"
HOME_ENV = "BACON_ZOO_HOME"
INDEX_FORMAT = 1
NOTE = "top-1: best evaluation over training (the paper's convention); balanced, tail: at that evaluation."
# pretrained_cfg keys copied from an export's config.json into an entry
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


def bundled_index() -> Path:
    """The index shipped with the package (in a checkout: its `model_cards/index.json`)."""
    from bacon_zoo.config import package_data

    return package_data("model_cards") / "index.json"


def _in_checkout(bundled: Path) -> bool:
    """The cards folder sits beside the package (a source checkout), not inside it (an installed copy)."""
    return bundled.resolve().parent.parent != Path(__file__).resolve().parents[1]


def user_home() -> Path:
    """`$BACON_ZOO_HOME`, else the platform's per-user data folder + `bacon-zoo`."""
    if env := os.environ.get(HOME_ENV):
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "bacon-zoo"


def index_path() -> Path:
    """The index `zoo add` writes: `$BACON_ZOO_INDEX`; else the checkout's `model_cards/index.json`
    when running from one; else `user_home()/model_cards/index.json` (never site-packages)."""
    if env := os.environ.get(INDEX_ENV):
        return Path(env)
    bundled = bundled_index()
    return bundled if _in_checkout(bundled) else user_home() / "model_cards" / "index.json"


def load_index(path: Path | None = None) -> dict:
    """One index file (`path`), or with no path the zoo as listed: the bundled entries plus the
    user's (`index_path()`; the user's entry wins a name), or only `$BACON_ZOO_INDEX` when set."""
    if path is None:
        own = index_path()
        bundled = bundled_index()
        if os.environ.get(INDEX_ENV) or own == bundled:
            return load_index(own)
        merged = {e["name"]: e for e in load_index(bundled)["models"] if "name" in e}
        merged |= {e["name"]: e for e in load_index(own)["models"] if "name" in e}
        return {"format": INDEX_FORMAT, "models": sorted(merged.values(), key=lambda e: e["name"])}
    if not path.is_file():
        return {"format": INDEX_FORMAT, "models": []}
    index = read_json(path, "the zoo index", "fix or restore it")
    if not isinstance(index, dict) or not isinstance(index.get("models"), list):
        raise UserError(f'{path} must be {{"format": 1, "models": [...]}}; fix or restore it')
    return index


def save_index(index: dict, path: Path | None = None) -> None:
    """Write atomically, entries sorted by name."""
    index["models"] = sorted(index["models"], key=lambda e: e["name"])
    write_json(path or index_path(), index)


def find(name: str, path: Path | None = None) -> dict | None:
    return next((e for e in load_index(path)["models"] if e.get("name") == name), None)


def hub_id_of(name: str, path: Path | None = None) -> str:
    """The Hub repo of zoo entry `name`, or a one-line error saying why it can't be loaded."""
    entry = find(name, path)
    if entry is None:
        raise UserError(
            f"'{name}' is not in the zoo ({path or 'see `bacon-zoo zoo`'}); give an "
            "export folder, local-dir:PATH or hf-hub:ORG/NAME"
        )
    if not entry.get("hub_id"):
        raise UserError(
            f"zoo entry '{name}' was trained here but never pushed, so it has no weights to "
            "download; export the run and load the folder, or push it (`bacon-zoo push`)"
        )
    return str(entry["hub_id"])


def pretrained_cfg_overlay(name: str, path: Path | None = None) -> dict[str, Any]:
    """timm's `pretrained_cfg_overlay` that loads zoo entry `name` from its Hub repo, for
    `timm.create_model(entry['architecture'], pretrained=True, pretrained_cfg_overlay=...,
    num_classes=..., **entry['model_args'])` in plain timm."""
    entry = find(name, path) or {}
    cfg = dict(entry.get("pretrained_cfg") or {})
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return cfg | {"hf_hub_id": hub_id_of(name, path), "url": None, "file": None}


# ---------------------------------------------------------------------------------------------
# adding an export


def _read(export_dir: Path) -> dict[str, Any]:
    fix = "run `bacon-zoo export RUN_DIR` again"
    export = ExportDir(export_dir)
    if not export.recipe.is_file() or not export.card.is_file():
        raise UserError(
            f"{export_dir} has no {export.recipe.name} / {export.card.name}; it is not a complete "
            f"export: {fix}"
        )
    what = f"{export_dir} is not a complete export; {fix}"
    return {
        "net": export.read_net(what),
        "summary": export.read_summary(what),
        "config": export.read_timm_config(what),
        "recipe": export.read_recipe(),
        "history": export.read_history(),
    }


def _entry_name(net: dict, hub_id: str | None, tag: str | None) -> str:
    arch = arch_of(net.get("backbone") or net["architecture"])
    if tag:
        if not is_tag(tag):
            raise UserError(
                f"--tag '{tag}' must be lower-case letters, digits and _ (e.g. bacon_c10lt_n1500m3000g100_s0)"
            )
        return f"{arch}.{tag}"
    repo_name = hub_id.rsplit("/", 1)[-1] if hub_id else ""
    if repo_name.startswith(f"{arch}.") and is_tag(repo_name.split(".", 1)[1]):
        return repo_name
    return net.get("name") or f"{arch}.bacon_zoo"


def _copy_card(
    export_dir: Path, cards_dir: Path, name: str, hub_id: str | None, ours: bool = False
) -> Path:
    """model_cards/<name>.md (+ model_cards/<name>/ for its images), links rewritten to match. The card
    is rebuilt for `hub_id` unless it was edited by hand (then it is copied as it is). Both paths must
    lie inside `cards_dir`; existing ones are replaced only when `ours` (the entry's own, from an
    earlier `zoo add`), never files someone else put there."""
    from bacon_zoo.hub.card import build_card

    export = ExportDir(export_dir)
    assets = check_inside(cards_dir / name, cards_dir, "the card folder")
    card = check_inside(cards_dir / f"{name}.md", cards_dir, "the card")
    if not ours and (assets.exists() or card.exists()):
        raise UserError(
            f"{card} or {assets} already exists but no zoo entry '{name}' wrote it; move it away "
            "or pass --tag to name this model otherwise"
        )
    if assets.is_dir() and not assets.is_symlink():
        shutil.rmtree(assets)
    text = (
        str(build_card(export_dir, hub_id=hub_id))
        if hub_id and not export.card_edited()
        else export.card.read_text()
    )
    copied = []
    if export.plot.is_file():
        assets.mkdir(parents=True, exist_ok=True)
        shutil.copy2(export.plot, assets / PLOT)
        copied.append(PLOT)
    if (export_dir / ANALYSIS).is_dir():
        shutil.copytree(export_dir / ANALYSIS, assets / ANALYSIS)
        copied.append(f"{ANALYSIS}/")
    for rel in copied:
        text = text.replace(f"]({rel}", f"]({name}/{rel}")
    card.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(card, text)
    return card


def entry_note(entry: dict) -> str:
    """What a reader of the zoo table must know before trusting a number (empty when nothing)."""
    notes = []
    if (entry.get("contrastive") or {}).get("engaged") is False:
        notes.append("BaCon term never engaged")
    if entry.get("twin_identical"):
        notes.append(f"BaCon term had no effect: scores exactly as {entry['twin_identical']}")
    if entry.get("protocol", LEGACY_PROTOCOL) != PROTOCOL:
        notes.append(f"earlier network (protocol {entry.get('protocol', LEGACY_PROTOCOL)})")
    return "; ".join(notes)


def add(
    export_dir: str | Path,
    hub_id: str | None = None,
    tag: str | None = None,
    pushed: bool = False,
    path: Path | None = None,
) -> dict:
    """Add (or update) the index entry of an export and copy its card; returns the entry."""
    from bacon_zoo.hub.card import contrastive_summary, precision_of, protocol_of
    from bacon_zoo.hub.names import needs_bacon_zoo

    export_dir = Path(export_dir)
    if pushed and not hub_id:
        raise UserError("status 'pushed' needs --hub-id ORG/NAME (the repo it was pushed to)")
    if hub_id and not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id.removeprefix("hf-hub:")):
        raise UserError(f"--hub-id '{hub_id}' is not a repo id; use ORG/NAME")
    hub_id = check_model_name(hub_id.removeprefix("hf-hub:"), "--hub-id") if hub_id else None
    f = _read(export_dir)
    net, summary, config, recipe = f["net"], f["summary"], f["config"], f["recipe"]
    path = path or index_path()
    index = load_index(path)
    name = check_model_name(_entry_name(net, hub_id, tag), f"the model name of {export_dir}")
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
        "needs_bacon_zoo": needs_bacon_zoo(net["architecture"]),
        "algorithm": recipe.get("algorithm"),
        "dataset": recipe.get("dataset"),
        "setting": setting_string(recipe),
        "seed": recipe.get("seed"),
        "steps": recipe.get("steps"),
        "batch_size": recipe.get("batch_size"),
        "mu": recipe.get("mu"),
        "num_processes": summary.get("num_processes"),
        "protocol": protocol_of(recipe),
        "precision": precision_of(summary),
        "top1": summary.get("best_top1", best.get("top1")),
        "balanced": best.get("balanced_acc"),
        "tail": best.get("tail"),
        "best_step": summary.get("best_step"),
        "last_top1": last.get("top1"),
        "contrastive": contrastive_summary(recipe, f["history"]),
        "status": "pushed" if pushed else "trained here",
        "card": "",
        "model_args": dict(config.get("model_args") or {}),
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
    entry["note"] = entry_note(entry)
    card = _copy_card(export_dir, path.parent, name, entry["hub_id"], ours=old is not None)
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
        "note",
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
            entry_note(e) or "-",
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
