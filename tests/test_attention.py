"""``ntkit.nn.SelfAttention``: the finite module, its infinite-width kernels, their independent checks.

Linear scaling is checked against neural-tangents in ``tests/test_tokens_nt.py``. Here: the module
itself; square-root scaling (neural-tangents has the identity only, also in ``test_tokens_nt.py``)
against a direct numerical integration of the Gaussian expectations (``scipy.integrate.quad``, not
the arc-cosine closed forms the op uses) for ``relu`` and ``abs``, and against a Monte Carlo of the
finite module at large width (z-score); the softmax error; a transformer encoder block written as a
plain forward, captured, against the same block from ``ntkit.nn.Residual`` / ``nn.Sequential``, and its
empirical NTK converging to the kernel as the widths grow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError
from ntkit.nn import LayerNorm, Linear, Residual, SelfAttention

DT = torch.float64


class TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _tokens(n: int, length: int, c: int, seed: int) -> torch.Tensor:
    return torch.randn(n, length, c, generator=torch.Generator().manual_seed(seed), dtype=DT)


# --- the finite module --------------------------------------------------------------------------------


def test_module_shapes_parameters_and_forward() -> None:
    g = torch.Generator().manual_seed(0)
    layer = SelfAttention(4, 6, n_heads=2, b_std=0.1, generator=g, dtype=DT)
    assert layer.key_features == layer.value_features == 3 and layer.query is None  # tied under linear scaling
    assert layer.key.shape == (2, 4, 3) and layer.out.shape == (6, 6) and layer.bias is not None
    x = _tokens(3, 5, 4, 1)
    y = layer(x)
    assert y.shape == (3, 5, 6)
    # by hand, head by head
    heads = []
    for h in range(2):
        k = x @ layer.key[h]
        a = torch.softmax(k @ k.transpose(-1, -2) / (4 * 3), dim=-1)
        heads.append(a @ (x @ layer.value[h]))
    by_hand = torch.cat(heads, dim=-1) @ layer.out / math.sqrt(4 * 3 * 2) + 0.1 * layer.bias
    torch.testing.assert_close(y, by_hand)
    sqrt = SelfAttention(4, 6, linear_scaling=False, mechanism="relu", device="meta")
    assert sqrt.query is not None and sqrt(torch.empty(2, 5, 4, device="meta")).shape == (2, 5, 6)
    assert SelfAttention(4, 6)(torch.randn(2, 3, 2, 4)).shape == (2, 3, 2, 6)  # several token axes


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"mechanism": "sigmoid"}, ValueError, "mechanism"),
    ({"n_heads": 0}, ValueError, "n_heads"),
    ({"w_key_std": 0.0}, ValueError, "w_key_std"),
    ({"b_std": -1.0}, ValueError, "b_std"),
    ({"linear_scaling": 1}, TypeError, "linear_scaling"),
    ({"key_features": 2.5}, TypeError, "key_features"),
])
def test_module_rejects_bad_options(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SelfAttention(4, 6, **kwargs)


def test_module_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"expected tokens of shape \(N, L, 4\).*got"):
        SelfAttention(4, 6)(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="expected tokens"):
        SelfAttention(4, 6)(torch.randn(2, 4))


@pytest.mark.parametrize("pos_emb", ["sum", "concat"])
def test_positional_embeddings_make_the_attention_matrix_tend_to_the_kernels(pos_emb: str) -> None:
    """Wide inputs and keys: the module's attention matrix is close to ``softmax(qk (w_in K_x + w_pe I))``, the
    matrix the kernel uses (checked against neural-tangents in ``test_tokens_nt.py``)."""
    c, length, s = 1024, 5, 0.7
    x = _tokens(2, length, c, 8)
    layer = SelfAttention(c, 1, key_features=2048, pos_emb=pos_emb, n_tokens=length, pos_emb_std=s,
                          generator=torch.Generator().manual_seed(1), dtype=DT)
    assert layer.pos is not None and layer.pos.shape == (length, c)
    assert layer.key.shape == (1, 2 * c if pos_emb == "concat" else c, 2048)
    with torch.no_grad():
        got = layer.attention(x)[:, 0]
    k = x @ x.transpose(1, 2) / c
    w_in, w_pe = (1.0, s * s) if pos_emb == "sum" else (0.5, s * s / 2)
    want = torch.softmax(w_in * k + w_pe * torch.eye(length, dtype=DT), dim=-1)
    assert float((got - want).abs().max()) < 0.03
    assert layer(x).shape == (2, length, 1)


def test_positional_embedding_options_are_checked() -> None:
    with pytest.raises(ValueError, match="n_tokens: expected the number of tokens for pos_emb='sum'"):
        SelfAttention(4, 4, pos_emb="sum")
    with pytest.raises(ValueError, match=r"pos_emb_features: expected in_features \(4\) for pos_emb='sum', got 3"):
        SelfAttention(4, 4, pos_emb="sum", n_tokens=5, pos_emb_features=3)
    with pytest.raises(ValueError, match="pos_emb"):
        SelfAttention(4, 4, pos_emb="rotary", n_tokens=5)
    layer = SelfAttention(4, 4, pos_emb="concat", n_tokens=5)
    with pytest.raises(ValueError, match=r"expected 5 tokens \(n_tokens"):
        layer(torch.randn(2, 6, 4))
    model = nn.Sequential(SelfAttention(3, 4, pos_emb="sum", n_tokens=5, device="meta"), TokenMean(), Linear(4, 1))
    with pytest.raises(ArchitectureError, match=r"expected 5 tokens \(n_tokens, its positional embeddings\), got 6"):
        ntkit.infinite_kernel(model, _tokens(2, 6, 3, 0))
    sqrt = nn.Sequential(SelfAttention(3, 4, pos_emb="sum", n_tokens=5, linear_scaling=False, mechanism="relu",
                                       device="meta"), TokenMean(), Linear(4, 1))
    with pytest.raises(ArchitectureError, match="positional embeddings with linear_scaling=False are not supported"):
        ntkit.infinite_kernel(sqrt, _tokens(2, 5, 3, 0))


# --- errors of the infinite-width kernel ----------------------------------------------------------------


def test_softmax_without_linear_scaling_is_an_error() -> None:
    model = nn.Sequential(SelfAttention(3, 8, linear_scaling=False, device="meta"), TokenMean(), Linear(8, 1))
    with pytest.raises(ArchitectureError, match=r"0 \(SelfAttention\): linear_scaling=False with "
                                                r"mechanism='softmax' has no closed-form"):
        ntkit.infinite_kernel(model, _tokens(2, 4, 3, 0))


def test_attention_on_channel_first_tensors_is_an_error() -> None:
    model = nn.Sequential(ntkit.nn.Conv1d(3, 8, 3, device="meta"), SelfAttention(8, 8, device="meta"), TokenMean(),
                          Linear(8, 1, device="meta"))
    with pytest.raises(ArchitectureError, match=r"SelfAttention\) takes tokens \(N, L, C\), channels last"):
        ntkit.infinite_kernel(model, torch.randn(2, 3, 5, dtype=DT))


# --- square-root scaling: numerical integration and Monte Carlo ----------------------------------------


def _expectations(mech: str, s1: float, s2: float, c: float) -> tuple[float, float]:
    """``E[m(u) m(v)]`` and ``E[m'(u) m'(v)]`` for centred Gaussians of variances s1, s2 and covariance c, by
    1-d quadrature over ``u = sigma1 z`` of the closed-form inner expectation over ``v`` given ``u``."""
    a1, a2 = math.sqrt(s1), math.sqrt(s2)
    rho = max(-1.0, min(1.0, c / (a1 * a2)))
    b = math.sqrt(1.0 - rho * rho)

    def phi(z: float) -> float:
        return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    def cdf(z: float) -> float:
        return 0.5 * math.erfc(-z / math.sqrt(2.0))

    def relu_part(z: float) -> float:  # E[(rho z + b w)^+], w ~ N(0, 1)
        a = rho * z
        return a * cdf(a / b) + b * phi(a / b)

    def abs_part(z: float) -> float:  # E|rho z + b w|
        a = rho * z
        return a * (2.0 * cdf(a / b) - 1.0) + 2.0 * b * phi(a / b)

    opts = {"epsabs": 1e-14, "epsrel": 1e-13, "limit": 200}
    if mech == "relu":
        mm = integrate.quad(lambda z: phi(z) * z * relu_part(z), 0.0, np.inf, **opts)[0]
        dd = integrate.quad(lambda z: phi(z) * cdf(rho * z / b), 0.0, np.inf, **opts)[0]
    else:
        mm = 2.0 * integrate.quad(lambda z: phi(z) * z * abs_part(z), 0.0, np.inf, **opts)[0]
        dd = 2.0 * integrate.quad(lambda z: phi(z) * (2.0 * cdf(rho * z / b) - 1.0), 0.0, np.inf, **opts)[0]
    return a1 * a2 * mm, dd


def _sqrt_kernel_by_quadrature(mech: str, k11: np.ndarray, k22: np.ndarray, k12: np.ndarray, t12: np.ndarray,
                               qk: float, ov: float, b2: float) -> tuple[np.ndarray, np.ndarray]:
    """The cross token kernels after a square-root-scaled attention, from the module notes' formulas."""
    n = k12.shape[0]
    nngp, ntk = np.zeros((n, n)), np.zeros((n, n))
    for p in range(n):
        for pp in range(n):
            for q in range(n):
                for qq in range(n):
                    mm, dd = _expectations(mech, qk**2 * k11[p, p] * k11[q, q], qk**2 * k22[pp, pp] * k22[qq, qq],
                                           qk**2 * k12[p, pp] * k12[q, qq])
                    logits = qk**2 * (2 * k12[p, pp] * k12[q, qq] + t12[p, pp] * k12[q, qq]
                                      + k12[p, pp] * t12[q, qq])
                    nngp[p, pp] += ov**2 * mm * k12[q, qq]
                    ntk[p, pp] += ov**2 * (mm * (2 * k12[q, qq] + t12[q, qq]) + dd * k12[q, qq] * logits)
    return nngp + b2, ntk + b2


@pytest.mark.parametrize("mech", ["relu", "abs"])
def test_sqrt_scaling_matches_numerical_integration(mech: str) -> None:
    x = _tokens(2, 3, 2, 7)
    model = nn.Sequential(Linear(2, 8, b_std=0.3, device="meta"),
                          SelfAttention(8, 8, n_heads=2, linear_scaling=False, mechanism=mech, w_query_std=1.3,
                                        w_key_std=0.8, w_value_std=1.1, b_std=0.2, device="meta"),
                          TokenMean(), Linear(8, 1, device="meta"))
    k = ntkit.infinite_kernel(model, x[:1], x[1:])
    a, b = x[0].numpy(), x[1].numpy()
    k11, k22, k12 = a @ a.T / 2 + 0.09, b @ b.T / 2 + 0.09, a @ b.T / 2 + 0.09  # after the first Linear; T = K
    nngp, ntk = _sqrt_kernel_by_quadrature(mech, k11, k22, k12, k12, 1.3 * 0.8, 1.1, 0.04)
    want_nngp, want_ntk = nngp.mean(), ntk.mean() + nngp.mean()  # the mean over token pairs, then the read-out
    assert abs(float(k.nngp) - want_nngp) < 1e-9 * abs(want_nngp)
    assert abs(float(k.ntk) - want_ntk) < 1e-9 * abs(want_ntk)


@pytest.mark.slow
def test_sqrt_scaling_relu_nngp_matches_monte_carlo_of_the_module() -> None:
    """The finite module's NNGP given its query and key weights is exact in closed form over the value and
    output weights (they enter linearly): ``ov^2 mean_h mean_{p, p'} sum_{q, q'} A_h(x)[p, q] A_h(x')[p', q']
    K[q, q']`` with ``A_h`` the module's own attention matrices (``SelfAttention.attention``). Averaged over
    24 draws of 512 heads at d_k = 1024 (bias O(1/d_k)) it must be within 4 standard errors of the kernel.
    The products of rectified Gaussian logits spread widely over the heads (relative standard deviation
    ~3 per head): the standard error is ~2.5% here, so this checks the structure of the limit (the law of
    the logits, the module's scalings); the 1e-9 check is the numerical integration above."""
    x = _tokens(3, 3, 2, 11).abs() + 0.5  # positive tokens: correlated logits, a small spread over the heads
    k_in = torch.einsum("ipc,jqc->ijpq", x, x) / 2
    draws = []
    for seed in range(24):
        layer = SelfAttention(2, 1, n_heads=512, key_features=1024, linear_scaling=False, mechanism="relu",
                              w_query_std=1.2, w_value_std=0.9, generator=torch.Generator().manual_seed(seed),
                              dtype=DT)
        with torch.no_grad():
            a = layer.attention(x)  # (N, H, L, L)
        draws.append(0.81 * torch.einsum("ihpq,ijqr,jhsr->ij", a, k_in, a) / (a.shape[1] * 9))
    samples = torch.stack(draws)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(len(draws))
    model = nn.Sequential(SelfAttention(2, 4, linear_scaling=False, mechanism="relu", w_query_std=1.2,
                                        w_value_std=0.9, device="meta"), TokenMean())
    exact = ntkit.infinite_kernel(model, x, which="nngp")
    assert float((se / exact.abs()).max()) < 0.035
    z = ((mean - exact) / se).abs()
    assert float(z.max()) < 4.0, z


# --- a transformer encoder block written as a forward ---------------------------------------------------


class Encoder(nn.Module):
    """x = x + attn(ln(x)); x = x + mlp(ln(x)); then the mean over the tokens and a Linear read-out."""

    def __init__(self, c: int, width: int, heads: int, device: str | None = None) -> None:
        super().__init__()
        self.embed = Linear(c, width, b_std=0.1, device=device)
        self.ln1, self.ln2 = LayerNorm(width), LayerNorm(width)
        self.attn = SelfAttention(width, width, n_heads=heads, device=device)
        self.fc1 = Linear(width, 2 * width, b_std=0.1, device=device)
        self.fc2 = Linear(2 * width, width, device=device)
        self.readout = Linear(width, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(torch.relu(self.fc1(self.ln2(x))))
        return self.readout(x.mean(dim=1))


def _encoder_sequential(c: int, width: int, heads: int) -> nn.Module:
    return nn.Sequential(Linear(c, width, b_std=0.1, device="meta"),
                         Residual(LayerNorm(width), SelfAttention(width, width, n_heads=heads, device="meta")),
                         Residual(LayerNorm(width), Linear(width, 2 * width, b_std=0.1, device="meta"), nn.ReLU(),
                                  Linear(2 * width, width, device="meta")),
                         TokenMean(), Linear(width, 1, device="meta"))


def test_captured_encoder_equals_the_sequential_one() -> None:
    x1, x2 = _tokens(4, 5, 3, 3), _tokens(3, 5, 3, 4)
    captured = ntkit.infinite_kernel(Encoder(3, 8, 2, device="meta"), x1, x2)
    sequential = ntkit.infinite_kernel(_encoder_sequential(3, 8, 2), x1, x2)
    assert torch.equal(captured.nngp, sequential.nngp) and torch.equal(captured.ntk, sequential.ntk)


@pytest.mark.slow
def test_encoder_empirical_ntk_converges_to_the_kernel() -> None:
    """Monte Carlo over draws of the finite encoder's empirical NTK: the error shrinks as the width grows (54% of
    the largest entry at width 16, 1.2% at width 128, where the estimate is within 4 standard errors)."""
    x = _tokens(3, 4, 3, 5)
    exact = ntkit.infinite_kernel(Encoder(3, 8, 2, device="meta"), x).ntk
    errors = []
    for width in (16, 128):
        def draw(g: torch.Generator, width: int = width) -> nn.Module:  # the global generator is seeded per draw
            return Encoder(3, width, 4).to(DT)

        mc = ntkit.monte_carlo_kernel(draw, x, n_samples=12, which="ntk", seed=1)
        errors.append(float((mc.ntk - exact).abs().max() / exact.abs().max()))
    assert float(mc.zscore(exact, "ntk").abs().max()) < 4.0
    assert errors[1] < 0.05, errors
    assert errors[1] < errors[0], errors
