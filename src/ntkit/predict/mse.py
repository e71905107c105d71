"""Closed-form outputs of a (linearized / infinitely wide) network trained by gradient descent on the MSE
(conventions in :mod:`ntkit.predict`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ntkit._validation import check_float, renamed_keyword
from ntkit.predict._common import Layout, Prediction, check_time, cross_kernel, initial_outputs, train_inputs
from ntkit.predict._kernel_system import SolverOptions, build_system, system_test_outputs
from ntkit.predict._spectral import check_infinite_time, make_dynamics
from ntkit.solve.kernel_solvers import DEFAULT_MEMORY_BUDGET
from ntkit.solve.system import KernelSystem

Tensor = torch.Tensor


def gradient_descent_mse(
    k_train_train: Any,
    y_train: Any,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    discrete: bool = False,
    dtype: torch.dtype = torch.float64,
    solver: str = "auto",
    tol: float = 1e-8,
    n_centres: int | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    n_features: int | None = None,
    memory_bytes: int | None = None,
) -> Callable[..., Prediction]:
    """Closed-form outputs of a (linearized / infinitely wide) network trained on the MSE.

    ``predict_fn = gradient_descent_mse(k_train_train, y_train, learning_rate=eta)`` factorises
    ``k_train_train + diag_reg I = V diag(lambda) V^T`` once; then
    ``predict_fn(t, fx_train_0, fx_test_0, k_test_train)`` returns, at time ``t``,

        f_t(X)  = f_0(X) + Theta(X, X) phi_t (Y - f_0(X)),
        f_t(x*) = f_0(x*) + Theta(x*, X) phi_t (Y - f_0(X)),
        phi_t   = V diag((1 - d_t(lambda)) / lambda) V^T,

    with ``d_t(lambda) = exp(-eta lambda t / (N k))`` (gradient flow) or
    ``(1 - eta lambda / (N k))^t`` (``discrete=True``: ``t`` steps of gradient descent), see
    :mod:`ntkit.predict` and Lee et al. (2019), eqs. 8-9; Jacot et al. (2018), section 5.

    Parameters
    ----------
    k_train_train : Tensor of shape (N, N) or (N, N, k, k)
        The NTK (or any PSD kernel) on the training inputs; (N, N) is shared by the ``k`` outputs.
    y_train : Tensor of shape (N, k) or (N,)
    learning_rate : float
        ``eta > 0``. For ``discrete=True`` a :class:`LearningRateWarning` names the maximum stable
        rate when ``eta >= 2 N k / lambda_max``; gradient flow is stable for every ``eta``.
    diag_reg : float
        Ridge ``lambda >= 0`` added to the training kernel's diagonal (absolute scale).
    discrete : bool
        Discrete gradient descent (``t`` a whole number of steps) instead of gradient flow.
    dtype : torch.dtype
        Computation dtype (float64, the reference).
    solver : {"auto", "cholesky", "cg", "nystrom", "features"}
        ``"cholesky"``: the eigendecomposition above (every ``t``). ``"cg"`` / ``"nystrom"``
        (:class:`ntkit.solve.KernelSystem`): ``t = inf`` only, ``diag_reg > 0``, and
        ``k_train_train`` may be a :class:`ntkit.solve.KernelOperator`; ``predict_fn(t, ...)`` then
        solves ``(Theta + diag_reg I) alpha = Y - f_0(X)`` (once for ``fx_train_0 = None``) and
        returns ``f_0 + Theta(., basis) alpha``. No learning-rate check is made. ``"auto"`` is
        ``"cholesky"`` while the matrix fits ``memory_budget`` (see :mod:`ntkit.predict`).
    tol : float
        Relative residual of ``"cg"`` / ``"nystrom"``.
    n_centres : int, optional
        Nystrom centres ``M <= N`` (default ``min(N, 5000)``).
    generator : torch.Generator, optional
        Sampling of the Nystrom centres.
    memory_budget : int or str
        Budget of ``"auto"`` for the dense N x N float64 matrix, in bytes or as a string such as
        ``"512M"`` / ``"2GiB"`` (default 4 GiB).
    n_features : int, optional
        Random features of ``solver="features"`` (ridge on features of the operator's model,
        :mod:`ntkit.random_features`; default ``min(N, 4096)``; ``t = inf`` only).
    memory_bytes : int, optional
        Deprecated alias of ``memory_budget`` (a ``DeprecationWarning``).

    Returns
    -------
    predict_fn(t=None, fx_train_0=None, fx_test_0=None, k_test_train=None, *, x_test=None) -> Prediction
        ``t``: a time ``>= 0``; ``None`` or ``math.inf`` for the end of training (with a singular
        kernel and no ridge, a :class:`SingularKernelWarning` and the pseudo-inverse).
        ``fx_train_0`` (shape of ``y_train``) and ``fx_test_0`` (M, k): outputs at initialisation,
        zeros when None. ``k_test_train``: (M, N) or (M, N, k, k). Returns
        ``Prediction(train, test)``; ``test`` is None without ``k_test_train``.

    Raises
    ------
    ValueError
        A kernel that is not (N, N) or (N, N, k, k), targets with another number of rows,
        ``learning_rate <= 0``, ``diag_reg < 0``, a negative or non-finite time, a finite time with an
        iterative solver, ``fx_test_0`` without ``k_test_train``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gradient_descent_mse
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> predict_fn = gradient_descent_mse(k, y, learning_rate=1.0)
    >>> predict_fn(None).train.flatten().round(decimals=12).tolist()  # t = inf: the training targets
    [1.0, -1.0]
    >>> k_test = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> round(float(predict_fn(None, k_test_train=k_test).test), 6)  # K* K^-1 y = (1, 0) (1, -1) = 1
    1.0
    """
    memory_budget = renamed_keyword(memory_budget, memory_bytes, new="memory_budget", old="memory_bytes",
                                    default=DEFAULT_MEMORY_BUDGET)
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    opts = SolverOptions(solver, tol, n_centres, generator, memory_budget, n_features)
    built = build_system(k_train_train, y_train, dtype, diag_reg, opts, "k_train_train")
    if built is not None:
        return _gradient_descent_system(*built, discrete=bool(discrete))
    mat, y, layout = train_inputs(k_train_train, y_train, dtype)
    dyn = make_dynamics(mat, layout, learning_rate, diag_reg, bool(discrete), "k_train_train")
    y_mat = layout.y_to_matrix(y)

    def predict_fn(
        t: Any = None, fx_train_0: Any = None, fx_test_0: Any = None, k_test_train: Any = None
    ) -> Prediction:
        tv = check_time(t, discrete=dyn.discrete)
        f0 = initial_outputs(fx_train_0, "fx_train_0", layout.n, layout, mat)
        check_infinite_time(dyn, tv, "k_train_train")
        r0 = y_mat - layout.y_to_matrix(f0)
        phi = dyn.phi(tv)
        alpha = dyn.eig.apply(phi, r0)  # Theta_reg^-1 (I - decay) r0
        # Theta alpha = (Theta_reg - diag_reg I) alpha = V diag(1 - decay) V^T r0 - diag_reg alpha
        moved = dyn.eig.apply(1.0 - dyn.decay(tv), r0) - diag_reg * alpha
        train = layout.matrix_to_y(layout.y_to_matrix(f0) + moved, layout.n)
        if k_test_train is None:
            if fx_test_0 is not None:
                raise ValueError("fx_test_0: given without k_test_train; pass both or neither")
            return Prediction(train, None)
        kt, m = cross_kernel(k_test_train, layout, mat)
        ft0 = initial_outputs(fx_test_0, "fx_test_0", m, layout, mat)
        test = layout.matrix_to_y(layout.y_to_matrix(ft0) + kt @ alpha, m)
        return Prediction(train, test)

    return predict_fn


def _gradient_descent_system(
    system: KernelSystem, layout: Layout, like: Tensor, *, discrete: bool
) -> Callable[..., Prediction]:
    """``predict_fn`` of :func:`gradient_descent_mse` at ``t = inf`` by an iterative solver."""

    def predict_fn(
        t: Any = None, fx_train_0: Any = None, fx_test_0: Any = None, k_test_train: Any = None, *, x_test: Any = None
    ) -> Prediction:
        tv = check_time(t, discrete=discrete)
        if math.isfinite(tv):
            raise ValueError(
                f"t: solver {system.solver!r} predicts the end of training only (t = None or math.inf), got t = {tv}; "
                "use solver='cholesky' for finite times"
            )
        f0 = initial_outputs(fx_train_0, "fx_train_0", layout.n, layout, like)
        alpha = system.solve(None if fx_train_0 is None else system.y_train - layout.y_to_matrix(f0))
        train = layout.matrix_to_y(layout.y_to_matrix(f0) + system.predict_train(alpha), layout.n)
        if k_test_train is None and x_test is None:
            if fx_test_0 is not None:
                raise ValueError("fx_test_0: given without k_test_train / x_test; pass both or neither")
            return Prediction(train, None)
        out, m = system_test_outputs(system, alpha, layout, like, k_test_train, x_test)
        ft0 = initial_outputs(fx_test_0, "fx_test_0", m, layout, like)
        return Prediction(train, layout.matrix_to_y(layout.y_to_matrix(ft0) + out, m))

    return predict_fn
