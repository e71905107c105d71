"""The comparison of ntkit's kernels with stored neural-tangents references, shared by the reference tests.

A reference file holds, per case ``name``, ``{name}/{kind}/{which}`` for ``kind`` in ``cross`` (x1 with
x2) and ``sym`` (x1 with itself) and ``which`` in ``nngp`` / ``ntk``. Distinct pairs must agree to 1e-12
of the largest entry; identical pairs (the same input twice: neural-tangents' arc-cosine angle loses
digits there) to 1e-7.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

import ntkit


def input_ids(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the distinct rows of ``x1`` and ``x2`` (equal ids: identical inputs)."""
    both = np.concatenate([x1, x2]).reshape(len(x1) + len(x2), -1)
    _, ids = np.unique(both, axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    return ids[: len(x1)], ids[len(x1) :]


def assert_matches_reference(
    model: nn.Module, x1: np.ndarray, x2: np.ndarray, ref: Mapping[str, np.ndarray], name: str
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Check ``model``'s kernels against ``ref`` (see the module notes); returns ``(kind, which, got, same)``
    per kernel checked (``same[i, j]``: the pair is one input twice) for further checks by the caller."""
    checked = []
    ids1, ids2 = input_ids(x1, x2)
    for kind, (a, b, i2) in {"cross": (x1, x2, ids2), "sym": (x1, None, ids1)}.items():
        k = ntkit.infinite_kernel(model, torch.from_numpy(a), None if b is None else torch.from_numpy(b))
        same = ids1[:, None] == i2[None, :]
        for which in ("nngp", "ntk"):
            got = getattr(k, which).numpy()
            expected = ref[f"{name}/{kind}/{which}"]
            err = np.abs(got - expected) / np.abs(expected).max()
            assert err[~same].max() < 1e-12, (kind, which, float(err[~same].max()))
            assert err[same].max() < 1e-7, (kind, which, float(err[same].max()))
            checked.append((kind, which, got, same))
    return checked
