"""Token inputs ``(N, L, C)`` (channels last): the walk's reading of the data, errors, captured forwards, and the
evaluators downstream (``compute_kernel`` tiles, ``predict``, scikit-learn) taking the tokens as given.

The kernels themselves are checked against neural-tangents in ``tests/test_tokens_nt.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError, describe_model
from ntkit.nn import LayerNorm, Linear, Parallel, Residual
from ntkit.sklearn import NTKRegressor

DT = torch.float64


def _tokens(n: int, length: int = 5, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, length, c, generator=torch.Generator().manual_seed(seed), dtype=DT)


class Pool(nn.Module):
    def __init__(self, total: bool = False, dim: int | tuple[int, ...] = 1) -> None:
        super().__init__()
        self.total, self.dim = total, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=self.dim) if self.total else x.mean(dim=self.dim)


class TokenMLP(nn.Module):
    """A plain forward on tokens: per-token MLP with a layer norm, pooled, read out."""

    def __init__(self, c: int = 3, width: int = 8, pool: str = "mean", length: int = 5) -> None:
        super().__init__()
        self.fc1, self.fc2 = Linear(c, width, b_std=0.1), Linear(width, width)
        self.out = Linear(width if pool == "mean" else width * length, 1)
        self.ln = LayerNorm(width)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.relu(self.ln(self.fc1(x))))
        h = torch.tanh(h)
        h = h.mean(dim=1) if self.pool == "mean" else h.flatten(1)
        return self.out(h)


def _sequential(c: int = 3, width: int = 8) -> nn.Module:
    return nn.Sequential(Linear(c, width, b_std=0.1, device="meta"), LayerNorm(width), nn.ReLU(),
                         Linear(width, width, device="meta"), nn.Tanh(), Pool(), Linear(width, 1, device="meta"))


def test_captured_forward_equals_the_sequential_model() -> None:
    x1, x2 = _tokens(4), _tokens(3, seed=1)
    a = ntkit.infinite_kernel(TokenMLP(), x1, x2)
    b = ntkit.infinite_kernel(_sequential(), x1, x2)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    arch = describe_model(TokenMLP(), (5, 3))
    assert arch.tokens and arch.data_shape == (3, 5)


def test_a_token_mlp_without_mixing_is_the_fc_kernel_of_each_token_averaged() -> None:
    """Tokens that do not interact: the pooled kernel is the mean over token pairs of the per-token fc kernel."""
    x1, x2 = _tokens(3), _tokens(2, seed=1)
    k = ntkit.infinite_kernel(_sequential(), x1, x2)
    fc = nn.Sequential(*list(_sequential())[:5], Linear(8, 1, device="meta"))  # one token: plain vectors
    per_token = ntkit.infinite_kernel(fc, x1.reshape(-1, 3), x2.reshape(-1, 3))
    want_nngp = per_token.nngp.reshape(3, 5, 2, 5).mean(dim=(1, 3))
    torch.testing.assert_close(k.nngp, want_nngp, rtol=1e-13, atol=0)


def test_sum_over_tokens_is_length_squared_times_the_mean() -> None:
    x = _tokens(3)
    head = [Linear(3, 8, device="meta"), nn.ReLU()]
    mean = ntkit.infinite_kernel(nn.Sequential(*head, Pool(), Linear(8, 1, device="meta")), x)
    total = ntkit.infinite_kernel(nn.Sequential(*head, Pool(total=True), Linear(8, 1, device="meta")), x)
    torch.testing.assert_close(total.nngp, 25 * mean.nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(total.ntk, 25 * mean.ntk, rtol=1e-13, atol=0)  # the read-out's weights see it too


def test_flatten_of_tokens_is_the_flatten_of_the_channel_first_tensor() -> None:
    x1, x2 = _tokens(3), _tokens(2, seed=1)
    a = ntkit.infinite_kernel(TokenMLP(pool="flatten", width=8), x1, x2)
    conv = nn.Sequential(ntkit.nn.Conv1d(3, 8, 1, b_std=0.1, device="meta"), LayerNorm(), nn.ReLU(),
                         ntkit.nn.Conv1d(8, 8, 1, device="meta"), nn.Tanh(), nn.Flatten(), Linear(40, 1, device="meta"))
    b = ntkit.infinite_kernel(conv, x1.transpose(1, 2), x2.transpose(1, 2))
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)


def test_prelude_runs_on_the_tokens_as_given() -> None:
    x = _tokens(4)
    norm = LayerNorm(3)
    model = nn.Sequential(norm, Linear(3, 8, device="meta"), nn.ReLU(), Pool(), Linear(8, 1, device="meta"))
    arch = describe_model(model, (5, 3))
    assert [name for name, _ in arch.prelude] == ["0"] and arch.tokens
    plain = nn.Sequential(*list(model)[1:])
    a, b = ntkit.infinite_kernel(model, x), ntkit.infinite_kernel(plain, norm(x))
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)


def test_residual_and_concatenation_on_tokens() -> None:
    x = _tokens(3)
    block = Residual(LayerNorm(8), Linear(8, 8, device="meta"), nn.ReLU(), Linear(8, 8, device="meta"))
    cat = Parallel(Linear(8, 4, device="meta"), Linear(8, 6, device="meta"), merge="concat", dim=-1)
    model = nn.Sequential(Linear(3, 8, device="meta"), block, cat, Linear(10, 8, device="meta"), nn.ReLU(), Pool(),
                          Linear(8, 1, device="meta"))
    k = ntkit.infinite_kernel(model, x)
    assert k.ntk.shape == (3, 3) and bool(torch.isfinite(k.ntk).all())
    bad = nn.Sequential(Linear(3, 8, device="meta"), Parallel(Linear(8, 4, device="meta"), Linear(8, 4, device="meta"),
                                                              merge="concat", dim=1), Pool(), Linear(4, 1))
    with pytest.raises(ArchitectureError, match=r"expected a concatenation of tokens \(N, 5, 8\) along their "
                                                r"channels \(dim=-1\), got dim=1"):
        ntkit.infinite_kernel(bad, x)


@pytest.mark.parametrize(("layers", "match"), [
    ([Linear(3, 8), ntkit.nn.Conv1d(8, 8, 3), Pool(dim=2), Linear(8, 1)],
     r"module 1 \(Conv1d\) takes channel-first inputs \(N, C, \*spatial\), got tokens \(N, 5, 8\)"),
    ([Linear(3, 8), nn.ReLU(), Pool(dim=-1), Linear(5, 1)],
     r"expected a reduction over every token axis .*got dims=\(-1,\) \(the channel axis among them\) for tokens "
     r"\(N, 5, 8\)"),
    ([Linear(3, 8), LayerNorm(), Pool(), Linear(8, 1)],
     r"LayerNorm\) without normalized_shape normalises axis 1, the tokens of \(N, 5, 8\): expected LayerNorm\(8\)"),
    ([Linear(3, 8), ntkit.nn.GlobalAvgPool(), Linear(8, 1)], r"1 \(GlobalAvgPool\) takes channel-first inputs"),
    ([Linear(3, 8), Linear(4, 8), Pool(), Linear(8, 1)],
     r"module 1 \(Linear\): expected tokens \(N, \.\.\., 4\) \(in_features channels last\), got tokens \(N, 5, 8\)"),
])
def test_modules_that_do_not_fit_tokens_are_named(layers: list[nn.Module], match: str) -> None:
    with pytest.raises(ArchitectureError, match=match):
        ntkit.infinite_kernel(nn.Sequential(*layers), _tokens(2))


def test_wrong_channels_on_the_first_layer_mention_tokens() -> None:
    with pytest.raises(ArchitectureError, match=r"expected \(4,\) features .* or tokens \(N, L, 4\)"):
        ntkit.infinite_kernel(nn.Sequential(Linear(4, 8), nn.ReLU(), Pool(), Linear(8, 1)), _tokens(2))


def test_downstream_evaluators_take_tokens_as_given() -> None:
    x_train, x_test = _tokens(12, seed=2), _tokens(4, seed=3)
    y = torch.randn(12, 1, generator=torch.Generator().manual_seed(4), dtype=DT)
    model = _sequential()
    direct = ntkit.infinite_kernel(model, x_test, x_train)
    tiled = ntkit.compute_kernel(model, x_test, x_train, tile=3)
    assert tiled.tiles_total > 1
    torch.testing.assert_close(tiled.ntk, direct.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(ntkit.compute_kernel(model, x_test, pairs="diagonal").ntk,
                               ntkit.infinite_kernel(model, x_test).ntk.diagonal(), rtol=1e-13, atol=0)
    k_train = ntkit.infinite_kernel(model, x_train)
    reg_var = 1e-3 * float(k_train.ntk.diagonal().mean())  # the regressor's diag_reg is relative, y centred
    mean = ntkit.predict.gp_inference(k_train.ntk, y - y.mean(), diag_reg=reg_var)(direct.ntk).mean + y.mean()
    reg = NTKRegressor(model=model, input_shape=(5, 3), diag_reg=1e-3)
    reg.fit(x_train.reshape(12, -1).numpy(), y.numpy())
    np.testing.assert_allclose(reg.predict(x_test.reshape(4, -1).numpy()).reshape(-1), mean.reshape(-1).numpy(),
                               rtol=1e-8, atol=1e-10)
