"""fc_kernel: exactness against an independent mpmath reference, structure, numerics, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit
from ntkit.activations import CallableActivation
from tests.conftest import TOL, rel_err
from tests.reference_fc import reference_fc_kernels


def hard_inputs(seed: int = 0) -> np.ndarray:
    """Rows of norms 1e-3 .. 1e3, a duplicate, a negated row, and a zero vector (n0 = 3)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, 3))
    x *= 10.0 ** rng.uniform(-3, 3, size=(7, 1))
    x[0] /= np.linalg.norm(x[0]) / 1e-3  # norm exactly-ish 1e-3
    x[1] *= 1e3 / np.linalg.norm(x[1])
    x[4] = x[2]  # duplicate
    x[5] = -x[3]  # antipodal
    x[6] = 0.0  # zero vector
    return x


@pytest.mark.parametrize("activation", ["identity", "relu", "erf"])
@pytest.mark.parametrize("beta", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("w_std", [0.8, 1.3])
def test_matches_mpmath_reference(activation: str, beta: float, w_std: float) -> None:
    """Entrywise to 1e-10 of each entry's natural scale sqrt(K(x,x) K(x',x')), depths 0-5."""
    x1 = hard_inputs(0)
    x2 = np.concatenate([hard_inputs(1)[:4], x1[2:4]])  # shares rows with x1 (cross duplicates)
    opts = {"depth": 5, "activation": activation, "beta": beta, "w_std": w_std}
    ref = reference_fc_kernels(x1, x2, **opts)
    ref_11 = reference_fc_kernels(x1, x1, **opts)
    ref_22 = reference_fc_kernels(x2, x2, **opts)
    for depth in range(6):
        k = ntkit.fc_kernel(x1, x2, depth=depth, activation=activation, b_std=beta, w_std=w_std)
        for which, got in enumerate((k.nngp, k.ntk)):
            want = torch.from_numpy(ref[which][depth])
            d1 = torch.from_numpy(np.abs(np.diag(ref_11[which][depth])))
            d2 = torch.from_numpy(np.abs(np.diag(ref_22[which][depth])))
            scale = torch.sqrt(d1[:, None] * d2[None, :])
            err = (got - want).abs()
            worst = float((err / scale.clamp_min(1e-300)).max())
            assert torch.all(err <= TOL[torch.float64]["closed_form"] * scale), (
                f"{('nngp', 'ntk')[which]} at depth {depth}: scaled error {worst:.3g}"
            )


def test_depth_zero_is_the_linear_kernel() -> None:
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    k = ntkit.fc_kernel(x, depth=0, b_std=0.5, w_std=2.0)
    expected = 4.0 * x @ x.T / 3 + 0.25
    torch.testing.assert_close(k.nngp, expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(k.ntk, expected, rtol=1e-15, atol=0)


def test_relu_depth_one_by_hand() -> None:
    # orthogonal unit inputs, n0 = 2: Sigma1 = 1/2 I; Sigma2(x, x') = 1/(4 pi); SigmaDot2 = 1/4
    x = torch.eye(2, dtype=torch.float64)
    k = ntkit.fc_kernel(x, depth=1, activation="relu")
    assert float(k.nngp[0, 1]) == pytest.approx(1 / (4 * math.pi), rel=1e-15)
    assert float(k.nngp[0, 0]) == pytest.approx(0.25, rel=1e-15)
    assert float(k.ntk[0, 0]) == pytest.approx(0.25 + 0.5 * 0.5, rel=1e-15)
    assert float(k.ntk[0, 1]) == pytest.approx(1 / (4 * math.pi), rel=1e-15)


@pytest.mark.parametrize("activation", ["identity", "relu", "erf", "tanh"])
def test_symmetry_psd_and_self_consistency(activation: str, gen: torch.Generator) -> None:
    x = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    x[3] = x[7]
    k = ntkit.fc_kernel(x, depth=3, activation=activation, b_std=0.2)
    k_pair = ntkit.fc_kernel(x, x.clone(), depth=3, activation=activation, b_std=0.2)
    for name in ("nngp", "ntk"):
        m = k.get(name)
        assert torch.equal(m, m.T), f"{name} is not exactly symmetric"
        assert torch.equal(m, k_pair.get(name)), "k(x) != k(x, x)"
        eig = torch.linalg.eigvalsh(m)
        assert float(eig.min()) >= -1e-12 * float(eig.max())
    torch.testing.assert_close(torch.diagonal(k.nngp), k.var1, rtol=1e-14, atol=0)
    # rectangular blocks are sub-blocks of the square kernel
    k_rect = ntkit.fc_kernel(x[:5], x[5:], depth=3, activation=activation, b_std=0.2)
    assert rel_err(k_rect.ntk, k.ntk[:5, 5:]) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", "erf", "identity"])
def test_no_nan_on_degenerate_inputs(dtype: torch.dtype, activation: str) -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1e-30, 0.0], [3e3, -4e3]], dtype=dtype)
    for beta in (0.0, 0.1):
        k = ntkit.fc_kernel(x, depth=5, activation=activation, b_std=beta, dtype=dtype)
        assert k.nngp.dtype == dtype
        assert bool(torch.isfinite(k.nngp).all()) and bool(torch.isfinite(k.ntk).all())
        if beta == 0.0:
            assert float(k.nngp[0].abs().max()) == 0.0 and float(k.ntk[0].abs().max()) == 0.0
        assert float(k.nngp[1, 2]) == float(k.nngp[1, 1])  # duplicates are exact


def test_float32_close_to_float64(gen: torch.Generator) -> None:
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    for activation in ("relu", "erf"):
        k64 = ntkit.fc_kernel(x, depth=4, activation=activation, b_std=0.3)
        k32 = ntkit.fc_kernel(x, depth=4, activation=activation, b_std=0.3, dtype=torch.float32)
        assert rel_err(k32.ntk.double(), k64.ntk) < TOL[torch.float32]["closed_form"]
        assert rel_err(k32.nngp.double(), k64.nngp) < TOL[torch.float32]["closed_form"]


def test_blocks_and_kernel_record() -> None:
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = ntkit.fc_kernel(x, depth=2)
    blocks = k.blocks(4)
    assert blocks.shape == (3, 3, 4, 4)
    torch.testing.assert_close(blocks[:, :, 2, 2], k.ntk)
    assert float(blocks[:, :, 0, 1].abs().max()) == 0.0
    k2 = k.replace(ntk=None)
    assert k.ntk is not None and k2.ntk is None
    with pytest.raises(ValueError, match="undefined"):
        k2.blocks(2)
    assert k.shape == (3, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x1": np.ones(3)}, ValueError, "expected a 2-D array"),
        ({"x1": np.ones((2, 3)), "x2": np.ones((2, 4))}, ValueError, "same feature shape"),
        ({"x1": np.array([[np.nan, 1.0]])}, ValueError, "finite"),
        ({"x1": np.array([[np.inf, 1.0]])}, ValueError, "finite"),
        ({"x1": np.ones((2, 2)), "depth": -1}, ValueError, "depth: expected an integer >= 0, got -1"),
        ({"x1": np.ones((2, 2)), "depth": 2.5}, TypeError, "depth"),
        ({"x1": np.ones((2, 2)), "b_std": -0.1}, ValueError, "b_std: expected a number >= 0"),
        ({"x1": np.ones((2, 2)), "w_std": 0.0}, ValueError, "w_std: expected a number > 0"),
        ({"x1": np.ones((2, 2)), "activation": "relux"}, ValueError, "activation: expected one of"),
        ({"x1": np.ones((2, 2)), "activation": 3}, TypeError, "activation"),
        ({"x1": "abc"}, TypeError, "x1: expected a torch.Tensor or numpy array"),
        ({"x1": np.ones((0, 2))}, ValueError, "non-empty"),
        ({"x1": np.ones((2, 2)), "dtype": torch.int64}, TypeError, "floating"),
    ],
)
def test_bad_input(kwargs: dict, error: type[Exception], match: str) -> None:
    kwargs = {"depth": 2, **kwargs}
    x1 = kwargs.pop("x1")
    with pytest.raises(error, match=match):
        ntkit.fc_kernel(x1, **kwargs)


def test_bad_activation_output_is_reported() -> None:
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="NaN/inf"):
        ntkit.fc_kernel(x, depth=1, activation=CallableActivation(lambda t: torch.log(t), name="log"))
    with pytest.raises(ValueError, match="elementwise"):
        ntkit.fc_kernel(x, depth=1, activation=CallableActivation(lambda t: t.sum(-1), name="sum"))
