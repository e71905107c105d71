"""``ntkit bench images`` (ntkit.experiments.images*): data, splits, protocol pieces, and the quick run end to end.

Nothing here reads ../shared/data: the quick run uses scikit-learn's digits only, and the MNIST path
is exercised on a small synthetic file in the same format.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra: pip install -e '.[test]'")

from ntkit.cli import main as cli_main
from ntkit.experiments import images_data
from ntkit.experiments.images import KernelSpec, parse_kernels
from ntkit.experiments.images_data import (
    ImageFormatError,
    few_shot_draw,
    load_digits_images,
    load_mnist5k,
    pad_to_multiple,
    split_indices,
    standardise,
    validation_split,
)
from ntkit.experiments.images_eval import centred_targets, few_shot_sizes, ridge_path, ridge_predict

pytestmark = pytest.mark.usefixtures("single_thread")  # small kernels and a tiny CNN: one thread each


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_quick_run_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    assert cli_main(["bench", "images", "--quick", "--out", str(out), "--quiet"]) == 0
    for name in ("results.csv", "summary.json", "fewshot.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and list(summary["datasets"]) == ["digits"]
    digits = summary["datasets"]["digits"]
    assert (digits["n_pool"], digits["n_test"], digits["image_shape"]) == (200, 100, [8, 8])
    assert digits["few_shot_sizes"] == [1, 2, 4, 8, 16]
    rows = _read_csv(out / "results.csv")
    models = {r["model"] for r in rows}
    assert {"FC-3", "CNTK-V-3"} <= models and any(m.startswith("CNN-GAP") for m in models)
    assert {(r["which"], r["method"]) for r in rows if r["model"] == "FC-3"} == {
        (w, m) for w in ("nngp", "ntk") for m in ("regression", "svc")}
    fs_cols = [c for c in rows[0] if c.startswith("fs") and c.endswith("_mean")]
    assert fs_cols == [f"fs{m}_mean" for m in (1, 2, 4, 8, 16)]
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0
        for c in fs_cols:
            if r[c]:
                assert 0.0 <= float(r[c]) <= 1.0
    # the few-shot curves rise with the training size, on average over the kernels
    kernel_rows = [r for r in rows if r["family"] != "cnn"]
    curves = np.array([[float(r[c]) for c in fs_cols] for r in kernel_rows])
    assert np.all(curves[:, -1] > curves[:, 0] + 0.15)
    assert np.mean(np.diff(curves, axis=1)) > 0
    # a CNTK beats chance (10%) by far on the whole pool, and its NTK kernel cache is on disk
    cntk = [float(r["test_acc"]) for r in rows if r["model"] == "CNTK-V-3"]
    assert min(cntk) > 0.8
    kernels = next((out / "kernels").iterdir())
    pool = np.load(kernels / "v3_pool.npy")
    test = np.load(kernels / "v3_test.npy")
    assert pool.shape == (2, 200, 200) and test.shape == (2, 100, 200)
    np.testing.assert_allclose(pool[1], pool[1].T, rtol=1e-12)
    rec = digits["kernels"][1]
    assert rec["kernel"] == "CNTK-V-3" and rec["seconds_per_pair"] > 0 and rec["pairs"] == 200 * 201 // 2 + 100 * 200
    # a rerun reuses every record and kernel: the same table
    before = (out / "results.csv").read_text()
    assert cli_main(["bench", "images", "--quick", "--out", str(out), "--quiet"]) == 0
    assert (out / "results.csv").read_text() == before


def _fake_mnist(path: Path, n: int = 60, seed: int = 0) -> None:
    """``n`` rows of 784 pixels + a label, each class a brighter block at its own place."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        label = i % 10
        img = rng.integers(0, 40, size=(28, 28))
        img[2 * label:2 * label + 8, 4:20] += 200
        lines.append(",".join(map(str, [*img.ravel().tolist(), label])))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def test_mnist_path_on_a_synthetic_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _fake_mnist(data / "mnist5k" / "mnist_5k.csv.gz")
    loaded = load_mnist5k(data / "mnist5k" / "mnist_5k.csv.gz", size=14)
    assert loaded.x.shape == (60, 1, 14, 14) and loaded.x.dtype == torch.float64
    assert 0.0 <= float(loaded.x.min()) and float(loaded.x.max()) <= 1.0 and loaded.n_classes == 10
    out = tmp_path / "out"
    code = cli_main(["bench", "images", "--datasets", "mnist", "--data", str(data), "--mnist-train", "40",
                     "--mnist-test", "20", "--mnist-kernels", "fc1", "myrtle5", "--draws", "2", "--no-cnn",
                     "--no-plot", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    mnist = summary["datasets"]["mnist"]
    assert "14x14" in mnist["source"] and mnist["few_shot_sizes"] == [1, 2, 4]
    myrtle = mnist["kernels"][1]
    assert myrtle["kernel"] == "Myrtle-5" and myrtle["input_shape"] == [1, 16, 16]  # 14x14 padded to 16x16
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in _read_csv(out / "results.csv"))
    assert "Myrtle-5" in capsys.readouterr().out


def test_missing_mnist_is_skipped_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(images_data, "DEFAULT_DATA", tmp_path / "nowhere")
    out = tmp_path / "out"
    args = ["bench", "images", "--quick", "--datasets", "digits", "mnist", "--kernels", "fc1", "--no-cnn",
            "--no-svc", "--no-plot", "--out", str(out)]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert "mnist: skipped" in captured.err and "--data" in captured.err
    assert json.loads((out / "summary.json").read_text())["skipped"] == ["mnist"]
    # an explicit --data without the file is an error that names the places tried
    assert cli_main([*args, "--data", str(tmp_path / "empty")]) == 2
    assert "mnist_5k.csv.gz" in capsys.readouterr().err


def test_bad_arguments_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [k.token for k in parse_kernels(["FC3", "gap6", "myrtle10", "fc3"])] == ["fc3", "gap6", "myrtle10"]
    assert KernelSpec("gap", 3).name == "CNTK-GAP-3" and KernelSpec("v", 6).name == "CNTK-V-6"
    for bad, match in [(["resnet3"], "fc3, v6"), (["myrtle6"], "Myrtle depth"), (["gap0"], "at least one"),
                       ([], "at least one kernel")]:
        with pytest.raises(ValueError, match=match):
            parse_kernels(bad)
    assert cli_main(["bench", "images", "--quick", "--kernels", "cnn3", "--out", str(tmp_path / "x")]) == 2
    assert "kernels: expected names like" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at most the 1797 images"):
        split_indices(load_digits_images().y, 1500, 400, 0)
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write("1,2,3\n")
    with pytest.raises(ImageFormatError, match="row 1: expected 785"):
        load_mnist5k(bad)
    bad.write_bytes(b"not gzip")
    with pytest.raises(ImageFormatError, match="gzip"):
        load_mnist5k(bad)
    with pytest.raises(ValueError, match=r"28 .* or 14"):
        load_mnist5k(bad, size=7)


def test_splits_preprocessing_and_draws() -> None:
    data = load_digits_images()
    assert data.x.shape == (1797, 1, 8, 8) and float(data.x.max()) == 1.0
    pool, test = split_indices(data.y, 1397, 400, 0)
    assert len(np.intersect1d(pool, test)) == 0 and len(pool) == 1397
    assert np.all(np.bincount(data.y[test]) == 40)  # stratified
    assert np.bincount(data.y[pool]).min() >= 128  # room for 128 images per class
    fit, val = validation_split(data.y[pool], 0.2, 0)
    assert len(val) == round(0.2 * 1397) and len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 1397
    x = standardise(data.x, pool, "global")
    assert abs(float(x[pool].mean())) < 1e-12 and abs(float(x[pool].std()) - 1) < 1e-12
    xi = standardise(data.x, pool, "image")
    assert torch.allclose(xi.mean(dim=(1, 2, 3)), torch.zeros(1797, dtype=torch.float64), atol=1e-12)
    assert pad_to_multiple(torch.zeros(2, 1, 14, 14), 8).shape == (2, 1, 16, 16)
    draw = few_shot_draw(data.y[pool], 4, (0, 4, 1))
    assert np.all(np.bincount(data.y[pool][draw]) == 4)
    assert np.array_equal(draw, few_shot_draw(data.y[pool], 4, (0, 4, 1)))
    assert not np.array_equal(draw, few_shot_draw(data.y[pool], 4, (0, 4, 2)))
    with pytest.raises(ValueError, match="class"):
        few_shot_draw(data.y[pool], 500, (0,))
    assert few_shot_sizes(128, 134) == [1, 2, 4, 8, 16, 32, 64, 128] and few_shot_sizes(128, 100)[-1] == 64


def test_ridge_solvers_agree() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 5))
    k = a @ a.T  # rank 5: Cholesky needs the ridge
    y = rng.integers(0, 3, 30)
    t = centred_targets(y, 3)
    np.testing.assert_allclose(t.sum(axis=1), 0.0, atol=1e-15)
    assert t[0, y[0]] == pytest.approx(2 / 3)
    for reg in (1e-3, 1.0):
        direct = k[:7] @ np.linalg.solve(k + reg * np.eye(30), t)
        np.testing.assert_allclose(ridge_predict(k, t, k[:7], reg), direct, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ridge_path(k, t, k[:7], [reg])[0], direct, rtol=1e-8, atol=1e-10)


def test_random_feature_kernels_run_beside_the_exact_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--features M`` adds ``gap1-rfM`` beside ``gap1``: its blocks estimate the exact ones (relative
    Frobenius error near 1/sqrt(M)), its records and the comparison line appear, a rerun reads them."""
    from ntkit.experiments.images_kernels import feature_blocks, kernel_blocks

    specs = parse_kernels(["fc1", "gap1", "myrtle5", "v1-rf32"], features=[256])
    assert [s.token for s in specs] == ["fc1", "fc1-rf256", "gap1", "gap1-rf256", "myrtle5", "v1-rf32"]
    assert specs[3].name == "CNTK-GAP-1 rf256" and specs[3].exact == KernelSpec("gap", 1)
    for bad, match in [(["myrtle5-rf64"], "random features"), (["gap1-rf0"], "random features")]:
        with pytest.raises(ValueError, match=match):
            parse_kernels(bad)
    with pytest.raises(ValueError, match="feature counts"):
        parse_kernels(["gap1"], features=[0])

    data = load_digits_images()
    pool, test = np.arange(40), np.arange(40, 50)
    x = standardise(data.x, pool, "global")
    exact = kernel_blocks(KernelSpec("gap", 1), x, pool, test, tmp_path / "k", progress=False)
    approx = feature_blocks(KernelSpec("gap", 1, 1024), x, pool, test, tmp_path / "k", progress=False)
    for e, a in zip(exact[:2], approx[:2], strict=True):
        assert a.shape == e.shape
        err = np.linalg.norm(a - e) / np.linalg.norm(e)
        assert err < 4 / np.sqrt(1024), err
    assert approx[2]["feature_seconds"] <= approx[2]["seconds"] and approx[2]["n_features"] == 1024
    again = feature_blocks(KernelSpec("gap", 1, 1024), x, pool, test, tmp_path / "k", progress=False)
    np.testing.assert_array_equal(again[0], approx[0])  # read back, not recomputed
    assert again[2] == approx[2]

    out = tmp_path / "run"
    args = ["bench", "images", "--quick", "--kernels", "gap1", "--features", "128", "--no-cnn", "--no-svc",
            "--no-plot", "--digits-train", "120", "--digits-test", "60", "--max-per-class", "2", "--draws", "1",
            "--out", str(out), "--quiet"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "CNTK-GAP-1 rf128 against CNTK-GAP-1: regression accuracy NNGP" in text
    summary = json.loads((out / "summary.json").read_text())
    recs = summary["datasets"]["digits"]["kernels"]
    assert [r["kernel"] for r in recs] == ["CNTK-GAP-1", "CNTK-GAP-1 rf128"]
    assert recs[1]["n_features"] == 128 and recs[0]["n_features"] is None
    assert all(r["results"][1]["reg_acc"] > 0.8 for r in recs)


def test_estimate_projects_exact_kernels_by_pairs_and_features_by_images(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "images", "--quick", "--estimate", "--kernels", "fc1", "gap1-rf32"]) == 0
    out = capsys.readouterr().out
    assert "pool 200 + test 100 = 40,100 pairs; probe 128x128" in out
    assert "FC-1" in out and "CNTK-GAP-1 rf32" in out and "projected kernel time" in out
