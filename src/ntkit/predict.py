"""What the NTK predicts about training: closed-form dynamics, GP inference and ensembles.

Conventions (used consistently by :mod:`ntkit.train`)
-----------------------------------------------------
Training minimises the mean squared error over the ``N`` training inputs and ``k`` outputs,

    L(theta) = 1 / (2 N k) * sum_i || f(x_i; theta) - y_i ||^2,

by gradient descent ``theta <- theta - eta grad L`` (``eta = learning_rate``, one step per unit of
time ``t``) or by its gradient flow ``d theta / dt = -eta grad L``. In function space the linearized
model (and the infinitely wide network, Jacot et al. 2018, Theorem 2) then follows

    d f_t(X) / dt = -(eta / (N k)) Theta(X, X) (f_t(X) - Y),

whose solution at any input ``x`` is (Lee et al. 2019, eqs. 8-9)

    f_t(x) = f_0(x) + Theta(x, X) Theta^-1 (I - exp(-eta Theta t / (N k))) (Y - f_0(X)).

Discrete gradient descent replaces ``exp(-eta Theta t / (N k))`` by ``(I - eta Theta / (N k))^t``
(``t`` steps); it converges iff ``eta < 2 N k / lambda_max(Theta)`` (:func:`max_learning_rate`).
This is the normalisation of neural-tangents (``y_train.size = N k``).

A ridge ``diag_reg = lambda`` replaces ``Theta(X, X)`` by ``Theta(X, X) + lambda I`` in the inverse
and the exponential; this is exactly the dynamics of the linearized model with the extra loss
``lambda / (2 N k) ||theta - theta_0||^2`` (weight decay towards the initialisation). At
``t = inf`` it gives kernel ridge regression. ``diag_reg`` is absolute (not scaled by the trace).

Output blocks: a kernel of shape (N, N) is shared by the ``k`` outputs (the infinite-width
``Theta (x) I_k``); a kernel of shape (N, N, k, k) (``empirical_ntk(mode="full")``) couples them.

Every factory validates its inputs, works in float64 (by default), factorises the training kernel
once (a symmetric eigendecomposition, or a Cholesky for GP inference) and returns a function that
evaluates predictions at any time / test set from that cache.

Solvers. :func:`gp_inference` (posterior mean) and :func:`gradient_descent_mse` (at ``t = inf``)
also take ``solver="cg"`` or ``"nystrom"`` (:class:`ntkit.solve.KernelSystem`): the training
kernel may then be a :class:`ntkit.solve.KernelOperator` that is never stored, and test points are
given as ``k_test_train`` or, for an operator, as ``x_test``. ``solver="auto"`` (the default) keeps
the dense factorisation while the N x N float64 matrix fits ``memory_bytes`` (4 GiB: N <= 23,170),
then CG up to N = 50,000, then Nystrom. Iterative solvers need ``diag_reg > 0``, give no finite-time
dynamics and no posterior covariance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ntkit._validation import as_tensor, check_dtype, check_float, describe
from ntkit.solve.eigen import EigenDecomposition, SingularKernelWarning, psd_eigh
from ntkit.solve.linalg import cho_solve, robust_cholesky
from ntkit.solve.operator import KernelOperator
from ntkit.solve.system import DEFAULT_MEMORY_BYTES, KernelSystem, resolve_solver

Tensor = torch.Tensor

__all__ = [
    "GaussianPrediction",
    "LearningRateWarning",
    "Prediction",
    "SingularKernelWarning",
    "gp_inference",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "max_learning_rate",
]


class LearningRateWarning(UserWarning):
    """The learning rate exceeds the largest one for which discrete gradient descent converges."""


class Prediction(NamedTuple):
    """Outputs at time ``t``: ``train`` of the shape of ``y_train``; ``test`` (M, k) or None."""

    train: Tensor
    test: Tensor | None


class GaussianPrediction(NamedTuple):
    """A Gaussian over outputs: ``mean`` of shape (M, k) (or (M,)), ``cov`` of shape (M, M) shared by
    the ``k`` outputs (or the variances (M,) when only a diagonal was asked for, or None)."""

    mean: Tensor
    cov: Tensor | None


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


class _Layout(NamedTuple):
    n: int  # training points N
    k: int  # outputs
    block: bool  # kernel of shape (N, N, k, k)
    vector: bool  # y_train given as (N,)

    @property
    def size(self) -> int:
        return self.n * self.k

    def y_to_matrix(self, y: Tensor) -> Tensor:
        """(N, k) -> (N, k) for a shared kernel, (N k, 1) for block kernels."""
        return y.reshape(-1, 1) if self.block else y

    def matrix_to_y(self, m: Tensor, rows: int) -> Tensor:
        out = m.reshape(rows, self.k)
        return out[:, 0] if self.vector else out


def _kernel_matrix(k: Tensor, name: str) -> tuple[Tensor, bool]:
    """A kernel of shape (A, B) or (A, B, k, k) as a matrix ((A, B) or (A k, B k)) and whether blocked."""
    if k.ndim == 2:
        return k, False
    if k.ndim == 4 and k.shape[2] == k.shape[3]:
        a, b, kk, _ = k.shape
        return k.permute(0, 2, 1, 3).reshape(a * kk, b * kk), True
    raise ValueError(f"{name}: expected a kernel of shape (N1, N2) or (N1, N2, k, k), got {describe(k)}")


def _train_inputs(
    k_train_train: Any, y_train: Any, dtype: torch.dtype, name: str = "k_train_train"
) -> tuple[Tensor, Tensor, _Layout]:
    check_dtype(dtype)
    kt = as_tensor(k_train_train, name, dtype=dtype, ndim=None)
    y = as_tensor(y_train, "y_train", dtype=dtype, device=kt.device, ndim=None)
    if y.ndim not in (1, 2):
        raise ValueError(f"y_train: expected shape (N,) or (N, k), got {describe(y)}")
    vector = y.ndim == 1
    y2 = y[:, None] if vector else y
    n, k = y2.shape
    mat, block = _kernel_matrix(kt, name)
    expected = (n, n, k, k) if block else (n, n)
    if tuple(kt.shape) != expected:
        raise ValueError(
            f"{name} and y_train: expected a kernel of shape {expected} for y_train of shape "
            f"{tuple(y.shape)}, got {tuple(kt.shape)}"
        )
    return mat, y2, _Layout(n=n, k=k, block=block, vector=vector)


def _outputs(value: Any, name: str, rows: int, layout: _Layout, like: Tensor) -> Tensor:
    """Validate initial outputs (``None`` means zeros) and return them as (rows, k)."""
    if value is None:
        return torch.zeros(rows, layout.k, dtype=like.dtype, device=like.device)
    t = as_tensor(value, name, dtype=like.dtype, device=like.device, ndim=None)
    expected = (rows,) if layout.vector else (rows, layout.k)
    if tuple(t.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(t.shape)}")
    return t.reshape(rows, layout.k)


def _test_kernel(k_test_train: Any, layout: _Layout, like: Tensor, name: str = "k_test_train") -> tuple[Tensor, int]:
    """``k_test_train`` as a matrix (M, N) or (M k, N k); returns it and M."""
    t = as_tensor(k_test_train, name, dtype=like.dtype, device=like.device, ndim=None)
    if layout.block:
        if t.ndim != 4 or tuple(t.shape[1:]) != (layout.n, layout.k, layout.k):
            raise ValueError(
                f"{name}: expected shape (M, {layout.n}, {layout.k}, {layout.k}) like k_train_train, got {describe(t)}"
            )
    elif t.ndim != 2 or t.shape[1] != layout.n:
        raise ValueError(f"{name}: expected shape (M, {layout.n}) like k_train_train, got {describe(t)}")
    mat, _ = _kernel_matrix(t, name)
    return mat, int(t.shape[0])


def _check_time(t: Any, *, discrete: bool) -> float:
    if t is None:
        return math.inf
    if isinstance(t, torch.Tensor) and t.numel() == 1:
        t = t.item()
    if isinstance(t, bool) or (not isinstance(t, (int, float)) and not hasattr(t, "__float__")):
        raise TypeError(f"t: expected a number >= 0 or None / math.inf, got {describe(t)}")
    v = float(t)
    if math.isnan(v):
        raise ValueError("t: expected a number >= 0 or None / math.inf, got nan")
    if v < 0:
        raise ValueError(f"t: expected a time >= 0, got {v}")
    if discrete and math.isfinite(v) and v != round(v):
        raise ValueError(f"t: expected a whole number of gradient-descent steps (discrete=True), got {v}")
    return v


# ----------------------------------------------------------------------------------------------
# iterative solvers (ntkit.solve.KernelSystem)
# ----------------------------------------------------------------------------------------------


class _SolverOptions(NamedTuple):
    solver: str
    tol: float
    n_centres: int | None
    generator: torch.Generator | None
    memory_bytes: int


def _system(
    k_train_train: Any, y_train: Any, dtype: torch.dtype, diag_reg: float, opts: _SolverOptions, name: str
) -> tuple[KernelSystem, _Layout, Tensor] | None:
    """A :class:`KernelSystem` when the solver is not the dense one (else None: the dense code runs).

    Returns ``(system, layout, like)`` with the system built on the kernel as a matrix ((N, N), or
    (N k, N k) for block kernels) and ``y`` as a matrix; ``like`` carries the dtype for test inputs.
    """
    if isinstance(k_train_train, KernelOperator):
        n = k_train_train.shape[0]
        y = as_tensor(y_train, "y_train", dtype=k_train_train.dtype, ndim=None)
        if y.ndim not in (1, 2) or y.shape[0] != n:
            raise ValueError(f"y_train: expected shape ({n},) or ({n}, k) like {name}, got {describe(y)}")
        vector = y.ndim == 1
        y2 = y[:, None] if vector else y
        layout = _Layout(n=n, k=int(y2.shape[1]), block=False, vector=vector)
        kernel: Any = k_train_train
    else:
        check_dtype(dtype)
        kt = as_tensor(k_train_train, name, dtype=dtype, ndim=None)
        n = int(kt.shape[0]) * (int(kt.shape[2]) if kt.ndim == 4 else 1)
        if resolve_solver(opts.solver, max(n, 1), memory_bytes=opts.memory_bytes) == "cholesky":
            return None
        kernel, y2, layout = _train_inputs(kt, y_train, dtype, name)
    system = KernelSystem(
        kernel, layout.y_to_matrix(y2), diag_reg=diag_reg, solver=opts.solver, tol=opts.tol,
        n_centres=opts.n_centres, generator=opts.generator, memory_bytes=opts.memory_bytes,
    )  # fmt: skip
    return system, layout, y2


def _system_test(
    system: KernelSystem, alpha: Tensor, layout: _Layout, like: Tensor, k_test_train: Any, x_test: Any
) -> tuple[Tensor, int]:
    """``K(x*, basis) alpha`` as a matrix (M, k) / (M k, 1) and M, from ``k_test_train`` or ``x_test``."""
    if k_test_train is not None and x_test is not None:
        raise ValueError("k_test_train, x_test: expected one of them, got both")
    if k_test_train is not None:
        kt, m = _test_kernel(k_test_train, layout, like)
        return system.predict(alpha, k_test_train=kt), m
    out = system.predict(alpha, x_test=x_test)
    return out, int(out.shape[0])


def max_learning_rate(k_train_train: Any, *, n_outputs: int | None = None, dtype: torch.dtype = torch.float64) -> float:
    """Largest learning rate for which full-batch gradient descent on the MSE converges.

    With the loss ``1/(2 N k) sum ||f - y||^2`` (module docstring), the linearized residual evolves
    as ``(I - eta Theta / (N k))^t``, which contracts iff ``eta < 2 N k / lambda_max(Theta)``.

    Parameters
    ----------
    k_train_train : Tensor of shape (N, N) or (N, N, k, k)
        The NTK on the training set.
    n_outputs : int, optional
        ``k``: inferred from a block kernel; for a shared (N, N) kernel defaults to 1.

    Returns
    -------
    float
        ``2 N k / lambda_max`` (``inf`` for the zero kernel).

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import max_learning_rate
    >>> max_learning_rate(torch.eye(4, dtype=torch.float64))  # 2 * 4 / 1
    8.0
    """
    kt = as_tensor(k_train_train, "k_train_train", dtype=dtype, ndim=None)
    mat, block = _kernel_matrix(kt, "k_train_train")
    n = int(kt.shape[0])
    k = int(kt.shape[2]) if block else 1
    if n_outputs is not None:
        if block and n_outputs != k:
            raise ValueError(f"n_outputs: expected {k} for a kernel of shape {tuple(kt.shape)}, got {n_outputs}")
        k = int(n_outputs)
        if k < 1:
            raise ValueError(f"n_outputs: expected an integer >= 1, got {n_outputs}")
    eig = psd_eigh(mat)
    return math.inf if eig.lambda_max == 0 else 2.0 * n * k / eig.lambda_max


def _warn_lr(learning_rate: float, lambda_max: float, size: int, stacklevel: int = 3) -> None:
    if lambda_max > 0 and learning_rate * lambda_max / size >= 2.0:
        lr_max = 2.0 * size / lambda_max
        warnings.warn(
            f"learning_rate {learning_rate:.4g} is above the maximum stable rate {lr_max:.4g} "
            f"(2 N k / lambda_max of the kernel, N k = {size}); discrete gradient descent diverges",
            LearningRateWarning,
            stacklevel=stacklevel,
        )


class _Dynamics:
    """Scalar functions of the training kernel's eigenvalues for the gradient-descent solution."""

    def __init__(self, eig: EigenDecomposition, learning_rate: float, size: int, discrete: bool) -> None:
        self.eig = eig
        self.learning_rate = learning_rate
        self.size = size
        self.rate = learning_rate / size  # eta / (N k)
        self.discrete = discrete

    def decay(self, t: float) -> Tensor:
        """Eigenvalues of ``exp(-rate K t)`` or ``(I - rate K)^t``."""
        lam = self.eig.evals
        if math.isinf(t):
            return torch.where(lam > self.eig.rank_tol, torch.zeros_like(lam), torch.ones_like(lam))
        if not self.discrete:
            return torch.exp(-self.rate * lam * t)
        return torch.pow(1.0 - self.rate * lam, t)

    def phi(self, t: float) -> Tensor:
        """Eigenvalues of ``K^-1 (I - decay)``, finite for zero eigenvalues at finite ``t``."""
        lam = self.eig.evals
        c = self.rate
        pos = lam > 0
        safe = torch.where(pos, lam, torch.ones_like(lam))
        if math.isinf(t):
            good = lam > self.eig.rank_tol
            return torch.where(good, 1.0 / torch.where(good, lam, torch.ones_like(lam)), torch.zeros_like(lam))
        if not self.discrete:
            one_minus = -torch.expm1(-c * lam * t)
        else:
            base = 1.0 - c * lam
            small = base > 0
            one_minus = torch.where(
                small,
                -torch.expm1(t * torch.log1p(-c * torch.where(small, lam, torch.zeros_like(lam)))),
                1.0 - torch.pow(base, t),
            )
        return torch.where(pos, one_minus / safe, torch.full_like(lam, c * t))


def _make_dynamics(
    mat: Tensor, layout: _Layout, learning_rate: float, diag_reg: float, discrete: bool, name: str
) -> _Dynamics:
    eig = psd_eigh(mat, diag_reg=diag_reg, name=name)
    if discrete:
        _warn_lr(learning_rate, eig.lambda_max, layout.size, stacklevel=4)
    return _Dynamics(eig, learning_rate, layout.size, discrete)


def _check_inf(dyn: _Dynamics, t: float, name: str) -> None:
    if not math.isinf(t):
        return
    if dyn.discrete and dyn.rate * dyn.eig.lambda_max >= 2.0:
        raise ValueError(
            f"t: gradient descent with learning_rate {dyn.learning_rate:.4g} diverges, so t = inf has no limit "
            f"(maximum stable learning rate {2.0 * dyn.size / dyn.eig.lambda_max:.4g})"
        )
    if dyn.eig.n_singular:
        warnings.warn(
            f"{name} is singular ({dyn.eig.n_singular} eigenvalue(s) <= {dyn.eig.rank_tol:.3g}) and diag_reg = 0: "
            "the t = inf prediction uses its pseudo-inverse (the limit of the gradient flow on the kernel's "
            "range); pass diag_reg > 0 for kernel ridge regression",
            SingularKernelWarning,
            stacklevel=3,
        )


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
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> Callable[..., Prediction]:
    """Closed-form outputs of a (linearized / infinitely wide) network trained on the MSE.

    ``predict_fn = gradient_descent_mse(k_train_train, y_train, learning_rate=eta)`` factorises
    ``k_train_train + diag_reg I = V diag(lambda) V^T`` once; then
    ``predict_fn(t, fx_train_0, fx_test_0, k_test_train)`` returns, at time ``t``,

        f_t(X)  = f_0(X) + Theta(X, X) phi_t (Y - f_0(X)),
        f_t(x*) = f_0(x*) + Theta(x*, X) phi_t (Y - f_0(X)),
        phi_t   = V diag((1 - d_t(lambda)) / lambda) V^T,

    with ``d_t(lambda) = exp(-eta lambda t / (N k))`` (gradient flow) or
    ``(1 - eta lambda / (N k))^t`` (``discrete=True``: ``t`` steps of gradient descent), see the
    module docstring and Lee et al. (2019), eqs. 8-9; Jacot et al. (2018), section 5.

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
    solver : {"auto", "cholesky", "cg", "nystrom"}
        ``"cholesky"``: the eigendecomposition above (every ``t``). ``"cg"`` / ``"nystrom"``
        (:class:`ntkit.solve.KernelSystem`): ``t = inf`` only, ``diag_reg > 0``, and
        ``k_train_train`` may be a :class:`ntkit.solve.KernelOperator`; ``predict_fn(t, ...)`` then
        solves ``(Theta + diag_reg I) alpha = Y - f_0(X)`` (once for ``fx_train_0 = None``) and
        returns ``f_0 + Theta(., basis) alpha``. No learning-rate check is made. ``"auto"`` is
        ``"cholesky"`` while the matrix fits ``memory_bytes`` (see :mod:`ntkit.predict`).
    tol : float
        Relative residual of ``"cg"`` / ``"nystrom"``.
    n_centres : int, optional
        Nystrom centres ``M <= N`` (default ``min(N, 5000)``).
    generator : torch.Generator, optional
        Sampling of the Nystrom centres.
    memory_bytes : int
        Budget of ``"auto"`` for the dense N x N float64 matrix.

    Returns
    -------
    predict_fn(t=None, fx_train_0=None, fx_test_0=None, k_test_train=None, *, x_test=None) -> Prediction
        ``t``: a time ``>= 0``; ``None`` or ``math.inf`` for the end of training (with a singular
        kernel and no ridge, a :class:`SingularKernelWarning` and the pseudo-inverse).
        ``fx_train_0`` (shape of ``y_train``) and ``fx_test_0`` (M, k): outputs at initialisation,
        zeros when None. ``k_test_train``: (M, N) or (M, N, k, k). Returns
        ``Prediction(train, test)``; ``test`` is None without ``k_test_train``.

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
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    opts = _SolverOptions(solver, tol, n_centres, generator, memory_bytes)
    built = _system(k_train_train, y_train, dtype, diag_reg, opts, "k_train_train")
    if built is not None:
        return _gradient_descent_system(*built, discrete=bool(discrete))
    mat, y, layout = _train_inputs(k_train_train, y_train, dtype)
    dyn = _make_dynamics(mat, layout, learning_rate, diag_reg, bool(discrete), "k_train_train")
    y_mat = layout.y_to_matrix(y)

    def predict_fn(
        t: Any = None, fx_train_0: Any = None, fx_test_0: Any = None, k_test_train: Any = None
    ) -> Prediction:
        tv = _check_time(t, discrete=dyn.discrete)
        f0 = _outputs(fx_train_0, "fx_train_0", layout.n, layout, mat)
        _check_inf(dyn, tv, "k_train_train")
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
        kt, m = _test_kernel(k_test_train, layout, mat)
        ft0 = _outputs(fx_test_0, "fx_test_0", m, layout, mat)
        test = layout.matrix_to_y(layout.y_to_matrix(ft0) + kt @ alpha, m)
        return Prediction(train, test)

    return predict_fn


def _gradient_descent_system(
    system: KernelSystem, layout: _Layout, like: Tensor, *, discrete: bool
) -> Callable[..., Prediction]:
    """``predict_fn`` of :func:`gradient_descent_mse` at ``t = inf`` by an iterative solver."""

    def predict_fn(
        t: Any = None, fx_train_0: Any = None, fx_test_0: Any = None, k_test_train: Any = None, *, x_test: Any = None
    ) -> Prediction:
        tv = _check_time(t, discrete=discrete)
        if math.isfinite(tv):
            raise ValueError(
                f"t: solver {system.solver!r} predicts the end of training only (t = None or math.inf), got t = {tv}; "
                "use solver='cholesky' for finite times"
            )
        f0 = _outputs(fx_train_0, "fx_train_0", layout.n, layout, like)
        alpha = system.solve(None if fx_train_0 is None else system.y_train - layout.y_to_matrix(f0))
        train = layout.matrix_to_y(layout.y_to_matrix(f0) + system.predict_train(alpha), layout.n)
        if k_test_train is None and x_test is None:
            if fx_test_0 is not None:
                raise ValueError("fx_test_0: given without k_test_train / x_test; pass both or neither")
            return Prediction(train, None)
        out, m = _system_test(system, alpha, layout, like, k_test_train, x_test)
        ft0 = _outputs(fx_test_0, "fx_test_0", m, layout, like)
        return Prediction(train, layout.matrix_to_y(layout.y_to_matrix(ft0) + out, m))

    return predict_fn


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
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> Callable[..., GaussianPrediction]:
    """Exact Gaussian-process posterior with a kernel (the NNGP, or the NTK), Cholesky-cached.

    For a zero-mean GP prior with kernel ``K`` and observations ``Y`` with noise variance
    ``diag_reg``:

        mean(x*) = K(x*, X) (K(X, X) + diag_reg I)^-1 Y,
        cov(x*, x*') = K(x*, x*') - K(x*, X) (K(X, X) + diag_reg I)^-1 K(X, x*').

    With the NNGP this is Bayesian inference in the infinitely wide network (Lee et al. 2018); with
    the NTK the mean is the ``t = inf`` gradient-descent prediction from ``f_0 = 0``. The Cholesky
    factor is computed by :func:`ntkit.solve.linalg.robust_cholesky` (a ``JitterWarning`` when a
    near-singular kernel needs jitter, ``NotPSDError`` when it is indefinite).

    Parameters
    ----------
    k_train_train : Tensor of shape (N, N)
        Shared by the ``k`` outputs.
    y_train : Tensor of shape (N, k) or (N,)
    diag_reg : float
        Observation-noise variance (``>= 0``, absolute).
    solver : {"auto", "cholesky", "cg", "nystrom"}
        ``"cholesky"``: the factorisation above (mean and covariance). ``"cg"`` / ``"nystrom"``
        (:class:`ntkit.solve.KernelSystem`): the posterior mean only, ``diag_reg > 0``, and
        ``k_train_train`` may be a :class:`ntkit.solve.KernelOperator`. ``"auto"``: ``"cholesky"``
        while the matrix fits ``memory_bytes`` (see :mod:`ntkit.predict`).
    tol, n_centres, generator, memory_bytes
        As in :func:`gradient_descent_mse`.

    Returns
    -------
    predict_fn(k_test_train=None, k_test_test=None, *, x_test=None) -> GaussianPrediction
        ``k_test_train`` (M, N); ``k_test_test`` (M, M) for the posterior covariance or (M,) for
        the variances only. Without ``k_test_train`` it returns the posterior on the training
        inputs (``k_test_test`` is then ``k_train_train``). ``x_test`` (M, n0) instead of
        ``k_test_train`` when ``k_train_train`` is a :class:`ntkit.solve.KernelOperator`.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gp_inference
    >>> k = torch.eye(2, dtype=torch.float64)
    >>> post = gp_inference(k, torch.tensor([1.0, 2.0]), diag_reg=1.0)()
    >>> post.mean.round(decimals=12).tolist(), post.cov.diagonal().round(decimals=12).tolist()
    ([0.5, 1.0], [0.5, 0.5])
    """
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    if not isinstance(k_train_train, KernelOperator) and as_tensor(k_train_train, "k_train_train", ndim=None).ndim == 4:
        raise ValueError("k_train_train: gp_inference expects a kernel of shape (N, N) shared by the outputs")
    opts = _SolverOptions(solver, tol, n_centres, generator, memory_bytes)
    built = _system(k_train_train, y_train, dtype, diag_reg, opts, "k_train_train")
    if built is not None:
        return _gp_system(*built)
    mat, y, layout = _train_inputs(k_train_train, y_train, dtype)
    chol, _ = robust_cholesky(mat, diag_reg=diag_reg)
    alpha = cho_solve(chol, y)

    def predict_fn(k_test_train: Any = None, k_test_test: Any = None, *, x_test: Any = None) -> GaussianPrediction:
        if x_test is not None:
            raise ValueError("x_test: expected k_test_train for a stored kernel matrix (x_test needs a KernelOperator)")
        if k_test_train is None:
            kt, m = mat, layout.n
            ktt: Tensor | None = mat if k_test_test is None else None
            if k_test_test is not None:
                raise ValueError("k_test_test: given without k_test_train")
        else:
            kt, m = _test_kernel(k_test_train, layout, mat)
            ktt = None
            if k_test_test is not None:
                ktt = as_tensor(k_test_test, "k_test_test", dtype=mat.dtype, device=mat.device, ndim=None)
                if tuple(ktt.shape) not in ((m, m), (m,)):
                    raise ValueError(f"k_test_test: expected shape ({m}, {m}) or ({m},), got {tuple(ktt.shape)}")
        mean = layout.matrix_to_y(kt @ alpha, m)
        if ktt is None:
            return GaussianPrediction(mean, None)
        v = torch.linalg.solve_triangular(chol, kt.T, upper=False)  # L^-1 K(X, x*)
        if ktt.ndim == 1:
            return GaussianPrediction(mean, ktt - (v * v).sum(0))
        cov = ktt - v.T @ v
        return GaussianPrediction(mean, 0.5 * (cov + cov.T))

    return predict_fn


def _gp_system(system: KernelSystem, layout: _Layout, like: Tensor) -> Callable[..., GaussianPrediction]:
    """``predict_fn`` of :func:`gp_inference` (posterior mean) by an iterative solver."""

    def predict_fn(k_test_train: Any = None, k_test_test: Any = None, *, x_test: Any = None) -> GaussianPrediction:
        if k_test_test is not None:
            raise ValueError(
                f"k_test_test: the posterior covariance needs solver='cholesky' and a stored kernel matrix; "
                f"solver {system.solver!r} gives the posterior mean only"
            )
        if k_test_train is None and x_test is None:
            return GaussianPrediction(layout.matrix_to_y(system.predict_train(), layout.n), None)
        out, m = _system_test(system, system.alpha, layout, like, k_test_train, x_test)
        return GaussianPrediction(layout.matrix_to_y(out, m), None)

    return predict_fn


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

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.predict import gradient_descent_mse_ensemble
    >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> k = ntkit.fc_kernel(x, depth=2, beta=0.1)
    >>> ens = gradient_descent_mse_ensemble(k.ntk, k.nngp, x[:, :1] * x[:, 1:])
    >>> ens(None).cov.abs().max() < 1e-6  # at t = inf the training outputs are the targets
    tensor(True)
    """
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    mat, y, layout = _train_inputs(ntk_train_train, y_train, dtype, name="ntk_train_train")
    if layout.block:
        raise ValueError("ntk_train_train: the ensemble expects scalar kernels of shape (N, N)")
    nngp = as_tensor(nngp_train_train, "nngp_train_train", dtype=mat.dtype, device=mat.device, ndim=None)
    if tuple(nngp.shape) != tuple(mat.shape):
        raise ValueError(
            f"nngp_train_train: expected shape {tuple(mat.shape)} like ntk_train_train, got {describe(nngp)}"
        )
    psd_eigh(nngp, name="nngp_train_train")  # PSD check with a clear error
    dyn = _make_dynamics(mat, layout, learning_rate, diag_reg, bool(discrete), "ntk_train_train")

    def predict_fn(
        t: Any = None, ntk_test_train: Any = None, nngp_test_train: Any = None, nngp_test_test: Any = None
    ) -> GaussianPrediction:
        tv = _check_time(t, discrete=dyn.discrete)
        _check_inf(dyn, tv, "ntk_train_train")
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
            th, m = _test_kernel(ntk_test_train, layout, mat, "ntk_test_train")
            k_star, m2 = _test_kernel(nngp_test_train, layout, mat, "nngp_test_train")
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
