"""Worker processes that survive a dead worker (ntkit._workers) and the UCI benchmark's use of them:
a worker killed by SIGKILL (as the out-of-memory killer does) is reported by item and signal, the
other items finish, the lost item is retried once alone, and the summary says what happened."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ntkit._workers import (
    WorkerDeath,
    WorkerReport,
    WorkerStartError,
    WorkerTraceback,
    run_in_workers,
    signal_name,
)

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra: pip install -e '.[test]'")

from ntkit.cli import main as cli_main
from ntkit.experiments import uci
from ntkit.experiments.uci import run_uci_benchmark, write_uci_dataset

#: the real UCI worker, kept before any monkeypatching (workers import this module afresh)
_REAL_UCI_WORKER = uci._worker
_WAIT_S = 60.0


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {_WAIT_S} s")
        time.sleep(0.02)


def _task(arg: tuple[str, str, str]) -> str:
    """Runs in a worker. ``bad`` kills its own process with SIGKILL (``mode`` "once": on its first
    attempt only); ``slow`` stays busy until the parent has seen that death; ``sleepy`` sleeps long;
    ``quick`` waits until ``sleepy`` runs; ``boom`` raises; others sleep. Every call logs pid and start/end times."""
    name, folder, mode = arg
    root = Path(folder)
    log = root / f"{name}-{time.time_ns()}.json"
    entry: dict[str, object] = {"name": name, "pid": os.getpid(), "start": time.time()}
    log.write_text(json.dumps(entry))
    if name == "bad":
        marker = root / "bad.tried"
        if mode == "always" or not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    elif name == "slow":
        _wait_for(root / "death-seen")
    elif name == "sleepy":
        (root / "sleepy.pid").write_text(str(os.getpid()))
        time.sleep(120)
    elif name == "quick":
        _wait_for(root / "sleepy.pid")
    elif name == "boom":
        raise ValueError(f"boom in item {name!r}")
    else:
        time.sleep(1.2 if name == "d" else 0.3)  # unequal: a retry started beside them would overlap one
    entry["end"] = time.time()
    log.write_text(json.dumps(entry))
    return f"{name} ok"


def _runs(folder: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in folder.glob("*-*.json")]


def _run(tmp_path: Path, mode: str) -> tuple[WorkerReport, dict[str, str], list[WorkerDeath]]:
    results: dict[str, str] = {}
    seen: list[WorkerDeath] = []

    def on_death(death: WorkerDeath) -> None:
        seen.append(death)
        (tmp_path / "death-seen").touch()  # lets `slow` finish: it was in flight when `bad` died

    items = [(n, (n, str(tmp_path), mode)) for n in ["slow", "bad", "c", "d"]]
    report = run_in_workers(_task, items, jobs=2, on_result=results.__setitem__, on_death=on_death)
    return report, results, seen


def test_killed_worker_is_reported_others_finish_and_retry_alone_recovers(tmp_path: Path) -> None:
    report, results, seen = _run(tmp_path, "once")
    # every item has its result, `slow` included although it was in flight when `bad`'s worker died
    assert results == {n: f"{n} ok" for n in ["slow", "bad", "c", "d"]}
    assert report.complete and not report.failed and not report.interrupted
    assert report.attempts == {"slow": 1, "bad": 2, "c": 1, "d": 1}
    # the death: named by item, signal and attempt, with what ran beside it
    assert seen == report.deaths and len(seen) == 1
    death = seen[0]
    assert (death.name, death.signal, death.exitcode, death.attempt) == ("bad", "SIGKILL", -9, 1)
    assert death.alongside == ("slow",) and death.retry
    assert "out-of-memory" in death.cause
    # the retry ran alone, in a fresh worker: it started after every other item had ended
    runs = _runs(tmp_path)
    retry = [r for r in runs if r["name"] == "bad" and "end" in r]
    others = [r for r in runs if r["name"] != "bad"]
    assert len(retry) == 1 and len([r for r in runs if r["name"] == "bad"]) == 2 and len(others) == 3
    assert all(float(retry[0]["start"]) >= float(r["end"]) for r in others)  # type: ignore[arg-type]
    assert retry[0]["pid"] not in {r["pid"] for r in others}
    # what the summary says
    (rec,) = report.records()
    assert rec["item"] == "bad" and rec["signal"] == "SIGKILL" and rec["retried"] and rec["outcome"] == "recovered"
    assert rec["deaths"] == [{"attempt": 1, "signal": "SIGKILL", "exitcode": -9, "alongside": ["slow"]}]
    (line,) = report.summary_lines()
    for part in ["bad:", "killed by SIGKILL", "beside 'slow'", "out-of-memory killer", "retried alone: recovered"]:
        assert part in line


def test_item_lost_twice_is_recorded_as_failed_and_the_run_goes_on(tmp_path: Path) -> None:
    report, results, seen = _run(tmp_path, "always")
    assert results == {n: f"{n} ok" for n in ["slow", "c", "d"]}
    assert not report.complete and not report.interrupted and report.failed == ["bad"]
    assert [(d.name, d.signal, d.attempt, d.alongside, d.retry) for d in seen] == [
        ("bad", "SIGKILL", 1, ("slow",), True),
        ("bad", "SIGKILL", 2, (), False),  # the retry ran alone, once
    ]
    assert report.attempts["bad"] == 2 and report.outcome("bad") == "failed" and report.outcome("c") == "done"
    (rec,) = report.records()
    assert rec["outcome"] == "failed" and rec["retried"] and len(rec["deaths"]) == 2
    lines = report.summary_lines()
    assert "(attempt 2, alone)" in lines[0] and "retried alone and lost again: failed" in lines[0]
    assert lines[1] == "incomplete: 1 item(s) failed: bad"


def test_ctrl_c_terminates_workers_and_keeps_finished_results(tmp_path: Path) -> None:
    done: list[str] = []

    def on_result(name: str, result: str) -> None:
        done.append(name)
        raise KeyboardInterrupt  # as Ctrl-C in the parent while `sleepy` still runs

    items = [(n, (n, str(tmp_path), "once")) for n in ["sleepy", "quick"]]
    t0 = time.monotonic()
    report = run_in_workers(_task, items, jobs=2, on_result=on_result)
    assert time.monotonic() - t0 < 60  # `sleepy` (120 s) was not waited for
    assert report.interrupted and not report.complete and done == ["quick"] and report.done == ["quick"]
    assert report.outcome("sleepy") == "unfinished" and not report.deaths
    with pytest.raises(ProcessLookupError):  # its worker was terminated (and reaped) before the return
        os.kill(int((tmp_path / "sleepy.pid").read_text()), 0)


def test_exception_in_task_is_raised_with_worker_traceback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom in item 'boom'") as info:
        run_in_workers(_task, [("boom", ("boom", str(tmp_path), "once"))], jobs=1)
    assert isinstance(info.value.__cause__, WorkerTraceback)
    assert "ValueError: boom in item 'boom'" in info.value.__cause__.text and "_task" in info.value.__cause__.text


def test_function_not_importable_in_worker_is_a_start_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import shutil

    name = f"_ntkit_gone_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    (tmp_path / f"{name}.py").unlink()  # the parent holds the function; a fresh worker cannot import it
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
    try:
        with pytest.raises(WorkerStartError, match="exited with status 1 before it could start"):
            run_in_workers(module.twice, [("a", 1)], jobs=1)
    finally:
        del sys.modules[name]


def test_death_causes_and_bad_arguments() -> None:
    assert signal_name(-int(signal.SIGSEGV)) == "SIGSEGV" and signal_name(0) is None
    assert "native code" in WorkerDeath("x", 1, -int(signal.SIGSEGV)).cause
    assert "out-of-memory killer" in WorkerDeath("x", 1, -9).cause and "dmesg" in WorkerDeath("x", 1, -9).cause
    exited = WorkerDeath("x", 2, 3)
    assert exited.signal is None and exited.how == "exited with status 3" and "without returning" in exited.cause
    with pytest.raises(ValueError, match=r"unique names, got \['a'\]"):
        run_in_workers(_task, [("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match="jobs: expected an integer >= 1, got 0"):
        run_in_workers(_task, [("a", 1)], jobs=0)
    with pytest.raises(ValueError, match="retries: expected an integer >= 0, got -1"):
        run_in_workers(_task, [("a", 1)], retries=-1)


# ------------------------------------------------------------------------------------ UCI benchmark


def _uci_worker_killing_bad(args: tuple[str, int, tuple[float, ...], int]) -> dict[str, object]:
    """Runs in a worker in place of ``uci._worker``: data set ``bad`` SIGKILLs its worker (on its
    first attempt only unless the file ``MODE`` beside the data folder says ``always``)."""
    folder = Path(args[0])
    root = folder.parent.parent
    if folder.name == "bad":
        marker = root / "bad.tried"
        if (root / "MODE").read_text() == "always" or not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return _REAL_UCI_WORKER(args)


def _uci_data(root: Path, mode: str) -> Path:
    rng = np.random.default_rng(0)
    (root / "data").mkdir()
    for name in ["alpha", "bad", "gamma"]:
        x = rng.standard_normal((16, 2))
        write_uci_dataset(root / "data" / name, x, (x[:, 0] > 0).astype(int))
    (root / "MODE").write_text(mode)
    return root / "data"


def test_uci_jobs_2_killed_worker_is_retried_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _uci_data(tmp_path, "once")
    monkeypatch.setattr(uci, "_worker", _uci_worker_killing_bad)
    out = tmp_path / "out"
    summary = run_uci_benchmark(data, out, max_dep=1, c_grid=(1.0,), jobs=2, progress=False)
    assert summary["complete"] and summary["n_datasets"] == 3 and summary["failed"] == []
    assert [r["dataset"] for r in summary["rows"]] == ["alpha", "bad", "gamma"]
    (rec,) = summary["worker_failures"]
    assert (rec["dataset"], rec["signal"], rec["exitcode"], rec["retried"], rec["outcome"]) == (
        "bad", "SIGKILL", -9, True, "recovered"
    )
    assert "out-of-memory killer" in rec["cause"] and "retried alone: recovered" in rec["message"]
    assert json.loads((out / "summary.json").read_text())["worker_failures"] == [rec]
    saved = json.loads((out / "datasets" / "bad.json").read_text())
    assert saved["dataset"] == "bad" and [d["signal"] for d in saved["worker_failures"]] == ["SIGKILL"]
    assert "worker_failures" not in json.loads((out / "datasets" / "alpha.json").read_text())
    table = uci.format_table(summary)
    assert "worker processes lost (1 data set(s)):" in table and "bad: worker killed by SIGKILL" in table


def test_uci_cli_data_set_lost_twice_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _uci_data(tmp_path, "always")
    monkeypatch.setattr(uci, "_worker", _uci_worker_killing_bad)
    out = tmp_path / "out"
    argv = ["bench", "uci", "--data", str(data), "--out", str(out), "--max-dep", "1", "--jobs", "2", "--quiet"]
    rc = cli_main(argv)
    printed = capsys.readouterr()
    assert rc == 1  # incomplete, not interrupted (130)
    assert "Traceback" not in printed.out + printed.err
    assert "average test accuracy over 2/3 data sets" in printed.out
    assert "bad: worker killed by SIGKILL (attempt 1" in printed.out and "(attempt 2, alone)" in printed.out
    assert "out-of-memory killer (see `dmesg`)" in printed.out and "retried alone and lost again" in printed.out
    assert "incomplete: 1 data set(s) failed: bad; rerun to try them again" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["bad"] and not summary["complete"] and not summary["interrupted"]
    assert [r["dataset"] for r in summary["rows"]] == ["alpha", "gamma"]
    assert summary["worker_failures"][0]["outcome"] == "failed"
    assert not (out / "datasets" / "bad.json").exists()
