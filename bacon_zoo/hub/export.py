"""Turn a run directory into a folder that *is* a timm Hub repo, plus what continued training needs.

`model.safetensors` + `config.json` are timm's own format (written by `timm.models.save_for_hf`): the
EMA backbone with the algorithm's evaluation head as its classifier, so
`timm.create_model("local-dir:DIR" or "hf-hub:ORG/NAME", pretrained=True)` is the evaluated predictor.
32-px ViTs are saved as timm's own parent architecture with `model_args` (image and patch size), so
plain timm loads them; the CIFAR WRNs and ResNets need `import bacon_zoo` (they are registered by it).
`bacon_net.safetensors` + `bacon_net.json` hold the full BaconNet (both heads, projection) for
`--init-from`. Copies of the run's files and a model card built only from them complete the folder.

The folder's layout, its manifest and its atomic replacement are `bacon_zoo.run.exportdir`; this
module decides what goes in: which checkpoint, which head, the plot and the card. A re-export
replaces an export only when it is exactly what the last export wrote; one with files added or
changed by hand is refused unless `force` (then it is moved aside to `export.old-N`, never deleted).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bacon_zoo.errors import UserError
from bacon_zoo.hub.names import check_model_name, model_name
from bacon_zoo.hub.weights import load_bacon_net, load_bacon_net_weights
from bacon_zoo.run.exportdir import (
    ExportDir,
    copy_run_records,
    prepare_out_dir,
    write_folder,
    write_model_files,
)
from bacon_zoo.run.weights import verify_safetensors

if TYPE_CHECKING:
    from torch import nn


def export_changes(folder: str | Path) -> list[str]:
    """What in an export folder the export did not write (`ExportDir.changes`)."""
    return ExportDir(folder).changes()


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
    from bacon_zoo.run.layout import step_of

    run = RunDir(run_dir).require()
    cfg = run.read_config()
    data = run.read_data()
    history = run.read_metrics()
    summary = run.summary_or_partial()
    out = Path(out_dir) if out_dir is not None else run.export_dir
    name = check_model_name(name) if name is not None else model_name(cfg.to_dict())
    prepare_out_dir(out, run.path, force)  # refuse before loading any weights
    ckpt = run.checkpoint(checkpoint)
    check_same_run(ckpt, fingerprint(cfg, ignore=("steps",)), run.path)
    net, ckpt = run.load_ema_model(ckpt)
    check_finite(net, f"checkpoint {ckpt}")
    head = run.eval_head()
    size = int(data.get("image_size", cfg.image_size))
    num_classes = int(data["num_classes"])
    class_names = [str(c) for c in data.get("class_names") or range(num_classes)]
    step = step_of(ckpt)

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
        copy_run_records(run.path, tmp, summary)
        # 3. plot and card
        row = next((r for r in reversed(history) if r.get("step") == step), None)
        row = row or (history[-1] if history else None)
        if row and row.get("per_class"):
            plot_per_class(
                ExportDir(tmp).plot,
                class_names,
                data.get("labeled_counts"),
                data.get("unlabeled_counts"),
                row["per_class"],
                title=f"{name}: per-class test accuracy at step {row['step']}",
            )
        build_card(tmp).save(ExportDir(tmp).card)

    return write_folder(out, fill, run.path, force)


__all__ = [
    "check_finite",
    "export_changes",
    "export_run",
    "load_bacon_net",
    "load_bacon_net_weights",
    "verify_safetensors",
    "write_folder",
    "write_model_files",
]
