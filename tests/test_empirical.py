"""empirical_ntk / empirical_nngp against the brute-force definition on tiny networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit


def brute_force_ntk(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, names: list[str] | None = None
) -> torch.Tensor:
    """Theta_ij(x, x') = sum_p df_i(x)/dtheta_p df_j(x')/dtheta_p, one scalar gradient at a time."""
    params = [p for n, p in model.named_parameters() if names is None or n in names]

    def grads(x: torch.Tensor) -> torch.Tensor:
        out = []
        for a in range(x.shape[0]):
            f = model(x[a : a + 1])[0]
            rows = []
            for i in range(f.shape[0]):
                g = torch.autograd.grad(f[i], params, retain_graph=True, allow_unused=True)
                rows.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                       for gi, p in zip(g, params, strict=True)]))
            out.append(torch.stack(rows))
        return torch.stack(out)  # (N, k, P)

    g1, g2 = grads(x1), grads(x2)
    theta = torch.zeros(x1.shape[0], x2.shape[0], g1.shape[1], g2.shape[1], dtype=x1.dtype)
    for a in range(x1.shape[0]):
        for b in range(x2.shape[0]):
            for i in range(g1.shape[1]):
                for j in range(g2.shape[1]):
                    theta[a, b, i, j] = sum(float(g1[a, i, p]) * float(g2[b, j, p]) for p in range(g1.shape[2]))
    return theta


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_implementations_match_the_definition(activation: str, parameterization: str) -> None:
    net = ntkit.FCNetwork(3, [5, 4], 2, activation=activation, b_std=0.3, w_std=1.2,
                          parameterization=parameterization, seed=0)
    rng = torch.Generator().manual_seed(102)
    x1 = torch.randn(3, 3, dtype=torch.float64, generator=rng)
    x2 = torch.randn(2, 3, dtype=torch.float64, generator=rng)
    ref = brute_force_ntk(net, x1, x2)
    for impl in ("jacobian", "fc", "auto"):
        full = ntkit.empirical_ntk(net, x1, x2, implementation=impl)
        torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-13)
        tr = ntkit.empirical_ntk(net, x1, x2, implementation=impl, mode="trace")
        torch.testing.assert_close(tr, torch.diagonal(ref, dim1=2, dim2=3).mean(-1), rtol=1e-12, atol=1e-13)
        dg = ntkit.empirical_ntk(net, x1, x2, implementation=impl, mode="diagonal")
        torch.testing.assert_close(dg, torch.diagonal(ref, dim1=2, dim2=3), rtol=1e-12, atol=1e-13)
    sym = ntkit.empirical_ntk(net, x1)
    torch.testing.assert_close(sym, brute_force_ntk(net, x1, x1), rtol=1e-12, atol=1e-13)


def test_any_torch_model_and_parameter_subsets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    rng = torch.Generator().manual_seed(1)
    x1 = torch.randn(3, 3, dtype=torch.float64, generator=rng)
    x2 = torch.randn(4, 3, dtype=torch.float64, generator=rng)
    torch.testing.assert_close(ntkit.empirical_ntk(model, x1, x2), brute_force_ntk(model, x1, x2),
                               rtol=1e-12, atol=1e-13)
    last = ["2.weight", "2.bias"]
    sub = ntkit.empirical_ntk(model, x1, x2, parameters=last)
    torch.testing.assert_close(sub, brute_force_ntk(model, x1, x2, last), rtol=1e-12, atol=1e-13)
    # the last layer's NTK is the Gram of the features (+1 for the bias) times I
    feats1, feats2 = model[:2](x1).detach(), model[:2](x2).detach()
    torch.testing.assert_close(sub[:, :, 0, 0], feats1 @ feats2.T + 1, rtol=1e-12, atol=1e-13)
    frozen = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    frozen[0].weight.requires_grad_(False)
    frozen[0].bias.requires_grad_(False)
    torch.testing.assert_close(ntkit.empirical_ntk(frozen, x1, x2),
                               brute_force_ntk(frozen, x1, x2, ["2.weight", "2.bias"]), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_depth_zero_ntk_is_exactly_the_linear_kernel(init: str) -> None:
    """For L = 1 the NTK does not depend on the weights: Theta = (w^2 x.x'/n0 + beta^2) (x) I."""
    rng = torch.Generator().manual_seed(103)
    x = torch.randn(6, 4, dtype=torch.float64, generator=rng)
    net = ntkit.FCNetwork(4, [], 3, b_std=0.7, w_std=1.5, init=init, seed=0)
    theta = ntkit.empirical_ntk(net, x)
    limit = ntkit.fc_kernel(x, depth=0, b_std=0.7, w_std=1.5).blocks(3)
    torch.testing.assert_close(theta, limit, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(ntkit.empirical_ntk(net, x, implementation="jacobian"), limit, rtol=1e-13, atol=1e-14)


def test_empirical_nngp() -> None:
    net = ntkit.FCNetwork(3, [7], 2, seed=0)
    rng = torch.Generator().manual_seed(104)
    x1 = torch.randn(4, 3, dtype=torch.float64, generator=rng)
    x2 = torch.randn(5, 3, dtype=torch.float64, generator=rng)
    f1, f2 = net(x1).detach(), net(x2).detach()
    torch.testing.assert_close(ntkit.empirical_nngp(net, x1, x2), f1 @ f2.T / 2)
    assert ntkit.empirical_nngp(net, x1, x2, mode="full").shape == (4, 5, 2, 2)
    torch.testing.assert_close(ntkit.empirical_nngp(net, x1, mode="diagonal")[:, :, 1], f1[:, 1:] @ f1[:, 1:].T)


def test_bad_input() -> None:
    net = ntkit.FCNetwork(3, [4], 2, seed=0)
    rng = torch.Generator().manual_seed(105)
    x = torch.randn(2, 3, dtype=torch.float64, generator=rng)
    with pytest.raises(ValueError, match="same feature shape"):
        ntkit.empirical_ntk(net, x, torch.randn(2, 4, dtype=torch.float64, generator=rng))
    with pytest.raises(ValueError, match=r"unknown \['nope'\]"):
        ntkit.empirical_ntk(net, x, parameters=["nope"])
    with pytest.raises(ValueError, match="mode: expected one of"):
        ntkit.empirical_ntk(net, x, mode="everything")
    with pytest.raises(ValueError, match="implementation"):
        ntkit.empirical_ntk(net, x, implementation="fastest")
    with pytest.raises(ValueError, match=r"expected an output of shape \(N, k\)"):
        ntkit.empirical_ntk(nn.Sequential(nn.Linear(3, 2), nn.Flatten(0)).double(), x)
    with pytest.raises(ValueError, match="failed on an input"):
        ntkit.empirical_ntk(net, torch.randn(2, 5, dtype=torch.float64, generator=rng))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ntkit.empirical_ntk(lambda t: t, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        ntkit.empirical_ntk(net, torch.full((2, 3), float("nan"), dtype=torch.float64))
