"""Writing files so that nothing already written is lost, and reading them back with one-line errors.

Every file the package writes goes through `atomic_write*`: the bytes land in a temporary sibling that is
renamed over the target, so a crash leaves either the old file or the new one, never half of either.
Files get their mode from the umask, as every other tool writes them (0644 under the usual 022).
JSON is strict: NaN and infinities become `null` (a bare NaN is not JSON and breaks other readers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bacon_zoo.errors import UserError


def _open_sibling(path: Path) -> tuple[Path, BinaryIO]:
    """A new hidden temporary file beside `path`, created with mode 0666 less the umask (as `open`
    creates files; mkstemp's 0600 would hide a run's results from the rest of a cluster group)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return tmp, os.fdopen(os.open(tmp, flags, 0o666), "wb")
        except FileExistsError:
            continue


def _umask() -> int:
    """The process umask, read without changing it (Linux: /proc; elsewhere a probe file's mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    probe, f = _open_sibling(Path(tempfile.gettempdir()) / "umask")
    f.close()
    try:
        return 0o666 & ~os.stat(probe).st_mode & 0o777
    finally:
        probe.unlink(missing_ok=True)


def umask_modes(folder: str | Path) -> None:
    """Give every file below `folder` mode 0666 and every folder 0777, less the umask: what `open`
    would have given them. For files other libraries write with their own modes (safetensors: 0600)
    and copies that kept an older file's mode; run on a folder before it is renamed into place."""
    mask = _umask()
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write(f)` into a temporary sibling of `path`, fsync, and rename it over `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, f = _open_sibling(path)
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling and an atomic rename."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (manifests and weight checks all use this)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({what}, line {e.lineno}); {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON ({what}, not UTF-8 text); {fix}") from None


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
