"""Worker processes that survive a dead worker: named items, each lost one reported and retried alone.

:func:`run_in_workers` evaluates ``fn(arg)`` for named items in up to ``jobs`` worker processes.
Unlike :class:`concurrent.futures.ProcessPoolExecutor`, which breaks the whole pool (and every
item in flight) when one worker dies, a worker killed from outside -- ``SIGKILL`` from the kernel's
out-of-memory killer, ``SIGSEGV`` from a crash in native code -- costs only the item it was running:

* the death is reported by item name, signal (or exit status) and likely cause (:class:`WorkerDeath`);
* the other workers go on, and a fresh worker takes the dead one's place for the remaining items;
* the lost item is retried once (``retries``), after every other item has finished, alone in a fresh
  worker (memory is the likely cause, so nothing runs beside it);
* an item lost on every attempt is recorded as failed, the run goes on, and the returned
  :class:`WorkerReport` says what happened (``complete`` is false) -- never a traceback.

Ctrl-C (``KeyboardInterrupt`` in the parent) terminates the workers and returns the report with
``interrupted`` set; results already passed to ``on_result`` are the caller's to keep. The workers
ignore ``SIGINT`` (a terminal sends it to the whole process group): the parent decides.

An exception raised by ``fn`` is not a dead worker: the workers are stopped and the exception is
raised in the parent, with the worker's traceback as its ``__cause__`` (as the executor does).

Workers are started with the ``forkserver`` method where it exists (POSIX), else ``spawn``: never
``fork``, which copies a multi-threaded parent (tqdm's monitor thread while a bar is shown, torch's
or ntkit's thread pools, pytest-xdist's threads) into a child that may deadlock on a lock one of
those threads held; Python 3.12 warns about it and 3.14 makes ``forkserver`` the default on Linux.
So ``fn`` and its arguments are pickled: ``fn`` must be a module-level function, and a script
calling this needs the ``if __name__ == "__main__":`` guard. Each worker is long-lived (it runs many
items), and the fork server is asked to preload ``ntkit`` (torch) and ``fn``'s module, so a worker
forked from it starts in milliseconds instead of importing torch again; that preload list is
process-wide and takes effect only if the fork server is not yet running (it starts on first use).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from ntkit._validation import check_int

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
#: Seconds a stopped or terminated worker gets to end before it is killed.
_GRACE_S = 5.0


class WorkerStartError(RuntimeError):
    """A worker process exited before it could take any work (its error output says why)."""


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process (the ``__cause__`` of the re-raise)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


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


# ------------------------------------------------------------------------------------------- worker


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _worker_main(fn: Callable[[Any], Any], conn: Connection) -> None:
    """A worker's loop: take ``(index, arg)`` from the parent, answer ``fn(arg)``; ``None`` ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it terminates the workers
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        index, arg = task
        try:
            result = fn(arg)
        except Exception as exc:
            conn.send(("error", index, _picklable(exc), traceback.format_exc()))
            continue
        try:
            conn.send(("ok", index, result))
        except Exception as exc:  # the result does not pickle (nothing was sent)
            err = RuntimeError(f"the result could not be sent to the parent process: {type(exc).__name__}: {exc}")
            conn.send(("error", index, err, traceback.format_exc()))


# ------------------------------------------------------------------------------------------- parent


@dataclass
class _Slot:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: int | None = None


def default_start_method() -> str:
    """``"forkserver"`` where the platform has it (POSIX), else ``"spawn"`` (never ``"fork"``)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _preload(fn: Callable[[Any], Any]) -> list[str]:
    """Modules the fork server imports once, so that each worker forked from it starts at once."""
    modules = ["__main__", "ntkit"]
    module = getattr(fn, "__module__", None)
    if isinstance(module, str) and module not in modules:
        modules.append(module)
    return modules


def run_in_workers(
    fn: Callable[[Any], Any],
    items: Sequence[tuple[str, Any]],
    *,
    jobs: int = 2,
    retries: int = 1,
    on_result: Callable[[str, Any], None] | None = None,
    on_death: Callable[[WorkerDeath], None] | None = None,
    start_method: str | None = None,
) -> WorkerReport:
    """Run ``fn(arg)`` for each named ``(name, arg)`` in up to ``jobs`` worker processes.

    Items start in the given order. A worker that dies (killed by a signal, or exiting without a
    result) loses only its item: ``on_death`` is called with a :class:`WorkerDeath`, the others go
    on, and the item is retried up to ``retries`` times, each retry after all other work, alone in a
    fresh worker. See the module's description for Ctrl-C and exceptions.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by reference into the workers).
    items : sequence of (str, object)
        Unique names and picklable arguments.
    jobs : int
        Worker processes at once (>= 1).
    retries : int
        Extra attempts of an item whose worker died (>= 0).
    on_result : callable, optional
        ``on_result(name, result)``, in the parent, as each result arrives.
    on_death : callable, optional
        ``on_death(death)``, in the parent, as each dead worker is found.
    start_method : str, optional
        ``multiprocessing`` start method (default :func:`default_start_method`).

    Returns
    -------
    WorkerReport

    Raises
    ------
    ValueError
        Duplicate names, ``jobs < 1`` or ``retries < 0``.
    WorkerStartError
        A worker exited before it could take work (``fn`` not importable in a fresh process, or a
        script without the ``if __name__ == "__main__":`` guard).
    Exception
        Whatever ``fn`` raised, with the worker's traceback as ``__cause__``.

    Examples
    --------
    >>> import math
    >>> from ntkit._workers import run_in_workers
    >>> results = {}
    >>> report = run_in_workers(math.sqrt, [("four", 4.0), ("nine", 9.0)], jobs=2, on_result=results.__setitem__)
    >>> sorted(results.items()), report.complete, report.deaths
    ([('four', 2.0), ('nine', 3.0)], True, [])
    """
    jobs = check_int(jobs, "jobs", minimum=1)
    retries = check_int(retries, "retries", minimum=0)
    names = [str(name) for name, _ in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"items: expected unique names, got {dupes} more than once")
    args = [arg for _, arg in items]
    method = start_method or default_start_method()
    ctx: Any = multiprocessing.get_context(method)  # Any: typeshed's BaseContext has no .Process
    if method == "forkserver":
        ctx.set_forkserver_preload(_preload(fn))
    report = WorkerReport(tuple(names))
    first: deque[int] = deque(range(len(items)))
    again: deque[int] = deque()
    slots: list[_Slot] = []
    retiring: list[_Slot] = []

    def start() -> _Slot:
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(fn, child_conn), name="ntkit-worker")
        proc.start()
        child_conn.close()
        slot = _Slot(proc, parent_conn)
        slots.append(slot)
        return slot

    def assign(slot: _Slot, index: int) -> None:
        slot.task = index
        report.attempts[names[index]] = report.attempts.get(names[index], 0) + 1
        try:
            slot.conn.send((index, args[index]))
        except OSError:
            pass  # the worker has just died: its sentinel reports the item as lost

    def retire(slot: _Slot) -> None:
        slots.remove(slot)
        try:
            slot.conn.send(None)
        except OSError:
            pass
        retiring.append(slot)

    def lost(slot: _Slot) -> None:
        slot.process.join(_GRACE_S)  # its sentinel or pipe said it ended; this collects the exit status
        if slot.process.exitcode is None:
            slot.process.kill()  # closed its pipe yet lives on: not usable
            slot.process.join()
        code = slot.process.exitcode if slot.process.exitcode is not None else -int(getattr(signal, "SIGKILL", 9))
        slots.remove(slot)
        slot.conn.close()
        if slot.task is None:
            return  # an idle worker ended: nothing lost, another starts when needed
        if not slot.ready and code > 0:
            raise WorkerStartError(
                f"a worker process exited with status {code} before it could start: the function must be "
                "importable in a fresh process (module-level, not in an interactive session), and a script "
                "needs the `if __name__ == \"__main__\":` guard; its error output above says more"
            )
        index = slot.task
        name = names[index]
        attempt = report.attempts[name]
        alongside = tuple(names[s.task] for s in slots if s.task is not None)
        death = WorkerDeath(name, attempt, code, alongside, retry=attempt <= retries)
        report.deaths.append(death)
        if death.retry:
            again.append(index)
        else:
            report.failed.append(name)
        if on_death is not None:
            on_death(death)

    def receive(slot: _Slot) -> bool:
        """Handle the slot's messages; False when its pipe is closed (the worker ended)."""
        while True:
            try:
                if not slot.conn.poll():
                    return True
                msg = slot.conn.recv()
            except (EOFError, OSError):
                return False
            if msg[0] == "ready":
                slot.ready = True
                continue
            index = msg[1]
            slot.task = None
            if msg[0] == "error":
                raise msg[2] from WorkerTraceback(msg[3])
            report.done.append(names[index])
            if on_result is not None:
                on_result(names[index], msg[2])

    try:
        while True:
            if first:
                idle = [s for s in slots if s.task is None]
                while first and (idle or len(slots) < jobs):
                    assign(idle.pop() if idle else start(), first.popleft())
            else:
                for slot in [s for s in slots if s.task is None]:
                    retire(slot)  # no new work for it: free its memory
                if again and not slots:
                    _join_all(retiring)  # a retry runs alone: every other worker has ended
                    assign(start(), again.popleft())
            if not slots:
                break
            ready = set(wait([s.conn for s in slots] + [s.process.sentinel for s in slots]))
            for slot in list(slots):
                if slot.conn in ready or slot.process.sentinel in ready:
                    alive = receive(slot)
                    if not alive or slot.process.sentinel in ready:
                        lost(slot)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        for slot in list(slots):
            if slot.task is None:
                retire(slot)
            else:
                slot.process.terminate()
                retiring.append(slot)
        _join_all(retiring)
    return report


def _join_all(slots: list[_Slot]) -> None:
    """Wait for ending workers (killing any that take longer than the grace period); empties ``slots``."""
    for slot in slots:
        slot.process.join(_GRACE_S)
        if slot.process.exitcode is None:
            slot.process.kill()
            slot.process.join()
        slot.conn.close()
    slots.clear()


__all__ = [
    "SIGNAL_CAUSES",
    "WorkerDeath",
    "WorkerReport",
    "WorkerStartError",
    "WorkerTraceback",
    "default_start_method",
    "run_in_workers",
    "signal_name",
]
