"""Model weights between runs, exports and the Hub, below the trainer: `--init-from` lives here.

`load_bacon_net_weights(model, source)` fills a BaconNet from an export's `bacon_net.safetensors` (a
folder, `local-dir:PATH`, `hf-hub:ORG/NAME[@REV]` or `ORG/NAME`), after `verify_safetensors` has refused
a truncated or corrupt file. Hub downloads go through huggingface_hub's cache, and every Hub failure
becomes one line (`hub_errors`). The hub layer (push / pull / predict) re-uses these.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from bacon_zoo.models import BaconNet

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
NET_WEIGHTS = "bacon_net.safetensors"
NET_CONFIG = "bacon_net.json"


# ---------------------------------------------------------------------------------------------
# names and errors


def parse_name(name: str) -> tuple[str, str]:
    """("local", path) | ("hub", repo_id[@rev]) | ("timm", registered name)."""
    if name.startswith("local-dir:"):
        return "local", name.removeprefix("local-dir:")
    if name.startswith(("hf-hub:", "hf_hub:")):
        return "hub", name.split(":", 1)[1]
    if Path(name).expanduser().exists():
        return "local", name
    if _REPO_ID.fullmatch(name):
        return "hub", name
    if "/" not in name and "\\" not in name and ":" not in name:
        return "timm", name
    raise UserError(
        f"'{name}' is neither a folder nor a Hub repo id; give an export folder, local-dir:PATH, "
        "hf-hub:ORG/NAME or ORG/NAME"
    )


def _split_rev(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    repo, _, rev = repo.partition("@")
    return repo, revision or rev or None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_network_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "TimeoutException", "NetworkError", "ConnectError"}
    )


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str, after: str = "") -> Iterator[None]:
    """Translate huggingface_hub / network failures of `action` on `repo_id` into one-line UserErrors."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    tail = f"; {after}" if after else ""
    try:
        yield
    except UserError:
        raise
    except OfflineModeIsEnabled:
        raise UserError(
            f"can't {action} {repo_id}: HF_HUB_OFFLINE is set; unset it{tail}"
        ) from None
    except LocalTokenNotFoundError:
        raise UserError(
            f"can't {action} {repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login`{tail}"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{repo_id} is gated on {endpoint}: accept its terms on the Hub and set HF_TOKEN{tail}"
        ) from None
    except RevisionNotFoundError:
        raise UserError(
            f"{repo_id}: revision not found on {endpoint}; check --revision (branch, tag or commit)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"no model repo '{repo_id}' on {endpoint} (or it is private: set HF_TOKEN / "
            f"`hf auth login`); check the repo id{tail}"
        ) from None
    except LocalEntryNotFoundError:
        why, fix = (
            ("HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
            if constants.HF_HUB_OFFLINE
            else (f"{endpoint} can't be reached", "check the network or HF_ENDPOINT")
        )
        raise UserError(
            f"{repo_id} is not in the local Hugging Face cache and {why}; {fix} and retry{tail}"
        ) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserError(
                f"the Hub refused to {action} {repo_id} (HTTP {status}): check HF_TOKEN / `hf auth "
                f"login` and that the token can write to '{repo_id.split('/')[0]}'{tail}"
            ) from None
        raise UserError(
            f"can't {action} {repo_id}: {_first_line(e)}{tail or '; retry later'}"
        ) from None
    except Exception as e:
        if _is_network_error(e):
            raise UserError(
                f"can't {action} {repo_id}: {endpoint} is unreachable ({type(e).__name__}); check the "
                f"network or HF_ENDPOINT{tail or ' and retry'}"
            ) from None
        raise


# ---------------------------------------------------------------------------------------------
# pull / resolve


def pull(
    repo_id: str,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    force: bool = False,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """Download a model repo (into the HF cache, or `local_dir`) and return its folder."""
    from huggingface_hub import snapshot_download

    repo, rev = _split_rev(
        repo_id.split(":", 1)[1] if repo_id.startswith("hf-hub:") else repo_id, revision
    )
    with hub_errors("pull", repo):
        path = snapshot_download(
            repo,
            revision=rev,
            local_dir=str(local_dir) if local_dir is not None else None,
            force_download=force,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
        )
    return Path(path)


def resolve_folder(name: str, files: Sequence[str]) -> Path:
    """A local folder holding (at least) `files` of model `name`; Hub repos are fetched (cached)."""
    kind, ident = parse_name(name)
    if kind == "timm":
        raise UserError(
            f"'{name}' is a timm model name, not an export; give an export folder or hf-hub:ORG/NAME"
        )
    if kind == "hub":
        try:
            return pull(ident, allow_patterns=files)
        except UserError as e:
            if name.startswith("hf-hub:") or "no model repo" not in str(e):
                raise
            raise UserError(f"{e} (and there is no folder '{ident}')") from None
    folder = Path(ident).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a folder; give an export folder (bacon-zoo export RUN_DIR)"
        )
    return folder


# ---------------------------------------------------------------------------------------------
# safetensors, strict loading, the full BaconNet of an export


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    if sha256 and _sha256(path) != sha256:
        raise UserError(
            f"{path} does not match the checksum recorded in {NET_CONFIG}; the file was changed or "
            "corrupted: export again, or re-download it with `bacon-zoo pull REPO --force`"
        )


def expected_sha(folder: Path, filename: str) -> str | None:
    """The sha256 of `filename` recorded in the export's bacon_net.json (None without one)."""
    import json

    info = Path(folder) / NET_CONFIG
    if not info.is_file():
        return None
    try:
        return (json.loads(info.read_text()).get("sha256") or {}).get(filename)
    except (ValueError, AttributeError):
        return None


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


def read_net_info(folder: Path, source: str) -> dict[str, Any]:
    from bacon_zoo.fileio import read_json

    info = read_json(
        Path(folder) / NET_CONFIG,
        "the BaconNet description",
        f"'{source}' is not a bacon-zoo export (timm-only repos can't seed --init-from)",
    )
    if not isinstance(info, dict):
        raise UserError(f"{Path(folder) / NET_CONFIG} is not a JSON object; export again")
    return info


def load_bacon_net_weights(model: BaconNet, source: str | Path) -> None:
    """Load an export's full BaconNet weights (backbone, both heads, projection) into `model`, in place.

    `source`: an export folder, `local-dir:PATH`, `hf-hub:ORG/NAME[@REV]` or a plain Hub repo id. A model
    of another shape (backbone, num_classes, proj_dim) or a corrupt file is a UserError.
    """
    import safetensors.torch

    folder = resolve_folder(str(source), [NET_WEIGHTS, NET_CONFIG])
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
    from bacon_zoo.models import BaconNet

    folder = resolve_folder(str(source), [NET_WEIGHTS, NET_CONFIG])
    info = read_net_info(folder, str(source))
    net = BaconNet(
        info["backbone"],
        num_classes=int(info["num_classes"]),
        proj_dim=int(info["proj_dim"]),
        pretrained=False,
        backbone_kwargs=info.get("backbone_kwargs") or {},
    )
    load_bacon_net_weights(net, folder)
    return net.eval()


__all__ = [
    "expected_sha",
    "hub_errors",
    "load_bacon_net",
    "load_bacon_net_weights",
    "load_strict",
    "parse_name",
    "pull",
    "resolve_folder",
    "verify_safetensors",
]
