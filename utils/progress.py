"""The one progress meter: ``done/total``, rate and ETA on stderr, and how durations are written.

In a terminal the line is redrawn in place (at most every ``min_interval`` seconds); in a log (stderr not a
terminal) a line is printed at most every ``log_interval`` seconds, so long jobs do not flood CI logs.
``enabled=False`` (``--no-progress``, non-primary ranks) prints nothing. ``close()`` prints the final line
with the total time.

    progress = Progress(len(jobs), "probing", unit="videos")
    for job in jobs: ...; progress.update()
    progress.close()
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional, TextIO


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; negative or non-finite -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work done out of ``total`` and shows rate and ETA (see the module docstring).

    Args:
        total: units of work expected (0 or None: unknown, no ETA).
        what: the label at the start of the line, e.g. ``"[TEST]"`` or ``"probing"``.
        unit: what is counted, e.g. ``"videos"``.
        enabled: print anything at all.
        stream: where to print (stderr by default).
        min_interval: seconds between redraws in a terminal.
        log_interval: seconds between lines when ``stream`` is not a terminal.
    """

    def __init__(self, total: Optional[int], what: str, unit: str = "items", *, enabled: bool = True,
                 stream: Optional[TextIO] = None, min_interval: float = 0.5, log_interval: float = 30.0) -> None:
        self.total = int(total or 0)
        self.what, self.unit = what, unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = min_interval if self.tty else log_interval
        self.done = 0
        self.start = time.perf_counter()
        self._last_print = self.start
        self._closed = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        return self.done / max(self.elapsed, 1e-9)

    def eta(self) -> float:
        rate = self.rate()
        if not self.total or rate <= 0:
            return float("nan")
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        text = f"{self.what} {count} {self.unit}, {self.rate():.2f} {self.unit}/s, elapsed {format_duration(self.elapsed)}"
        if self.total and not self._closed:
            text += f", ETA {format_duration(self.eta())}"
        return text

    def update(self, n: int = 1) -> None:
        """Add ``n`` units done; print when the interval has passed."""
        self.done += n
        self.set(self.done)

    def set(self, done: int) -> None:
        """Set the units done (e.g. a count gathered from elsewhere); print when the interval has passed."""
        self.done = int(done)
        if not self.enabled or self._closed:
            return
        now = time.perf_counter()
        if now - self._last_print < self.interval:
            return
        self._last_print = now
        self._print(final=False)

    def close(self) -> None:
        """Print the final line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._print(final=True)

    def _print(self, final: bool) -> None:
        if self.tty:
            end = "\n" if final else ""
            print("\r" + self.line() + "\033[K", end=end, file=self.stream, flush=True)
        else:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
