"""The one way slimmer runs an external command: logged, bounded by a timeout, one error type.

    result = proc.run(["strip", "-o", dest, src], timeout=600)   # CommandError unless it exits 0
    result = proc.run(argv, timeout=60, check=False)             # any exit status; CommandError only
                                                                 # when it cannot start or times out

Every command is logged (logger `slimmer.proc`, debug level) as a shell line (`shlex.join`), never as a
Python list. A failure raises `CommandError` carrying the command, its exit status and the last lines
of its output, so the message is one readable line. The check runner (`slimmer.verify.runner`) keeps
its own process groups, which kill a whole tree on timeout.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.errors import CommandError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from os import PathLike

log = logging.getLogger(__name__)

TAIL_LINES = 5


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end (whatever its exit status)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str  # "" when not captured
    stderr: str

    def tail(self, lines: int = TAIL_LINES) -> tuple[str, ...]:
        """The last non-empty lines of stderr, else of stdout."""
        text = self.stderr.strip() or self.stdout.strip()
        return tuple(line for line in text.splitlines() if line.strip())[-lines:]


def run(
    argv: Sequence[str | PathLike[str]],
    *,
    timeout: float,
    check: bool = True,
    capture_stdout: bool = True,
    cwd: str | PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ARGV (no shell) for at most TIMEOUT seconds; text output, undecodable bytes replaced.

    CommandError when it cannot start or runs past TIMEOUT, and, when CHECK, when it exits non-zero."""
    args = tuple(str(a) for a in argv)
    line = shlex.join(args)
    log.debug("run (timeout %gs): %s", timeout, line)
    try:
        proc = subprocess.run(
            args,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.stderr) or _tail(exc.output)
        what = f"timed out after {timeout:g}s"
        raise CommandError(f"`{line}` {what}", argv=args, returncode=None, tail=(*tail, what)) from None
    except OSError as exc:
        raise CommandError(f"`{line}` could not start: {exc}", argv=args, returncode=None, tail=(str(exc),)) from None
    done = Completed(args, proc.returncode, proc.stdout or "", proc.stderr or "")
    log.debug("exit %d: %s", proc.returncode, line)
    if check and proc.returncode != 0:
        raise failure(done)
    return done


def failure(done: Completed, what: str = "") -> CommandError:
    """The CommandError for a command that exited non-zero: `WHAT failed (exit N): last line`."""
    tail = done.tail()
    last = tail[-1] if tail else "no output"
    name = what or f"`{shlex.join(done.argv)}`"
    return CommandError(
        f"{name} failed (exit {done.returncode}): {last}", argv=done.argv, returncode=done.returncode, tail=tail
    )


def _tail(output: str | bytes | None) -> tuple[str, ...]:
    if not output:
        return ()
    text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else output
    return tuple(line for line in text.splitlines() if line.strip())[-TAIL_LINES:]
