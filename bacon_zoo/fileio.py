"""Writing files so that nothing already written is lost, and reading them back with one-line errors.

Every file the package writes goes through `atomic_write_*`: the bytes land in a temporary sibling that is
renamed over the target, so a crash leaves either the old file or the new one, never half of either.
JSON is strict: NaN and infinities become `null` (a bare NaN is not JSON and breaks other readers).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from bacon_zoo.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def finite(obj: Any) -> Any:
    """`obj` with every NaN / infinite float replaced by None (recursively), numpy scalars made plain."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return finite(obj.item())
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN / Infinity)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, dumps_json(obj, indent) + "\n")


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """A JSON file the caller needs, or a one-line UserError naming it, what it is and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing ({what}); {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON ({what}); {fix}") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one strict-JSON line (a torn last line from a kill is skipped by `read_jsonl`)."""
    with Path(path).open("a") as f:
        f.write(dumps_json(record, indent=None) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; a torn line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _writable_ancestor(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` is a writable directory, or a one-line UserError."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path} lies under the file {parent}; choose another place")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable; choose another place")


def check_writable_file(path: str | Path, flag: str) -> Path:
    """`path` can be written as a file (checked before any work), or a one-line UserError for `flag`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    _writable_ancestor(path, flag)
    return path


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """`path` is (or can be created as) a writable directory, or a one-line UserError for `flag`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; choose a directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path} is not writable; choose another place")
        return path
    _writable_ancestor(path, flag)
    return path


def writable_or_error(path: str | Path, what: str, fix: str) -> None:
    """A one-line UserError `what: DIR is read-only; fix` unless files can be created in `path` (or,
    when it does not exist yet, in its nearest existing ancestor)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {path} is read-only; {fix}")


def check_inside(path: str | Path, root: str | Path, what: str) -> Path:
    """`path`, if it lies strictly inside the folder `root` (symlinks resolved), else a one-line
    UserError: every path we delete or overwrite in a folder we own is checked with this first."""
    resolved, top = Path(path).resolve(), Path(root).resolve()
    if resolved == top or not resolved.is_relative_to(top):
        raise UserError(f"{what} {path} lies outside {root}; nothing was written or deleted")
    return Path(path)
