"""The README's Python examples run as written (the front door stays true).

Each ```python block of README.md is executed in a fresh namespace inside a temporary directory.
Blocks that use data they do not define (``x_train``, ``y_train``, ``x_test``, ``y_test``) get small
synthetic arrays: class labels where the block fits a classifier, real targets otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _data(block: str) -> dict[str, object]:
    rng = np.random.default_rng(0)
    n, n_test, d = 3500, 200, 10
    x_train, x_test = rng.standard_normal((n, d)), rng.standard_normal((n_test, d))
    if "Classifier" in block:
        n = 120
        x_train = x_train[:n]
        w = rng.standard_normal(d)
        return {
            "x_train": x_train,
            "y_train": (x_train @ w > 0).astype(int),
            "x_test": x_test,
            "y_test": (x_test @ w > 0).astype(int),
        }
    w = rng.standard_normal((d, 1))
    return {
        "x_train": torch.from_numpy(x_train),
        "y_train": torch.from_numpy(np.tanh(x_train @ w)),
        "x_test": torch.from_numpy(x_test),
    }


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 1  # the rest of the examples live on the documentation site (tests/test_docs_examples.py)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    block = BLOCKS[index]
    namespace: dict[str, object] = {"__name__": f"readme_block_{index}"}
    if re.search(r"\bx_train\b", block) and not re.search(r"^x_train\s*=", block, flags=re.M):
        namespace.update(_data(block))
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
