"""Errors meant for the user: each prints as one line and carries its own exit code.

Anything that is not a `SlimmerError` is a bug and keeps its traceback.
"""

from __future__ import annotations


class SlimmerError(Exception):
    """An error the user can fix; printed as one line."""

    exit_code = 2


class UsageError(SlimmerError):
    """Bad input on the command line or in a configuration file."""

    exit_code = 2


class RuleError(SlimmerError):
    """A rule file that cannot be loaded; the message names file:line."""

    exit_code = 2


class LockedError(SlimmerError):
    """Another slimmer run holds the lock on the same root."""

    exit_code = 3


class NothingToUndoError(SlimmerError):
    """`slimmer undo` found no uncommitted run."""

    exit_code = 4


class CheckFailedError(SlimmerError):
    """A verification check failed after slimming."""

    exit_code = 5


class UnsafeStateError(SlimmerError):
    """Slimmer's state under ROOT/.slimmer cannot be trusted: a link, a folder on another file
    system or of another owner, or a journal that names paths outside ROOT. Nothing was changed."""

    exit_code = 6
