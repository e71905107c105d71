"""The UCI benchmark (ntkit.experiments.uci): loader, protocol on a few small data sets, resume,
outputs, CLI, and clear errors for bad data folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from tests.prerequisites import needs_shared_data

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra: pip install -e '.[test]'")

from ntkit.cli import main as cli_main
from ntkit.experiments import uci
from ntkit.experiments.uci import (
    C_GRID,
    UCIFormatError,
    evaluate_dataset,
    list_uci_datasets,
    load_uci_dataset,
    run_uci_benchmark,
    svc_accuracy,
)
from ntkit.layerwise import arora_kernels

#: The four data sets these tests use, copied from the shared folder (tests/data/uci/README.md).
UCI = Path(__file__).resolve().parent / "data" / "uci"
#: The whole 90-data-set folder beside the checkout (only the full-listing test needs it).
SHARED_UCI = SHARED_DATA / "uci"
TINY = ["trains", "balloons", "lenses"]


def _metadata(folder: Path) -> dict[str, list[str]]:
    return {r.split(",")[0]: r.split(",") for r in (folder / "datasets.csv").read_text().splitlines()[1:]}


def test_full_shared_folder_lists_90_datasets() -> None:
    needs_shared_data(SHARED_UCI / "datasets.csv", what="the shared UCI data (90 data sets)")
    names = list_uci_datasets(SHARED_UCI)
    assert len(names) == 90 and sorted(_metadata(SHARED_UCI)) == names
    # the copies in tests/data/uci are the shared files, byte for byte, and the same metadata rows
    local = _metadata(UCI)
    for name in ["iris", *TINY]:
        assert local[name] == _metadata(SHARED_UCI)[name]
        for file in sorted((UCI / name).iterdir()):
            assert file.read_bytes() == (SHARED_UCI / name / file.name).read_bytes(), file


def test_loader_matches_metadata_table() -> None:
    names = list_uci_datasets(UCI)
    assert names == sorted(["iris", *TINY])
    rows = _metadata(UCI)
    for name in ["iris", *TINY]:
        ds = load_uci_dataset(UCI / name)
        n, d, c, n_tr, n_va, f_tr, f_te = (int(v) for v in rows[name][1:8])
        assert ds.x.shape == (n, d) and ds.n_classes == c and ds.y.max() < c
        assert (len(ds.hp_train), len(ds.hp_val)) == (n_tr, n_va)
        assert len(ds.folds) == 4 and (len(ds.folds[0][0]), len(ds.folds[0][1])) == (f_tr, f_te)
        assert sorted(np.concatenate([ds.hp_train, ds.hp_val]).tolist()) == list(range(n))
        for tr, te in ds.folds:
            assert sorted(np.concatenate([tr, te]).tolist()) == list(range(n))
    iris = load_uci_dataset(UCI / "iris")
    np.testing.assert_allclose(iris.x[0], [-0.897674, 1.02861, -1.33679, -1.30859])
    np.testing.assert_allclose(iris.x.std(axis=0, ddof=1), 1.0, atol=1e-4)  # standardised columns


@pytest.mark.parametrize("name", ["iris", "lenses"])
def test_protocol_on_small_datasets(name: str) -> None:
    ds = load_uci_dataset(UCI / name)
    rec = evaluate_dataset(ds, max_iter=-1)  # tiny: no iteration cap needed, as in the paper
    grid = np.asarray([acc for rows in rec["val_grid"] for acc in rows])  # 15 x 7, in dep -> fix order
    assert grid.shape == (15, 7) and rec["capped_fits"] == 0
    flat = [(dep, fix, c) for dep in range(5) for fix in range(dep + 1) for c in C_GRID]
    first_max = flat[int(np.argmax(grid.ravel()))]  # argmax keeps the first maximum, like their strict '>'
    assert (rec["dep"], rec["fix"], rec["C"]) == first_max
    assert rec["val_acc"] == grid.max()
    # test accuracy recomputed independently from the kernels of the selected configuration
    k = arora_kernels(ds.x)[rec["dep"], rec["fix"]].numpy()
    accs = [
        svc_accuracy(k[np.ix_(tr, tr)], ds.y[tr], k[np.ix_(te, tr)], ds.y[te], c=rec["C"], max_iter=-1)
        for tr, te in ds.folds
    ]
    assert rec["fold_accs"] == accs and rec["test_acc"] == pytest.approx(np.mean(accs))
    if name == "iris":
        assert 0.9 <= rec["test_acc"] <= 1.0


def test_benchmark_resume_outputs_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    for name in TINY:
        shutil.copytree(UCI / name, data / name)
    out = tmp_path / "out"
    summary = run_uci_benchmark(data, out, datasets=TINY[:2], progress=False)
    assert summary["complete"] and summary["n_datasets"] == 2
    assert summary["mean_accuracy"] == pytest.approx(100 * np.mean([r["test_acc"] for r in summary["rows"]]))
    saved = json.loads((out / "datasets" / "trains.json").read_text())
    assert saved["dataset"] == "trains" and len(saved["val_grid"]) == 5

    # resume: finished data sets are not recomputed
    calls: list[str] = []
    real = uci.evaluate_dataset

    def counting(ds: uci.UCIDataset, **kw: object) -> dict[str, object]:
        calls.append(ds.name)
        return real(ds, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(uci, "evaluate_dataset", counting)
    summary2 = run_uci_benchmark(data, out, progress=False)
    assert calls == ["lenses"] and summary2["n_datasets"] == 3 and summary2["complete"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,n,d,classes,dep,fix,C") and len(csv_lines) == 4
    assert json.loads((out / "summary.json").read_text())["paper_ntk"] == 81.95

    # the CLI: ntkit bench uci --data DIR (resumes from the same folder, prints the table)
    rc = cli_main(["bench", "uci", "--data", str(data), "--out", str(out), "--quiet"])
    assert rc == 0 and calls == ["lenses"]
    assert cli_main(["bench", "uci", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--quiet"]) == 2


def test_interrupted_run_keeps_finished_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    for name in TINY[:2]:
        shutil.copytree(UCI / name, data / name)
    real = uci.evaluate_dataset
    done: list[str] = []

    def interrupt_second(ds: uci.UCIDataset, **kw: object) -> dict[str, object]:
        if done:
            raise KeyboardInterrupt
        done.append(ds.name)
        return real(ds, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(uci, "evaluate_dataset", interrupt_second)
    summary = run_uci_benchmark(data, tmp_path / "out", progress=False)
    assert not summary["complete"] and summary["n_datasets"] == 1 and summary["n_requested"] == 2
    assert [p.stem for p in (tmp_path / "out" / "datasets").glob("*.json")] == done


def _write_dataset(root: Path, name: str, rows: list[str], *, d: int = 2, c: int = 2, skip: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    n = len(rows)
    files = {
        f"{name}.txt": f"n_entradas= {d}\nn_clases= {c}\nn_arquivos= 1\nfich1= {name}_R.dat\nn_patrons1= {n}\n",
        f"{name}_R.dat": "\t" + "\t".join(f"f{j + 1}" for j in range(d)) + "\tclase\n" + "\n".join(rows) + "\n",
        "conxuntos.dat": " ".join(map(str, range(0, n, 2))) + "\n" + " ".join(map(str, range(1, n, 2))) + "\n",
        "conxuntos_kfold.dat": "".join(" ".join(map(str, range(1, n))) + "\n0\n" for _ in range(4)),
    }
    for fname, text in files.items():
        if fname != skip:
            (folder / fname).write_text(text)
    return folder


GOOD = ["1\t0.5\t-1.0\t0", "2\t-0.5\t1.0\t0", "3\t1.5\t0.0\t1", "4\t-1.5\t0.25\t1"]


def test_synthetic_folder_loads_and_runs(tmp_path: Path) -> None:
    ds = load_uci_dataset(_write_dataset(tmp_path, "toy", GOOD))
    assert ds.x.shape == (4, 2) and ds.y.tolist() == [0, 0, 1, 1]
    assert ds.hp_train.tolist() == [0, 2] and ds.folds[3][1].tolist() == [0]
    rec = evaluate_dataset(ds, max_dep=1, c_grid=(1.0,))
    assert len(rec["val_grid"]) == 2 and 0.0 <= rec["test_acc"] <= 1.0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([*GOOD[:2], "3\tred\t0.0\t0", GOOD[3]], r"toy_R.dat, line 4, column 2 \(f1\): expected a number, got 'red'"),
        ([*GOOD[:3], "4\t1.0\t0.0\tcat"], r"toy_R.dat, line 5, last column: expected an integer class label"),
        ([GOOD[0], "2\t1.0\tnan\t1", *GOOD[2:]], r"toy_R.dat, line 3, column 3 \(f2\): expected a finite number"),
        ([*GOOD[:3], "4\t1.0\t0.0\t7"], r"toy_R.dat, line 5, last column: expected a class label in 0..1, got 7"),
        ([GOOD[0], "2\t1.0\t1", *GOOD[2:]], r"toy_R.dat, line 3: expected 4 tab-separated fields"),
    ],
    ids=["non-numeric", "string-label", "nan", "label-range", "short-row"],
)
def test_bad_data_file_names_file_and_line(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(UCIFormatError, match=message):
        load_uci_dataset(_write_dataset(tmp_path, "toy", rows))


@pytest.mark.parametrize("missing", ["toy.txt", "toy_R.dat", "conxuntos.dat", "conxuntos_kfold.dat"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{missing}: expected this file"):
        load_uci_dataset(_write_dataset(tmp_path, "toy", GOOD, skip=missing))


def test_bad_index_and_meta_files(tmp_path: Path) -> None:
    folder = _write_dataset(tmp_path, "toy", GOOD)
    (folder / "conxuntos.dat").write_text("0 2\n1 x3\n")
    with pytest.raises(UCIFormatError, match=r"conxuntos.dat, line 2: expected integer row indices, got 'x3'"):
        load_uci_dataset(folder)
    (folder / "conxuntos.dat").write_text("0 2\n1 9\n")
    with pytest.raises(UCIFormatError, match=r"conxuntos.dat, line 2: expected 0-based row indices in 0..3, got 9"):
        load_uci_dataset(folder)
    (folder / "conxuntos.dat").write_text("0 2\n")
    with pytest.raises(UCIFormatError, match=r"conxuntos.dat: expected 2 lines of row indices, got 1"):
        load_uci_dataset(folder)
    (folder / "conxuntos.dat").write_text("0 1\n2 3\n")
    with pytest.raises(UCIFormatError, match=r"conxuntos.dat, line 1: expected training rows of at least 2 classes"):
        load_uci_dataset(folder)
    (folder / "toy.txt").write_text("n_entradas= two\nn_clases= 2\nn_patrons1= 4\n")
    with pytest.raises(UCIFormatError, match=r"toy.txt: expected an integer for 'n_entradas', got 'two'"):
        load_uci_dataset(folder)
    with pytest.raises(FileNotFoundError, match="expected the UCI data folder"):
        list_uci_datasets(tmp_path / "absent")
    with pytest.raises(ValueError, match="unknown"):
        run_uci_benchmark(tmp_path, tmp_path / "out", datasets=["nope"], progress=False)
