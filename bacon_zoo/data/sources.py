"""Image-classification sources: presets, any Hub id or local folder, decoded once to a uint8 cache.

Every source ends as two `ImageSet`s (uint8 [N, S, S, 3] images resized to `image_size`, int64 labels with
-1 = unknown) plus class names and normalisation statistics. Decoding happens once per (data, split, size)
and is cached as .npz under `$BACON_ZOO_CACHE` (default `~/.cache/bacon_zoo`), so training never touches
PIL decoding and the second load of CIFAR-10 is a file read.

A data set can also be given as one `.npz` of already decoded uint8 arrays (`save_npz` writes it):
it loads with numpy alone, without `datasets` or decoding (the GPU device check carries one).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bacon_zoo.data.presets import PRESETS, Preset, preset_env_var, preset_of
from bacon_zoo.data.splits import balanced_indices, class_counts
from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write

CACHE_FORMAT = 2  # bump when the decoded layout changes (2: an `ok` mask for unreadable images)
# held-out test splits use seed + offset, so they never mirror the split's own draw
HOLDOUT_SEED_OFFSET = 7919
TEST_SPLITS = ("test", "validation", "valid", "val")
UNLABELED_SPLITS = ("unlabeled", "unlabelled", "unsupervised")
LABEL_NAMES = ("label", "labels", "fine_label", "target", "class")
OFFLINE_HINT = "use --dataset digits (bundled, offline), or a local folder (parquet files, save_to_disk, imagefolder)"
LAYOUTS = (
    "images in class sub-folders (<folder>/<class>/<image>.png|.jpg, optionally under train/ and test/), "
    "parquet/arrow/csv/json files with an Image column, a save_to_disk folder, or one .npz of "
    "decoded arrays (bacon_zoo.data.sources.save_npz)"
)


@dataclass
class ImageSet:
    """Decoded images (uint8 [N, H, W, 3]) and labels (int64 [N], -1 = unknown)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx])


@dataclass
class SourceData:
    """A data set ready for splitting: train (may hold label -1 images) and a labeled test set."""

    train: ImageSet
    test: ImageSet
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    fingerprint: str
    # origin[i] indexes origin_names: the source split train image i came from (SVHN: train/extra,
    # STL-10: train/unlabeled); a split file records these counts
    origin: np.ndarray | None = None
    origin_names: list[str] = field(default_factory=list)
    held_out_per_class: int = 0  # > 0: the test set was carved out of the training pool
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable images skipped, per split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------------
# opening a data set


def cache_dir() -> Path:
    return Path(os.environ.get("BACON_ZOO_CACHE") or Path.home() / ".cache" / "bacon_zoo")


def _hub_offline() -> bool:
    """True when the user asked for offline mode (read at call time: tests set the env var late)."""
    import datasets.config

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")
    return env or bool(datasets.config.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the Hub endpoint: fails in milliseconds without network, unlike the retries."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_save_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
}


def _open_local(path: Path) -> dict[str, Any]:
    import datasets

    try:
        if path.is_dir() and _is_save_to_disk(path):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise UserError(
                    f"'{path}' is a {path.suffix or 'suffix-less'} file; give a folder, or a "
                    f"{'/'.join(_FILE_BUILDERS)} file"
                )
            loaded = datasets.load_dataset(builder, data_files={"train": str(path)})
        else:
            loaded = datasets.load_dataset(str(path))
    except UserError:
        raise
    except datasets.data_files.EmptyDatasetError:
        raise UserError(
            f"no images or supported data files in '{path}'; supported layouts: {LAYOUTS}"
        ) from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetsError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"could not read a data set from '{path}' ({msg}); supported layouts: {LAYOUTS}"
        ) from None
    return _as_splits(loaded)


def _open_hub(repo: str, config: str | None, revision: str | None) -> dict[str, Any]:
    import datasets

    offline = _hub_offline()
    if offline and not datasets.config.HF_HUB_OFFLINE:
        # HF_HUB_OFFLINE was set after `datasets` was imported: it would still try the network.
        raise UserError(
            f"HF_HUB_OFFLINE is set, so the Hub data set '{repo}' cannot be loaded; {OFFLINE_HINT}"
        )
    if not offline and not _hub_reachable():
        raise UserError(
            f"cannot reach the Hugging Face Hub to load '{repo}' (no network); {OFFLINE_HINT}, "
            "or set HF_HUB_OFFLINE=1 to use a copy already in the datasets cache"
        )
    try:
        loaded = datasets.load_dataset(repo, config, revision=revision)
    except ConnectionError as e:
        why = "offline mode" if offline else "connection failed"
        raise UserError(
            f"could not load '{repo}' from the Hub ({why}: {type(e).__name__}); {OFFLINE_HINT}"
        ) from None
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError):
        raise UserError(
            f"dataset '{repo}' is not a preset ({', '.join(PRESETS)}), a local path, or a Hub data set; "
            "check the spelling"
        ) from None
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"could not load '{repo}' from the Hub ({msg}); check --dataset-revision and the config"
        ) from None
    return _as_splits(loaded)


def _as_splits(loaded: Any) -> dict[str, Any]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


# ---------------------------------------------------------------------------------------------
# columns and labels


def _find_columns(
    ds: Any, image_column: str | None, label_column: str | None, local: Path | None = None
) -> tuple[str, str]:
    """The first `Image` and `ClassLabel` features unless named; a wrong name lists what exists.

    `local` (the folder a local data set came from) words the errors for folders: no images at all,
    or images in one folder only (an image folder without class sub-folders has no labels).
    """
    import datasets

    feats = ds.features
    cols = list(feats)
    avail = ", ".join(f"{c} ({type(feats[c]).__name__})" for c in cols)
    for given, what, flag in (
        (image_column, "image", "--image-column"),
        (label_column, "label", "--label-column"),
    ):
        if given is not None and given not in feats:
            raise UserError(
                f"{what} column '{given}' not found; available columns: {avail}; set {flag}"
            )
    if image_column is None:
        image_column = next((c for c in cols if isinstance(feats[c], datasets.Image)), None)
        if image_column is None:
            where = f" in '{local}'" if local is not None else ""
            raise UserError(
                f"no images found{where} (no Image column; available columns: {avail}); set "
                f"--image-column if a column holds the images; supported layouts: {LAYOUTS}"
            )
    if label_column is None:
        label_column = next((c for c in cols if isinstance(feats[c], datasets.ClassLabel)), None)
        if label_column is None:
            label_column = next(
                (c for c in LABEL_NAMES if c in feats and isinstance(feats[c], datasets.Value)),
                None,
            )
        folder = (
            _image_file_folder(ds, image_column)
            if label_column is None and local is not None
            else None
        )
        if folder is not None:  # an image folder without class sub-folders
            raise UserError(
                f"found only one class in '{local}' (every image is in the folder '{folder}'), so "
                "there are no labels; put each class in its own sub-folder "
                "(<folder>/<class>/<image>.png), or name a label column with --label-column"
            )
        if label_column is None:
            raise UserError(
                f"no ClassLabel column found; available columns: {avail}; set --label-column"
            )
    return image_column, label_column


def _image_file_folder(ds: Any, image_column: str) -> str | None:
    """The folder of the first image when images are files on disk (an image folder), else None."""
    import datasets

    if not len(ds) or not isinstance(ds.features[image_column], datasets.Image):
        return None
    value = _raw_image_column(ds, image_column)[0][image_column]
    path = value.get("path") if isinstance(value, dict) else None
    return Path(path).parent.name if path and Path(path).is_file() else None


def _class_names(ds: Any, label_column: str) -> list[str] | None:
    """ClassLabel names, or None when labels are plain values (then derived from the data)."""
    import datasets

    feat = ds.features[label_column]
    return list(feat.names) if isinstance(feat, datasets.ClassLabel) else None


def _raw_labels(ds: Any, label_column: str) -> list[Any]:
    return ds.data.column(label_column).to_pylist()


def _encode_labels(raw: list[Any], names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Integer labels (None -> -1) and the class names; string labels are mapped through sorted names."""
    present = [v for v in raw if v is not None and not (isinstance(v, (int, np.integer)) and v < 0)]
    if names is None:
        if present and all(isinstance(v, str) for v in present):
            names = sorted(set(present))
        elif present and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present
        ):
            names = [str(i) for i in range(int(max(present)) + 1)]
        elif not present:
            names = []
        else:
            raise UserError(
                "the label column holds neither integers nor strings; set --label-column"
            )
    lookup = {n: i for i, n in enumerate(names)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, v in enumerate(raw):
        if v is None:
            out[i] = -1
        elif isinstance(v, str):
            if v not in lookup:
                raise UserError(
                    f"label '{v}' is not one of the {len(names)} classes of the train split"
                )
            out[i] = lookup[v]
        else:
            out[i] = int(v)
    if (out >= len(names)).any():
        raise UserError(
            f"labels go up to {int(out.max())} but the train split has {len(names)} classes"
        )
    return out, names


# ---------------------------------------------------------------------------------------------
# decoding, once, to a uint8 cache


def _wide_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer pixels wider than 8 bits as uint8: 16-bit ones by their high byte (as PIL reads 16-bit
    RGB PNGs), wider integers holding 0..255 as they are; anything else is refused (ValueError)."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(
            f"pixel values in [{lo}, {hi}] are neither 8- nor 16-bit; convert the image to 8-bit"
        )
    if arr.dtype.itemsize == 2 or hi > 255:
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    return arr.astype(np.uint8)


def _to_rgb(value: Any, size: int, resample: str = "bicubic") -> np.ndarray:
    """One decoded image (PIL, array or {bytes}) as uint8 [size, size, 3]: RGB, center-fit, resized
    with PIL's `resample` filter (bicubic, or a preset's: STL-10 bilinear, as the release)."""
    from PIL import Image, ImageOps

    if isinstance(value, dict) and value.get("bytes") is not None:
        value = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        value = Image.open(value["path"])
    if isinstance(value, Image.Image) and value.mode.startswith("I"):  # 16/32-bit grey (I;16, I)
        value = np.asarray(value)  # PIL's own convert("RGB") clips them: a white image
    if not isinstance(value, Image.Image):
        arr = np.asarray(value)
        if arr.dtype != np.uint8 and np.issubdtype(arr.dtype, np.integer):
            arr = _wide_to_uint8(arr)
        if arr.dtype != np.uint8:
            scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
            arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        value = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    if value.mode != "RGB":
        value = value.convert("RGB")
    if value.size != (size, size):
        method = Image.Resampling[resample.upper()]
        value = ImageOps.fit(value, (size, size), method=method)
    return np.asarray(value, dtype=np.uint8)


def _raw_image_column(ds: Any, image_column: str) -> Any:
    """The image column alone, `Image` features left undecoded ({bytes, path} dicts): decoding happens
    per image in `_to_rgb`, so one bad file is caught and named instead of failing a whole batch."""
    import datasets

    col = ds.select_columns([image_column])
    feat = col.features[image_column]
    if isinstance(feat, datasets.Image) and feat.decode:
        col = col.cast_column(image_column, datasets.Image(decode=False))
    return col


def _describe_image(value: Any, row: int, split: str, image_column: str) -> str:
    """Where a bad image is, for the user: its file when it is one, else its row and column."""
    path = value.get("path") if isinstance(value, dict) else None
    if path and value.get("bytes") is None:
        return f"file '{path}' (row {row} of split '{split}')"
    named = f" ('{path}')" if path else ""
    return f"row {row} of split '{split}', column '{image_column}'{named}"


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # PIL raises OSError (UnidentifiedImageError, truncated files), SyntaxError/EOFError on broken
    # headers, ValueError/TypeError on arrays of the wrong shape or dtype
    return (OSError, ValueError, TypeError, SyntaxError, EOFError, Image.DecompressionBombError)


def _unreadable_message(name: str, where: str, err: BaseException) -> str:
    why = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"cannot read the image at {where} of '{name}' ({type(err).__name__}: {why}); fix or delete "
        "it, or pass --skip-unreadable-images to leave unreadable images out"
    )


def _check_decoded_size(n: int, size: int, what: str) -> None:
    """Refuse a decode whose uint8 array cannot fit in memory (an image size far above the data's)."""
    import psutil

    need, free = n * size * size * 3, psutil.virtual_memory().available
    if need > free:
        raise UserError(
            f"decoding the {n} images of {what} at {size}x{size} needs {need / 2**30:.1f} GiB of "
            f"memory and {free / 2**30:.1f} GiB is free; lower --image-size"
        )


def decode_images(
    ds: Any,
    image_column: str,
    image_size: int,
    batch_size: int = 1000,
    split: str = "train",
    name: str = "",
    skip_unreadable: bool = False,
    resample: str = "bicubic",
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a column once into uint8 [N, S, S, 3] and an `ok` mask (batched reads; PIL only here).

    An image that does not decode stops with its file (or row and column) named, unless
    `skip_unreadable`: then its slot stays zero and `ok` is False there.
    """
    col = _raw_image_column(ds, image_column)
    _check_decoded_size(len(col), image_size, f"'{name or 'the data'}'/{split}")
    out = np.zeros((len(col), image_size, image_size, 3), dtype=np.uint8)
    ok = np.ones(len(col), dtype=bool)
    errors = _unreadable_errors()
    pos = 0
    report = _decode_progress(len(col), f"decoding {name or 'images'}/{split}")
    for batch in col.iter(batch_size=batch_size):
        report(pos)
        for value in batch[image_column]:
            try:
                out[pos] = _to_rgb(value, image_size, resample)
            except errors as e:
                if not skip_unreadable:
                    where = _describe_image(value, pos, split, image_column)
                    raise UserError(_unreadable_message(name or split, where, e)) from None
                ok[pos] = False
            pos += 1
    report(pos)
    return out, ok


def _decode_progress(total: int, what: str, parts: int = 10):
    """A callback `report(done)` for a long one-time decode: a line to the `bacon_zoo` logger at every
    tenth of the set (a scheduler's log file gets lines, not a redrawn bar); silent below 20k images."""
    log = logging.getLogger("bacon_zoo")
    step = max(1, total // parts)
    state = {"next": 0, "t0": time.perf_counter()}

    def report(done: int) -> None:
        if total < 20_000 or (done < state["next"] and done < total) or state["next"] > total:
            return
        state["next"] = (done // step + 1) * step if done < total else total + 1
        rate = done / max(time.perf_counter() - state["t0"], 1e-9)
        log.info(f"{what}: {done}/{total} images ({rate:.0f}/s), decoded once and cached")

    return report


def _cache_key(
    ds: Any, split: str, image_column: str, image_size: int, resample: str = "bicubic"
) -> str | None:
    """Key decoded arrays by the data set's fingerprint; None for in-memory data (nothing to reuse)."""
    fp = getattr(ds, "_fingerprint", None)
    if not fp or not getattr(ds, "cache_files", None):
        return None
    raw = f"{CACHE_FORMAT}|{fp}|{split}|{image_column}|{image_size}|{len(ds)}"
    if resample != "bicubic":  # bicubic keys stay as they were, so existing caches still hit
        raw += f"|{resample}"
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def cached_images(
    ds: Any,
    split: str,
    image_column: str,
    image_size: int,
    name: str,
    decode: bool = True,
    skip_unreadable: bool = False,
    resample: str = "bicubic",
) -> tuple[np.ndarray, np.ndarray]:
    """`decode_images`, read from / written to the on-disk cache when the data set has a fingerprint.

    Returns the images and the `ok` mask (False: unreadable, skipped). `decode=False` returns a
    zero-size [N, 0, 0, 3] placeholder and an all-True mask: for label-only work (tables, splits).
    """
    if not decode:
        return np.empty((len(ds), 0, 0, 3), dtype=np.uint8), np.ones(len(ds), dtype=bool)
    key = _cache_key(ds, split, image_column, image_size, resample)
    kw = dict(split=split, name=name, skip_unreadable=skip_unreadable, resample=resample)
    if key is None:
        return decode_images(ds, image_column, image_size, **kw)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-60:]
    path = cache_dir() / "decoded" / f"{safe}-{split}-{image_size}px-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                images, ok = z["images"], z["ok"]
            if images.shape[0] == len(ds) == ok.shape[0]:
                if not skip_unreadable and not ok.all():
                    _raise_first_unreadable(ds, split, image_column, image_size, name, ok)
                return images, ok
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache file: decode again and overwrite it
    images, ok = decode_images(ds, image_column, image_size, **kw)
    with contextlib.suppress(
        OSError
    ):  # a read-only cache is not fatal: the next load decodes again
        atomic_write(path, lambda f: np.savez(f, images=images, ok=ok))
    return images, ok


def _raise_first_unreadable(
    ds: Any, split: str, image_column: str, image_size: int, name: str, ok: np.ndarray
) -> None:
    """A cache written with skipping holds bad rows: without skipping, name the first one as decoding would."""
    row = int(np.flatnonzero(~ok)[0])
    value = _raw_image_column(ds, image_column)[row][image_column]
    try:
        _to_rgb(value, image_size)
    except _unreadable_errors() as e:
        raise UserError(
            _unreadable_message(name, _describe_image(value, row, split, image_column), e)
        ) from None
    # readable now (the file was fixed in place): the cached mask is stale, so decode afresh
    raise ValueError("stale unreadable-image mask")


def channel_stats(
    images: np.ndarray, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] over uint8 [N, H, W, 3], in chunks (no float copy of the set)."""
    n = 0
    s1 = np.zeros(3, dtype=np.float64)
    s2 = np.zeros(3, dtype=np.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        n += len(x)
        s1 += x.sum(0)
        s2 += np.square(x).sum(0)
    if n == 0:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
    return tuple(float(round(v, 4)) for v in mean), tuple(
        float(round(max(v, 1e-3), 4)) for v in std
    )


def _fingerprint(train: ImageSet, test: ImageSet, extra: str) -> str:
    """Content hash of the labels (what split indices depend on), the revision and the held-out choice."""
    h = hashlib.blake2b(digest_size=8)
    h.update(extra.encode())
    for arr in (train.labels, test.labels):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# a data set already decoded: one .npz of uint8 arrays, read with numpy alone

NPZ_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")


def save_npz(
    path: str | Path,
    train: ImageSet,
    test: ImageSet,
    class_names: list[str],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    note: str = "",
) -> Path:
    """Write a data set as the decoded arrays `load_source` reads from a `.npz` path (atomically).

    Layout: train_images uint8 [N, S, S, 3], train_labels int64 [N] (-1 = unlabeled), test_images,
    test_labels, class_names (str), optional mean/std (3 floats in [0, 1]) and a free-text note saying
    where the arrays came from. Compressed, though natural images shrink little (CIFAR: ~7%).
    """
    arrays: dict[str, np.ndarray] = {
        "train_images": np.ascontiguousarray(train.images, dtype=np.uint8),
        "train_labels": np.asarray(train.labels, dtype=np.int64),
        "test_images": np.ascontiguousarray(test.images, dtype=np.uint8),
        "test_labels": np.asarray(test.labels, dtype=np.int64),
        "class_names": np.asarray([str(c) for c in class_names]),
        "note": np.asarray(note),
    }
    if mean is not None and std is not None:
        arrays |= {"mean": np.asarray(mean, np.float64), "std": np.asarray(std, np.float64)}
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _is_npz(path: Path) -> bool:
    return path.suffix.lower() == ".npz" and path.is_file()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a `save_npz` file, checked; a UserError names what is missing or malformed."""
    fix = "write it with bacon_zoo.data.sources.save_npz"
    try:
        with np.load(path, allow_pickle=False) as z:  # no pickled objects: nothing in it runs code
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read '{path}' as an .npz of decoded images ({e}); {fix}") from None
    missing = [k for k in NPZ_ARRAYS if k not in arrays]
    if missing:
        raise UserError(f"'{path}' has no {', '.join(missing)} array(s); {fix}")
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(
                f"'{path}': {part}_images must be uint8 [N, H, W, 3], got {images.dtype} "
                f"{list(images.shape)}; {fix}"
            )
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(
                f"'{path}': {part}_labels must be {len(images)} integers, got {labels.dtype} "
                f"{list(labels.shape)}; {fix}"
            )
        if labels.size and (labels.max() >= len(arrays["class_names"]) or labels.min() < -1):
            raise UserError(
                f"'{path}': {part}_labels must lie in -1..{len(arrays['class_names']) - 1} "
                f"(class_names has {len(arrays['class_names'])}); {fix}"
            )
    return arrays


def _load_npz(
    path: Path, dataset: str, preset: Preset | None, image_size: int, decode: bool
) -> SourceData:
    """`load_source` for a `save_npz` file: its train (label -1 = unlabeled) and test arrays as they
    are, resized (PIL, the preset's filter) only when their side is not `image_size`."""
    arrays = _read_npz(path)
    names = [str(c) for c in arrays["class_names"]]
    resample = preset.resample if preset is not None else "bicubic"

    def images_of(part: str) -> np.ndarray:
        images = arrays[f"{part}_images"]
        if not decode:
            return np.empty((len(images), 0, 0, 3), dtype=np.uint8)
        if images.shape[1:3] != (image_size, image_size):
            images = np.stack([_to_rgb(im, image_size, resample) for im in images])
        return images

    train = ImageSet(images_of("train"), arrays["train_labels"].astype(np.int64))
    test = ImageSet(images_of("test"), arrays["test_labels"].astype(np.int64))
    test = test.subset(np.flatnonzero(test.labels >= 0))
    if preset is not None and preset.mean is not None:
        mean, std = preset.mean, preset.std
    elif "mean" in arrays and "std" in arrays:
        mean, std = tuple(map(float, arrays["mean"])), tuple(map(float, arrays["std"]))
    elif not decode:
        mean = std = (float("nan"),) * 3
    else:
        mean, std = channel_stats(train.images)
    return SourceData(
        train, test, names, tuple(mean), tuple(std), dataset, _fingerprint(train, test, "npz"),
        origin=np.zeros(len(train), dtype=np.int16), origin_names=["train"],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the entry point


def _pick_splits(
    splits: dict[str, Any], preset: Preset | None, dataset: str, where: str
) -> tuple[list[str], str | None, list[str]]:
    """(training-pool splits, test split, unlabeled-only splits) of a loaded data set.

    A preset names its pooled training splits (all required) and whether it needs an unlabeled split;
    any other source trains on `train` (or its first split) and finds test/unlabeled splits by name.
    """
    have = ", ".join(splits)
    if preset is not None:
        missing = [s for s in preset.train_splits if s not in splits]
        if missing:
            raise UserError(
                f"the {dataset} preset pools the splits {' + '.join(preset.train_splits)} into its "
                f"training set (as the release does), but {where} has no {', '.join(missing)} split "
                f"(splits: {have}); use a complete copy, or give the folder itself as --dataset to "
                "train on its splits as they are"
            )
        train_names = list(preset.train_splits)
    else:
        train_names = ["train" if "train" in splits else next(iter(splits))]
    if preset is not None and preset.test_split in splits:
        test_name = preset.test_split
    else:
        test_name = next((s for s in TEST_SPLITS if s in splits and s not in train_names), None)
    unl_names = [s for s in UNLABELED_SPLITS if s in splits and s not in train_names]
    if preset is not None and preset.requires_unlabeled and not unl_names:
        raise UserError(
            f"the {dataset} preset needs an unlabeled split ({'/'.join(UNLABELED_SPLITS)}): its "
            f"unlabeled set is that split plus all labeled-train images, but {where} has only {have}; "
            f"use the Hub copy {preset.hub_id} or set {preset_env_var(dataset)} to a local copy "
            "with train, test and unlabeled splits"
        )
    return train_names, test_name, unl_names


def _refuse_revision(revision: str | None, where: str) -> None:
    """A revision pins a Hub data set; on local data it would be silently meaningless."""
    if revision:
        raise UserError(
            f"--dataset-revision {revision} pins a Hub data set, but {where} is local; drop "
            "--dataset-revision (or load the Hub copy)"
        )


def load_source(
    dataset: str,
    image_column: str | None = None,
    label_column: str | None = None,
    revision: str | None = None,
    image_size: int = 32,
    test_per_class: int | None = None,
    seed: int = 0,
    decode: bool = True,
    skip_unreadable: bool = False,
) -> SourceData:
    """Load a preset, a Hub id, a local folder or a `save_npz` file as decoded train/test `ImageSet`s.

    Train is the preset's pooled training splits (SVHN: train + extra; else `train`) followed by any
    unlabeled-only split with label -1; `SourceData.origin` records which split each image came from.
    Without a test split, a balanced per-class test set is held out of train (`test_per_class`,
    default min(100, 20% of the smallest class), seeded by `seed`). `skip_unreadable` leaves images
    that do not decode out (counted, printed) instead of stopping. `decode=False` skips the images
    (zero-size placeholders; mean/std NaN unless the preset gives them): labels, split and fingerprint
    are the same as with decoding, unreadable images aside.
    """
    if image_size < 1:
        raise UserError(f"--image-size must be positive, got {image_size}")
    if test_per_class is not None and test_per_class < 1:
        raise UserError(f"--test-per-class must be positive, got {test_per_class}")
    # a preset name wins over a same-named folder: write ./name for the folder
    preset = preset_of(dataset)
    path = Path(dataset).expanduser()
    local: Path | None = None
    if preset is not None:
        image_column = image_column or preset.image_column
        label_column = label_column or preset.label_column
        env = os.environ.get(preset_env_var(dataset))
        if preset.builder is not None:
            _refuse_revision(revision, f"the bundled {dataset}")
            splits, where = {"train": preset.builder()}, f"the bundled {dataset}"
        elif env:
            if not Path(env).exists():
                raise UserError(f"{preset_env_var(dataset)}={env} does not exist; fix or unset it")
            local, where = Path(env), f"{preset_env_var(dataset)}={env}"
            _refuse_revision(revision, where)
            if _is_npz(local):
                return _load_npz(local, dataset, preset, image_size, decode)
            splits = _open_local(local)
        else:
            splits, where = _open_hub(preset.hub_id, preset.config, revision), f"'{preset.hub_id}'"
    elif path.exists():
        local, where = path, f"'{path}'"
        _refuse_revision(revision, where)
        if _is_npz(path):
            return _load_npz(path, dataset, None, image_size, decode)
        splits = _open_local(path)
    elif dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise UserError(f"local data set '{dataset}' does not exist; check the path")
    elif "/" not in dataset and (
        close := difflib.get_close_matches(dataset.lower(), PRESETS, 1, 0.8)
    ):
        raise UserError(
            f"unknown data set '{dataset}' (did you mean {close[0]}?); presets: {', '.join(PRESETS)}, "
            "or give a Hub id (owner/name) or a local folder"
        )
    else:
        splits, where = _open_hub(dataset, None, revision), f"'{dataset}'"
    resample = preset.resample if preset is not None else "bicubic"

    if not splits:
        raise UserError(f"data set '{dataset}' has no splits")
    train_names, test_name, unl_names = _pick_splits(splits, preset, dataset, where)
    first = splits[train_names[0]]
    image_column, label_column = _find_columns(first, image_column, label_column, local)

    names = _class_names(first, label_column)
    if names is None and preset is not None and preset.class_names:
        names = list(preset.class_names)  # plain integer labels: the record names the classes
    skipped: dict[str, int] = {}
    first_skipped: list[str] = []

    def images_of(split: str) -> tuple[np.ndarray, np.ndarray]:
        ds = splits[split]
        if image_column not in ds.features:
            raise UserError(
                f"split '{split}' has no column '{image_column}'; columns: {', '.join(ds.features)}"
            )
        images, ok = cached_images(
            ds, split, image_column, image_size, dataset, decode, skip_unreadable, resample
        )
        if not ok.all():
            skipped[split] = int((~ok).sum())
            row = int(np.flatnonzero(~ok)[0])
            value = _raw_image_column(ds, image_column)[row][image_column]
            first_skipped.append(_describe_image(value, row, split, image_column))
        return images, ok

    parts_img, parts_lab, parts_origin = [], [], []
    for i, split in enumerate(train_names + unl_names):
        ds = splits[split]
        if i < len(train_names):
            if label_column not in ds.features:
                raise UserError(
                    f"split '{split}' has no label column '{label_column}'; columns: "
                    f"{', '.join(ds.features)}; set --label-column"
                )
            labels, names = _encode_labels(_raw_labels(ds, label_column), names)
        else:  # unlabeled-only: whatever its label column holds, the labels are unknown
            labels = np.full(len(ds), -1, dtype=np.int64)
        images, ok = images_of(split)
        parts_img.append(images[ok] if not ok.all() else images)
        parts_lab.append(labels[ok])
        parts_origin.append(np.full(int(ok.sum()), i, dtype=np.int16))
    train = ImageSet(*(p[0] if len(p) == 1 else np.concatenate(p) for p in (parts_img, parts_lab)))
    origin = parts_origin[0] if len(parts_origin) == 1 else np.concatenate(parts_origin)
    origin_names = train_names + unl_names
    del parts_img
    if not names:
        raise UserError(
            f"data set '{dataset}' has no labeled training images; check --label-column"
        )
    present = [names[k] for k, c in enumerate(class_counts(train.labels, len(names))) if c]
    if len(present) < 2:
        only = f" ('{present[0]}')" if present else ""
        raise UserError(
            f"data set '{dataset}' has only one class with images{only}; class-imbalanced SSL needs "
            "at least two: put each class in its own sub-folder (<folder>/<class>/<image>.png), or "
            "set --label-column"
        )

    counts = class_counts(train.labels, len(names))
    empty = [k for k, c in enumerate(counts) if c == 0]
    # integer labels with gaps (3/7/9) or a class without images: say so, not "lower --n1"
    if empty:
        shown = ", ".join(f"{k} ('{names[k]}')" for k in empty[:5])
        shown += ", ..." if len(empty) > 5 else ""
        used = ", ".join(names[k] for k, c in enumerate(counts) if c)
        raise UserError(
            f"{len(empty)} of the {len(names)} classes of '{dataset}' have no training images "
            f"({shown}); every class 0..K-1 needs images (the labels used are {used}): relabel them "
            "0..K-1 without gaps, or drop the empty classes from the label feature"
        )

    held_out = 0
    if test_name is not None:
        test_ds = splits[test_name]
        if label_column not in test_ds.features:
            raise UserError(
                f"test split '{test_name}' has no label column '{label_column}'; columns: "
                f"{', '.join(test_ds.features)}"
            )
        test_labels, _ = _encode_labels(_raw_labels(test_ds, label_column), names)
        test_images, ok = images_of(test_name)
        test = ImageSet(test_images[ok] if not ok.all() else test_images, test_labels[ok])
        if (test.labels < 0).any():
            test = test.subset(np.flatnonzero(test.labels >= 0))
        holdout = "split"
    else:
        counts = class_counts(train.labels, len(names))
        per_class = test_per_class or (preset.test_per_class if preset else None)
        if per_class is None:
            per_class = max(1, min(100, int(0.2 * min(counts))))
        if per_class >= min(counts):
            k = int(np.argmin(counts))
            if counts[k] < 2:
                raise UserError(
                    f"class {k} ('{names[k]}') has only {counts[k]} image: with no test split each "
                    "class needs at least 2 (one held out for testing, one to train); add images of "
                    "it or leave the class out"
                )
            raise UserError(
                f"class {k} ('{names[k]}') has {counts[k]} images, too few to hold out "
                f"--test-per-class {per_class} for testing and keep some for training (the data set "
                "has no test split); use a smaller --test-per-class"
            )
        hseed = (
            preset.holdout_seed
            if preset and preset.holdout_seed is not None
            else seed + HOLDOUT_SEED_OFFSET
        )
        test_idx = balanced_indices(train.labels, len(names), per_class, hseed, class_names=names)
        keep = np.ones(len(train), dtype=bool)
        keep[test_idx] = False
        test = train.subset(test_idx)
        train = train.subset(np.flatnonzero(keep))
        origin = origin[keep]
        holdout = f"holdout{per_class}@{hseed}"
        held_out = int(per_class)

    if skipped:
        total = sum(skipped.values())
        per = ", ".join(f"{n} in {s}" for s, n in skipped.items())
        print(
            f"skipped {total} unreadable image{'s' if total != 1 else ''} in '{dataset}' ({per}; "
            f"first: {first_skipped[0]})",
            file=sys.stderr,
            flush=True,
        )

    if preset is not None and preset.mean is not None:
        mean, std = preset.mean, preset.std
    elif not decode:
        mean = std = (float("nan"),) * 3
    else:
        mean, std = channel_stats(train.images)
    extra = f"{revision or ''}|{holdout}"
    if len(train_names) > 1:  # a pooled training set is different data from its first split alone
        extra += "|pool=" + "+".join(train_names)
    fp = _fingerprint(train, test, extra)
    return SourceData(
        train, test, list(names), tuple(mean), tuple(std), dataset, fp,
        origin=origin, origin_names=origin_names, held_out_per_class=held_out, skipped=skipped,
    )  # fmt: skip
