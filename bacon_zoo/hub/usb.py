"""`bacon-zoo import-usb`: a USB / BaCon-release `torch.save` checkpoint becomes a bacon-zoo export.

The file is read with `torch.load(weights_only=True)` (tensors and plain containers only, no code from
the file runs), the state dict under `--key` (`ema_model` by default: USB evaluates the EMA) is mapped by
`bacon_zoo.models.usb.convert_usb_state_dict`, and the folder written is the one `bacon-zoo export`
writes: `model.safetensors` + `config.json` in timm's format, so
`timm.create_model("local-dir:DIR", pretrained=True)` gives the checkpoint's own logits (the ABC head's
for the release wrapper, the classifier's for a plain WRN), plus the full BaconNet when the checkpoint
has the heads, and a card that says where it came from and claims no accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import sha256_file
from bacon_zoo.hub.names import is_tag, slug
from bacon_zoo.run.layout import CARD

KEYS = ("ema_model", "model")


def read_usb_checkpoint(path: Path, key: str) -> tuple[dict[str, Any], Any]:
    """(the state dict under `key`, the checkpoint's iteration or None), with one-line errors."""
    import pickle

    import torch

    if not path.is_file():
        raise UserError(f"{path} is not a file; give a USB checkpoint (torch.save .pth)")
    try:  # the pickle's globals, read without loading anything (zip checkpoints only)
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint: the weights_only load below says what it is
        unsafe = []
    if unsafe:
        raise UserError(
            f"{path}: refused: the file asks to run code (it names {unsafe[0]}, which "
            "torch.load(weights_only=True) does not create); save only the state dicts "
            "(tensors, numbers, strings) and import that"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (refused or garbage), a truncated zip, ...
        text = str(e)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise UserError(
                f"{path}: refused: the file asks to run code (it names {refused.group(1)}, "
                "which torch.load(weights_only=True) does not create); save only the "
                "state dicts (tensors, numbers, strings) and import that"
            ) from None
        raise UserError(
            f"{path} is not a readable torch.save checkpoint ({type(e).__name__}); check that the "
            "file is complete and is the .pth that USB saved"
        ) from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if key not in ckpt:
        raise UserError(
            f"{path} has no '{key}' entry (it has: {', '.join(map(str, list(ckpt)[:8]))}); "
            f"choose --key {' or '.join(k for k in KEYS if k in ckpt) or 'KEY'}"
        )
    state = ckpt[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: '{key}' is a {type(state).__name__}, not a state dict")
    it = ckpt.get("it")
    return state, int(it) if isinstance(it, int) else None


def import_usb(
    checkpoint: str | Path,
    arch: str,
    num_classes: int,
    out_dir: str | Path,
    key: str = "ema_model",
    name: str | None = None,
    class_names: list[str] | None = None,
    force: bool = False,
) -> Path:
    """Write the export folder of a USB / BaCon-release checkpoint to `out_dir`; returns it.

    `arch`: our timm name of the network (`wrn28_2`, `wrn28_8`, `wrn37_2`); `key`: `ema_model` or
    `model`. An existing export changed by hand is refused unless `force` (moved to `DIR.old-N`).
    """
    import torch

    from bacon_zoo.hub.card import build_card
    from bacon_zoo.hub.export import check_finite, write_folder, write_model_files
    from bacon_zoo.models.usb import bacon_net_from_usb, convert_usb_state_dict

    path = Path(checkpoint)
    if num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(f"--class-names lists {len(class_names)} names for {num_classes} classes")
    name = name or f"{arch}.usb_{slug(path.stem) or 'import'}"
    if "." not in name or not is_tag(name.split(".", 1)[1]):
        raise UserError(f"--name '{name}' must be ARCH.TAG, TAG lower-case letters, digits and _")
    out = Path(out_dir)
    state, it = read_usb_checkpoint(path, key)
    weights = convert_usb_state_dict(state, arch, num_classes)
    if weights.classifier is None and weights.abc_head is None:
        raise UserError(
            f"{path}: '{key}' has no classifier (classifier.* / fc.*) and no ABC head "
            "(aux_classifier.*); there is nothing to predict with"
        )
    net = bacon_net_from_usb(weights, arch, num_classes).eval()
    check_finite(net, f"{path} ('{key}')")
    head = "abc" if weights.abc_head is not None else "main"
    full = weights.abc_head is not None and weights.projection is not None
    names = [str(c) for c in class_names or range(num_classes)]
    source = {"file": path.name, "sha256": sha256_file(path), "key": key, "it": it}

    def fill(tmp: Path) -> None:
        with torch.no_grad():
            write_model_files(
                tmp,
                net,
                head,
                name,
                names,
                data_config=None,  # the architecture's own (CIFAR/STL-10 mean, std and size)
                description=f"imported from the USB checkpoint {path.name} ({key}), {head} head",
                info={"imported": source, "full_net": full, "step": it},
                full_net=full,
            )
        build_card(tmp).save(tmp / CARD)

    return write_folder(out, fill, None, force)
