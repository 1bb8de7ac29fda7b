"""Turn a run directory into a folder that *is* a timm Hub repo, plus what continued training needs.

`model.safetensors` + `config.json` are timm's own format (written by `timm.models.save_for_hf`): the
EMA backbone with the algorithm's evaluation head as its classifier, so after `import bacon_zoo`,
`timm.create_model("local-dir:DIR" or "hf-hub:ORG/NAME", pretrained=True)` is the evaluated predictor.
`bacon_net.safetensors` + `bacon_net.json` hold the full BaconNet (both heads, projection) for
`--init-from`. Copies of the run's files and a model card built only from them complete the folder.

The export is written to a temporary sibling and renamed into place, so a failure never leaves a half
export and never touches the run's other files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import read_jsonl as read_metrics

if TYPE_CHECKING:
    from torch import nn

    from bacon_zoo.models import BaconNet

TIMM_WEIGHTS = "model.safetensors"
TIMM_CONFIG = "config.json"
NET_WEIGHTS = "bacon_net.safetensors"
NET_CONFIG = "bacon_net.json"
PLOT = "per_class_accuracy.png"
CARD = "README.md"
# run file -> name in the export; summary.json is handled apart (rebuilt from metrics if missing)
COPIED = {
    "config.yaml": "recipe.yaml",
    "split.json": "split.json",
    "data.json": "data.json",
    "metrics.jsonl": "metrics.jsonl",
}
EXPORT_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# small helpers shared with card / hubio / zoo


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file the caller needs, or a one-line UserError naming it and the fix."""
    if not path.is_file():
        raise UserError(f"{path} is missing ({what}); {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; {fix}") from None


def eval_head(summary: dict, algorithm: str) -> str:
    """The head the run was evaluated with: ABC's h_a for abc/bacon (spec), the main head for fixmatch."""
    head = summary.get("eval_head")
    if head in ("main", "abc"):
        return head
    return "main" if algorithm == "fixmatch" else "abc"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def dataset_slug(dataset: str) -> str:
    """`uoft-cs/cifar10` -> `cifar10`, `/data/my_set/` -> `my_set`: the data set part of a model name."""
    return _slug(Path(dataset.rstrip("/")).name) or "data"


def default_name(backbone: str, algorithm: str, dataset: str) -> str:
    """timm-style `arch.tag` name, e.g. `wrn28_2.bacon_cifar10_lt` (also the default Hub repo name)."""
    arch = backbone.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    return f"{arch}.{_slug(algorithm)}_{dataset_slug(dataset)}_lt"


def verify_safetensors(path: Path, sha256: str | None = None) -> None:
    """Refuse a missing, truncated or corrupt safetensors file before anything unpickles or loads it."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path} is missing; export the run again (`bacon-zoo export RUN_DIR`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except Exception as e:  # SafetensorError (truncated header/data), OSError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is truncated or corrupt ({reason}); delete it and export again, or re-download "
            "it with `bacon-zoo pull REPO --force`"
        ) from None
    if sha256 and sha256_file(path) != sha256:
        raise UserError(
            f"{path} does not match the checksum recorded in {NET_CONFIG}; the file was changed or "
            "corrupted: export again, or re-download it with `bacon-zoo pull REPO --force`"
        )


# ---------------------------------------------------------------------------------------------
# reading a run


def _run_summary(run_dir: Path, cfg, history: list[dict]) -> dict:
    """summary.json, or (for a run still in progress) the same summary rebuilt from metrics.jsonl."""
    path = run_dir / "summary.json"
    if path.is_file():
        return read_json(path, "the run summary", "re-run or resume the training to rewrite it")
    if not history:
        raise UserError(
            f"{run_dir} has no summary.json and no evaluations in metrics.jsonl; train until the "
            "first evaluation (--eval-every) before exporting"
        )
    from bacon_zoo.metrics import summarize

    return summarize(history) | {
        "status": "incomplete",
        "steps": cfg.steps,
        "algorithm": cfg.algorithm,
        "backbone": cfg.backbone,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
    }


def _checkpoint_dir(run_dir: Path, checkpoint: str | Path | None) -> Path:
    from bacon_zoo.train.checkpoint import list_checkpoints

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_dir():
            raise UserError(
                f"--checkpoint {path} is not a directory; give RUN_DIR/checkpoints/step_N"
            )
        return path
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        raise UserError(
            f"{run_dir} has no complete checkpoint (checkpoints/step_N); train or resume it first"
        )
    return ckpts[-1]


def _step_of(ckpt: Path) -> int | None:
    m = re.fullmatch(r"step_(\d+)", ckpt.name)
    return int(m.group(1)) if m else None


def build_net(
    backbone: str,
    num_classes: int,
    proj_dim: int,
    backbone_kwargs: dict | None = None,
) -> BaconNet:
    """An untrained BaconNet of the given shape (no pretrained download: weights come next)."""
    from bacon_zoo.models import BaconNet

    return BaconNet(
        backbone,
        num_classes=num_classes,
        proj_dim=proj_dim,
        pretrained=False,
        backbone_kwargs=backbone_kwargs or {},
    )


def _load_strict(model: nn.Module, state: dict, source: str, trained_with: str) -> None:
    """load_state_dict(strict) with a one-line account of what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} there, "
                f"{tuple(own[k].shape)} here)"
            )
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise UserError(
            f"weights from {source} don't fit this model: {'; '.join(parts)}; they were trained "
            f"with {trained_with}: use the same settings"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# export


def _check_out_dir(out: Path, run_dir: Path) -> None:
    """Never let an export replace the run itself or a folder that isn't an earlier export."""
    out_r, run_r = out.resolve(), run_dir.resolve()
    if out_r == run_r or run_r.is_relative_to(out_r):
        raise UserError(f"--out {out} would replace the run directory; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / NET_CONFIG).is_file():
        raise UserError(f"--out {out} exists and is not a bacon-zoo export; choose another folder")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished export over the old one; the old one is only deleted once the new is in."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Export the EMA model of `run_dir` (latest complete checkpoint, or `checkpoint`) to `out_dir`.

    Returns the export folder (default `RUN_DIR/export`). `name` is the model's `arch.tag` name
    (default e.g. `wrn28_2.bacon_cifar10_lt`), used in the card and as the default Hub repo name.
    """
    import safetensors.torch
    import torch
    from timm.models import save_for_hf

    from bacon_zoo import __version__
    from bacon_zoo.config import load_run_config
    from bacon_zoo.hub.card import build_card, plot_per_class
    from bacon_zoo.train.checkpoint import load_ema_weights

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    data = read_json(
        run_dir / "data.json", "the data description", "re-run the training to write it"
    )
    history = read_metrics(run_dir / "metrics.jsonl")
    summary = _run_summary(run_dir, cfg, history)
    ckpt = _checkpoint_dir(run_dir, checkpoint)
    step = _step_of(ckpt)
    out = Path(out_dir) if out_dir is not None else run_dir / "export"
    _check_out_dir(out, run_dir)

    num_classes = int(data["num_classes"])
    net = build_net(cfg.backbone, num_classes, cfg.bacon.proj_dim, cfg.backbone_kwargs)
    trained_with = (
        f"backbone={cfg.backbone}, num_classes={num_classes}, proj_dim={cfg.bacon.proj_dim}, "
        f"backbone_kwargs={cfg.backbone_kwargs}"
    )
    _load_strict(net, load_ema_weights(ckpt), str(ckpt), trained_with)
    net.eval()
    head = eval_head(summary, cfg.algorithm)
    clf = net.to_timm_classifier(head).eval()
    arch = clf.pretrained_cfg["architecture"]
    name = name or default_name(cfg.backbone, cfg.algorithm, cfg.dataset)
    size = int(data.get("image_size", cfg.image_size))
    class_names = [str(c) for c in data.get("class_names") or range(num_classes)]

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # 1. the timm classifier, in timm's own Hub format
        save_for_hf(
            clf,
            str(tmp),
            model_config={
                "label_names": class_names,
                "pretrained_cfg": {
                    "tag": name.split(".", 1)[-1],
                    "license": "apache-2.0",
                    "description": f"{cfg.algorithm} on a long-tailed split of {cfg.dataset}, "
                    f"EMA model, {head} head (bacon-zoo)",
                    "paper_ids": "arXiv:2403.12986",
                    "paper_name": "BaCon: Boosting Imbalanced Semi-supervised Learning via Balanced "
                    "Feature-Level Contrastive Learning",
                    "notes": (),
                },
            },
            model_args=dict(cfg.backbone_kwargs),
            safe_serialization=True,
            data_config={
                "input_size": (3, size, size),
                "mean": tuple(data["mean"]),
                "std": tuple(data["std"]),
                "crop_pct": 1.0,  # the trainer resizes (center-fit) to image_size, no crop border
                "interpolation": "bicubic",
            },
        )
        # 2. the full BaconNet for --init-from / continued training
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / NET_WEIGHTS), metadata={"format": "pt"})
        net_info = {
            "format": EXPORT_FORMAT,
            "name": name,
            "backbone": cfg.backbone,
            "architecture": arch,
            "backbone_kwargs": dict(cfg.backbone_kwargs),
            "num_classes": num_classes,
            "proj_dim": cfg.bacon.proj_dim,
            "eval_head": head,
            "algorithm": cfg.algorithm,
            # the timm Hub weights the backbone started from (the card's base_model)
            "base_model": net.backbone.pretrained_cfg.get("hf_hub_id") if cfg.pretrained else None,
            "class_names": class_names,
            "checkpoint": ckpt.name,
            "step": step,
            "bacon_zoo_version": __version__,
            "torch_version": torch.__version__,
            "sha256": {f: sha256_file(tmp / f) for f in (TIMM_WEIGHTS, NET_WEIGHTS)},
        }
        (tmp / NET_CONFIG).write_text(json.dumps(net_info, indent=2))
        # 3. the run's own records (the card's only source of numbers)
        for src, dst in COPIED.items():
            if (run_dir / src).is_file():
                shutil.copy2(run_dir / src, tmp / dst)
        if (run_dir / "summary.json").is_file():
            shutil.copy2(run_dir / "summary.json", tmp / "summary.json")
        else:  # rebuilt from metrics.jsonl (status "incomplete")
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        analysis = run_dir / "analysis"
        if (analysis / "analysis.md").is_file():
            (tmp / "analysis").mkdir()
            for f in sorted(analysis.iterdir()):
                if f.is_file() and f.suffix.lower() in (".md", ".png", ".json", ".csv"):
                    shutil.copy2(f, tmp / "analysis" / f.name)
        # 4. plot and card
        row = next((r for r in reversed(history) if r.get("step") == step), None)
        row = row or (history[-1] if history else None)
        if row and row.get("per_class"):
            plot_per_class(
                tmp / PLOT,
                class_names,
                data.get("labeled_counts") or [],
                row["per_class"],
                title=f"{name}: per-class test accuracy at step {row['step']}",
            )
        build_card(tmp).save(tmp / CARD)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# loading an export back (continued training)


def _export_folder(source: str | Path) -> Path:
    from bacon_zoo.hub.hubio import resolve_folder

    return resolve_folder(str(source), [NET_WEIGHTS, NET_CONFIG])


def _net_info(folder: Path, source: str) -> dict:
    return read_json(
        folder / NET_CONFIG,
        "the BaconNet description",
        f"'{source}' is not a bacon-zoo export (timm-only repos can't seed --init-from)",
    )


def _load_net_state(folder: Path, info: dict) -> dict:
    import safetensors.torch

    path = folder / NET_WEIGHTS
    verify_safetensors(path, (info.get("sha256") or {}).get(NET_WEIGHTS))
    return safetensors.torch.load_file(str(path), device="cpu")


def load_bacon_net_weights(model: BaconNet, source: str | Path) -> None:
    """Load an export's full BaconNet weights (both heads and the projection) into `model`, in place.

    `source`: an export folder, `local-dir:PATH`, `hf-hub:ORG/NAME[@REV]` or a plain Hub repo id.
    A model of another shape (backbone, num_classes, proj_dim) or a corrupt file is a UserError.
    """
    folder = _export_folder(source)
    info = _net_info(folder, str(source))
    trained_with = (
        f"backbone={info.get('backbone')}, num_classes={info.get('num_classes')}, "
        f"proj_dim={info.get('proj_dim')}, backbone_kwargs={info.get('backbone_kwargs')}"
    )
    _load_strict(model, _load_net_state(folder, info), str(source), trained_with)


def load_bacon_net(source: str | Path) -> BaconNet:
    """Rebuild the exported BaconNet (eval mode) from `bacon_net.json` + `bacon_net.safetensors`."""
    folder = _export_folder(source)
    info = _net_info(folder, str(source))
    net = build_net(
        info["backbone"],
        int(info["num_classes"]),
        int(info["proj_dim"]),
        info.get("backbone_kwargs"),
    )
    load_bacon_net_weights(net, folder)
    return net.eval()
