"""A local export's weights, below the trainer (`--init-from` reads a folder here).

`load_bacon_net_weights(model, folder)` fills a BaconNet from an export's `bacon_net.safetensors` after
`verify_safetensors` has refused a truncated or corrupt file (or one whose sha256 is not the one
bacon_net.json records), and `load_strict` names what does not fit. Hub names are resolved to a local
folder by `bacon_zoo.hub.weights` before anything here runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import sha256_file
from bacon_zoo.run.exportdir import ExportDir
from bacon_zoo.run.layout import NET_CONFIG, NET_WEIGHTS

if TYPE_CHECKING:
    from torch import nn

    from bacon_zoo.models import BaconNet


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# safetensors, strict loading, the full BaconNet of an export


def verify_safetensors(path: Path, sha256: str | None = None) -> None:
    """Refuse a missing, truncated or corrupt safetensors file before anything loads it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; export the run again (`bacon-zoo export RUN_DIR`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except Exception as e:  # SafetensorError (truncated header/data), OSError
        raise UserError(
            f"{path} is truncated or corrupt ({_first_line(e)}); delete it and export again, or "
            "re-download it with `bacon-zoo pull REPO --force`"
        ) from None
    if sha256 and sha256_file(path) != sha256:
        raise UserError(
            f"{path} does not match the checksum recorded in {NET_CONFIG}; the file was changed or "
            "corrupted: export again, or re-download it with `bacon-zoo pull REPO --force`"
        )


def load_strict(model: nn.Module, state: dict, source: str, trained_with: str) -> None:
    """`load_state_dict(strict=True)` with a one-line account of what does not fit."""
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


def local_folder(source: str | Path) -> Path:
    """The export folder `source` names: a folder or `local-dir:PATH`. A Hub name is fetched above
    this layer (`bacon_zoo.hub.weights`), before training starts."""
    text = str(source)
    folder = Path(text.removeprefix("local-dir:")).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"{text} is not a local export folder; give one (`bacon-zoo export RUN_DIR`, or "
            "`bacon-zoo pull ORG/NAME` for a Hub model), or an hf-hub:ORG/NAME name where the "
            "command fetches it (`bacon-zoo train --init-from`)"
        )
    return folder


def read_net_info(folder: Path, source: str) -> dict[str, Any]:
    return ExportDir(folder).read_net(
        f"'{source}' is not a bacon-zoo export (timm-only repos can't seed --init-from)"
    )


def load_bacon_net_weights(model: BaconNet, source: str | Path) -> None:
    """Load an export's full BaconNet weights (backbone, both heads, projection) into `model`, in place.

    `source`: an export folder or `local-dir:PATH` (`bacon_zoo.hub.weights` takes Hub names too). A
    model of another shape (backbone, num_classes, heads) or a corrupt file is a UserError.
    """
    import safetensors.torch

    folder = local_folder(source)
    info = read_net_info(folder, str(source))
    path = folder / NET_WEIGHTS
    verify_safetensors(path, (info.get("sha256") or {}).get(NET_WEIGHTS))
    trained_with = (
        f"backbone={info.get('backbone')}, num_classes={info.get('num_classes')}, "
        f"proj_dim={info.get('proj_dim')}, backbone_kwargs={info.get('backbone_kwargs')}"
    )
    load_strict(
        model, safetensors.torch.load_file(str(path), device="cpu"), str(source), trained_with
    )


def load_bacon_net(source: str | Path) -> BaconNet:
    """Rebuild the exported BaconNet (eval mode) from `bacon_net.json` + `bacon_net.safetensors`."""
    from bacon_zoo.models import BaconNet, Head

    folder = local_folder(source)
    info = read_net_info(folder, str(source))
    heads = info.get("heads")  # exports before algorithm-chosen heads have the full BaCon set
    net = BaconNet(
        info["backbone"],
        num_classes=int(info["num_classes"]),
        proj_dim=int(info.get("proj_dim") or 16),
        pretrained=False,
        backbone_kwargs=info.get("backbone_kwargs") or {},
        heads=None if heads is None else [Head(h["name"], h.get("dim"), h["kind"]) for h in heads],
    )
    load_bacon_net_weights(net, folder)
    return net.eval()


__all__ = [
    "load_bacon_net",
    "load_bacon_net_weights",
    "load_strict",
    "local_folder",
    "read_net_info",
    "verify_safetensors",
]
