"""User-facing errors.

Anything a user can get wrong (a flag, a recipe, a dataset, a checkpoint) raises `UserError` with one
line that says what is wrong and how to fix it. The CLI prints that line instead of a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message is shown as-is, without a traceback."""
