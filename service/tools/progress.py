"""A one-line progress bar on stderr, and the summary line every tool ends with.

The bar is drawn only when its stream is a terminal, so pipes, logs and tests see nothing but
the final summary line. It appears after a short delay (work that ends sooner never flickers)
and redraws at most ten times a second, so counting costs nothing measurable.
"""

from __future__ import annotations

import shutil
import sys
import time
from types import TracebackType
from typing import TextIO

SHOW_AFTER = 0.25  # seconds of work before the bar first appears
REDRAW_EVERY = 0.1
BAR_WIDTH = 24


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Progress:
    """``with Progress("scanning", total_bytes) as p: p.advance(n)``; ``unit`` 'B' or a noun."""

    def __init__(
        self,
        label: str,
        total: float,
        *,
        unit: str = "B",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        show_after: float = SHOW_AFTER,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.show_after = show_after
        self.done = 0.0
        self.started = time.monotonic()
        self._next_draw = self.started + show_after
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, n: float) -> None:
        self.done += n
        if self.enabled:
            self._maybe_draw()

    def update(self, done: float) -> None:
        self.done = done
        if self.enabled:
            self._maybe_draw()

    def relabel(self, label: str, total: float, unit: str = "B") -> None:
        """Start the next phase of the same work (e.g. scanning, then reading records)."""
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0.0

    def _maybe_draw(self) -> None:
        now = time.monotonic()
        if now >= self._next_draw:
            self._next_draw = now + REDRAW_EVERY
            self.draw(now)

    def draw(self, now: float | None = None) -> None:
        elapsed = (time.monotonic() if now is None else now) - self.started
        frac = min(self.done / self.total, 1.0) if self.total else 0.0
        filled = int(frac * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        if self.unit == "B":
            amount = f"{human_bytes(self.done)} / {human_bytes(self.total)}"
        else:
            amount = f"{int(self.done):,} / {int(self.total):,} {self.unit}"
        line = f"{self.label} [{bar}] {frac * 100:3.0f}% {amount} {elapsed:.1f}s"
        width = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r" + line[: max(width - 1, 20)] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar (the summary line takes its place)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def summary(line: str, stream: TextIO | None = None) -> None:
    """The final one-line summary on stderr: always printed, whatever the output format."""
    out = stream if stream is not None else sys.stderr
    out.write(line + "\n")
    out.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
