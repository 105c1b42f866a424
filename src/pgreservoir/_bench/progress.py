"""A dependency-free progress bar for stderr."""

from __future__ import annotations

import time
from typing import Optional, TextIO

__all__ = ["Progress"]

_WIDTH = 24


def _clock(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


class Progress:
    """Counts steps and shows ``[#####.....] 12/96 0:42 left  label`` on ``stream``.

    On a terminal the bar redraws in place; elsewhere (CI logs, pipes) one line
    is written each time the label's first word (the workload) changes.
    Disabled, it does nothing.
    """

    def __init__(self, stream: TextIO, total: int, *, enabled: bool = True) -> None:
        self._stream = stream
        self._total = max(1, total)
        self._enabled = enabled
        self._tty = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self._done = -1
        self._started = time.monotonic()
        self._last_group: Optional[str] = None
        self._width = 0

    def __call__(self, label: str) -> None:
        """A new step starts (the previous one, if any, is done)."""
        self._done += 1
        if not self._enabled:
            return
        if self._tty:
            self._draw(label)
            return
        group = label.split(" ", 1)[0]
        if group != self._last_group:
            self._last_group = group
            self._stream.write(f"pgreservoir bench: {group} ({self._done}/{self._total})\n")
            self._stream.flush()

    def _draw(self, label: str) -> None:
        done = min(self._done, self._total)
        filled = int(_WIDTH * done / self._total)
        elapsed = time.monotonic() - self._started
        left = f"{_clock(elapsed / done * (self._total - done))} left" if done else "--:-- left"
        line = f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{self._total} {left}  {label}"
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()

    def finish(self) -> None:
        """Clear the bar (terminal) so the table starts on a clean line."""
        if self._tty:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
