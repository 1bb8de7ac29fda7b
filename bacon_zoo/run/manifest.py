"""One manifest format: what a writer put in a folder, as {relative path: sha256}.

    {"format": 1, "files": {"model.safetensors": "<sha256>", ...}, ...}

A checkpoint's `manifest.json` (written last: a checkpoint without one is never resumed from; it adds
`sizes`, so a truncated file is named without hashing it), an export's `export_manifest.json` (a
re-export replaces only an export that is exactly what it wrote) and analyze's `analysis.json`
(analyze writes only into a folder it wrote; it adds `written_by` and `run`) are all this record.
Checkpoints of earlier versions list `{"size", "sha256"}` per file; `read_manifest` reads them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import read_json, sha256_file, write_json

FORMAT = 1


@dataclass
class Manifest:
    """A folder's manifest: sha256 (and, where recorded, size) per relative path, plus extra fields."""

    files: dict[str, str]
    sizes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def folder_files(folder: str | Path, skip: Iterable[str] = ()) -> list[str]:
    """Every file below `folder` as a sorted relative POSIX path, the names in `skip` left out."""
    folder, skip = Path(folder), set(skip)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in skip
    )


def write_manifest(
    folder: str | Path,
    name: str,
    files: Iterable[str] | None = None,
    sizes: bool = False,
    **extra: Any,
) -> Path:
    """Write `folder/name` (atomically) for `files` (default: every file in the folder but the
    manifest itself), with their sizes when `sizes`, and `extra` fields after them."""
    folder = Path(folder)
    names = folder_files(folder, skip={name}) if files is None else sorted(set(files) - {name})
    record: dict[str, Any] = {
        "format": FORMAT,
        "files": {f: sha256_file(folder / f) for f in names},
    }
    if sizes:
        record["sizes"] = {f: (folder / f).stat().st_size for f in names}
    return write_json(folder / name, record | extra)


def read_manifest(folder: str | Path, name: str) -> Manifest:
    """The manifest `folder/name`: FileNotFoundError when there is none, ValueError when it is not
    one (unreadable JSON, another shape)."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        record = read_json(path, "a manifest", "")
    except UserError as e:
        raise ValueError(str(e)) from None
    listed = record.get("files") if isinstance(record, dict) else None
    if not isinstance(listed, dict):
        raise ValueError(f"{path} lists no files")
    files, sizes = {}, {}
    for f, v in listed.items():
        if isinstance(v, dict):  # a checkpoint of an earlier version: {"size", "sha256"}
            files[f], sizes[f] = v.get("sha256"), v.get("size")
        elif isinstance(v, str):
            files[f] = v
        else:
            raise ValueError(f"{path}: the entry of {f} is not a sha256")
    recorded = record.get("sizes")
    if isinstance(recorded, dict):
        sizes |= recorded
    extra = {k: v for k, v in record.items() if k not in ("format", "version", "files", "sizes")}
    return Manifest(files, sizes, extra)


def changes(folder: str | Path, name: str) -> list[str]:
    """What in `folder` its writer did not write: files added, changed or removed since its manifest
    (`["no manifest"]` / `[f"{name} unreadable"]` when it has none / a bad one). Empty: untouched."""
    folder = Path(folder)
    try:
        listed = read_manifest(folder, name).files
    except FileNotFoundError:
        return ["no manifest"]
    except ValueError:
        return [f"{name} unreadable"]
    present = set(folder_files(folder, skip={name}))
    out = [f"{f} added" for f in sorted(present - set(listed))]
    out += [f"{f} removed" for f in sorted(set(listed) - present)]
    out += [
        f"{f} changed"
        for f in sorted(present & set(listed))
        if sha256_file(folder / f) != listed[f]
    ]
    return out


__all__ = ["FORMAT", "Manifest", "changes", "folder_files", "read_manifest", "write_manifest"]
