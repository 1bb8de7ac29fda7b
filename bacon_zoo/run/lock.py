"""One writer per run: an advisory lock on `RUN_DIR/train.lock`, held by `train` for the run's lifetime.

Two trainers writing one run directory interleave their metrics and overwrite each other's config and
checkpoints. The lock is `fcntl.flock` on a file in the run directory, so the kernel releases it when
its holder exits in any way (SIGKILL included): a lock whose holder died is simply taken again (a
"stale" lock needs no clean-up). The file records the holder's pid, host and start time, so the second
writer's one-line error says who holds the run. The file is kept (empty) after release: deleting a
lock file races with a writer that has just opened it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from bacon_zoo.errors import UserError

LOCK_FILE = "train.lock"


def _holder(text: str) -> dict[str, str]:
    """The `key=value` lines a holder wrote (pid, host, since)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _describe(holder: dict[str, str]) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"pid {pid} on {host}{since}"


class RunLock:
    """`with RunLock(run_dir):` holds the run's lock, or raises a UserError naming the holder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is being trained by another process ({_describe(holder)}); "
                "wait for it to finish or stop it, or choose another --output-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        previous = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if previous.get("pid"):  # its holder ended without releasing it: killed, or its host died
            print(
                f"{self.path}: taking over the lock of {_describe(previous)}, which is no longer "
                "running",
                file=sys.stderr,
            )
        me = f"pid={os.getpid()}\nhost={socket.gethostname()}\nsince={time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # no holder: the next writer has nothing to take over
        finally:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
