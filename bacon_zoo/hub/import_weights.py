"""`bacon-zoo import-weights`: a foreign checkpoint whose tensors correspond one to one, in order, with a
timm model's state dict becomes a timm `local-dir:` folder.

Ports of published weights often keep their own names (EfficientNet-PyTorch's `_conv_stem`,
`_blocks.N._depthwise_conv`, ...) but the same tensors in the same order as timm's model. `match_in_order`
pairs them by position and checks every shape, refusing the first pair that differs, so a wrong
architecture can never load silently. The file is read without running code (`torch.load(weights_only=
True)` or safetensors); the folder is timm's own format (`save_for_hf`: `model.safetensors` +
`config.json`), so `timm.create_model("local-dir:DIR", pretrained=True)` and
`--pretrained-file DIR/model.safetensors` both load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bacon_zoo.errors import UserError

# where the converted weights came from and under which licence, beside model.safetensors (cards read it)
PROVENANCE = "provenance.json"


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch.save file, in file order, without running its code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path} is not a file; give a .pth / .pt / .bin / .safetensors checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as e:
            raise UserError(
                f"{path} is not a readable safetensors file ({type(e).__name__})"
            ) from None
    else:
        import pickle

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                f"refused: {path} asks to run code when loaded (it is not only tensors); save its "
                "state dict alone and import that"
            ) from None
        except Exception as e:
            raise UserError(
                f"{path} is not a readable torch.save checkpoint ({type(e).__name__}); check that "
                "the file is complete"
            ) from None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise UserError(f"{path} has no '{key}' entry; drop --key or name one it has")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = (
            ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
        )
        raise UserError(f"{path} is not a flat state dict of tensors ({keys}); pick one with --key")
    return dict(obj)


def read_provenance(weights_file: str | Path) -> dict[str, str] | None:
    """The `provenance.json` that `import-weights` wrote beside a weights file, if any."""
    import json

    path = Path(weights_file).expanduser().parent / PROVENANCE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else None


def match_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Target names -> source tensors, paired by position; shapes must agree pair by pair.

    Raises a UserError naming the count mismatch or the first pair whose shapes differ.
    """
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise UserError(
            f"the checkpoint has {len(src)} tensors but the timm model has {len(tgt)}; they must "
            "correspond one to one (is it the same architecture, with BN buffers on both sides?)"
        )
    out = {}
    for i, ((sn, sv), (tn, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape):
            raise UserError(
                f"tensor {i} does not fit: checkpoint '{sn}' {tuple(sv.shape)} vs timm '{tn}' "
                f"{tuple(tv.shape)}; not the same architecture in the same order"
            )
        out[tn] = sv.to(tv.dtype).contiguous()
    return out


def import_weights(
    checkpoint: str | Path,
    arch: str,
    out: str | Path,
    key: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    source: str | None = None,
    license: str | None = None,
    force: bool = False,
) -> Path:
    """Write `out` (model.safetensors + config.json) with `checkpoint`'s tensors in timm's `arch`.

    The model keeps the checkpoint's classifier size; `mean` / `std` override the architecture's
    default preprocessing (a port's own); `source` is recorded in the pretrained_cfg.
    """
    import timm
    from timm.models import save_for_hf

    from bacon_zoo.fileio import write_json
    from bacon_zoo.run.exportdir import write_folder

    state = read_state_dict(checkpoint, key)
    if not timm.is_model(arch):
        raise UserError(f"unknown timm architecture '{arch}'; see timm.list_models()")
    # the classifier size comes from the checkpoint's last 2-d tensor (timm models end with it)
    last = [v for v in state.values() if v.ndim == 2]
    num_classes = int(last[-1].shape[0]) if last else 0
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    model.load_state_dict(match_in_order(state, model.state_dict()), strict=True)
    pcfg = dict(model.pretrained_cfg) | {"source": source or Path(checkpoint).name}
    pcfg |= {k: tuple(v) for k, v in {"mean": mean, "std": std}.items() if v is not None}
    for k in ("url", "hf_hub_id", "file", "tag"):  # these weights come from nowhere timm knows
        pcfg.pop(k, None)
    model.pretrained_cfg = pcfg

    def fill(tmp: Path) -> None:
        save_for_hf(model, str(tmp), safe_serialization=True)
        write_json(tmp / PROVENANCE, {"source": pcfg["source"], "license": license or "unknown"})

    return write_folder(Path(out).expanduser(), fill, force=force)
