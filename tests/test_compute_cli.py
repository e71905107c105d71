"""``ntkit kernel``: the command line over compute_kernel (ntkit.compute.cli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ntkit.cli import main
from ntkit.compute import compute_kernel


def test_kernel_command_npy_and_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NTKIT_PROGRESS", "1")  # captured stderr is not a terminal: ask for the bar
    x = np.random.default_rng(0).standard_normal((200, 4))
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c,d", comments="")
    assert main(["kernel", str(tmp_path / "x.npy"), "--depth", "2", "--activation", "erf",
                 "--out", str(tmp_path / "k.npy"), "--tile", "128"]) == 0
    captured = capsys.readouterr()
    assert "tiles" in captured.err and "100%" in captured.err and "wrote" in captured.out
    ref = compute_kernel(torch.from_numpy(x), depth=2, activation="erf")
    assert np.array_equal(np.load(tmp_path / "k.npy")[1], ref.ntk.numpy())
    assert main(["kernel", str(tmp_path / "x.csv"), "--depth", "2", "--activation", "erf", "--which", "ntk",
                 "--float32", "--quiet", "--out", str(tmp_path / "k32.npy")]) == 0
    k32 = np.load(tmp_path / "k32.npy")
    assert k32.dtype == np.float32 and k32.shape == (200, 200)
    # the same command again resumes: nothing left to compute
    assert main(["kernel", str(tmp_path / "x.csv"), "--depth", "2", "--activation", "erf", "--which", "ntk",
                 "--float32", "--quiet", "--out", str(tmp_path / "k32.npy")]) == 0
    assert "0 tiles computed" in capsys.readouterr().out


def test_kernel_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.ones((20, 3)))
    assert main(["kernel", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "k.npy")]) == 2
    assert "expected an existing .npy or .csv file" in capsys.readouterr().err
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.npy"), "--budget", "1K"]) == 2
    assert "budget: expected at least" in capsys.readouterr().err
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.npy"), "--quiet"]) == 0
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.npy"), "--depth", "1"]) == 2
    assert "different parameters" in capsys.readouterr().err
