"""Every entry of ``infinite_kernel`` against independent high-precision (mpmath) references.

Every entry counts, the diagonal of ``K(X, X)`` and the pairs of duplicated inputs included (the
inputs of :mod:`tests.arch_cases` repeat rows within ``x1`` and between ``x1`` and ``x2``):

* the composed architectures of :mod:`tests.arch_cases` (dense, residual, layer norm — also after
  an activation —, convolutions with every padding and stride, pooling, flatten; NTK and standard
  parameterization) against ``tests/reference_arch.py`` (30 digits);
* every closed-form activation through depths 1-5, with and without bias, on Gaussian inputs in
  d = 20 and 100 with duplicated rows, against ``tests/activation_reference.py`` (20 digits);
  ``tests/test_activations_reference.py`` covers d = 3 with zero and huge/tiny-norm rows.

Tolerance (float64): ``|got - ref| <= 1e-10 |ref| + 1e-13 max|ref|`` entry by entry; on identical
pairs ``1e-12 |ref|`` against the 30-digit closed forms (the 20-digit quadrature reference of the
activations is itself accurate to ~1e-11 there: measured 6.9e-12 at depth 4 for leaky ReLU, where
the exact angle-0 recursion and ntkit agree to 2e-16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit
from ntkit.activations import available_activations, get_activation
from tests.activation_reference import fc_reference
from tests.arch_cases import CASES, make_inputs
from tests.arch_models import build
from tests.reference_arch import reference_kernels


def _check(got: np.ndarray, ref: np.ndarray, same: np.ndarray, what: str, *, identical: float = 1e-12) -> None:
    err = np.abs(got - ref)
    bound = 1e-10 * np.abs(ref) + 1e-13 * np.abs(ref).max()
    assert (err <= bound).all(), (what, float((err / np.maximum(np.abs(ref), 1e-300)).max()))
    if same.any():
        rel = err[same] / np.abs(ref[same])
        assert rel.max() <= identical, (what, "identical pairs", float(rel.max()))


def _same(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    a, b = x1.reshape(len(x1), -1), x2.reshape(len(x2), -1)
    return (a[:, None, :] == b[None, :, :]).all(-1)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_architectures_match_mpmath(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    model, _ = build(spec, shape)
    for b in (x2, None):
        k = ntkit.infinite_kernel(model, torch.from_numpy(x1), None if b is None else torch.from_numpy(b))
        ref_nngp, ref_ntk = reference_kernels(spec, x1, b)
        same = _same(x1, x1 if b is None else b)
        _check(k.nngp.numpy(), ref_nngp, same, f"{name} nngp {'sym' if b is None else 'cross'}")
        _check(k.ntk.numpy(), ref_ntk, same, f"{name} ntk {'sym' if b is None else 'cross'}")


ALIASES = {"linear", "heaviside", "rbf", "swish"}
CLOSED = [n for n in available_activations() if n not in ALIASES and get_activation(n).closed_form]
#: Kernels that grow like a power or an exponential of the variance: smaller weights keep them bounded.
GROWING = {"exp", "square", "cube", "hermite2", "hermite3", "rectified_quadratic", "rectified_cubic"}


@pytest.mark.parametrize("name", CLOSED)
def test_closed_forms_in_higher_dimensions(name: str) -> None:
    i = CLOSED.index(name)
    d = (20, 100)[i % 2]
    beta = (0.0, 0.4)[(i // 2) % 2]
    w_std = 0.6 if name in GROWING else 1.2
    if name == "exp":
        beta, w_std = 0.2, 0.3
    rng = np.random.default_rng(i)
    x1 = rng.standard_normal((4, d))
    x1[3] = x1[0]
    x2 = np.concatenate([x1[1:2], rng.standard_normal((2, d))])
    act = get_activation(name)
    ref = fc_reference(act, x1.tolist(), x2.tolist(), depth=5, beta=beta, w_std=w_std)
    same = _same(x1, x2)
    for depth in range(1, 6):
        model = ntkit.nn.fc(d, depth=depth, activation=act, b_std=beta, w_std=w_std, device="meta")
        k = ntkit.infinite_kernel(model, torch.from_numpy(x1), torch.from_numpy(x2))
        nngp_ref, ntk_ref = ref[depth - 1]
        _check(k.nngp.numpy(), np.array(nngp_ref, dtype=float), same, f"{name} depth {depth} nngp", identical=1e-10)
        if ntk_ref is None:
            assert k.ntk is None
        else:
            _check(k.ntk.numpy(), np.array(ntk_ref, dtype=float), same, f"{name} depth {depth} ntk", identical=1e-10)
