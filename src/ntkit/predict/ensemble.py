"""The NTK-GP: mean and covariance, over random initialisations, of infinitely wide networks trained
by gradient descent on the MSE (Lee et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ntkit._validation import as_tensor, check_float, describe
from ntkit.predict._common import GaussianPrediction, check_time, cross_kernel, train_inputs
from ntkit.predict._spectral import check_infinite_time, make_dynamics
from ntkit.solve.eigen import psd_eigh

Tensor = torch.Tensor


def gradient_descent_mse_ensemble(
    ntk_train_train: Any,
    nngp_train_train: Any,
    y_train: Any,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    discrete: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Callable[..., GaussianPrediction]:
    """Mean and covariance, over random initialisations, of infinitely wide networks trained on the MSE.

    At initialisation the outputs are the NNGP ``f_0 ~ GP(0, K)``; training is linear in ``f_0``
    with the deterministic NTK ``Theta``: ``f_t(x) = f_0(x) + A_t(x) (Y - f_0(X))`` with
    ``A_t(x) = Theta(x, X) Theta^-1 (I - d_t(Theta))`` (:func:`gradient_descent_mse`). Hence the
    outputs form the Gaussian "NTK-GP" of Lee et al. (2019), eqs. 15-16:

        mean_t(x)     = A_t(x) Y,
        cov_t(x, x')  = K(x, x') + A_t(x) K(X, X) A_t(x')^T - A_t(x) K(X, x') - K(x, X) A_t(x')^T.

    Parameters
    ----------
    ntk_train_train, nngp_train_train : Tensor of shape (N, N)
        The infinite-width NTK ``Theta`` and NNGP ``K`` on the training inputs.
    y_train : Tensor of shape (N, k) or (N,)
    learning_rate, diag_reg, discrete, dtype
        As in :func:`gradient_descent_mse` (the ridge enters ``Theta`` only).

    Returns
    -------
    predict_fn(t=None, ntk_test_train=None, nngp_test_train=None, nngp_test_test=None) -> GaussianPrediction
        With the three test kernels ((M, N), (M, N), and (M, M) or (M,) for variances only) the
        prediction on the test inputs; without them, on the training inputs. ``cov`` is shared by
        the ``k`` outputs (they are independent).

    Raises
    ------
    ValueError
        Training kernels that are not scalar (N, N) kernels, targets with another number of rows,
        ``learning_rate <= 0``, ``diag_reg < 0``, a negative time, test kernels of the wrong shapes or
        only some of the three.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.predict import gradient_descent_mse_ensemble
    >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> k = ntkit.fc_kernel(x, depth=2, b_std=0.1)
    >>> ens = gradient_descent_mse_ensemble(k.ntk, k.nngp, x[:, :1] * x[:, 1:])
    >>> ens(None).cov.abs().max() < 1e-6  # at t = inf the training outputs are the targets
    tensor(True)
    """
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    mat, y, layout = train_inputs(ntk_train_train, y_train, dtype, name="ntk_train_train")
    if layout.block:
        raise ValueError("ntk_train_train: the ensemble expects scalar kernels of shape (N, N)")
    nngp = as_tensor(nngp_train_train, "nngp_train_train", dtype=mat.dtype, device=mat.device, ndim=None)
    if tuple(nngp.shape) != tuple(mat.shape):
        raise ValueError(
            f"nngp_train_train: expected shape {tuple(mat.shape)} like ntk_train_train, got {describe(nngp)}"
        )
    psd_eigh(nngp, name="nngp_train_train")  # PSD check with a clear error
    dyn = make_dynamics(mat, layout, learning_rate, diag_reg, bool(discrete), "ntk_train_train")

    def predict_fn(
        t: Any = None, ntk_test_train: Any = None, nngp_test_train: Any = None, nngp_test_test: Any = None
    ) -> GaussianPrediction:
        tv = check_time(t, discrete=dyn.discrete)
        check_infinite_time(dyn, tv, "ntk_train_train")
        phi = dyn.phi(tv)
        given = [v is not None for v in (ntk_test_train, nngp_test_train, nngp_test_test)]
        if any(given) and not all(given):
            raise ValueError("ntk_test_train, nngp_test_train, nngp_test_test: expected all three or none")
        if not any(given):
            # A_t(X) = Theta phi = V diag(1 - decay) V^T - diag_reg phi
            ev = dyn.eig.evecs
            a = ev @ ((1.0 - dyn.decay(tv) - diag_reg * phi)[:, None] * ev.T)
            k_star, k_ss, m = nngp, nngp, layout.n
        else:
            th, m = cross_kernel(ntk_test_train, layout, mat, "ntk_test_train")
            k_star, m2 = cross_kernel(nngp_test_train, layout, mat, "nngp_test_train")
            if m2 != m:
                raise ValueError(f"nngp_test_train: expected {m} rows like ntk_test_train, got {m2}")
            k_ss = as_tensor(nngp_test_test, "nngp_test_test", dtype=mat.dtype, device=mat.device, ndim=None)
            if tuple(k_ss.shape) not in ((m, m), (m,)):
                raise ValueError(f"nngp_test_test: expected shape ({m}, {m}) or ({m},), got {tuple(k_ss.shape)}")
            a = dyn.eig.apply(phi, th.T).T  # Theta(x*, X) V diag(phi) V^T
        mean = layout.matrix_to_y(a @ y, m)
        cross = a @ k_star.T  # A K(X, x*)
        if k_ss.ndim == 1:
            var = k_ss + ((a @ nngp) * a).sum(1) - 2.0 * cross.diagonal()
            return GaussianPrediction(mean, var.clamp_min(0.0))
        cov = k_ss + a @ nngp @ a.T - cross - cross.T
        return GaussianPrediction(mean, 0.5 * (cov + cov.T))

    return predict_fn
