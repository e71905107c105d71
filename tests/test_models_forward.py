"""CNNs written as plain forwards (:mod:`tests.models_forward`: ResNet with projection shortcuts, DenseNet block,
U-Net level with a transposed convolution): the kernels of the captured forwards against neural-tangents, against
the same architectures spelled with :class:`ntkit.nn.Parallel`, finite networks and random features.

* neural-tangents: ``tests/data/nt_reference_forward.npz`` (``benchmarks/nt_reference.py --forward``, the layer
  dicts of :mod:`tests.arch_cases_forward`), float64, the checks of ``tests/test_branches_nt.py``;
* the ``Parallel`` spellings: equal bit for bit (the capture lifts a forward to the same ops);
* finite networks: the relative Frobenius error of the empirical NTK of one network of width ``n`` falls like
  ``n^(-1/2)`` (mean of 24 networks at n = 16 ... 256: measured slopes -0.50 to -0.61);
* random features: the error of ``phi phi^T`` falls with the number of features.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import describe_model
from ntkit.infinite.ops import Parallel as ParallelOp
from ntkit.infinite.walk import iter_ops
from tests.arch_cases import make_inputs
from tests.arch_cases_forward import CASES
from tests.models_forward import INPUT_SHAPE, MODELS
from tests.nt_compare import assert_matches_reference

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "nt_reference_forward.npz")
META = json.loads((DATA / "nt_reference_forward.json").read_text())
X = torch.randn(4, *INPUT_SHAPE, dtype=F64, generator=torch.Generator().manual_seed(5))
NAMES = sorted(MODELS)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_reference_file_covers_the_models() -> None:
    assert sorted(META["supported"]) == sorted(f"forward_{name}" for name in MODELS) and not META["unsupported"]
    assert sorted(case[0] for case in CASES) == sorted(META["supported"])


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_captured_forward_matches_neural_tangents(case: tuple) -> None:
    """The captured forward of width 8 (its channel counts are the spec's) against neural-tangents' stax model:
    distinct pairs to 1e-12 of the largest entry, identical pairs (neural-tangents' arc-cosine angle) to 1e-7."""
    name, _, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    np.testing.assert_array_equal(x1, REF[f"{name}/x1"])
    model = MODELS[name.removeprefix("forward_")][0](8, device="meta")
    assert_matches_reference(model, x1, x2, REF, name)


@pytest.mark.parametrize("name", NAMES)
def test_captured_forward_equals_the_parallel_spelling(name: str) -> None:
    """The captured forward and the ``Parallel`` / ``Sequential`` spelling: NNGP and NTK, symmetric and cross, bit for
    bit; the forward's merges are Parallel ops (sum for the ResNet, concatenations for the others)."""
    cls, spelled = MODELS[name]
    model = cls(device="meta")
    for a, b in ((X, None), (X[:3], X[1:])):
        got, ref = ntkit.infinite_kernel(model, a, b), ntkit.infinite_kernel(spelled(model), a, b)
        assert torch.equal(got.nngp, ref.nngp) and torch.equal(got.ntk, ref.ntk)
    rules = {op.rule for op in iter_ops(describe_model(model, INPUT_SHAPE).ops) if isinstance(op, ParallelOp)}
    assert rules == ({"sum"} if name == "resnet" else {"concat"})


def test_the_finite_forwards_are_the_parallel_spellings() -> None:
    """The finite models compute what their spellings compute (the same modules), so the kernels above describe them."""
    for cls, spelled in MODELS.values():
        model = cls(4, generator=torch.Generator().manual_seed(0), dtype=F64)
        torch.testing.assert_close(model(X), spelled(model)(X), rtol=1e-13, atol=1e-14)


def _empirical_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``J J^T`` of the one output over every parameter (one backward pass per input)."""
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(model(x[i : i + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return jac @ jac.T


@pytest.mark.slow  # 24 networks at 5 widths per model: 10-45 s each
@pytest.mark.parametrize("name", NAMES)
def test_empirical_ntk_of_wide_networks_converges_like_one_over_sqrt_width(name: str) -> None:
    """The mean over 24 networks of the relative Frobenius error of the empirical NTK, at widths 16 ... 256, against
    the exact kernel: a log-log slope near -1/2 (measured -0.54 ResNet, -0.50 DenseNet, -0.61 U-Net) and under 20% at
    width 256 (measured 15%, 7%, 8%)."""
    cls = MODELS[name][0]
    exact = ntkit.infinite_kernel(cls(device="meta"), X, which="ntk")
    widths = (16, 32, 64, 128, 256)
    errs = []
    for n in widths:
        nets = [cls(n, generator=torch.Generator().manual_seed(1000 * n + s), dtype=F64) for s in range(24)]
        errs.append(float(np.mean([_relative(_empirical_ntk(net, X), exact) for net in nets])))
    slope = float(np.polyfit(np.log(widths), np.log(errs), 1)[0])
    assert -0.8 < slope < -0.3 and errs[-1] < 0.2, (slope, errs)


@pytest.mark.slow  # 24 feature maps per model, 12 of m = 512 convolution channels: ~10 s
@pytest.mark.parametrize("name", NAMES)
def test_random_features_converge(name: str) -> None:
    """Random features of the branches (sums projected, concatenations channel-weighted), strided and transposed
    convolutions and pooling: the mean error of ``phi phi^T`` (8 draws, then 4) falls from m = 32 to 512
    (1/sqrt(m): x0.25; the bound: x0.5)."""
    model = MODELS[name][0](device="meta")
    for which in ("nngp", "ntk"):
        exact = ntkit.infinite_kernel(model, X, which=which)
        errs = []
        for m, draws in ((32, 8), (512, 4)):
            feats = [ntkit.features(model, X, n_features=m, which=which, seed=s, dtype=F64) for s in range(draws)]
            errs.append(float(np.mean([_relative(p @ p.T, exact) for p in feats])))
        assert errs[1] < 0.5 * errs[0] and errs[1] * math.sqrt(512) < 4.0, (which, errs)
