"""Push, pull and load exported models: huggingface_hub and timm underneath, one-line errors on top.

Names: `hf-hub:ORG/NAME[@REV]`, `local-dir:PATH`, a plain folder path, a plain repo id `ORG/NAME`, or a
zoo name (`wrn28_2.bacon_c10lt_n1500m3000g100_s0`), looked up on demand in the zoo index and loaded
from its Hub repo through timm's public `hf-hub:` path. Name parsing, downloads and Hub error messages
live in `bacon_zoo.hub.weights`; the export folder's files are read through `bacon_zoo.run.exportdir`.
Heavy libraries are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError
from bacon_zoo.hub.weights import (
    _REPO_ID,
    _first_line,
    hub_errors,
    parse_name,
    pull,
    resolve_folder,
)
from bacon_zoo.run.exportdir import ExportDir
from bacon_zoo.run.layout import NET_CONFIG, TIMM_CONFIG, TIMM_WEIGHTS
from bacon_zoo.run.weights import verify_safetensors

__all__ = [
    "check_export",
    "load_pretrained",
    "parse_name",
    "predict",
    "pull",
    "push",
    "retry_command",
]

# ---------------------------------------------------------------------------------------------
# load / predict


def load_pretrained(name: str) -> tuple[Any, dict]:
    """The exported timm classifier (eval mode) and its data config (input size, mean/std, crop).

    `name`: `hf-hub:ORG/NAME[@REV]`, `local-dir:PATH`, a folder, `ORG/NAME`, or a zoo name such as
    `wrn28_2.bacon_c10lt_n1500m3000g100_s0` (its index entry gives the Hub repo). `model.safetensors` is
    verified before timm loads it: a truncated or corrupt file is refused with a UserError.
    """
    import timm
    import timm.data

    import bacon_zoo.models  # noqa: F401  (registers the small-image architectures)

    kind, ident = parse_name(name)
    if kind == "timm":
        from bacon_zoo.hub.zoo import hub_id_of

        kind, ident = "hub", hub_id_of(name)
    folder = resolve_folder(
        f"hf-hub:{ident}" if kind == "hub" else f"local-dir:{ident}",
        [TIMM_CONFIG, TIMM_WEIGHTS, NET_CONFIG],
    )
    export = ExportDir(folder)
    if not export.timm_config.is_file():
        raise UserError(f"{name} has no {TIMM_CONFIG}: it is not a timm model folder or export")
    verify_safetensors(export.timm_weights, export.expected_sha(TIMM_WEIGHTS))
    fix = "export or download the model again"
    config = export.read_timm_config(fix)
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UserError(
            f"{export.timm_config} names no 'architecture': it is not a timm config; {fix}"
        )
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (KeyError, TypeError, ValueError) as e:  # a config.json timm cannot build from
        raise UserError(
            f"{export.timm_config} does not build a model ({_first_line(e)}); {fix}"
        ) from None
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
            with warnings.catch_warnings():  # PIL only warns below twice its pixel limit
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as img:
                    batch.append(transform(img.convert("RGB")))
        except FileNotFoundError:
            raise UserError(f"image {p} not found") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UserError(
                f"image {p} is too large to open safely ({_first_line(e)}); give a smaller image"
            ) from None
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
    if not export_dir.is_dir():
        raise UserError(
            f"{export_dir} is not a folder; export a run first (bacon-zoo export RUN_DIR)"
        )
    export = ExportDir(export_dir)
    missing = export.has_model()
    if missing:
        raise UserError(
            f"{export_dir} is not an export (missing {', '.join(missing)}); run `bacon-zoo export RUN_DIR`"
        )
    verify_safetensors(export.timm_weights, export.expected_sha(TIMM_WEIGHTS))


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
        export = ExportDir(export_dir)
        if export.is_export() and not export.card_edited():  # a hand-edited card goes up as is
            card = ExportDir(stage).card
            card.unlink()
            build_card(export_dir, hub_id=repo_id).save(card)
        yield stage


def retry_command(
    export_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None
) -> str:
    """The `bacon-zoo push` command line that repeats this push (shell-quoted, parses as written)."""
    args = ["bacon-zoo", "push", str(export_dir), "--repo-id", repo_id]
    if private:
        args.append("--private")
    if revision:
        args += ["--revision", revision]
    return shlex.join(args)


def push(
    export_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Create (if needed) and upload `export_dir` to the model repo `repo_id`; returns the repo URL.

    The token comes from `token`, HF_TOKEN or `hf auth login`, and is checked before any network call.
    A failure leaves the local export as it was and raises a UserError that says what to check and
    the command that retries.
    """
    from huggingface_hub import HfApi, get_token

    export_dir = Path(export_dir)
    check_export(export_dir)
    repo_id = repo_id.split(":", 1)[1] if repo_id.startswith("hf-hub:") else repo_id
    if not _REPO_ID.fullmatch(repo_id) or "@" in repo_id:
        raise UserError(
            f"'{repo_id}' is not a repo id; use ORG/NAME (e.g. me/wrn28_2.bacon_c10lt_n1500m3000g100_s0)"
        )
    retry = f"the local export is unchanged; retry: {retry_command(export_dir, repo_id, private, revision)}"
    token = token or get_token()
    if not token:
        raise UserError(
            f"no Hugging Face token to push {repo_id} with: set HF_TOKEN or run `hf auth login`; "
            + retry.removeprefix("the local export is unchanged; ")
        )
    api = HfApi(token=token)
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
