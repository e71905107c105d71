"""Exact Gaussian-process inference with a kernel (the NNGP, or the NTK): posterior mean and covariance.

Every solver runs in :class:`ntkit.solve.KernelSystem`; the posterior covariance uses the dense
solver's Cholesky factor through :meth:`ntkit.solve.KernelSystem.whiten`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ntkit._validation import as_tensor, check_float, renamed_keyword
from ntkit.predict._common import GaussianPrediction, Layout, cross_kernel
from ntkit.predict._kernel_system import SolverOptions, build_system, system_test_outputs
from ntkit.solve.kernel_solvers import DEFAULT_MEMORY_BUDGET
from ntkit.solve.operator import KernelOperator
from ntkit.solve.system import KernelSystem

Tensor = torch.Tensor


def gp_inference(
    k_train_train: Any,
    y_train: Any,
    *,
    diag_reg: float = 0.0,
    dtype: torch.dtype = torch.float64,
    solver: str = "auto",
    tol: float = 1e-8,
    n_centres: int | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    n_features: int | None = None,
    memory_bytes: int | None = None,
) -> Callable[..., GaussianPrediction]:
    """Exact Gaussian-process posterior with a kernel (the NNGP, or the NTK), Cholesky-cached.

    For a zero-mean GP prior with kernel ``K`` and observations ``Y`` with noise variance
    ``diag_reg``:

        mean(x*) = K(x*, X) (K(X, X) + diag_reg I)^-1 Y,
        cov(x*, x*') = K(x*, x*') - K(x*, X) (K(X, X) + diag_reg I)^-1 K(X, x*').

    With the NNGP this is Bayesian inference in the infinitely wide network (Lee et al. 2018); with
    the NTK the mean is the ``t = inf`` gradient-descent prediction from ``f_0 = 0``. The Cholesky
    factor is computed by :class:`ntkit.solve.KernelSystem` (``solver="cholesky"``, with
    :func:`ntkit.solve.robust_cholesky`: a ``JitterWarning`` when a near-singular kernel needs
    jitter, ``NotPSDError`` when it is indefinite).

    Parameters
    ----------
    k_train_train : Tensor of shape (N, N)
        Shared by the ``k`` outputs.
    y_train : Tensor of shape (N, k) or (N,)
    diag_reg : float
        Observation-noise variance (``>= 0``, absolute).
    solver : {"auto", "cholesky", "cg", "nystrom", "features"}
        ``"cholesky"``: the factorisation above (mean and covariance). ``"cg"`` / ``"nystrom"``
        (:class:`ntkit.solve.KernelSystem`): the posterior mean only, ``diag_reg > 0``, and
        ``k_train_train`` may be a :class:`ntkit.solve.KernelOperator`. ``"auto"``: ``"cholesky"``
        while the matrix fits ``memory_budget`` (see :mod:`ntkit.predict`).
    tol, n_centres, generator, memory_budget, n_features
        As in :func:`gradient_descent_mse`.
    memory_bytes : int, optional
        Deprecated alias of ``memory_budget`` (a ``DeprecationWarning``).

    Returns
    -------
    predict_fn(k_test_train=None, k_test_test=None, *, x_test=None) -> GaussianPrediction
        ``k_test_train`` (M, N); ``k_test_test`` (M, M) for the posterior covariance or (M,) for
        the variances only. Without ``k_test_train`` it returns the posterior on the training
        inputs (``k_test_test`` is then ``k_train_train``). ``x_test`` (M, n0) instead of
        ``k_test_train`` when ``k_train_train`` is a :class:`ntkit.solve.KernelOperator`.

    Raises
    ------
    ValueError
        A kernel that is not (N, N), targets with another number of rows, ``diag_reg < 0``, test kernels
        of the wrong shape or ``k_test_test`` without ``k_test_train``, ``x_test`` with a stored kernel,
        ``diag_reg = 0`` for an iterative solver.
    NotPSDError
        The training kernel is indefinite (no jitter makes the Cholesky factorisation succeed).

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gp_inference
    >>> k = torch.eye(2, dtype=torch.float64)
    >>> post = gp_inference(k, torch.tensor([1.0, 2.0]), diag_reg=1.0)()
    >>> post.mean.round(decimals=12).tolist(), post.cov.diagonal().round(decimals=12).tolist()
    ([0.5, 1.0], [0.5, 0.5])
    """
    memory_budget = renamed_keyword(memory_budget, memory_bytes, new="memory_budget", old="memory_bytes",
                                    default=DEFAULT_MEMORY_BUDGET)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    if not isinstance(k_train_train, KernelOperator) and as_tensor(k_train_train, "k_train_train", ndim=None).ndim == 4:
        raise ValueError("k_train_train: gp_inference expects a kernel of shape (N, N) shared by the outputs")
    opts = SolverOptions(solver, tol, n_centres, generator, memory_budget, n_features)
    built = build_system(k_train_train, y_train, dtype, diag_reg, opts, "k_train_train", dense=True)
    assert built is not None
    system, layout, like = built
    if system.solver == "cholesky" and system.matrix is not None:
        return _gp_dense(system, layout)
    return _gp_system(system, layout, like)


def _gp_dense(system: KernelSystem, layout: Layout) -> Callable[..., GaussianPrediction]:
    """``predict_fn`` of :func:`gp_inference` on a stored kernel by the dense solver: mean and covariance."""
    mat = system.matrix
    assert mat is not None

    def predict_fn(k_test_train: Any = None, k_test_test: Any = None, *, x_test: Any = None) -> GaussianPrediction:
        if x_test is not None:
            raise ValueError("x_test: expected k_test_train for a stored kernel matrix (x_test needs a KernelOperator)")
        if k_test_train is None:
            kt, m = mat, layout.n
            ktt: Tensor | None = mat if k_test_test is None else None
            if k_test_test is not None:
                raise ValueError("k_test_test: given without k_test_train")
        else:
            kt, m = cross_kernel(k_test_train, layout, mat)
            ktt = None
            if k_test_test is not None:
                ktt = as_tensor(k_test_test, "k_test_test", dtype=mat.dtype, device=mat.device, ndim=None)
                if tuple(ktt.shape) not in ((m, m), (m,)):
                    raise ValueError(f"k_test_test: expected shape ({m}, {m}) or ({m},), got {tuple(ktt.shape)}")
        mean = layout.matrix_to_y(kt @ system.alpha, m)
        if ktt is None:
            return GaussianPrediction(mean, None)
        v = system.whiten(kt.T)  # L^-1 K(X, x*)
        if ktt.ndim == 1:
            return GaussianPrediction(mean, ktt - (v * v).sum(0))
        cov = ktt - v.T @ v
        return GaussianPrediction(mean, 0.5 * (cov + cov.T))

    return predict_fn


def _gp_system(system: KernelSystem, layout: Layout, like: Tensor) -> Callable[..., GaussianPrediction]:
    """``predict_fn`` of :func:`gp_inference` (posterior mean only): an iterative solver, or an operator kernel."""

    def predict_fn(k_test_train: Any = None, k_test_test: Any = None, *, x_test: Any = None) -> GaussianPrediction:
        if k_test_test is not None:
            raise ValueError(
                f"k_test_test: the posterior covariance needs solver='cholesky' and a stored kernel matrix; "
                f"solver {system.solver!r} gives the posterior mean only"
            )
        if k_test_train is None and x_test is None:
            return GaussianPrediction(layout.matrix_to_y(system.predict_train(), layout.n), None)
        out, m = system_test_outputs(system, system.alpha, layout, like, k_test_train, x_test)
        return GaussianPrediction(layout.matrix_to_y(out, m), None)

    return predict_fn
