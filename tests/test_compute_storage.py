"""On-disk outputs (.npy, zarr), resumption after a kill, refusal to mix, full disk (ntkit.compute)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkit.compute import compute_kernel
from ntkit.compute import storage as storage_mod


@pytest.fixture
def x(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(300, 5, generator=gen, dtype=torch.float64)


def _ledger_tiles(path: Path) -> list[str]:
    return [ln for ln in Path(str(path) + ".ledger").read_text().splitlines()[1:] if ln.strip()]


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_disk_outputs_equal_memory(tmp_path: Path, x: torch.Tensor, suffix: str) -> None:
    ref = compute_kernel(None, x, depth=3, tile=128)
    res = compute_kernel(None, x, depth=3, tile=128, out=tmp_path / f"k{suffix}")
    assert np.array_equal(np.asarray(res.ntk[:]), ref.ntk.numpy())
    assert np.array_equal(np.asarray(res.nngp[:]), ref.nngp.numpy())
    assert res.tiles_computed == 6 and len(_ledger_tiles(tmp_path / f"k{suffix}")) == 6
    again = compute_kernel(None, x, depth=3, tile=128, out=tmp_path / f"k{suffix}")
    assert again.tiles_computed == 0  # resumed: nothing left to do
    single = compute_kernel(None, x, depth=3, which="ntk", pairs="diagonal", out=tmp_path / f"d{suffix}")
    assert np.array_equal(np.asarray(single.ntk[:]), ref.ntk.diagonal().numpy())


def test_half_written_tile_is_recomputed(tmp_path: Path, x: torch.Tensor) -> None:
    out = tmp_path / "k.npy"
    ref = compute_kernel(None, x, depth=3, tile=128, out=out)
    expected = np.load(out).copy()
    ledger = Path(str(out) + ".ledger")
    lines = ledger.read_text().splitlines()
    # simulate a kill in the middle of tile (0, 1): its bytes half written, its line half written
    ledger.write_text("\n".join(ln for ln in lines if ln != "0 1 ok") + "\n0 1")
    data = np.load(out, mmap_mode="r+")
    data[:, 0:60, 128:256] = -1.0
    data.flush()
    del data
    res = compute_kernel(None, x, depth=3, tile=128, out=out)
    assert res.tiles_computed == 1 and ref.tiles_total == 6  # only the unfinished tile
    assert np.array_equal(np.load(out), expected)


def test_refuses_to_mix_parameters(tmp_path: Path, x: torch.Tensor) -> None:
    out = tmp_path / "k.npy"
    compute_kernel(None, x, depth=3, tile=128, out=out)
    with pytest.raises(ValueError, match=r"exists with different parameters .*depth: 3 there vs 2 now"):
        compute_kernel(None, x, depth=2, tile=128, out=out)
    with pytest.raises(ValueError, match=r"different parameters .*x1"):
        compute_kernel(None, x + 1, depth=3, tile=128, out=out)
    res = compute_kernel(None, x, depth=2, tile=128, out=out, overwrite=True)
    assert res.tiles_computed == res.tiles_total
    foreign = tmp_path / "foreign.npy"
    np.save(foreign, np.zeros(3))
    with pytest.raises(ValueError, match="without one"):
        compute_kernel(None, x, depth=2, out=foreign)
    with pytest.raises(ValueError, match=r"expected a path ending in .npy or .zarr"):
        compute_kernel(None, x, depth=2, out=tmp_path / "k.txt")


def test_full_disk_keeps_finished_tiles(tmp_path: Path, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "k.npy"
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def failing_pwrite(fd: int, data: bytes, offset: int) -> int:
        calls["n"] += 1
        if offset >= limit:  # the rows of the last tile row do not fit any more
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    # NNGP plane then NTK plane, float64, 300 x 300: rows >= 256 of the NTK plane fail, so
    # tiles (0, 0), (0, 1), (1, 1) can be written whatever the threads' interleaving.
    limit = 128 + (300 * 300 + 256 * 300) * 8

    monkeypatch.setattr(storage_mod.os, "pwrite", failing_pwrite)
    with pytest.raises(OSError, match=r"the disk is full .* finished tiles are kept") as info:
        compute_kernel(None, x, depth=3, tile=128, out=out)
    assert info.value.errno == errno.ENOSPC
    kept = len(_ledger_tiles(out))
    assert 2 <= kept <= 3  # (0, 0) and (0, 1) always; (1, 1) when it was in flight
    monkeypatch.setattr(storage_mod.os, "pwrite", real_pwrite)
    res = compute_kernel(None, x, depth=3, tile=128, out=out)
    assert res.tiles_computed == 6 - kept
    ref = compute_kernel(None, x, depth=3, tile=128)
    assert np.array_equal(np.load(out)[1], ref.ntk.numpy())


def test_killed_process_resumes_to_identical_file(tmp_path: Path, gen: torch.Generator) -> None:
    data = tmp_path / "x.npy"
    np.save(data, torch.randn(1500, 20, generator=gen, dtype=torch.float64).numpy())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "ntkit.cli", "kernel", str(data), "--depth", "3", "--tile", "128", "--quiet"]
    whole = tmp_path / "whole.npy"
    subprocess.run([*cmd, "--out", str(whole)], env=env, check=True, capture_output=True)
    part = tmp_path / "part.npy"
    proc = subprocess.Popen([*cmd, "--out", str(part)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = Path(str(part) + ".ledger")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and len(ledger.read_text().splitlines()) > 4:
            break
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(_ledger_tiles(part))
    assert killed and 0 < n_done < 78, "the run should be killed part way"
    out = subprocess.run([*cmd, "--out", str(part)], env=env, check=True, capture_output=True, text=True)
    assert f"{n_done} already done" in out.stdout
    assert Path(part).read_bytes() == Path(whole).read_bytes()
