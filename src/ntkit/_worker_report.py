"""What a run of worker processes reports: each dead worker (:class:`WorkerDeath`: its item, the signal
or exit status that ended it, the likely cause) and the run as a whole (:class:`WorkerReport`).

Split from :mod:`ntkit._workers` (which runs the workers, builds these records, and re-exports these names).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

#: Likely cause of a worker's death, by the name of the signal that ended it.
SIGNAL_CAUSES: dict[str, str] = {
    "SIGKILL": "most likely the kernel's out-of-memory killer (see `dmesg`); run fewer jobs at once (--jobs) "
    "or on a machine with more memory",
    "SIGSEGV": "a crash in native code (segmentation fault: a library bug, or a stack overflow)",
    "SIGBUS": "a bus error: a memory-mapped file changed under the worker, or shared memory (/dev/shm) ran out",
    "SIGABRT": "an abort in native code (a failed assertion or an uncaught C++ exception)",
    "SIGTERM": "terminated from outside (`kill`, or a job scheduler's time or memory limit)",
    "SIGFPE": "an arithmetic fault in native code",
    "SIGILL": "an illegal instruction (native code built for another CPU)",
}
_EXIT_CAUSE = (
    "the worker process ended without returning a result (sys.exit or os._exit in the task, or a native "
    "library ending the process); its error output above may say why"
)


def signal_name(exitcode: int) -> str | None:
    """``"SIGKILL"`` for a process ended by signal 9 (``exitcode == -9``); ``None`` for a normal exit.

    Examples
    --------
    >>> from ntkit._workers import signal_name
    >>> signal_name(-9), signal_name(1)
    ('SIGKILL', None)
    """
    if exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


@dataclass(frozen=True)
class WorkerDeath:
    """One worker process that died while running an item.

    Attributes
    ----------
    name : str
        The item it was running.
    attempt : int
        1 for the item's first run, 2 for its first retry, ...
    exitcode : int
        The process's exit status; ``-N`` when signal ``N`` ended it.
    alongside : tuple of str
        Items other workers were running at that moment (empty: it ran alone).
    retry : bool
        Whether the item will be retried.

    Examples
    --------
    >>> from ntkit._workers import WorkerDeath
    >>> d = WorkerDeath("iris", attempt=1, exitcode=-9, alongside=("wine",), retry=True)
    >>> d.signal, d.describe()
    ('SIGKILL', "worker running 'iris' killed by SIGKILL (attempt 1, beside 'wine')")
    """

    name: str
    attempt: int
    exitcode: int
    alongside: tuple[str, ...] = ()
    retry: bool = False

    @property
    def signal(self) -> str | None:
        """Name of the signal that ended the worker, or ``None`` when it exited by itself."""
        return signal_name(self.exitcode)

    @property
    def cause(self) -> str:
        """The likely cause, for the user."""
        sig = self.signal
        if sig is None:
            return _EXIT_CAUSE
        return SIGNAL_CAUSES.get(sig, f"ended from outside by {sig}")

    @property
    def how(self) -> str:
        """``"killed by SIGKILL"`` or ``"exited with status 3"``."""
        sig = self.signal
        return f"killed by {sig}" if sig is not None else f"exited with status {self.exitcode}"

    def describe(self) -> str:
        """One line: which item, how the worker ended, on which attempt, beside which items."""
        beside = "alone" if not self.alongside else "beside " + ", ".join(repr(n) for n in self.alongside)
        return f"worker running {self.name!r} {self.how} (attempt {self.attempt}, {beside})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "attempt": self.attempt,
            "signal": self.signal,
            "exitcode": self.exitcode,
            "alongside": list(self.alongside),
        }


@dataclass
class WorkerReport:
    """What :func:`run_in_workers` did: finished items, dead workers, failed items, interruption.

    Attributes
    ----------
    names : tuple of str
        Every item asked for, in order.
    done : list of str
        Items whose result was delivered, in the order they finished.
    deaths : list of WorkerDeath
        Every worker that died while running an item.
    failed : list of str
        Items lost on every attempt.
    attempts : dict of str to int
        Runs started per item.
    interrupted : bool
        Ctrl-C stopped the run.
    """

    names: tuple[str, ...]
    done: list[str] = field(default_factory=list)
    deaths: list[WorkerDeath] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Every item delivered a result."""
        return not self.interrupted and len(self.done) == len(self.names)

    def outcome(self, name: str) -> str:
        """``"done"``, ``"recovered"`` (done after a lost attempt), ``"failed"`` or ``"unfinished"``."""
        if name in self.done:
            return "recovered" if any(d.name == name for d in self.deaths) else "done"
        return "failed" if name in self.failed else "unfinished"

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per item that lost a worker: its deaths, cause, retry and outcome."""
        out = []
        for name in self.names:
            deaths = [d for d in self.deaths if d.name == name]
            if not deaths:
                continue
            last = deaths[-1]
            out.append(
                {
                    "item": name,
                    "signal": last.signal,
                    "exitcode": last.exitcode,
                    "cause": last.cause,
                    "deaths": [d.as_dict() for d in deaths],
                    "retried": self.attempts.get(name, 0) > 1,
                    "outcome": self.outcome(name),
                    "message": self.message(name),
                }
            )
        return out

    def message(self, name: str) -> str:
        """One line on an item that lost a worker: what happened, the likely cause, the outcome."""
        deaths = [d for d in self.deaths if d.name == name]
        if not deaths:
            return f"{name}: {self.outcome(name)}"
        what = "; ".join(d.describe().replace(f"worker running {name!r} ", "worker ") for d in deaths)
        outcome = self.outcome(name)
        retried = self.attempts.get(name, 0) > 1
        if outcome == "recovered":
            end = "retried alone: recovered"
        elif outcome == "failed":
            end = "retried alone and lost again: failed, no result" if retried else "not retried: failed, no result"
        else:
            end = "not retried (the run was interrupted)"
        return f"{name}: {what} -- likely cause: {deaths[-1].cause}; {end}"

    def summary_lines(self) -> list[str]:
        """Lines for the end of a run: one per item that lost a worker, and the failed items."""
        lines = [self.message(r["item"]) for r in self.records()]
        if self.failed:
            lines.append(f"incomplete: {len(self.failed)} item(s) failed: {', '.join(self.failed)}")
        return lines


__all__ = ["SIGNAL_CAUSES", "WorkerDeath", "WorkerReport", "signal_name"]
