"""The export folder: a timm Hub repo plus what continued training needs, written and read here only.

    model.safetensors, config.json   timm's own files (`timm.models.save_for_hf`): the EMA classifier
    bacon_net.safetensors            the full BaconNet (both heads, projection), for `--init-from`
    bacon_net.json                   what the BaconNet is (backbone, heads, classes, sha256 of weights)
    recipe.yaml, split.json, data.json, metrics.jsonl, summary.json   copies of the run's records
    analysis/                        a copy of the run's analysis, when it has one
    per_class_accuracy.png, README.md   the plot and the model card
    export_manifest.json             every file above with its sha256 (`bacon_zoo.run.manifest`)

`write_folder` builds an export in a temporary sibling and renames it into place, so a failure never
leaves half an export; an export with changes the export did not write (a hand-edited card) is
replaced only with `force`, and then moved aside to `NAME.old-N`, never deleted.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import (
    read_json,
    read_jsonl,
    sha256_file,
    umask_modes,
    writable_or_error,
    write_json,
)
from bacon_zoo.run import manifest
from bacon_zoo.run.layout import (
    ANALYSIS,
    ANALYSIS_PAGE,
    ANALYSIS_SUFFIXES,
    CARD,
    COPIED,
    DATA,
    EXPORT_FORMAT,
    EXPORT_MANIFEST,
    METRICS,
    NET_CONFIG,
    NET_WEIGHTS,
    PLOT,
    RECIPE,
    SUMMARY,
    TIMM_CONFIG,
    TIMM_WEIGHTS,
)

if TYPE_CHECKING:
    from torch import nn

    from bacon_zoo.models import BaconNet

INCOMPLETE = "it is not a complete bacon-zoo export; export the run again"
# the paper every export's timm config cites
PAPER = {
    "paper_ids": "arXiv:2403.12986",
    "paper_name": "BaCon: Boosting Imbalanced Semi-supervised Learning via Balanced "
    "Feature-Level Contrastive Learning",
}


@dataclass(frozen=True)
class ExportDir:
    """One export folder. Paths are properties; readers raise one-line UserErrors."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ---- file names
    @property
    def card(self) -> Path:
        return self.path / CARD

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def plot(self) -> Path:
        return self.path / PLOT

    @property
    def net_config(self) -> Path:
        return self.path / NET_CONFIG

    @property
    def net_weights(self) -> Path:
        return self.path / NET_WEIGHTS

    @property
    def timm_config(self) -> Path:
        return self.path / TIMM_CONFIG

    @property
    def timm_weights(self) -> Path:
        return self.path / TIMM_WEIGHTS

    @property
    def analysis_page(self) -> Path:
        return self.path / ANALYSIS / ANALYSIS_PAGE

    def is_export(self) -> bool:
        """A bacon-zoo export (it describes its BaconNet), not just any folder."""
        return self.net_config.is_file()

    def has_model(self) -> list[str]:
        """The files a timm repo needs that this folder lacks (card, timm config and weights)."""
        return [p.name for p in (self.card, self.timm_config, self.timm_weights) if not p.is_file()]

    # ---- readers
    def read_net(self, fix: str = INCOMPLETE) -> dict[str, Any]:
        """bacon_net.json: what the BaconNet is (a JSON object, or a UserError)."""
        info = read_json(self.net_config, "the BaconNet description", fix)
        if not isinstance(info, dict):
            raise UserError(f"{self.net_config} is not a JSON object; export again")
        return info

    def expected_sha(self, filename: str) -> str | None:
        """The sha256 of `filename` recorded in bacon_net.json (None without one, or unreadable)."""
        try:
            info = read_json(self.net_config, "", "") if self.net_config.is_file() else {}
            return (info.get("sha256") or {}).get(filename)
        except (UserError, AttributeError):
            return None

    def read_timm_config(self, fix: str = INCOMPLETE) -> Any:
        return read_json(self.timm_config, "the model's timm config", fix)

    def read_recipe(self) -> dict[str, Any]:
        from bacon_zoo.config import yaml_load

        if not self.recipe.is_file():
            raise UserError(f"{self.recipe} is missing; {INCOMPLETE}")
        return yaml_load(self.recipe.read_text()) or {}

    def read_data(self, fix: str = INCOMPLETE) -> Any:
        return read_json(self.path / DATA, "the data description", fix)

    def read_summary(self, fix: str = INCOMPLETE) -> Any:
        return read_json(self.path / SUMMARY, "the run summary", fix)

    def read_history(self) -> list[dict]:
        return read_jsonl(self.path / METRICS)

    def read(self) -> dict[str, Any]:
        """The run's records a card is built from: recipe, data, summary, net, history
        (metrics.jsonl), read with one-line errors."""
        return {
            "recipe": self.read_recipe(),
            "data": self.read_data(),
            "summary": self.read_summary(),
            "net": self.read_net(),
            "history": self.read_history(),
        }

    def analysis_figures(self) -> list[str]:
        """The PNGs of the copied analysis (empty without an analysis page)."""
        if not self.analysis_page.is_file():
            return []
        return sorted(p.name for p in (self.path / ANALYSIS).glob("*.png"))

    # ---- what changed since the export
    def changes(self) -> list[str]:
        """What in the folder the export did not write: files added, changed or removed since (by
        its manifest); `["no manifest"]` for an export of an older version. Empty = untouched."""
        return manifest.changes(self.path, EXPORT_MANIFEST)

    def card_edited(self) -> bool:
        """The card was changed by hand since the export (then it is kept as it is)."""
        return any(c.startswith(f"{CARD} ") for c in self.changes())


# ---------------------------------------------------------------------------------------------
# writing an export


def timm_classifier(net: BaconNet, head: str) -> tuple[nn.Module, dict[str, Any]]:
    """The plain timm classifier to export and its constructor `model_args`.

    A backbone with a plain-timm equivalent (`bacon_zoo.models.plain_timm_spec`: the 32-px ViTs) is
    rebuilt as timm's parent architecture with `model_args`, so loading it needs no bacon_zoo."""
    import timm

    from bacon_zoo.models.vit_small import plain_timm_spec

    clf = net.to_timm_classifier(head).eval()
    args = dict(net.backbone_kwargs)
    spec = plain_timm_spec(clf.pretrained_cfg["architecture"])
    if spec is None:
        return clf, args
    parent, parent_args = spec
    args = dict(parent_args) | args
    plain = timm.create_model(parent, pretrained=False, num_classes=net.num_classes, **args)
    plain.load_state_dict(clf.state_dict(), strict=True)
    return plain.eval(), args


def write_model_files(
    folder: Path,
    net: BaconNet,
    head: str,
    name: str,
    class_names: Sequence[str],
    data_config: dict[str, Any] | None,
    description: str,
    info: dict[str, Any],
    full_net: bool = True,
) -> dict[str, Any]:
    """Write the timm classifier (model.safetensors + config.json) and the full BaconNet
    (bacon_net.safetensors, unless `full_net` is False: heads that were never trained are not
    written) and bacon_net.json into `folder`; returns bacon_net.json's content."""
    import safetensors.torch
    import torch
    from timm.models import save_for_hf

    from bacon_zoo import __version__

    clf, model_args = timm_classifier(net, head)
    save_for_hf(
        clf,
        str(folder),
        model_config={
            "label_names": list(class_names),
            "pretrained_cfg": {
                "tag": name.split(".", 1)[-1],
                "license": "apache-2.0",
                "description": description,
                **PAPER,
                "notes": (),
            },
        },
        model_args=model_args,
        safe_serialization=True,
        data_config=data_config,
    )
    weights = [TIMM_WEIGHTS]
    if full_net:
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        safetensors.torch.save_file(state, str(folder / NET_WEIGHTS), metadata={"format": "pt"})
        weights.append(NET_WEIGHTS)
    net_info = {
        "format": EXPORT_FORMAT,
        "name": name,
        "backbone": net.backbone_name,
        "architecture": clf.pretrained_cfg["architecture"],
        "bacon_architecture": net.backbone.pretrained_cfg.get("architecture"),
        "backbone_kwargs": dict(net.backbone_kwargs),
        "num_classes": net.num_classes,
        "proj_dim": net.proj_dim,
        "heads": [h.to_dict() for h in net.heads],  # the algorithm's extra heads, in build order
        "eval_head": head,
        "class_names": list(class_names),
        **info,
        "bacon_zoo_version": __version__,
        "torch_version": torch.__version__,
        "sha256": {f: sha256_file(folder / f) for f in weights},
    }
    write_json(folder / NET_CONFIG, net_info)
    return net_info


def copy_run_records(run_dir: Path, folder: Path, summary: dict) -> None:
    """The run's records (the card's only source of numbers) into `folder`: config.yaml as
    recipe.yaml, split, data card, metrics, summary (`summary`, rebuilt, when the run has none) and
    the analysis pages and figures."""
    for src, dst in COPIED.items():
        if (run_dir / src).is_file():
            shutil.copy2(run_dir / src, folder / dst)
    if (run_dir / SUMMARY).is_file():
        shutil.copy2(run_dir / SUMMARY, folder / SUMMARY)
    else:  # rebuilt from metrics.jsonl (status "incomplete")
        write_json(folder / SUMMARY, summary)
    analysis = run_dir / ANALYSIS
    if (analysis / ANALYSIS_PAGE).is_file():
        (folder / ANALYSIS).mkdir()
        for f in sorted(analysis.iterdir()):
            if f.is_file() and f.suffix.lower() in ANALYSIS_SUFFIXES:
                shutil.copy2(f, folder / ANALYSIS / f.name)


def _next_aside(out: Path) -> Path:
    n = 1
    while (out.parent / f"{out.name}.old-{n}").exists():
        n += 1
    return out.parent / f"{out.name}.old-{n}"


def prepare_out_dir(out: Path, run_dir: Path | None, force: bool) -> Path | None:
    """Check `out` before any work; returns where an old export will be moved (None: replace it).

    Refuses to replace the run itself, a file, a non-empty folder that is no export, or (without
    `force`) an export with hand-made changes."""
    if run_dir is not None:
        out_r, run_r = out.resolve(), run_dir.resolve()
        if out_r == run_r or run_r.is_relative_to(out_r):
            raise UserError(
                f"--out {out} would replace the run directory; choose a folder outside it"
            )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    # the export is built beside `out` and renamed over it: both must be writable
    writable_or_error(out.parent, f"cannot write the export {out}", "give --out a writable folder")
    if out.is_dir():
        writable_or_error(out, f"cannot replace the export {out}", "give --out a writable folder")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if not ExportDir(out).is_export():
        raise UserError(f"--out {out} exists and is not a bacon-zoo export; choose another folder")
    changes = ExportDir(out).changes()
    if not changes:
        return None
    aside = _next_aside(out)
    if not force:
        shown = ", ".join(changes[:3]) + (
            f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        )
        raise UserError(
            f"{out} has changes the export did not write ({shown}); nothing was replaced: pass "
            f"--force to move it to {aside.name} and export anew, or --out another folder"
        )
    return aside


def _swap_into_place(tmp: Path, out: Path, aside: Path | None) -> None:
    """Rename the finished export over the old one. An untouched old export is deleted only once the
    new one is in; a changed one (`aside`) is kept under that name."""
    old = None
    if out.exists():
        old = aside or out.parent / f".{out.name}.old-{os.getpid()}"
        if aside is None:
            shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None and aside is None:
        shutil.rmtree(old, ignore_errors=True)


def write_folder(
    out: Path, fill: Callable[[Path], Any], run_dir: Path | None = None, force: bool = False
) -> Path:
    """Build an export in a temporary sibling with `fill(tmp)`, give its files the umask's modes,
    add the manifest, swap it in."""
    aside = prepare_out_dir(out, run_dir, force)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        fill(tmp)
        umask_modes(tmp)  # safetensors writes 0600; copies keep an older run file's mode
        manifest.write_manifest(tmp, EXPORT_MANIFEST)
        _swap_into_place(tmp, out, aside)
    except OSError as e:  # a read-only or full file system (the checks above cannot see every one)
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(
            f"cannot write the export {out} ({e.strerror}); nothing was replaced: give --out a "
            "writable folder with free space"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = [
    "INCOMPLETE",
    "ExportDir",
    "copy_run_records",
    "prepare_out_dir",
    "write_folder",
    "write_model_files",
]
