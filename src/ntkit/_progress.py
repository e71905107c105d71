"""Progress of long-running work, shown where the user is: a tqdm bar in a terminal, a widget in Jupyter.

:class:`Progress` is what ntkit's long-running functions use (kernel tiles, width sweeps, solvers,
training). With ``enabled=True`` it shows

* a tqdm progress bar with elapsed time and ETA when its stream (stderr) is a terminal;
* the notebook widget (``tqdm.auto``) inside a Jupyter kernel;
* nothing otherwise (output redirected to a file, a pipe, a CI log) -- unless asked for with the
  environment variable ``NTKIT_PROGRESS=1`` (``always``), which writes the bar to the stream anyway;
  ``NTKIT_PROGRESS=0`` (``never``) silences every bar.

``enabled=False`` (the ``progress=False`` / ``--quiet`` of the callers) is always silent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

ENV = "NTKIT_PROGRESS"
_ALWAYS = {"1", "always", "true", "yes", "on"}
_NEVER = {"0", "never", "false", "no", "off"}


def _env_mode() -> str:
    """``"always"``, ``"never"`` or ``"auto"`` from ``$NTKIT_PROGRESS``."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _ALWAYS:
        return "always"
    if value in _NEVER:
        return "never"
    return "auto"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _as_count(value: float) -> float | int:
    """Whole amounts as ``int`` (tqdm prints ``3/10``, not ``3.0/10.0``)."""
    return int(value) if float(value).is_integer() else float(value)


class Progress:
    """Report ``done / total`` with elapsed time and ETA (a tqdm bar), where the user can see it.

    Parameters
    ----------
    total : float
        Amount of work (any unit, e.g. networks or kernel tiles).
    desc : str
        Label printed before the bar.
    enabled : bool
        ``False`` makes every method a no-op (quiet mode). ``True`` shows the bar in a terminal or
        a notebook, and elsewhere only when ``NTKIT_PROGRESS=1`` asks for it.
    stream : file-like, optional
        Where the bar goes (default: ``sys.stderr`` at construction).
    interval : float
        Minimum seconds between two refreshes.
    show_counts : bool
        Print ``done/total`` besides the percentage (off for abstract cost units).

    Attributes
    ----------
    done : float
        Work reported so far.
    note : str
        Trailing status text (settable; shown after the bar).
    shown : bool
        Whether a bar is actually drawn (enabled, and a terminal, a notebook or asked for).

    Examples
    --------
    >>> bar = Progress(3, "work", enabled=False)
    >>> for _ in range(3):
    ...     bar.update(1, note="step")
    >>> bar.done, bar.shown
    (3.0, False)
    >>> bar.close()
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
        self.show_counts = show_counts
        self.done = 0.0
        self.start = time.perf_counter()
        self._note = ""
        self._bar: Any = None
        if enabled:
            self._bar = self._make_bar(explicit_stream=stream is not None)

    def _make_bar(self, *, explicit_stream: bool) -> Any:
        mode = _env_mode()
        if mode == "never":
            return None
        from tqdm.auto import tqdm as auto_tqdm
        from tqdm.std import tqdm as std_tqdm

        notebook = any(c.__module__ == "tqdm.notebook" for c in auto_tqdm.__mro__)
        if notebook and not explicit_stream:
            cls: Any = auto_tqdm  # inside a Jupyter kernel (with ipywidgets): the notebook widget
        elif mode == "always" or _isatty(self.stream):
            cls = std_tqdm
        else:
            return None  # not a terminal and not asked for: stay silent
        fmt = None
        if not self.show_counts:
            fmt = "{desc}: {percentage:5.1f}%|{bar}| [{elapsed}<{remaining}] {postfix}"
        return cls(
            total=_as_count(self.total),
            desc=self.desc,
            file=self.stream,
            mininterval=self.interval,
            bar_format=fmt,
            dynamic_ncols=True,
            leave=True,
        )

    @property
    def shown(self) -> bool:
        """True when a bar is drawn."""
        return self._bar is not None

    @property
    def note(self) -> str:
        """The trailing status text."""
        return self._note

    @note.setter
    def note(self, text: str) -> None:
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, amount: float = 1.0, note: str | None = None) -> None:
        """Add ``amount`` of finished work; ``note`` replaces the trailing status text."""
        self.done += amount
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(_as_count(amount))

    def close(self) -> None:
        """Finish the bar (it stays on screen with the final count)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
