"""ntkit.train: GD/SGD, the exact low-rank path, linearize, kernel movement, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

import ntkit
from ntkit.predict import LearningRateWarning, max_learning_rate
from ntkit.train import function_distance, kernel_movement, linearize, mse_loss, train_gd

# one torch thread per xdist worker: the training loops here oversubscribe 2 cores otherwise (conftest)
pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def _max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((pa - pb).detach().abs().max()) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("batch_size", [None, 4])
def test_lowrank_equals_autograd(gen: torch.Generator, batch_size: int | None) -> None:
    x = torch.randn(6, 3, generator=gen, dtype=F64)
    y = torch.randn(6, 2, generator=gen, dtype=F64)
    net = ntkit.FCNetwork(3, [64, 64], 2, b_std=0.1, seed=1)
    a, b, c = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    ha = train_gd(a, x, y, learning_rate=0.5, steps=2, batch_size=batch_size, seed=7, implementation="autograd")
    hb = train_gd(b, x, y, learning_rate=0.5, steps=2, batch_size=batch_size, seed=7, implementation="lowrank")
    hc = train_gd(c, x, y, learning_rate=0.5, steps=2, batch_size=batch_size, seed=7)  # auto: mixed dense/low-rank
    assert hb.implementation == "lowrank" and hc.implementation == "lowrank" and ha.implementation == "autograd"
    assert _max_param_diff(a, b) < 1e-12 and _max_param_diff(a, c) < 1e-12
    assert ha.loss == pytest.approx(hb.loss, rel=1e-12)
    assert all(p.requires_grad for p in c.parameters())
    assert len(ha.loss) == 3 and ha.loss[-1] < ha.loss[0]


def test_gd_step_is_the_documented_update(gen: torch.Generator) -> None:
    """One step: theta - eta * grad of 1/(2 N k) sum (f - y)^2."""
    x = torch.randn(5, 2, generator=gen, dtype=F64)
    y = torch.randn(5, 3, generator=gen, dtype=F64)
    net = ntkit.FCNetwork(2, [16], 3, seed=2)
    ref = copy.deepcopy(net)
    loss = 0.5 * ((ref(x) - y) ** 2).sum() / 15
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    train_gd(net, x, y, learning_rate=0.3, steps=1)
    for p, p0, g in zip(net.parameters(), ref.parameters(), grads, strict=True):
        assert torch.allclose(p, p0 - 0.3 * g, atol=1e-14)
    assert float(mse_loss(y, torch.zeros_like(y))) == pytest.approx(float(0.5 * (y**2).mean()))


def test_linearize_properties(gen: torch.Generator) -> None:
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    net = ntkit.FCNetwork(2, [16, 16], 2, b_std=0.1, seed=4)
    lin = linearize(net)
    with torch.no_grad():
        assert torch.allclose(lin(x), net(x), atol=1e-14)
    theta = ntkit.empirical_ntk(net, x)
    assert torch.allclose(ntkit.empirical_ntk(lin, x, implementation="jacobian"), theta, atol=1e-12)
    # a displacement moves the output by exactly J delta (a finite difference of the network agrees to O(eps^2))
    eps = 1e-6
    with torch.no_grad():
        for p in lin.delta:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * eps)
        moved = copy.deepcopy(net)
        for p, d in zip(moved.parameters(), lin.delta, strict=True):
            p.add_(d)
        assert float((lin(x) - moved(x)).abs().max()) < 1e-9
    assert function_distance(lin, moved, x) < 1e-9
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        linearize("net")  # type: ignore[arg-type]


def test_kernel_movement_and_train_warnings(gen: torch.Generator) -> None:
    x = torch.randn(6, 2, generator=gen, dtype=F64)
    y = x[:, :1] * x[:, 1:]
    net = ntkit.FCNetwork(2, [32], 1, b_std=0.1, seed=0)
    th0 = ntkit.empirical_ntk(net, x, mode="trace")
    assert kernel_movement(th0, th0) == 0.0
    assert kernel_movement(th0, 2 * th0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected the shape of theta_0"):
        kernel_movement(th0, th0[:3])
    lr_max = max_learning_rate(ntkit.empirical_ntk(net, x))
    with pytest.warns(LearningRateWarning, match=f"{lr_max:.4g}"):
        train_gd(copy.deepcopy(net), x, y, learning_rate=1.2 * lr_max, steps=1)
    with pytest.raises(ValueError, match="learning_rate: expected a number > 0"):
        train_gd(net, x, y, learning_rate=-0.1, steps=1)
    with pytest.raises(ValueError, match="steps: expected an integer >= 0"):
        train_gd(net, x, y, learning_rate=0.1, steps=-1)
    with pytest.raises(ValueError, match=r"y_train: expected 6 rows"):
        train_gd(net, x, y[:5], learning_rate=0.1, steps=1)
    with pytest.raises(ValueError, match=r"y_train: expected the model's output shape \(6, 1\)"):
        train_gd(net, x, torch.zeros(6, 2, dtype=F64), learning_rate=0.1, steps=1)
    with pytest.raises(ValueError, match=r"'lowrank' needs an ntkit\.FCNetwork"):
        train_gd(linearize(net), x, y, learning_rate=0.1, steps=1, implementation="lowrank")


def test_movement_shrinks_with_width_small_scale() -> None:
    """Kernel movement after a fixed amount of training decreases with width (depth 1, 3 inits)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g, dtype=F64)
    y = x[:, :1] * x[:, 1:]
    means = []
    for width in (32, 128, 512):
        vals = []
        for s in range(3):
            net = ntkit.FCNetwork(2, [width], 1, b_std=0.1, seed=100 * width + s)
            th0 = ntkit.empirical_ntk(net, x, mode="trace")
            train_gd(net, x, y, learning_rate=1.0, steps=30, check_learning_rate=False)
            vals.append(kernel_movement(th0, ntkit.empirical_ntk(net, x, mode="trace")))
        means.append(sum(vals) / len(vals))
    assert means[0] > means[1] > means[2]
