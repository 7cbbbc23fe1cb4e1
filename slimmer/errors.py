"""Errors meant for the user: each prints as one line (`slimmer: error: ...`) and carries its exit code.

Anything that is not a `SlimmerError` is a bug and keeps its traceback. Exit codes (the only table;
README.md copies it):

    code  meaning                                                   classes
    0     success                                                   -
    1     a failure the user can act on, with no code of its own    SlimmerError
    2     bad input: command line, configuration file, rule file    UsageError, RuleError (and click's own)
    3     another slimmer run holds the lock on the same root       LockedError
    4     nothing to do: no run to undo or to commit                NothingToDoError, NothingToUndoError,
                                                                    NothingToCommitError
    5     a verification check failed after slimming                CheckFailedError
    6     no Docker engine answers, or an image is not on it        EngineError, ImageMissingError
    7     a build step or a container of the pipeline failed        BuildError, ExtensionUnavailableError,
                                                                    ContainerError
    8     too little room in the work folder                        DiskSpaceError
    9     the root's state forbids the command (an unfinished run   StateConflictError
          blocks a new one, a half-committed run cannot be undone)
    10    an external tool (pip, strip, ...) failed or timed out    CommandError
    11    slimmer's state folder under the root cannot be trusted   UnsafeStateError
          (a link, another file system or owner, a journal naming
          paths outside the root): nothing was changed
    12    the file system refused (full disk, read-only, a file     FileSystemError (any OSError
          where a folder should be): the path and what to do        that reaches the CLI)
    130   interrupted (Ctrl-C)                                      -

A traceback (exit 1 from Python itself) is always a bug.
"""

from __future__ import annotations


class SlimmerError(Exception):
    """An error the user can fix; printed as one line."""

    exit_code = 1


class UsageError(SlimmerError):
    """Bad input on the command line or in a configuration file."""

    exit_code = 2


class RuleError(SlimmerError):
    """A rule file that cannot be loaded; the message names file:line."""

    exit_code = 2


class LockedError(SlimmerError):
    """Another slimmer run holds the lock on the same root."""

    exit_code = 3


class NothingToDoError(SlimmerError):
    """There is no run for the command to act on."""

    exit_code = 4


class NothingToUndoError(NothingToDoError):
    """`slimmer undo` found no uncommitted run."""


class NothingToCommitError(NothingToDoError):
    """`slimmer commit` found no unfinished run."""


class CheckFailedError(SlimmerError):
    """A verification check failed after slimming."""

    exit_code = 5


class EngineError(SlimmerError):
    """No Docker engine answers (the message says how to start one)."""

    exit_code = 6


class ImageMissingError(SlimmerError):
    """A base image is not on the engine, and no registry is used to get it."""

    exit_code = 6


class BuildError(SlimmerError):
    """A build step failed: the message holds its last lines and the path of the full log."""

    exit_code = 7


class ExtensionUnavailableError(BuildError):
    """Neither a wheel nor a source build could provide an extension (the message names every source tried)."""


class ContainerError(SlimmerError):
    """The check container of `image slim` failed to start or to answer."""

    exit_code = 7


class DiskSpaceError(SlimmerError):
    """The work folder's file system has too little room."""

    exit_code = 8


class StateConflictError(SlimmerError):
    """The root is in a state that forbids the command: an unfinished run blocks a new one, a run that was
    being committed cannot be undone."""

    exit_code = 9


class CommandError(SlimmerError):
    """An external command failed, could not start or ran past its timeout (see `slimmer.proc`).

    `argv` is the command, `returncode` its exit status (None: did not start or timed out), `tail` the
    last lines of its output."""

    exit_code = 10

    def __init__(self, message: str, *, argv: tuple[str, ...], returncode: int | None, tail: tuple[str, ...]) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.tail = tail

    @property
    def last_line(self) -> str:
        """The last line of output, or the exit status when there was none."""
        return self.tail[-1] if self.tail else f"exit {self.returncode}"


class UnsafeStateError(SlimmerError):
    """Slimmer's state under ROOT/.slimmer cannot be trusted: a link, a folder on another file
    system or of another owner, or a journal that names paths outside ROOT. Nothing was changed."""

    exit_code = 11


class FileSystemError(SlimmerError):
    """The file system refused: a full disk, a read-only mount, a file where a folder should be. The
    CLI turns any `OSError` that reaches it into this code, with the line `slimmer.oserrors` writes."""

    exit_code = 12
