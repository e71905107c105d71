"""The command line: the converge job end to end, data files, and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ntkit.cli import main


def test_converge_writes_summary_and_plot(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    code = main(["converge", "--widths", "16", "64", "256", "--seeds", "3", "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "log-log slope" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["widths"] == [16, 64, 256] and summary["complete"] is True
    assert len(summary["distances"][0]) == 3 and summary["slope"] < 0
    png = (out / "ntk.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_converge_on_csv_and_npy_data(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((6, 3))
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c", comments="")
    for name in ("x.npy", "x.csv"):
        out = tmp_path / name.replace(".", "_")
        assert main(["converge", "--data", str(tmp_path / name), "--widths", "8", "32", "--seeds", "2",
                     "--outputs", "2", "--out", str(out), "--quiet"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["n0"] == 3 and summary["config"]["n_inputs"] == 6


def test_errors_are_clear(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,abc\n")
    assert main(["converge", "--data", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "line 2: expected numbers, got 'abc'" in capsys.readouterr().err
    assert main(["converge", "--data", str(tmp_path / "missing.npy"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["converge", "--widths", "0", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "widths: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["converge", "--activation", "nope", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "activation: expected one of" in capsys.readouterr().err


def test_console_script_help() -> None:
    done = subprocess.run([sys.executable, "-m", "ntkit.cli", "converge", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--widths" in done.stdout


def test_converge_quick(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    assert main(["converge", "--quick", "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["widths"] == [64, 256, 1024] and len(summary["distances"][0]) == 2  # --seeds given wins


def test_python_dash_m_ntkit() -> None:
    import ntkit

    done = subprocess.run([sys.executable, "-m", "ntkit", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"ntkit {ntkit.__version__}"
    done = subprocess.run([sys.executable, "-m", "ntkit"], capture_output=True, text=True)
    assert done.returncode == 2 and "converge" in done.stdout
