"""One factory for every backbone: the small-image models registered here and any other timm name.

Everything goes through `timm.create_model`, so tags (`resnet18.a1_in1k`), `hf-hub:` / `local-dir:` names
and model kwargs work as in timm. What this adds is errors a user can act on: a typo gets the closest
names, missing weights get one line instead of a Hub traceback.
"""

import difflib
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.models import (
    get_arch_pretrained_cfgs,
    is_model_pretrained,
    parse_model_name,
    split_model_name_tag,
)

from bacon_zoo.errors import UserError

from . import resnet_cifar, vit_small, wrn

_SMALL_IMAGE_MODULES = [m.__name__.rsplit(".", 1)[-1] for m in (wrn, resnet_cifar, vit_small)]


def list_backbones() -> list[str]:
    """The small-image (32 px) backbones this package registers in timm."""
    return timm.list_models(module=_SMALL_IMAGE_MODULES)


def _suggest(name: str) -> str:
    ours = list_backbones()
    candidates = ours + [m for m in timm.list_models() if m not in set(ours)]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(close)}? " if close else f"small-image ones: {', '.join(ours)}; "
    )
    return f"unknown backbone '{name}'; {hint}(any name from timm.list_models() works)"


def _check_name(name: str, pretrained: bool) -> None:
    """Raise a UserError for an unknown model, an unknown tag, or --pretrained without weights."""
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise UserError(_suggest(arch))
    if tag:
        tags = [n.split(".", 1)[1] for n in get_arch_pretrained_cfgs(arch) if "." in n]
        if tag not in tags:
            raise UserError(
                f"unknown pretrained tag '{tag}' for backbone '{arch}'; "
                f"available: {', '.join(tags) or 'none'}"
            )
    if pretrained and not is_model_pretrained(name):
        raise UserError(
            f"backbone '{name}' has no pretrained weights in timm; drop --pretrained (it trains from "
            "scratch) or pick a name from timm.list_models(pretrained=True)"
        )


def _hub_error(name: str, err: OSError) -> UserError:
    """One line for a failed Hub fetch: offline (the common case on clusters) or refused by the Hub."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    source, model_id = parse_model_name(name)
    if source == "hf-hub":
        repo, what, fix = model_id.split("@")[0], f"model '{name}' is", ""
    else:
        repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or name
        what, fix = f"the pretrained weights of '{name}' ({repo}) are", " or drop --pretrained"
    if isinstance(err, (LocalEntryNotFoundError, ConnectionError)):
        return UserError(
            f"{what} not in the local Hugging Face cache and the Hub can't be reached; run "
            f"`hf download {repo}` where there is network and copy the cache (HF_HOME) here{fix}"
        )
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return UserError(f"could not load {what.rsplit(' ', 1)[0]}: {first_line}{fix}")


def _check_file(path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"--pretrained-file {path}: no such file; give a .safetensors / .pth of the backbone "
            "(`bacon-zoo import-weights` converts a foreign checkpoint; `make weights` writes the "
            "EfficientNet-Lite0 one)"
        )
    return str(p)


def create_backbone(
    name: str, pretrained: bool = False, pretrained_file: str | None = None, **kwargs: Any
) -> nn.Module:
    """`timm.create_model(name, pretrained, **kwargs)` with one-line errors for user mistakes.

    `name` is one of `list_backbones()`, any timm name (with an optional `.tag`), or an `hf-hub:` /
    `local-dir:` model. kwargs go to the model constructor (the trainer's `--backbone-kwargs`);
    `num_classes=0` gives pooled features. `pretrained_file` loads the weights from a local file
    through timm (`pretrained_cfg_overlay=dict(file=...)`: timm drops a classifier of another size),
    so nothing is downloaded.
    """
    try:
        source, _ = parse_model_name(name)
    except ValueError as e:
        raise UserError(f"bad backbone name: {e}") from e
    if pretrained_file is not None:
        if source is not None:
            raise UserError(
                f"--pretrained-file takes a timm architecture name, not '{name}'; a local-dir: "
                "folder already holds its weights (use --pretrained)"
            )
        kwargs["pretrained_cfg_overlay"] = dict(file=_check_file(pretrained_file))
        pretrained = True
    if source is None:
        _check_name(name, pretrained and pretrained_file is None)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if pretrained_file is None or "size mismatch" not in str(e) and "Missing key" not in str(e):
            raise
        first = (str(e).strip().splitlines() or ["?"])[-1].strip()
        raise UserError(
            f"--pretrained-file {pretrained_file} does not fit '{name}' ({first}); convert it with "
            "`bacon-zoo import-weights`"
        ) from None
    except OSError as e:
        if source is None and not pretrained:
            raise
        if source == "local-dir":
            raise UserError(f"could not load backbone '{name}': {e}") from e
        raise _hub_error(name, e) from e
    except TypeError as e:
        if "unexpected keyword argument" in str(e) and kwargs:
            raise UserError(
                f"backbone '{name}' does not accept these --backbone-kwargs {sorted(kwargs)}: {e}"
            ) from e
        raise
