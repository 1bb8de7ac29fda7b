"""Turn a run directory into a folder that *is* a timm Hub repo, plus what continued training needs.

`model.safetensors` + `config.json` are timm's own format (written by `timm.models.save_for_hf`): the
EMA backbone with the algorithm's evaluation head as its classifier, so
`timm.create_model("local-dir:DIR" or "hf-hub:ORG/NAME", pretrained=True)` is the evaluated predictor.
32-px ViTs are saved as timm's own parent architecture with `model_args` (image and patch size), so
plain timm loads them; the CIFAR WRNs and ResNets need `import bacon_zoo` (they are registered by it).
`bacon_net.safetensors` + `bacon_net.json` hold the full BaconNet (both heads, projection) for
`--init-from`. Copies of the run's files and a model card built only from them complete the folder.

`export_manifest.json` lists every file the export wrote with its sha256. A re-export replaces an
export only when it is exactly what the last export wrote; an export with files added or changed by
hand (a hand-edited card) is refused unless `force`, and then it is moved aside to `export.old-N`,
never deleted. The new export is written to a temporary sibling and renamed into place, so a failure
never leaves a half export and never touches the run's other files.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import read_json, writable_or_error, write_json
from bacon_zoo.hub.names import (
    CARD,
    EXPORT_FORMAT,
    MANIFEST,
    NET_CONFIG,
    NET_WEIGHTS,
    PLOT,
    RECIPE,
    TIMM_WEIGHTS,
    check_model_name,
    model_name,
    sha256_file,
)
from bacon_zoo.run.weights import (  # the loaders live below the trainer (`--init-from`)
    load_bacon_net,
    load_bacon_net_weights,
    verify_safetensors,
)

if TYPE_CHECKING:
    from torch import nn

    from bacon_zoo.models import BaconNet

# run file -> name in the export; summary.json is handled apart (rebuilt from metrics if missing)
COPIED = {
    "config.yaml": RECIPE,
    "split.json": "split.json",
    "data.json": "data.json",
    "metrics.jsonl": "metrics.jsonl",
}
PAPER = {
    "paper_ids": "arXiv:2403.12986",
    "paper_name": "BaCon: Boosting Imbalanced Semi-supervised Learning via Balanced "
    "Feature-Level Contrastive Learning",
}


# ---------------------------------------------------------------------------------------------
# the manifest: what an export wrote


def _files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


def write_manifest(folder: Path) -> None:
    write_json(
        folder / MANIFEST,
        {"format": 1, "files": {f: sha256_file(folder / f) for f in _files(folder)}},
    )


def export_changes(folder: str | Path) -> list[str]:
    """What in an export folder the export did not write: files added, changed or removed since
    (by its manifest); `["no manifest"]` for an export of an older version. Empty = untouched."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return ["no manifest"]
    try:
        listed = read_json(folder / MANIFEST, "the export manifest", "")["files"]
        if not isinstance(listed, dict):
            raise TypeError
    except (UserError, KeyError, TypeError):
        return [f"{MANIFEST} unreadable"]
    present = set(_files(folder))
    changes = [f"{f} added" for f in sorted(present - set(listed))]
    changes += [f"{f} removed" for f in sorted(set(listed) - present)]
    changes += [
        f"{f} changed"
        for f in sorted(present & set(listed))
        if sha256_file(folder / f) != listed[f]
    ]
    return changes


def _next_aside(out: Path) -> Path:
    n = 1
    while (out.parent / f"{out.name}.old-{n}").exists():
        n += 1
    return out.parent / f"{out.name}.old-{n}"


def _prepare_out_dir(out: Path, run_dir: Path | None, force: bool) -> Path | None:
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
    if not (out / NET_CONFIG).is_file():
        raise UserError(f"--out {out} exists and is not a bacon-zoo export; choose another folder")
    changes = export_changes(out)
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


# ---------------------------------------------------------------------------------------------
# the model files (shared with `import-usb`)


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
        "eval_head": head,
        "class_names": list(class_names),
        **info,
        "bacon_zoo_version": __version__,
        "torch_version": torch.__version__,
        "sha256": {f: sha256_file(folder / f) for f in weights},
    }
    write_json(folder / NET_CONFIG, net_info)
    return net_info


def write_folder(out: Path, fill: Any, run_dir: Path | None = None, force: bool = False) -> Path:
    """Build an export in a temporary sibling with `fill(tmp)`, add the manifest, swap it in."""
    aside = _prepare_out_dir(out, run_dir, force)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        fill(tmp)
        write_manifest(tmp)
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


def check_finite(net: nn.Module, source: str) -> None:
    """Refuse weights that hold NaN or infinity (a diverged run): they would export as a normal model."""
    import torch

    bad = [
        k
        for k, v in net.state_dict().items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise UserError(
            f"{source} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): the run "
            "diverged; nothing was exported: export an earlier checkpoint (--checkpoint) or retrain "
            "with a lower --lr"
        )


# ---------------------------------------------------------------------------------------------
# export


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
) -> Path:
    """Export the EMA model of `run_dir` (newest complete checkpoint, or `checkpoint`) to `out_dir`.

    Returns the export folder (default `RUN_DIR/export`). `name` is the model's `arch.tag` name
    (default `names.model_name` of the run's config, e.g. `wrn28_2.bacon_c10lt_n1000m4000g100_s0`),
    used in the card and as the default Hub repo name. An existing export that was changed by hand
    is refused (UserError) unless `force`, which moves it to `export.old-N`; nothing is deleted.
    """
    from bacon_zoo.config import fingerprint
    from bacon_zoo.hub.card import build_card, plot_per_class
    from bacon_zoo.run import RunDir
    from bacon_zoo.run.checkpoint import check_same_run

    run = RunDir(run_dir).require()
    cfg = run.read_config()
    data = run.read_data()
    history = run.read_metrics()
    summary = run.summary_or_partial()
    out = Path(out_dir) if out_dir is not None else run.export_dir
    name = check_model_name(name) if name is not None else model_name(cfg.to_dict())
    _prepare_out_dir(out, run.path, force)  # refuse before loading any weights
    ckpt = run.checkpoint(checkpoint)
    check_same_run(ckpt, fingerprint(cfg, ignore=("steps",)), run.path)
    net, ckpt = run.load_ema_model(ckpt)
    check_finite(net, f"checkpoint {ckpt}")
    head = run.eval_head()
    size = int(data.get("image_size", cfg.image_size))
    num_classes = int(data["num_classes"])
    class_names = [str(c) for c in data.get("class_names") or range(num_classes)]
    step = int(ckpt.name.split("_")[-1]) if ckpt.name.startswith("step_") else None

    def fill(tmp: Path) -> None:
        # 1. the timm classifier and the full BaconNet
        write_model_files(
            tmp,
            net,
            head,
            name,
            class_names,
            data_config={
                "input_size": (3, size, size),
                "mean": tuple(data["mean"]),
                "std": tuple(data["std"]),
                "crop_pct": 1.0,  # the trainer resizes (center-fit) to image_size, no crop border
                "interpolation": data.get("interpolation", "bicubic"),
            },
            description=f"{cfg.algorithm} on a long-tailed split of {cfg.dataset}, EMA model, "
            f"{head} head (bacon-zoo)",
            info={
                "algorithm": cfg.algorithm,
                "protocol": run.protocol(),
                # the timm Hub weights the backbone started from (the card's base_model)
                "base_model": net.backbone.pretrained_cfg.get("hf_hub_id")
                if cfg.pretrained
                else None,
                "checkpoint": ckpt.name,
                "step": step,
            },
        )
        # 2. the run's own records (the card's only source of numbers)
        for src, dst in COPIED.items():
            if (run.path / src).is_file():
                shutil.copy2(run.path / src, tmp / dst)
        if run.summary_path.is_file():
            shutil.copy2(run.summary_path, tmp / "summary.json")
        else:  # rebuilt from metrics.jsonl (status "incomplete")
            write_json(tmp / "summary.json", summary)
        analysis = run.path / "analysis"
        if (analysis / "analysis.md").is_file():
            (tmp / "analysis").mkdir()
            for f in sorted(analysis.iterdir()):
                if f.is_file() and f.suffix.lower() in (".md", ".png", ".json", ".csv"):
                    shutil.copy2(f, tmp / "analysis" / f.name)
        # 3. plot and card
        row = next((r for r in reversed(history) if r.get("step") == step), None)
        row = row or (history[-1] if history else None)
        if row and row.get("per_class"):
            plot_per_class(
                tmp / PLOT,
                class_names,
                data.get("labeled_counts"),
                data.get("unlabeled_counts"),
                row["per_class"],
                title=f"{name}: per-class test accuracy at step {row['step']}",
            )
        build_card(tmp).save(tmp / CARD)

    return write_folder(out, fill, run.path, force)


__all__ = [
    "export_changes",
    "export_run",
    "load_bacon_net",
    "load_bacon_net_weights",
    "verify_safetensors",
    "write_folder",
    "write_model_files",
]
