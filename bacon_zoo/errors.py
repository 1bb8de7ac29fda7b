"""User-facing errors.

Anything a user can get wrong (a flag, a recipe, a dataset, a checkpoint) raises `UserError` with one
line that says what is wrong and how to fix it. The CLI prints that line instead of a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message is shown as-is, without a traceback."""


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; the CLI exits with 128 + signum.

    143 for SIGTERM (what a scheduler sends before preemption: requeue the job with `--resume`),
    130 for SIGINT. A KeyboardInterrupt, so code that treats Ctrl-C as a stop keeps working.
    """

    def __init__(self, message: str = "", signum: int = 15) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
