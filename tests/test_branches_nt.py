"""``infinite_kernel`` of series-parallel models (:class:`ntkit.nn.Parallel`) against neural-tangents.

``tests/data/nt_reference_branches.npz`` holds neural-tangents 0.6.5's float64 NNGP / NTK of every case
of :mod:`tests.arch_cases_branches` (``FanOut`` / ``parallel`` / ``FanInSum`` | ``FanInConcat`` |
``FanInProd``), written by ``benchmarks/nt_reference.py --branches``. The checks are those of
``tests/test_infinite_nt.py``: distinct pairs to 1e-12 of the largest entry, identical pairs (where
neural-tangents' arc-cosine angle is off by ~1e-8) to 1e-7.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

import ntkit
from tests.arch_cases import make_inputs
from tests.arch_cases_branches import CASES
from tests.arch_models import build
from tests.nt_compare import assert_matches_reference

DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "nt_reference_branches.npz")
META = json.loads((DATA / "nt_reference_branches.json").read_text())


def build_branched(spec: list[dict[str, Any]], shape: list[int]) -> tuple[nn.Module, list[int]]:
    """The ``ntkit.nn`` model of a spec with ``parallel`` layers (the others: :func:`tests.arch_models.build`)."""
    layers: list[nn.Module] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal shape
        if run:
            chain, shape = build(list(run), shape)
            layers.extend(chain)
            run.clear()

    for layer in spec:
        if layer["op"] != "parallel":
            run.append(layer)
            continue
        flush()
        branches, ends = [], []
        for branch in layer["branches"]:
            module, end = build_branched(branch, shape) if branch else (nn.Identity(), shape)
            branches.append(module)
            ends.append(end)
        layers.append(ntkit.nn.Parallel(*branches, merge=layer["merge"]))
        shape = [sum(e[0] for e in ends), *ends[0][1:]] if layer["merge"] == "concat" else ends[0]
    flush()
    return nn.Sequential(*layers), shape


def test_reference_file_covers_the_cases() -> None:
    assert sorted(META["supported"]) == sorted(case[0] for case in CASES) and not META["unsupported"]
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_matches_neural_tangents(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    np.testing.assert_array_equal(x1, REF[f"{name}/x1"])
    np.testing.assert_array_equal(x2, REF[f"{name}/x2"])
    model, out = build_branched(spec, shape)
    assert out == [1]
    assert_matches_reference(model, x1, x2, REF, name)
