"""``ntkit kernel``: the command line over compute_kernel (ntkit.compute.cli)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main
from ntkit.compute import compute_kernel
from ntkit.compute.cli import load_inputs


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
    ref = compute_kernel(None, torch.from_numpy(x), depth=2, activation="erf")
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
    assert "expected an existing .npy, .zarr or .csv file" in capsys.readouterr().err
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.npy"), "--budget", "1K"]) == 2
    assert "budget: expected at least" in capsys.readouterr().err
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.npy"), "--quiet"]) == 0
    assert main(["kernel", str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.npy"), "--depth", "1"]) == 2
    assert "different parameters" in capsys.readouterr().err


#: CNTK-GAP (Arora et al. 2019) with two 3x3 convolutions, as text: ntkit.nn.cntk's default w_std is sqrt(2).
GAP_ARCH = ["--arch", "conv relu conv relu gap dense", "--w-std", repr(math.sqrt(2.0))]
MODEL_FILE = "import ntkit\n\nmodel = ntkit.nn.cntk(1, depth=2, device='meta')\n"
BUILD_FILE = (
    "import ntkit\n\n\ndef build(width, in_shape, out_features):\n"
    "    return ntkit.nn.cntk(in_shape[0], depth=2, width=width, out_features=out_features)\n"
)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """200 of scikit-learn's 8x8 digits as (200, 1, 8, 8) float64 in [0, 1]."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is in the test extra")
    return np.asarray(datasets.load_digits().images[:200], dtype=np.float64).reshape(200, 1, 8, 8) / 16.0


def test_kernel_command_digit_images_arch_and_model(tmp_path: Path, digits: np.ndarray) -> None:
    # The case: (N, 1, 8, 8) images through `ntkit kernel` used to answer 'expected a 2-D array'.
    # digits are k/16: float32 holds them exactly, so the float32 file is the same float64 input.
    x32 = digits.astype(np.float32)
    assert np.array_equal(x32.astype(np.float64), digits)
    np.save(tmp_path / "digits.npy", digits)
    np.save(tmp_path / "digits32.npy", x32)
    (tmp_path / "cntk_gap.py").write_text(MODEL_FILE)
    assert main(["kernel", str(tmp_path / "digits.npy"), *GAP_ARCH, "--quiet", "--out", str(tmp_path / "a.npy")]) == 0
    assert main(["kernel", str(tmp_path / "digits32.npy"), "--model", str(tmp_path / "cntk_gap.py"), "--quiet",
                 "--out", str(tmp_path / "m.npy")]) == 0
    ref = compute_kernel(ntkit.nn.cntk(1, depth=2, device="meta"), torch.from_numpy(digits))
    expected = np.stack([ref.nngp.numpy(), ref.ntk.numpy()])
    assert expected.shape == (2, 200, 200) and np.all(np.isfinite(expected))
    # the same compute_kernel call on the same architecture: bit for bit, not just to rounding
    assert np.array_equal(np.load(tmp_path / "a.npy"), expected)
    assert np.array_equal(np.load(tmp_path / "m.npy"), expected)


def test_kernel_command_zarr_images_and_build_file(tmp_path: Path, digits: np.ndarray) -> None:
    zarr = pytest.importorskip("zarr", reason="zarr is in the test extra")
    x = digits[:24]
    if hasattr(zarr, "create_array"):  # zarr 3
        arr = zarr.create_array(store=str(tmp_path / "x.zarr"), shape=x.shape, chunks=(8, 1, 8, 8), dtype="f8")
    else:  # pragma: no cover - zarr 2
        arr = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=x.shape, chunks=(8, 1, 8, 8), dtype="f8")
    arr[...] = x
    assert np.array_equal(load_inputs(tmp_path / "x.zarr"), x)
    (tmp_path / "build_gap.py").write_text(BUILD_FILE)
    assert main(["kernel", str(tmp_path / "x.zarr"), "--model", str(tmp_path / "build_gap.py"), "--which", "ntk",
                 "--quiet", "--out", str(tmp_path / "k.zarr")]) == 0
    ref = compute_kernel(ntkit.nn.cntk(1, depth=2, device="meta"), torch.from_numpy(x), which="ntk")
    assert np.array_equal(np.asarray(zarr.open_array(str(tmp_path / "k.zarr"), mode="r")[...]), ref.ntk.numpy())


def test_kernel_command_image_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], digits: np.ndarray
) -> None:
    np.save(tmp_path / "rgb.npy", np.repeat(digits[:20], 3, axis=1))  # (20, 3, 8, 8): the model takes 1 channel
    np.save(tmp_path / "flat.npy", digits[:20].reshape(20, 64))
    np.save(tmp_path / "img.npy", digits[:20])
    (tmp_path / "cntk_gap.py").write_text(MODEL_FILE)
    (tmp_path / "empty.py").write_text("width = 8\n")
    out = tmp_path / "k.npy"

    def run(*argv: str) -> str:
        assert main(["kernel", *argv, "--quiet", "--out", str(out)]) == 2
        return capsys.readouterr().err

    err = run(str(tmp_path / "rgb.npy"), "--model", str(tmp_path / "cntk_gap.py"))
    assert "inputs of shape (20, 3, 8, 8)" in err and "expected (C=1, 2 spatial axes)" in err
    err = run(str(tmp_path / "flat.npy"), "--model", str(tmp_path / "cntk_gap.py"))
    assert "inputs of shape (20, 64)" in err and "expected (C=1, 2 spatial axes)" in err
    err = run(str(tmp_path / "flat.npy"), *GAP_ARCH)
    assert "inputs of shape (20, 64)" in err and "conv expects images (C, H, W) or signals (C, L), got shape (64,)" \
        in err
    err = run(str(tmp_path / "img.npy"), "--arch", "dense relu dense")
    assert "inputs of shape (20, 1, 8, 8)" in err and "dense expects vector inputs" in err
    err = run(str(tmp_path / "img.npy"))  # no model: the fully connected --depth network takes vectors only
    assert "inputs of shape (N, 1, 8, 8) need a model: expected --arch TEXT" in err
    err = run(str(tmp_path / "img.npy"), *GAP_ARCH, "--model", str(tmp_path / "cntk_gap.py"))
    assert "--arch and --model: expected one of them, got both" in err
    err = run(str(tmp_path / "img.npy"), "--model", str(tmp_path / "img.npy"))
    assert "--model: expected a .py file" in err
    err = run(str(tmp_path / "img.npy"), "--model", str(tmp_path / "empty.py"))
    assert "must define build(width, in_shape, out_features) -> torch.nn.Module or model = " in err
    assert not out.exists() and not (tmp_path / "k.npy.ledger").exists()  # refused before any output
    bad = digits[:20].copy()
    bad[7, 0, 3, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    err = run(str(tmp_path / "nan.npy"), *GAP_ARCH)
    assert "expected finite values, got nan at input 7 (index (7, 0, 3, 5))" in err
    assert "expected a .npy, .zarr or .csv file" in run(str(tmp_path / "img.txt"), *GAP_ARCH)
