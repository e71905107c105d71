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

The records of a run (:class:`WorkerDeath`, :class:`WorkerReport`, :func:`signal_name`, :data:`SIGNAL_CAUSES`)
live in :mod:`ntkit._worker_report`; this module re-exports them.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from ntkit._validation import check_int
from ntkit._worker_report import _EXIT_CAUSE as _EXIT_CAUSE  # re-exported (moved there)
from ntkit._worker_report import SIGNAL_CAUSES, WorkerDeath, WorkerReport, signal_name

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
