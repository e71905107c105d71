"""``ntkit bench fashion`` (ntkit.experiments.fashion*): idx files, split, solves, and the pipeline end to end.

The pipeline runs on idx files the tests write themselves (tiny synthetic images in the real format),
and, where Debian's dataset-fashion-mnist package is installed, on a 2,000-image slice of the real data.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkit.cli import main as cli_main
from ntkit.compute.api import compute_kernel
from ntkit.experiments import fashion
from ntkit.experiments.fashion import Runner, Settings, prepare, run_fashion_benchmark
from ntkit.experiments.fashion_data import (
    DEBIAN_DIR,
    FILES,
    IdxFormatError,
    find_fashion,
    load_fashion,
    paper_split,
    read_idx,
    standardise_global,
    write_idx,
)
from ntkit.experiments.fashion_meter import Meter
from ntkit.experiments.fashion_report import format_report, standard_error
from ntkit.experiments.fashion_solve import predict_stored, ridge_sweep, solve_stored
from ntkit.experiments.images_eval import centred_targets
from ntkit.experiments.images_kernels import KernelSpec
from ntkit.nn.builders import fc
from tests.fashion_files import bench_args, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")  # small kernels: one thread each


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread too: on a loaded machine OpenBLAS's spinning threads made the Cholesky
    factorisations of the real-data slice 5-10x slower (threadpoolctl comes with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - without scikit-learn
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


# ------------------------------------------------------------------------------------------ data


def test_idx_round_trip_and_malformed_files(tmp_path: Path) -> None:
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "a.gz", x)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", 3), x)
    with gzip.open(tmp_path / "a.gz", "rb") as fh:  # the header of the real format: magic 0x00000803, big-endian
        assert fh.read(8) == bytes([0, 0, 8, 3, 0, 0, 0, 2])
    with pytest.raises(IdxFormatError, match=r"expected 1 dimension\(s\), got 3"):
        read_idx(tmp_path / "a.gz", 1)
    (tmp_path / "b.gz").write_bytes(b"not gzip")
    with pytest.raises(IdxFormatError, match="expected a gzip-compressed idx file"):
        read_idx(tmp_path / "b.gz", 3)
    with gzip.open(tmp_path / "c.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(IdxFormatError, match="expected 5 values for shape"):
        read_idx(tmp_path / "c.gz", 1)
    with gzip.open(tmp_path / "d.gz", "wb") as fh:
        fh.write(b"\x12\x34\x56\x78")
    with pytest.raises(IdxFormatError, match="magic 0x00000801"):
        read_idx(tmp_path / "d.gz", 1)


def test_missing_files_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*--data-dir"):
        find_fashion(tmp_path)
    write_dataset(tmp_path / "data")
    (tmp_path / "data" / FILES["test"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_fashion(tmp_path / "data")
    assert cli_main(bench_args(tmp_path, tmp_path / "o")) == 2


def test_loader_checks_shapes_and_labels(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path)
    data = load_fashion(folder)
    assert data.x_train.shape == (600, 28, 28) and data.x_test.shape == (100, 28, 28)
    assert data.y_train.dtype == np.int64 and set(np.unique(data.y_test)) == set(range(10))
    write_idx(folder / FILES["train"][1], np.full(600, 12, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"expected labels 0..9, got 12..12"):
        load_fashion(folder)
    write_idx(folder / FILES["train"][1], np.zeros(599, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="expected as many labels as images, got 599 labels and 600 images"):
        load_fashion(folder)


def test_paper_split_is_disjoint_balanced_and_capped() -> None:
    y_train, y_test = np.arange(600) % 10, np.arange(100) % 10
    s = paper_split(y_train, y_test, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (500, 100, 100)
    assert not set(s.train) & set(s.val) and len(set(s.pool)) == 600
    small = paper_split(y_train, y_test, n_train=40, n_val=20, n_test=30, seed=3)
    np.testing.assert_array_equal(small.train, s.train[:40])  # prefixes of the same order
    assert np.bincount(y_train[small.train]).tolist() == [4] * 10
    assert np.bincount(y_train[small.val]).tolist() == [2] * 10
    with pytest.raises(ValueError, match="n_val: expected at most the 100 images of that split, got 101"):
        paper_split(y_train, y_test, n_val=101)


def test_global_standardisation_uses_the_reference_images_only() -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28)).astype(np.uint8)
    z = standardise_global(x, np.arange(30))
    assert abs(z[:30].mean()) < 1e-12 and abs(z[:30].std() - 1.0) < 1e-12
    with pytest.raises(ValueError, match="expected pixels that vary"):
        standardise_global(np.zeros((3, 28, 28), dtype=np.uint8), np.arange(3))


# ------------------------------------------------------------------------------------------ solves


def _kernel(n: int, d: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d))
    k = np.maximum(x @ x.T / d, 0.0) + 0.5 * (x @ x.T / d)  # PSD-ish, positive diagonal
    k = k @ k.T / n
    return k, rng.integers(0, 10, size=n)


def test_float32_factor_with_refinement_gives_the_float64_solution() -> None:
    k, y = _kernel(300)
    t = centred_targets(y, 10)
    a64, i64 = solve_stored(k, t, 1e-3, precision="float64")
    a32, i32 = solve_stored(k, t, 1e-3, precision="float32", tol=1e-12, keep_first=True)
    plain, ip = solve_stored(k, t, 1e-3, precision="float32-plain")
    np.testing.assert_array_equal(i32["alpha_first"], plain)  # the unrefined answer comes with the refined one
    assert i64["precision"] == "float64" and i32["precision"] == "float32" and ip["residuals"] == []
    assert i32["cg_steps"] == 0  # well conditioned: refinement alone
    assert i32["residuals"][0] > i32["residuals"][-1] and i32["residuals"][-1] < 1e-9
    err = np.abs(a32 - a64).max() / np.abs(a64).max()
    assert err < 1e-8 < np.abs(plain - a64).max() / np.abs(a64).max()
    _, ia = solve_stored(k, t, 1e-3, memory_budget=8 * 300 * 300 - 1)  # the float64 factor does not fit
    assert ia["precision"] == "float32"
    scores = predict_stored(k[:7], a64, i64["scale"])
    np.testing.assert_allclose(scores, k[:7] @ a64 / i64["scale"], rtol=1e-12)
    with pytest.raises(ValueError, match="precision"):
        solve_stored(k, t, 1e-3, precision="half")
    grid = ridge_sweep(k[:200, :200], t[:200], k[200:, :200], y[200:], regs=(1e-3, 1.0))
    assert len(grid) == 2 and all(0.0 <= a <= 1.0 for a in grid)
    # a float32-stored kernel: the float64 solve is of that kernel exactly (residual at float64 rounding),
    # not of a float32-rounded k / scale (which left ~1e-6 here)
    _, i_stored32 = solve_stored(k.astype(np.float32), t, 1e-3, precision="float64")
    assert i_stored32["residuals"][-1] < 1e-12


def test_refinement_that_crawls_hands_over_to_preconditioned_cg() -> None:
    """kappa u_32 near 1 (condition 3e7): classical refinement on the float32 factor gains only ~2.5x a step and
    stops far from the answer; CG preconditioned by the same factor reaches the float64 solution."""
    rng = np.random.default_rng(0)
    n = 400
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = (q * np.geomspace(1.0, 3e-8, n)) @ q.T
    k = (k + k.T) / 2
    t = rng.standard_normal((n, 10))
    a64, _ = solve_stored(k, t, 0.0, precision="float64")
    a32, i32 = solve_stored(k, t, 0.0, precision="float32")
    crawl, ic = solve_stored(k, t, 0.0, precision="float32", max_cg=0)  # no CG: refinement stops where it crawls
    scale = np.abs(a64).max()
    assert i32["cg_steps"] > 0 and i32["residuals"][-1] < 1e-8 and np.abs(a32 - a64).max() / scale < 1e-8
    assert ic["cg_steps"] == 0 and ic["residuals"][-1] > 1e-5 and np.abs(crawl - a64).max() / scale > 1e-6
    assert i32["residuals"][1] > 0.1 * i32["residuals"][0]  # the first refinement step already crawled
    # the true residual of the answer closes the history: recompute it
    true = np.linalg.norm(t - (k / i32["scale"]) @ a32) / np.linalg.norm(t)
    assert i32["residuals"][-1] == pytest.approx(true, rel=1e-3)


def test_meter_records_time_memory_and_load() -> None:
    with Meter(interval=0.01) as m:
        block = np.ones((512, 512))
        assert block.sum() > 0
    rec = m.record()
    assert rec["seconds"] >= 0 and rec["cpu_seconds"] >= 0 and rec["peak_anon_gb"] > 0
    assert rec["peak_rss_gb"] >= rec["peak_anon_gb"] and len(rec["load"]) == 2


# ------------------------------------------------------------------------------------------ the pipeline


def test_standard_error_of_a_test_accuracy() -> None:
    """The binomial standard error of the results page: sqrt(p (1 - p) / n), 0 at p = 0 or 1, named errors."""
    assert standard_error(0.9, 10000) == pytest.approx(0.003, rel=1e-12)
    assert standard_error(0.9123, 10000) == pytest.approx(math.sqrt(0.9123 * 0.0877) / 100, rel=1e-12)
    assert standard_error(0.5, 1) == 0.5 and standard_error(0.0, 7) == 0.0 and standard_error(1.0, 7) == 0.0
    for acc, n in ((1.5, 10), (-0.1, 10), (0.5, 0), (float("nan"), 10)):
        with pytest.raises(ValueError, match="standard_error: expected an accuracy in"):
            standard_error(acc, n)


def test_pipeline_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion, "PRECISION_FROM", 30)  # the float32 comparison from 30 images (20,000 at full size)
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = bench_args(data, out, "--n-train", "60", "--n-val", "20", "--n-test", "40", "--n-sweep", "40",
                      "--fc-depths", "1", "2", "--fc-b-stds", "0.5", "0", "--cnn-depths", "1",
                      "--features", "gap1-rf16", "--sizes", "30")
    assert cli_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and (summary["n_pool"], summary["n_sweep"], summary["n_test"]) == (80, 40, 40)
    fc = summary["stages"]["fc"]
    assert [r["kernel"] for r in fc["sweeps"]] == ["fc1", "fc1-b0.5", "fc2", "fc2-b0.5"]  # depth, then b_std
    assert [r["b_std"] for r in fc["sweeps"]] == [0.0, 0.5, 0.0, 0.5] and summary["settings"]["fc_b_stds"] == [0, 0.5]
    assert [f["which"] for f in fc["finals"]] == ["nngp", "ntk"]
    for f in fc["finals"]:  # the best (depth, b_std, ridge) on the validation split, the first maximum on ties
        cells = [(a, -i, rec["kernel"], rec["b_std"], r) for i, rec in enumerate(fc["sweeps"])
                 for r, a in zip(rec["regs"], rec["val_acc"][f["which"]], strict=True) if a is not None]
        best = max(a for a, *_ in cells)
        first = next(c for c in cells if c[0] == best)
        assert (f["kernel"], f["b_std"], f["reg"]) == first[2:]
    assert [r["kernel"] for r in summary["stages"]["cnn"]["sweeps"]] == ["v1"]  # the CNN grid: no bias by default
    assert not any((out / "kernels").rglob("sweep/*"))  # sweep blocks deleted once their record is written
    for f in fc["finals"] + summary["stages"]["cnn"]["finals"]:
        assert [r["n"] for r in f["curve"]] == [30, 80] and all("float32_plain" in r for r in f["curve"])
        assert f["test_acc"] > 0.5  # the squares are easy to place
        assert f["kernel_cost"]["pairs"] == 80 * 81 / 2 + 40 * 80
    feats = summary["stages"]["features"][0]
    assert (feats["kernel"], feats["n_features"]) == ("gap1-rf16", 16) and 0.0 <= feats["test_acc"] <= 1.0
    assert [r["n"] for r in feats["curve"]] == [30, 80] and feats["curve"][-1]["test_acc"] == feats["test_acc"]
    phi = np.load(next((out / "kernels").rglob("features/gap1-rf16_pool.npy"))).astype(np.float64)
    phi_test = np.load(next((out / "kernels").rglob("features/gap1-rf16_test.npy"))).astype(np.float64)
    data_ = fashion.prepare(Settings(n_train=60, n_val=20, n_test=40, n_sweep=40, data_dir=str(data)))
    for row in feats["curve"]:  # float64 reference: ridge regression on the stored features of the first n
        p = phi[: row["n"]]
        w = np.linalg.solve(p.T @ p + feats["reg"] * np.mean((p**2).sum(1)) * np.eye(16),
                            p.T @ centred_targets(data_.y_pool[: row["n"]], 10))
        assert row["test_acc"] == pytest.approx(float(np.mean((phi_test @ w).argmax(1) == data_.y_test)), abs=1e-12)
    text = (out / "results.md").read_text()
    first = fc["finals"][0]
    se = 100 * math.sqrt(first["test_acc"] * (1 - first["test_acc"]) / 40)  # 40 test images
    for needed in ("Novak et al. 2019", "SVC (RBF, C = 10)", "| 60000 | 89.70 | 0.30 |", "## Cost of every stage",
                   "fc1", "| fc1-b0.5 | relu | 2 | 0.5 |", "| kernel | activation | w_var | b_std | ridge |",
                   "CNN-GP without pooling | - | - | - | - | - | 50000 | 92.60 | 0.26 |",
                   f"| {first['n_pool']} | {100 * first['test_acc']:.2f} | {se:.2f} |"):
        assert needed in text, needed
    assert str(tmp_path) in text  # the data folder; nothing else machine-specific
    first["curve"][-1]["cg_steps"] = 7  # a solve finished by preconditioned CG says so in the precision table
    assert f"| {first['n_pool']} | {first['curve'][-1]['precision']} + 7 CG steps |" in format_report(summary)
    records = sorted((out / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert cli_main(args) == 0  # resumed: every stage read back, nothing rewritten
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert json.loads((out / "summary.json").read_text())["stages"]["fc"]["finals"][0]["test_acc"] == \
        fc["finals"][0]["test_acc"]


def test_one_bias_value_is_the_sweep_without_biases(tmp_path: Path) -> None:
    """``--fc-b-stds 0``: the records and kernels of the depth / ridge sweep alone (a run before the bias
    sweep resumes from its records), bit for bit; a bias adds ``b_std^2`` to every layer's NNGP."""
    s = Settings(stages=("fc",), n_train=60, n_val=20, n_test=40, n_sweep=40, fc_depths=(2,), fc_b_stds=(0.0,),
                 sizes=(), data_dir=str(write_dataset(tmp_path / "data")))
    summary = run_fashion_benchmark(s, tmp_path / "out", progress=False, plot=False)
    (rec,) = summary["stages"]["fc"]["sweeps"]
    assert rec["name"] == "sweep-fc2" and rec["protocol"] == {"version": 1, "key": s.key}
    assert [f["name"] for f in summary["stages"]["fc"]["finals"]] == ["final-fc2-nngp", "final-fc2-ntk"]
    data = prepare(s)
    x_fit, x_val = data.x_pool[:40].flatten(1), data.x_pool[data.val].flatten(1)
    old = fc(784, depth=2, w_std=math.sqrt(2.0), device="meta")  # the model of the runs without a bias grid
    k_fit, k_val = compute_kernel(old, x_fit, which="both"), compute_kernel(old, x_val, x_fit, which="both")
    t_fit = centred_targets(data.y_pool[:40], 10)
    for which in ("nngp", "ntk"):
        expect = ridge_sweep(getattr(k_fit, which).numpy(), t_fit, getattr(k_val, which).numpy(), data.y_pool[data.val])
        assert rec["val_acc"][which] == expect
    runner = Runner(s, data, tmp_path / "out", progress=False)
    assert runner.sweep(KernelSpec("fc", 2, b_std=0.0)) == rec  # read back, not recomputed
    x = x_fit[:5]
    k0 = compute_kernel(KernelSpec("fc", 0, b_std=0.5).model((28, 28)), x, which="nngp")
    torch.testing.assert_close(k0.nngp, 2.0 * x @ x.T / 784 + 0.25, rtol=1e-12, atol=1e-12)
    assert KernelSpec("fc", 3, b_std=0.1).token == "fc3-b0.1" and KernelSpec("fc", 3, b_std=0.0).token == "fc3"


def test_bad_options_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_dataset(tmp_path / "data")
    base = bench_args(data, tmp_path / "o")
    assert cli_main([*base, "--stages", "fc", "svm"]) == 2
    assert "--stages: expected names among ['fc', 'cnn', 'features'], got 'svm'" in capsys.readouterr().err
    assert cli_main([*base, "--features", "gap3"]) == 2
    assert "--features: expected random-feature kernels such as gap3-rf1024, got 'gap3'" in capsys.readouterr().err
    assert cli_main([*base, "--fc-b-stds", "0", "-0.1"]) == 2
    assert "--fc-b-stds: expected finite numbers >= 0 (bias standard deviations), got -0.1" in capsys.readouterr().err
    assert cli_main([*base, "--cnn-b-stds", "nan"]) == 2
    assert "--cnn-b-stds: expected finite numbers >= 0 (bias standard deviations), got nan" in capsys.readouterr().err
    assert cli_main([*base, "--n-train", "1000"]) == 2  # only 500 training-split images in the written files
    assert "n_train: expected at most the 500 images of that split, got 1000" in capsys.readouterr().err


@pytest.mark.skipif(not (DEBIAN_DIR / FILES["train"][0]).is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_slice(tmp_path: Path) -> None:
    s = Settings(stages=("fc",), n_train=600, n_val=200, n_test=1200, n_sweep=600, fc_depths=(1, 2), sizes=())
    summary = run_fashion_benchmark(s, tmp_path, progress=False, plot=False)
    assert summary["source"] == str(DEBIAN_DIR) and summary["n_pool"] == 800
    for f in summary["stages"]["fc"]["finals"]:
        assert f["test_acc"] > 0.75  # FC kernels reach ~80% on 800 images (~90% on all 60k)


def test_float32_kernels_have_their_own_folder_and_the_float64_accuracy(tmp_path: Path) -> None:
    """``--kernel-dtype float32``: kernels computed and stored in float32 (half the disk) in a folder of
    their own; on this easy slice the choices and test accuracies equal the float64 run's."""
    data = str(write_dataset(tmp_path / "data"))
    runs = {}
    for dtype in ("float64", "float32"):
        s = Settings(stages=("fc",), n_train=60, n_val=20, n_test=40, n_sweep=40, fc_depths=(1, 2), fc_b_stds=(0.0,),
                     sizes=(), data_dir=data, kernel_dtype=dtype)
        runs[dtype] = run_fashion_benchmark(s, tmp_path / "out", progress=False, plot=False)
        finals = sorted((tmp_path / "out" / "kernels" / s.key / "final").glob("*_pool.npy"))
        assert finals and all(np.load(f, mmap_mode="r").dtype == np.dtype(dtype) for f in finals)
    assert Settings(kernel_dtype="float32").key == Settings().key + "-float32"
    f64, f32 = (runs[d]["stages"]["fc"]["finals"] for d in ("float64", "float32"))
    def chosen(finals: list[dict]) -> list[tuple]:
        return [(f["kernel"], f["reg"], f["test_acc"]) for f in finals]

    assert chosen(f32) == chosen(f64)
    assert runs["float32"]["settings"]["kernel_dtype"] == "float32"


def test_nngp_and_ntk_finals_of_one_kernel_share_a_pass_when_the_disk_holds_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both finals chose ``fc2``: one ``"both"`` pass stores NNGP and NTK together (the NTK recursion carries the
    NNGP); on a disk too small for both they are computed one at a time. Same choices and accuracies either way."""
    data = str(write_dataset(tmp_path / "data"))
    s = Settings(stages=("fc",), n_train=60, n_val=20, n_test=40, n_sweep=40, fc_depths=(2,), fc_b_stds=(0.0,),
                 sizes=(30,), data_dir=data)
    shared = run_fashion_benchmark(s, tmp_path / "shared", progress=False, plot=False)["stages"]["fc"]["finals"]
    folder = tmp_path / "shared" / "kernels" / s.key / "final"
    assert sorted(p.name for p in folder.glob("*.npy")) == ["fc2_both_pool.npy", "fc2_both_test.npy"]
    assert np.load(folder / "fc2_both_pool.npy", mmap_mode="r").shape == (2, 80, 80)

    class Full:
        free = 1000  # bytes: the pair of blocks does not fit

    monkeypatch.setattr(fashion.shutil, "disk_usage", lambda path: Full)
    apart = run_fashion_benchmark(s, tmp_path / "apart", progress=False, plot=False)["stages"]["fc"]["finals"]
    folder = tmp_path / "apart" / "kernels" / s.key / "final"
    assert sorted(p.name for p in folder.glob("*.npy")) == ["fc2_nngp_pool.npy", "fc2_nngp_test.npy",
                                                           "fc2_ntk_pool.npy", "fc2_ntk_test.npy"]
    for a, b in zip(shared, apart, strict=True):
        assert (a["which"], a["kernel"], a["reg"]) == (b["which"], b["kernel"], b["reg"])
        assert [r["test_acc"] for r in a["curve"]] == [r["test_acc"] for r in b["curve"]]
    # a resumed run keeps sharing once the shared files exist, whatever the disk says now
    assert Runner(s, prepare(s), tmp_path / "shared", progress=False).shares_pass("fc2")
    assert not Runner(s, prepare(s), tmp_path / "apart", progress=False).shares_pass("fc2")
    monkeypatch.undo()  # room on the disk now: a run begun one kernel at a time goes on so (no stray files)
    assert not Runner(s, prepare(s), tmp_path / "apart", progress=False).shares_pass("fc2")


def test_learning_curves_of_several_runs_on_one_figure(tmp_path: Path) -> None:
    """``benchmarks/fashion_curves.py``: every final record of each run folder, labelled with its kernel, NNGP /
    NTK, preprocessing and dtype, drawn by ``plot_curves`` (matplotlib is a test dependency here)."""
    import importlib.util

    from ntkit.experiments.fashion_report import plot_curves

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fashion_curves.py"
    spec = importlib.util.spec_from_file_location("fashion_curves", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    curve = [{"n": 1000, "test_acc": 0.8}, {"n": 60000, "test_acc": 0.9}]
    for key, name, which in (("fashion-50000+10000+10000-sweep10000-image-seed0", "final-fc3-nngp", "nngp"),
                             ("fashion-50000+10000+10000-sweep10000-global-seed0-float32", "final-v4-ntk", "ntk")):
        folder = tmp_path / "run" / "records" / key
        folder.mkdir(parents=True)
        (folder / f"{name}.json").write_text(json.dumps({"kernel": name.split("-")[1], "which": which,
                                                         "curve": curve}))
    folder = tmp_path / "run" / "records" / "fashion-50000+10000+10000-sweep10000-global-seed0-float32"
    (folder / "features-gap3-rf512.json").write_text(json.dumps({"kernel": "gap3-rf512", "which": "ntk",
                                                                 "n_features": 512, "curve": curve}))
    (folder / "features-gap3-rf256.json").write_text(json.dumps({"kernel": "gap3-rf256", "which": "ntk",
                                                                 "n_features": 256}))  # before curves: skipped
    curves = module.curves_of(tmp_path / "run")
    assert [label for label, _ in curves] == ["gap3-rf512 NTK, 512 random features (global)",
                                              "v4 NTK (global, float32)", "fc3 NNGP (per image)"]
    png = tmp_path / "curves.png"
    assert plot_curves(curves, png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_curves([], tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_stored_features_resume_where_an_interrupted_run_stopped(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ntkit.experiments.fashion_kernels import FeatureFit
    from ntkit.experiments.images_kernels import parse_kernels

    spec = parse_kernels(["gap1-rf8"])[0]
    x = torch.randn(10, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    reference = FeatureFit(spec, "ntk", (1, 6, 6), seed=3).phi(x)
    store = tmp_path / "features" / "pool.npy"
    computed: list[int] = []

    def interrupted_after(limit: int) -> FeatureFit:
        fit = FeatureFit(spec, "ntk", (1, 6, 6), seed=3)
        batches = fit.fmap.batches

        def counted(xs: torch.Tensor, _size: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
            for rows, phi in batches(xs, 3):
                if len(computed) == limit:
                    raise KeyboardInterrupt
                computed.append(rows.stop - rows.start)
                yield rows, phi

        monkeypatch.setattr(fit.fmap, "batches", counted)
        return fit

    with pytest.raises(KeyboardInterrupt):
        interrupted_after(2).phi(x, store=store)
    assert json.loads(store.with_suffix(".json").read_text())["rows"] == 6
    resumed = interrupted_after(-1).phi(x, store=store)
    assert computed == [3, 3, 3, 1]  # the resumed run computed rows 6..9 only
    torch.testing.assert_close(resumed, reference, rtol=1e-6, atol=1e-7)
    computed.clear()  # other inputs (or another seed): recomputed from the first row
    again = interrupted_after(-1).phi(2 * x, store=store)
    assert computed == [3, 3, 3, 1]
    torch.testing.assert_close(again, FeatureFit(spec, "ntk", (1, 6, 6), seed=3).phi(2 * x), rtol=1e-6, atol=1e-7)


def test_final_ridge_chosen_at_full_size_on_the_validation_split(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``--final-ridge validation``: the sweep's ridge and its half-decade neighbours, each fitted on the whole
    training split (blocks of the final kernel) and scored on the validation split; ``--finals nngp`` alone.
    The learning curve's point at the training split's size takes the chosen candidate's solve (not solved
    twice)."""
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "out"
    common = bench_args(data, out, "--n-train", "60", "--n-val", "30", "--n-test", "40", "--n-sweep", "40",
                        "--stages", "fc", "--fc-depths", "2", "--fc-b-stds", "0", "--sizes", "30", "60",
                        "--finals", "nngp")
    args = [*common, "--final-ridge", "validation"]
    sizes_solved: list[int] = []
    solve = fashion.solve_stored

    def counted(k: np.ndarray, *a: object, **kw: object) -> object:
        sizes_solved.append(k.shape[0])
        return solve(k, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fashion, "solve_stored", counted)
    assert cli_main(args) == 0
    # the candidates at 60, then the curve at 30 and 90 (and the float32 comparison at 90), not 60 again
    assert sorted(sizes_solved) == [30, 60, 60, 60, 90, 90]
    monkeypatch.undo()
    summary = json.loads((out / "summary.json").read_text())
    (final,) = summary["stages"]["fc"]["finals"]
    choice = final["ridge_choice"]
    assert final["which"] == "nngp" and choice["n_train"] == 60
    assert choice["regs"] == pytest.approx([final["sweep_reg"] * f for f in (10**-0.5, 1.0, 10**0.5)], rel=1e-2)
    assert final["reg"] == choice["regs"][int(np.argmax(choice["val_acc"]))]
    k = np.load(next((out / "kernels").rglob("final/fc2_nngp_pool.npy"))).astype(np.float64)
    assert k.shape == (90, 90)
    labels = fashion.prepare(Settings(n_train=60, n_val=30, n_test=40, n_sweep=40, data_dir=str(data))).y_pool
    k_fit = k[:60, :60]
    for reg, acc in zip(choice["regs"], choice["val_acc"], strict=True):  # float64 reference of every candidate
        alpha = np.linalg.solve(k_fit + reg * np.mean(np.diag(k_fit)) * np.eye(60), centred_targets(labels[:60], 10))
        assert acc == pytest.approx(float(np.mean((k[60:, :60] @ alpha).argmax(1) == labels[60:])), abs=1e-12)
    test_labels = fashion.prepare(Settings(n_train=60, n_val=30, n_test=40, n_sweep=40, data_dir=str(data))).y_test
    k_test = np.load(next((out / "kernels").rglob("final/fc2_nngp_test.npy"))).astype(np.float64)
    row = next(r for r in final["curve"] if r["n"] == 60)
    alpha = np.linalg.solve(k_fit + final["reg"] * np.mean(np.diag(k_fit)) * np.eye(60),
                            centred_targets(labels[:60], 10))
    assert row["solved_in"] == "ridge_choice"
    assert row["test_acc"] == pytest.approx(float(np.mean((k_test[:, :60] @ alpha).argmax(1) == test_labels)),
                                            abs=1e-12)
    text = (out / "results.md").read_text()
    assert "## Ridge of the final fit, chosen at full size" in text and "ridge at full size (3 solves)" in text
    assert "solve N = 60 (float64, its solve in the ridge choice's)" in text
    assert cli_main(common) == 0  # the sweep's ridge: its own record, recomputed
    rec = json.loads((out / "summary.json").read_text())["stages"]["fc"]["finals"][0]
    assert rec["ridge_choice"] is None and rec["reg"] == rec["sweep_reg"] == final["sweep_reg"]
