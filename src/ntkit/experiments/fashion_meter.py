"""Time and peak memory of one stage of a long benchmark (``ntkit bench fashion``).

:class:`Meter` samples the process's memory in a background thread while a stage runs:

* ``peak_anon_gb``: anonymous resident memory (``RssAnon`` of ``/proc/self/status``: arrays, factors,
  buffers) -- what must fit in RAM;
* ``peak_rss_gb``: all resident memory, including pages of memory-mapped kernel files that the
  kernel may drop again under pressure (``VmRSS``).

Elsewhere than Linux both fall back to ``ru_maxrss`` (the process's peak so far). The wall time and
the load average at the start and the end are recorded too, with the CPU seconds of the process
(user + system, all threads): on a shared machine a stage's wall time means little without the load it
ran under, while its CPU time barely depends on it.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from types import TracebackType
from typing import Any

_STATUS = "/proc/self/status"


def _memory_kib() -> tuple[int, int]:
    """``(VmRSS, RssAnon)`` in KiB (``ru_maxrss`` twice where ``/proc`` is absent)."""
    try:
        with open(_STATUS) as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields.get("RssAnon", fields["VmRSS"]).split()[0])
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux
        return peak, peak


def _cpu() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux / macOS
        return None


class Meter:
    """Context manager: ``with Meter() as m: ...`` then ``m.record()`` (module notes).

    Parameters
    ----------
    interval : float
        Seconds between two memory samples.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss = self.peak_anon = 0
        self.seconds = self.cpu_seconds = 0.0
        self._cpu_start = 0.0
        self.load_start: float | None = None
        self.load_end: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _sample(self) -> None:
        rss, anon = _memory_kib()
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Meter:
        self.load_start = _load()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="ntkit-meter", daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        self._cpu_start = _cpu()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = _cpu() - self._cpu_start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.load_end = _load()

    def record(self) -> dict[str, Any]:
        """``seconds`` (wall), ``cpu_seconds``, ``peak_rss_gb``, ``peak_anon_gb``, ``load`` (1-minute load
        average at start and end)."""
        return {"seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "peak_rss_gb": round(self.peak_rss / 2**20, 3),
                "peak_anon_gb": round(self.peak_anon / 2**20, 3), "load": [self.load_start, self.load_end]}


__all__ = ["Meter"]
