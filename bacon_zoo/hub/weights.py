"""The Hub's half of model weights: names, downloads (huggingface_hub's cache) and one-line Hub errors.

A model is named `hf-hub:ORG/NAME[@REV]`, `local-dir:PATH`, a folder, a plain repo id `ORG/NAME` or a
timm name; `resolve_folder` turns any of them into a local folder holding the files asked for, and the
loaders here take any name. Below this layer (`bacon_zoo.run.weights`) only local folders are read:
`--init-from hf-hub:...` is fetched by `resolve_init_from` before training starts.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bacon_zoo.errors import UserError
from bacon_zoo.run import weights as local
from bacon_zoo.run.layout import NET_CONFIG, NET_WEIGHTS

if TYPE_CHECKING:
    from bacon_zoo.models import BaconNet

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


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


def resolve_init_from(init_from: str | None) -> Path | None:
    """The local folder of `--init-from` (a Hub repo is downloaded, cached, now: before training
    starts, so the trainer only ever reads a folder); None without one."""
    return None if not init_from else resolve_folder(init_from, [NET_WEIGHTS, NET_CONFIG])


def load_bacon_net_weights(model: BaconNet, source: str | Path) -> None:
    """`bacon_zoo.run.weights.load_bacon_net_weights` for any model name (a Hub repo is fetched)."""
    local.load_bacon_net_weights(model, resolve_folder(str(source), [NET_WEIGHTS, NET_CONFIG]))


def load_bacon_net(source: str | Path) -> BaconNet:
    """`bacon_zoo.run.weights.load_bacon_net` for any model name (a Hub repo is fetched)."""
    return local.load_bacon_net(resolve_folder(str(source), [NET_WEIGHTS, NET_CONFIG]))


__all__ = [
    "hub_errors",
    "load_bacon_net",
    "load_bacon_net_weights",
    "parse_name",
    "pull",
    "resolve_folder",
    "resolve_init_from",
]
