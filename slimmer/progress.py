"""Progress on stderr, shown only when stderr is a terminal; silent otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A one-line counter or bar, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.stream = stream
        self._last = 0.0

    @classmethod
    def quiet(cls) -> Progress:
        return cls("", stream=None)

    @classmethod
    def for_terminal(cls, label: str, total: int | None = None) -> Progress:
        stream = sys.stderr if sys.stderr.isatty() else None
        return cls(label, total, stream)

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        self._draw()

    def _draw(self) -> None:
        assert self.stream is not None
        if self.total:
            width = 30
            filled = min(width, width * self.count // max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            line = f"{self.label} [{bar}] {self.count}/{self.total}"
        else:
            line = f"{self.label} {self.count}"
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is None:
            return
        self._draw()
        self.stream.write("\r\x1b[K")
        self.stream.flush()
