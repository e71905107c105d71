"""ntkit.predict: closed-form dynamics vs integrated gradient flow, GP inference, ensembles, bad input."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import ntkit
from ntkit.predict import (
    LearningRateWarning,
    SingularKernelWarning,
    gp_inference,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    max_learning_rate,
)
from ntkit.solve.linalg import JitterWarning, NotPSDError
from ntkit.train import linearize, mse_loss

# one torch thread per xdist worker: the training loops here oversubscribe 2 cores otherwise (conftest)
pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def _data(gen: torch.Generator, n: int = 6, m: int = 5, k: int = 2) -> tuple[torch.Tensor, ...]:
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    xt = torch.randn(m, 3, generator=gen, dtype=F64)
    y = torch.randn(n, k, generator=gen, dtype=F64)
    return x, xt, y


@pytest.mark.parametrize("diag_reg", [0.0, 0.05])
def test_closed_form_matches_integrated_gradient_flow_on_linearized_model(
    gen: torch.Generator, diag_reg: float
) -> None:
    """Gradient flow d delta/dt = -eta grad [L + diag_reg/(2Nk) |delta|^2] on the linearized network,
    integrated by scipy (DOP853, rtol 1e-13), equals the closed form with the empirical NTK to 1e-8."""
    x, xt, y = _data(gen)
    net = ntkit.FCNetwork(3, [8, 8], 2, b_std=0.1, seed=3)
    lin = linearize(net)
    params = list(lin.delta)
    sizes = [p.numel() for p in params]
    eta = 2.0
    n_out = y.numel()

    def load(d: np.ndarray) -> None:
        with torch.no_grad():
            for p, chunk in zip(params, torch.from_numpy(d).split(sizes), strict=True):
                p.copy_(chunk.view_as(p))

    def grad(d: np.ndarray) -> np.ndarray:
        load(d)
        for p in params:
            p.grad = None
        loss = mse_loss(lin(x), y) + diag_reg / (2 * n_out) * sum((p**2).sum() for p in params)
        loss.backward()
        return -eta * torch.cat([p.grad.flatten() for p in params]).numpy()

    # the flow is affine in delta: rhs(d) = b + A d, with b and the columns of A read off the
    # linearized model's autograd gradient (A = rhs(e_j) - b, exact for an affine map)
    n_par = sum(sizes)
    b = grad(np.zeros(n_par))
    a_mat = np.stack([grad(np.eye(n_par)[j]) - b for j in range(n_par)], axis=1)

    def rhs(_t: float, d: np.ndarray) -> np.ndarray:
        return b + a_mat @ d

    theta = ntkit.empirical_ntk(net, x, mode="full")
    lam_max = float(torch.linalg.eigvalsh(theta.permute(0, 2, 1, 3).reshape(12, 12))[-1])
    t_end = 8.0 * n_out / (eta * lam_max)  # the fastest mode decays by e^-8; slow ones barely move
    times = [0.3 * t_end, t_end, 3 * t_end]
    sol = solve_ivp(rhs, (0, times[-1]), np.zeros(n_par), method="DOP853", rtol=1e-13, atol=1e-15, t_eval=times)
    assert sol.success
    with torch.no_grad():
        f0, ft0 = net(x), net(xt)
    k_test = ntkit.empirical_ntk(net, xt, x, mode="full")
    predict_fn = gradient_descent_mse(theta, y, learning_rate=eta, diag_reg=diag_reg)
    for i, t in enumerate(times):
        load(sol.y[:, i])  # delta(t)
        with torch.no_grad():
            f_train, f_test = lin(x), lin(xt)
        pred = predict_fn(t, f0, ft0, k_test)
        assert pred.test is not None
        scale = float(y.abs().max())
        assert float((pred.train - f_train).abs().max()) < 1e-8 * scale
        assert float((pred.test - f_test).abs().max()) < 1e-8 * scale


def test_discrete_gd_on_linearized_model_matches_closed_form(gen: torch.Generator) -> None:
    x, xt, y = _data(gen)
    net = ntkit.FCNetwork(3, [16], 2, b_std=0.1, seed=5)
    lin = linearize(net)
    with torch.no_grad():
        f0, ft0 = net(x), net(xt)
    theta = ntkit.empirical_ntk(net, x, mode="full")
    lr = 0.8 * max_learning_rate(theta)
    ntkit.train.train_gd(lin, x, y, learning_rate=lr, steps=25)
    pred = gradient_descent_mse(theta, y, learning_rate=lr, discrete=True)(25, f0, ft0, ntkit.empirical_ntk(net, xt, x))
    with torch.no_grad():
        assert float((lin(x) - pred.train).abs().max()) < 1e-10
        assert float((lin(xt) - pred.test).abs().max()) < 1e-10


def test_t_inf_is_kernel_regression_and_ridge(gen: torch.Generator) -> None:
    x, xt, y = _data(gen, k=3)
    k = ntkit.fc_kernel(torch.cat([x, xt]), depth=2, b_std=0.1).ntk
    ktt, kst = k[:6, :6], k[6:, :6]
    f0 = torch.randn(6, 3, generator=gen, dtype=F64)
    fs0 = torch.randn(5, 3, generator=gen, dtype=F64)
    for reg in (0.0, 0.3):
        fn = gradient_descent_mse(ktt, y, learning_rate=0.7, diag_reg=reg)
        for t in (None, math.inf):
            pred = fn(t, f0, fs0, kst)
            kreg = ktt + reg * torch.eye(6, dtype=F64)
            expect_test = fs0 + kst @ torch.linalg.solve(kreg, y - f0)
            expect_train = f0 + ktt @ torch.linalg.solve(kreg, y - f0)
            assert torch.allclose(pred.test, expect_test, rtol=0, atol=1e-10)
            assert torch.allclose(pred.train, expect_train, rtol=0, atol=1e-10)
        assert torch.equal(fn(0.0, f0, fs0, kst).test, fs0)
    # t = 0 exactly returns f0; larger t converges monotonically to the targets on the training set
    fn = gradient_descent_mse(ktt, y, learning_rate=1.0)
    errs = [float((fn(t, f0).train - y).norm()) for t in (0.0, 1.0, 10.0, 100.0, 1e4)]
    assert all(a >= b for a, b in itertools.pairwise(errs))


def test_block_kernel_equals_shared_kernel(gen: torch.Generator) -> None:
    x, xt, y = _data(gen, k=2)
    kern_train = ntkit.fc_kernel(x, depth=1)
    kern_test = ntkit.fc_kernel(xt, x, depth=1)
    f0 = torch.randn(6, 2, generator=gen, dtype=F64)
    for discrete, t in ((False, 3.5), (True, 7)):
        a = gradient_descent_mse(kern_train.ntk, y, learning_rate=0.9, discrete=discrete)(t, f0, None, kern_test.ntk)
        b = gradient_descent_mse(kern_train.blocks(2), y, learning_rate=0.9, discrete=discrete)(
            t, f0, None, kern_test.blocks(2)
        )
        assert torch.allclose(a.train, b.train, atol=1e-12) and torch.allclose(a.test, b.test, atol=1e-12)
    # a vector target keeps its shape
    pv = gradient_descent_mse(kern_train.ntk, y[:, 0])(2.0, None, None, kern_test.ntk)
    assert pv.train.shape == (6,) and pv.test is not None and pv.test.shape == (5,)
    assert max_learning_rate(kern_train.blocks(2)) == pytest.approx(max_learning_rate(kern_train.ntk, n_outputs=2))


def test_discrete_matches_iterated_update_and_max_learning_rate(gen: torch.Generator) -> None:
    x, _, y = _data(gen, n=5, k=1)
    k = ntkit.fc_kernel(x, depth=2, b_std=0.2).ntk
    lr_max = max_learning_rate(k)
    assert lr_max == pytest.approx(2 * 5 / float(torch.linalg.eigvalsh(k)[-1]), rel=1e-12)
    for lr in (0.3 * lr_max, 0.95 * lr_max):  # incl. the oscillating regime 1 < eta lambda / N < 2
        f = torch.zeros(5, 1, dtype=F64)
        for _ in range(40):
            f = f - lr / 5 * k @ (f - y)
        pred = gradient_descent_mse(k, y, learning_rate=lr, discrete=True)(40).train
        assert float((pred - f).abs().max()) < 1e-11
    with pytest.warns(LearningRateWarning, match=f"maximum stable rate {lr_max:.4g}"):
        fn = gradient_descent_mse(k, y, learning_rate=1.01 * lr_max, discrete=True)
    with pytest.raises(ValueError, match="diverges"):
        fn(None)


def test_gp_inference_matches_direct_formulas(gen: torch.Generator) -> None:
    x, xt, y = _data(gen, k=2)
    kall = ntkit.fc_kernel(torch.cat([x, xt]), depth=2, b_std=0.1).nngp
    kxx, ksx, kss = kall[:6, :6], kall[6:, :6], kall[6:, 6:]
    post = gp_inference(kxx, y, diag_reg=0.01)(ksx, kss)
    kreg = kxx + 0.01 * torch.eye(6, dtype=F64)
    assert torch.allclose(post.mean, ksx @ torch.linalg.solve(kreg, y), atol=1e-12)
    assert post.cov is not None
    assert torch.allclose(post.cov, kss - ksx @ torch.linalg.solve(kreg, ksx.T), atol=1e-12)
    var = gp_inference(kxx, y, diag_reg=0.01)(ksx, kss.diagonal()).cov
    assert var is not None and torch.allclose(var, post.cov.diagonal(), atol=1e-12)
    # the NTK posterior mean is the t = inf gradient-descent prediction from f0 = 0
    kntk = ntkit.fc_kernel(torch.cat([x, xt]), depth=2, b_std=0.1).ntk
    gd = gradient_descent_mse(kntk[:6, :6], y)(None, None, None, kntk[6:, :6]).test
    assert gd is not None
    assert torch.allclose(gp_inference(kntk[:6, :6], y)(kntk[6:, :6]).mean, gd, atol=1e-10)


def _ensemble_setup(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ntkit.Kernel]:
    x = torch.randn(6, 2, generator=gen, dtype=F64)
    xt = torch.randn(4, 2, generator=gen, dtype=F64)
    y = (x[:, 0] * x[:, 1])[:, None]
    return x, xt, y, ntkit.fc_kernel(torch.cat([x, xt]), depth=1, b_std=0.1)


def _check_gaussian_moments(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, n_sigma: float) -> None:
    """Sample mean and covariance of (S, M) samples within ``n_sigma`` standard errors of the exact ones."""
    s = samples.shape[0]
    var = cov.diagonal()
    se_mean = torch.sqrt(var / s)
    assert bool(((samples.mean(0) - mean).abs() <= n_sigma * se_mean + 1e-12).all())
    emp = torch.cov(samples.T)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + cov**2) / s)
    assert bool(((emp - cov).abs() <= n_sigma * se_cov + 1e-12).all())


@pytest.mark.parametrize(("t", "discrete"), [(3.0, False), (40, True), (None, False)])
def test_ensemble_matches_monte_carlo_over_gaussian_initialisations(
    gen: torch.Generator, t: float | None, discrete: bool
) -> None:
    """f_0 ~ GP(0, NNGP) sampled exactly, trained with the NTK in closed form: moments match eqs. 15-16."""
    _, _, y, kern = _ensemble_setup(gen)
    ntk, nngp = kern.get("ntk"), kern.nngp
    tr, te = slice(0, 6), slice(6, None)
    ens = gradient_descent_mse_ensemble(ntk[tr, tr], nngp[tr, tr], y, learning_rate=1.5, discrete=discrete)
    out = ens(t, ntk[te, tr], nngp[te, tr], nngp[te, te])
    assert out.cov is not None
    evals, evecs = torch.linalg.eigh(nngp)
    root = evecs * evals.clamp_min(0).sqrt()
    s = 20000
    f0 = (root @ torch.randn(10, s, generator=gen, dtype=F64)).T  # (S, 10)
    fn = gradient_descent_mse(ntk[tr, tr], y, learning_rate=1.5, discrete=discrete)
    # the dynamics are linear in f0: apply them to all samples at once as k = S outputs
    ys = y.expand(6, s)
    samples = gradient_descent_mse(ntk[tr, tr], ys, learning_rate=1.5 * s, discrete=discrete)(
        t, f0[:, tr].T, f0[:, te].T, ntk[te, tr]
    ).test
    assert samples is not None
    one = fn(t, f0[:1, tr].T, f0[:1, te].T, ntk[te, tr]).test  # same dynamics for one output (eta scaled by k)
    assert one is not None and torch.allclose(one[:, 0], samples[:, 0], atol=1e-12)
    _check_gaussian_moments(samples.T, out.mean[:, 0], out.cov, n_sigma=5.0)
    # variances-only form and the training-set form
    var = ens(t, ntk[te, tr], nngp[te, tr], nngp[te, te].diagonal()).cov
    assert var is not None and torch.allclose(var, out.cov.diagonal(), atol=1e-12)
    train = ens(t)
    assert train.cov is not None and train.mean.shape == (6, 1)


def test_ensemble_matches_monte_carlo_over_finite_networks(gen: torch.Generator) -> None:
    """Wide finite networks (depth 1, width 1024), each linearized and trained in closed form with its
    own empirical NTK: the mean/covariance over 300 initialisations match the NTK-GP within statistical
    error plus the O(1/n) finite-width bias."""
    x, xt, y, kern = _ensemble_setup(gen)
    ntk, nngp = kern.get("ntk"), kern.nngp
    tr, te = slice(0, 6), slice(6, None)
    t = 30.0
    out = gradient_descent_mse_ensemble(ntk[tr, tr], nngp[tr, tr], y, learning_rate=1.0)(
        t, ntk[te, tr], nngp[te, tr], nngp[te, te]
    )
    assert out.cov is not None
    xa = torch.cat([x, xt])
    outs = []
    for s in range(300):
        net = ntkit.FCNetwork(2, [1024], 1, b_std=0.1, seed=10_000 + s)
        th = ntkit.empirical_ntk(net, xa, mode="trace")
        with torch.no_grad():
            f0 = net(xa)
        pred = gradient_descent_mse(th[tr, tr], y, learning_rate=1.0)(t, f0[tr], f0[te], th[te, tr]).test
        assert pred is not None
        outs.append(pred[:, 0])
    samples = torch.stack(outs)
    s = samples.shape[0]
    var = out.cov.diagonal()
    bias = 20.0 / 1024 * float(var.max().sqrt() + out.mean.abs().max())  # generous O(1/n) allowance
    assert bool(((samples.mean(0) - out.mean[:, 0]).abs() <= 5 * torch.sqrt(var / s) + bias).all())
    emp = torch.cov(samples.T)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + out.cov**2) / s)
    assert bool(((emp - out.cov).abs() <= 5 * se_cov + bias).all())


def test_bad_input_messages(gen: torch.Generator) -> None:
    x, _xt, y = _data(gen, k=2)
    k = ntkit.fc_kernel(x, depth=1).ntk
    with pytest.raises(ValueError, match=r"expected a kernel of shape \(6, 6\)"):
        gradient_descent_mse(k[:5, :5], y)
    with pytest.raises(ValueError, match="expected a kernel of shape"):
        gradient_descent_mse(k.reshape(36), y)
    with pytest.raises(ValueError, match="learning_rate: expected a number > 0"):
        gradient_descent_mse(k, y, learning_rate=-1.0)
    with pytest.raises(ValueError, match="diag_reg: expected a number >= 0"):
        gradient_descent_mse(k, y, diag_reg=-0.1)
    fn = gradient_descent_mse(k, y)
    with pytest.raises(ValueError, match=r"t: expected a time >= 0, got -1\.0"):
        fn(-1.0)
    with pytest.raises(ValueError, match="nan"):
        fn(float("nan"))
    with pytest.raises(ValueError, match=r"k_test_train: expected shape \(M, 6\)"):
        fn(1.0, None, None, torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"fx_train_0: expected shape \(6, 2\)"):
        fn(1.0, torch.zeros(6, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"fx_test_0: expected shape \(3, 2\)"):
        fn(1.0, None, torch.zeros(4, 2, dtype=F64), torch.zeros(3, 6, dtype=F64))
    with pytest.raises(ValueError, match="whole number"):
        gradient_descent_mse(k, y, discrete=True)(2.5)
    with pytest.raises(ValueError, match="finite"):
        gradient_descent_mse(k.clone().fill_(float("nan")), y)
    with pytest.raises(NotPSDError):
        gradient_descent_mse(-k, y)
    with pytest.raises(ValueError, match="symmetric"):
        gradient_descent_mse(k + torch.triu(torch.ones_like(k)), y)
    with pytest.raises(ValueError, match="all three or none"):
        gradient_descent_mse_ensemble(k, k, y)(1.0, k[:2])
    with pytest.raises(ValueError, match="nngp_train_train: expected shape"):
        gradient_descent_mse_ensemble(k, k[:3, :3], y)
    with pytest.raises(TypeError, match="t: expected a number"):
        fn("soon")


def test_singular_kernel_without_ridge_warns_and_stays_finite(gen: torch.Generator) -> None:
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    x = torch.cat([x, x[:2]])  # duplicated inputs: a singular kernel
    y = torch.randn(6, 1, generator=gen, dtype=F64)
    k = ntkit.fc_kernel(x, depth=2, b_std=0.1).ntk
    fn = gradient_descent_mse(k, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finite = fn(50.0, None, None, k)  # finite times are well defined: no warning
    assert finite.test is not None and bool(torch.isfinite(finite.test).all())
    with pytest.warns(SingularKernelWarning, match="diag_reg"):
        inf = fn(None, None, None, k)
    assert inf.test is not None and bool(torch.isfinite(inf.test).all())
    # the pseudo-inverse limit is the t -> inf limit of the flow for consistent duplicates
    y_cons = torch.cat([y[:4], y[:2]])
    with pytest.warns(SingularKernelWarning):
        lim = gradient_descent_mse(k, y_cons)(None).train
    assert torch.allclose(lim, y_cons, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ridge = gradient_descent_mse(k, y, diag_reg=1e-3)(None).train
    assert bool(torch.isfinite(ridge).all())
    with pytest.warns(JitterWarning):
        post = gp_inference(k, y)(k)
    assert bool(torch.isfinite(post.mean).all())
