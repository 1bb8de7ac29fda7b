"""Push, pull and load exported models: huggingface_hub and timm underneath, one-line errors on top.

Names: `hf-hub:ORG/NAME[@REV]`, `local-dir:PATH`, a plain folder path, a plain repo id `ORG/NAME`, or a
timm name with a pretrained tag (`wrn28_2.bacon_cifar10_lt`, registered from the zoo index).
Heavy libraries are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
REQUIRED_EXPORT_FILES = ("README.md", "config.json", "model.safetensors")


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
# load / predict


def _expected_sha(folder: Path, filename: str) -> str | None:
    import json

    info = folder / "bacon_net.json"
    if not info.is_file():
        return None
    try:
        return (json.loads(info.read_text()).get("sha256") or {}).get(filename)
    except ValueError:
        return None


def load_pretrained(name: str) -> tuple[Any, dict]:
    """The exported timm classifier (eval mode) and its data config (input size, mean/std, crop).

    `name`: `hf-hub:ORG/NAME[@REV]`, `local-dir:PATH`, a folder, `ORG/NAME`, or a zoo tag such as
    `wrn28_2.bacon_cifar10_lt`. `model.safetensors` is verified before loading: a truncated or corrupt
    file is refused with a UserError.
    """
    import timm
    import timm.data

    import bacon_zoo.models  # noqa: F401  (registers the small-image architectures)
    from bacon_zoo.hub.export import verify_safetensors

    kind, ident = parse_name(name)
    if kind == "timm":
        from bacon_zoo.hub.zoo import register_zoo_tags

        register_zoo_tags()
        arch = ident.split(".", 1)[0]
        if not timm.is_model(arch) or not timm.models.is_model_pretrained(ident):
            raise UserError(
                f"'{name}' is not a pretrained timm name here (see `bacon-zoo zoo` for pushed models); "
                "give an export folder or hf-hub:ORG/NAME"
            )
        hub_id = timm.models.get_pretrained_cfg(ident).hf_hub_id
        if hub_id:  # fetch (cached) and verify before timm loads it
            folder = pull(hub_id, allow_patterns=["model.safetensors", "bacon_net.json"])
            verify_safetensors(
                folder / "model.safetensors", _expected_sha(folder, "model.safetensors")
            )
        with hub_errors("download", ident):
            model = timm.create_model(ident, pretrained=True)
    else:
        folder = resolve_folder(name, ["config.json", "model.safetensors", "bacon_net.json"])
        if not (folder / "config.json").is_file():
            raise UserError(f"{name} has no config.json: it is not a timm model folder or export")
        verify_safetensors(folder / "model.safetensors", _expected_sha(folder, "model.safetensors"))
        try:
            model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise UserError(
                    f"{name}: {_first_line(e)}; it needs a timm (or bacon-zoo) version that has "
                    "this architecture"
                ) from None
            raise
        if kind == "hub":
            model.pretrained_cfg["hf_hub_id"] = ident
    model.eval()
    return model, timm.data.resolve_model_data_config(model)


def predict(
    model_name: str, image_paths: Sequence[str | Path], topk: int = 5
) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) for each image file, with timm's eval transform."""
    import timm.data
    import torch
    from PIL import Image, UnidentifiedImageError

    if not image_paths:
        raise UserError("give at least one image file to classify")
    model, data_cfg = load_pretrained(model_name)
    transform = timm.data.create_transform(**data_cfg, is_training=False)
    batch = []
    for p in image_paths:
        try:
            with Image.open(p) as img:
                batch.append(transform(img.convert("RGB")))
        except FileNotFoundError:
            raise UserError(f"image {p} not found") from None
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(
                f"can't read image {p} ({_first_line(e)}); give a PNG/JPEG file"
            ) from None
    names = model.pretrained_cfg.get("label_names") or []
    with torch.inference_mode():
        probs = model(torch.stack(batch)).softmax(dim=-1)
    k = max(1, min(int(topk), probs.shape[-1]))
    values, indices = probs.topk(k, dim=-1)
    return [
        [
            (str(names[i]) if i < len(names) else str(i), float(v))
            for v, i in zip(vs.tolist(), ix.tolist())
        ]
        for vs, ix in zip(values, indices)
    ]


# ---------------------------------------------------------------------------------------------
# push


def check_export(export_dir: Path) -> None:
    """An export folder with its card, timm config and verified weights, or a UserError."""
    from bacon_zoo.hub.export import verify_safetensors

    if not export_dir.is_dir():
        raise UserError(
            f"{export_dir} is not a folder; export a run first (bacon-zoo export RUN_DIR)"
        )
    missing = [f for f in REQUIRED_EXPORT_FILES if not (export_dir / f).is_file()]
    if missing:
        raise UserError(
            f"{export_dir} is not an export (missing {', '.join(missing)}); run `bacon-zoo export RUN_DIR`"
        )
    verify_safetensors(
        export_dir / "model.safetensors", _expected_sha(export_dir, "model.safetensors")
    )


@contextlib.contextmanager
def _staged(export_dir: Path, repo_id: str) -> Iterator[Path]:
    """A hard-linked copy of the export whose card names `repo_id`; the export itself is not touched."""
    from bacon_zoo.hub.card import build_card

    with tempfile.TemporaryDirectory(prefix="bacon-zoo-push-") as tmp:
        stage = Path(tmp) / export_dir.name

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(export_dir, stage, copy_function=link)
        if (export_dir / "bacon_net.json").is_file():
            (stage / "README.md").unlink()
            build_card(export_dir, hub_id=repo_id).save(stage / "README.md")
        yield stage


def push(
    export_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Create (if needed) and upload `export_dir` to the model repo `repo_id`; returns the repo URL.

    The token comes from `token`, HF_TOKEN or `hf auth login`. A failure leaves the local export as it
    was and raises a UserError that says what to check.
    """
    from huggingface_hub import HfApi

    export_dir = Path(export_dir)
    check_export(export_dir)
    repo_id = repo_id.split(":", 1)[1] if repo_id.startswith("hf-hub:") else repo_id
    if not _REPO_ID.fullmatch(repo_id) or "@" in repo_id:
        raise UserError(
            f"'{repo_id}' is not a repo id; use ORG/NAME (e.g. me/wrn28_2.bacon_cifar10_lt)"
        )
    api = HfApi(token=token)
    retry = f"the local export is unchanged; retry `bacon-zoo push {export_dir} {repo_id}`"
    with hub_errors("push to", repo_id, after=retry):
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = getattr(url, "repo_id", None) or repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with _staged(export_dir, repo_id) as stage:
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(stage),
                revision=revision,
                commit_message=f"Upload {export_dir.name} with bacon-zoo",
            )
    return str(url)
