"""A minimal progress reporter (stderr, throttled, with an ETA) shared by long-running work."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:4.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


class Progress:
    """Report ``done / total`` with elapsed time and ETA, at most every ``interval`` seconds.

    Parameters
    ----------
    total : float
        Amount of work (any unit, e.g. networks or kernel tiles).
    show_counts : bool
        Print ``done/total`` besides the percentage (off for abstract cost units).
    desc : str
        Label printed before the counter.
    enabled : bool
        ``False`` makes every method a no-op (quiet mode).
    """

    def __init__(
        self,
        total: float,
        desc: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.5,
        show_counts: bool = True,
    ) -> None:
        self.total = float(total)
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0.0
        self.start = time.perf_counter()
        self._last = 0.0
        self.note = ""
        self.show_counts = show_counts

    def update(self, amount: float = 1.0, note: str | None = None) -> None:
        """Add ``amount`` of finished work; ``note`` replaces the trailing status text."""
        self.done += amount
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        frac = self.done / self.total if self.total > 0 else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        eta_text = _fmt(eta) if frac > 0 else "?"
        counts = f"{self.done:.0f}/{self.total:.0f} " if self.show_counts else ""
        line = f"\r{self.desc} {counts}{100 * frac:5.1f}% elapsed {_fmt(elapsed)} eta {eta_text} {self.note}"

        self.stream.write(line.ljust(100)[:160])
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.enabled:
            self._print(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
