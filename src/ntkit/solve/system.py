"""The linear system of kernel regression, ``(K + diag_reg I) alpha = Y``, solved by the solver that fits.

:class:`KernelSystem` is the one place where :mod:`ntkit.predict`, :mod:`ntkit.sklearn` and
:func:`~ntkit.solve.kernel_regression` choose and run a solver. Given the training kernel ``K`` of
shape (N, N) -- a stored matrix, or a :class:`~ntkit.solve.KernelOperator` that recomputes it from
the inputs -- and targets ``Y`` of shape (N,) or (N, k), it computes coefficients ``alpha`` such that

    f(x*) = K(x*, B) alpha,

where the basis ``B`` is the training set (exact and CG solvers) or ``M`` Nystrom centres:

* ``"cholesky"``: ``alpha = (K + diag_reg I)^{-1} Y`` by a dense Cholesky factorisation (``8 N^2``
  bytes, O(N^3)); the factor is kept, so further right-hand sides cost O(N^2).
* ``"cg"``: the same ``alpha`` by conjugate gradients (:func:`~ntkit.solve.cg_kernel_solve`) with a
  pivoted-Cholesky preconditioner of rank ``precond_rank`` (default ``min(1000, N)``); ``K`` is never
  stored when given as an operator. Stops at relative residual ``tol``.
* ``"nystrom"``: Nystrom kernel ridge regression with ``n_centres`` uniformly sampled training points
  (:func:`~ntkit.solve.nystrom_krr`, Falkon-preconditioned CG), ``alpha`` of shape (M, k)
  minimising ``||K_nm alpha - Y||^2 + diag_reg alpha^T K_mm alpha``; exact for ``M = N``.
* ``"features"``: ridge regression on ``n_features`` random features of the model's kernel
  (:class:`~ntkit.solve.feature_solver.FeatureSolver`, :func:`ntkit.random_features.feature_ridge`;
  ``O(N m^2)``, an approximation whose error falls like ``1 / sqrt(m)``); only for an operator built
  from a model (:class:`~ntkit.solve.ModelTiles`), or with tiles that draw features of their own
  (:class:`~ntkit.solve.feature_solver.FeatureTiles`: the sketched empirical NTK of a finite model,
  :class:`ntkit.empirical.EmpiricalTiles`).
* ``"auto"`` (:func:`~ntkit.solve.resolve_solver`): ``"cholesky"`` when the N x N float64 matrix
  takes at most ``memory_budget`` (default 4 GiB, i.e. N <= 23,170), else ``"cg"`` up to
  ``cg_max_n`` = 50,000 points, else ``"nystrom"``.

The dense factor is exposed (:attr:`KernelSystem.factor`, :meth:`KernelSystem.whiten`) for the
posterior covariance of :func:`ntkit.predict.gp_inference`. Iterative solvers need ``diag_reg > 0``.
A stored matrix is handed to the operator-based preconditioners and to Nystrom through
:class:`MatrixTiles` (tiles by row index), so the CG and Nystrom code is the same for matrices and
operators.
"""

from __future__ import annotations

from typing import Any

import torch

from ntkit._validation import as_tensor, check_choice, check_float, check_int, describe, renamed_keyword
from ntkit.solve.feature_solver import FeatureSolver, FeatureTiles
from ntkit.solve.kernel_solvers import (
    DEFAULT_MEMORY_BUDGET,
    SOLVERS,
    cg_kernel_solve,
    dense_cho_factor,
    resolve_solver,
)
from ntkit.solve.linalg import cho_solve, robust_cholesky
from ntkit.solve.nystrom import nystrom_krr
from ntkit.solve.operator import KernelOperator, ModelTiles
from ntkit.solve.precond import nystrom_preconditioner, pivoted_cholesky_preconditioner

Tensor = torch.Tensor

DEFAULT_CENTRES = 5_000
DEFAULT_PRECOND_RANK = 1_000


class MatrixTiles:
    """A stored kernel matrix as a tile function over row indices.

    ``tiles(a, b) = K[a[:, 0], b[:, 0]]`` for index columns ``a`` (t1, 1) and ``b`` (t2, 1) (indices
    stored as floats, exact below 2^53). With ``KernelOperator(index_column(N), tile_fn=tiles)`` the
    operator-based preconditioners and :func:`~ntkit.solve.nystrom_krr` run on a given matrix.

    Parameters
    ----------
    k : Tensor of shape (N, N)
        The stored kernel matrix.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import KernelOperator, MatrixTiles
    >>> from ntkit.solve.system import index_column
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> op = KernelOperator(index_column(2), tile_fn=MatrixTiles(k))
    >>> (op @ torch.ones(2, dtype=torch.float64)).tolist()
    [3.0, 3.0]
    """

    def __init__(self, k: Tensor) -> None:
        self.k = k

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return self.k[a[:, 0].long()][:, b[:, 0].long()]

    def diag(self, x: Tensor) -> Tensor:
        """``K[i, i]`` for the indices in ``x`` (N, 1)."""
        return self.k.diagonal()[x[:, 0].long()]

    def __repr__(self) -> str:
        return f"MatrixTiles(shape={tuple(self.k.shape)})"


def index_column(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[[0], [1], ..., [n - 1]]`` of shape (n, 1): the "inputs" of a :class:`MatrixTiles` operator."""
    return torch.arange(n, dtype=dtype)[:, None]


class KernelSystem:
    """Solve ``(K + diag_reg I) alpha = Y`` and predict ``K(x*, basis) alpha``, by any solver.

    Parameters
    ----------
    kernel : Tensor of shape (N, N), or KernelOperator (symmetric)
        The training kernel ``K(X, X)``, stored or as an operator (computed on the fly from ``X``).
    y_train : array-like of shape (N,) or (N, k)
        Finite targets.
    diag_reg : float
        Absolute ridge ``>= 0`` (``> 0`` for ``"cg"`` and ``"nystrom"``).
    solver : {"auto", "cholesky", "cg", "nystrom", "features"}
        See the module docstring; the resolved choice is ``solver``.
    tol : float
        Relative residual at which CG / Falkon stop.
    max_iter : int, optional
        Iteration limit (default 500 for CG, 100 for Nystrom); on reaching it a
        :class:`~ntkit.solve.NotConvergedWarning` and the best iterate.
    n_centres : int, optional
        ``M`` for ``"nystrom"``, ``1 <= M <= N`` (default ``min(N, 5000)``).
    generator : torch.Generator, optional
        Sampling of the Nystrom centres (and of Nystrom-preconditioner columns).
    memory_budget : int or str
        Budget of ``"auto"`` for the dense N x N float64 matrix, in bytes or as a string such as
        ``"512M"`` / ``"2GiB"`` (default 4 GiB).
    cg_max_n : int
        Largest N for which ``"auto"`` picks ``"cg"`` over ``"nystrom"``.
    precond : {"pivoted_cholesky", "nystrom", "none"}
        Preconditioner of ``"cg"``, of rank ``precond_rank`` (default ``min(1000, N)``).
    refine : bool
        ``"cg"`` on an operator with float32 tiles: float64 iterative refinement (the answer meets
        ``tol`` in float64; :func:`~ntkit.solve.cg_kernel_solve`).
    nystrom_method : {"auto", "falkon", "gram"}
        See :func:`~ntkit.solve.nystrom_krr`; ``"auto"`` is ``"falkon"`` when ``K_nm`` fits its
        2 GiB cache, else ``"gram"`` (one pass over ``K_nm``).
    progress : bool
    n_features : int, optional
        ``m`` for ``"features"`` (default ``min(N, 4096)``); the random draw comes from ``generator``.
    memory_bytes : int, optional
        Deprecated alias of ``memory_budget`` (a ``DeprecationWarning``).

    Attributes
    ----------
    solver : str
        The solver that ran (``"auto"`` resolved).
    n : int
    alpha : Tensor of shape (N, k) or (M, k), or (N,) / (M,) for vector targets
        Coefficients for ``y_train``.
    centre_idx : Tensor of shape (M,) or None
        Indices of the Nystrom centres in the training set.
    jitter : float
        Diagonal jitter the dense Cholesky needed (0 almost always; a near-singular kernel without
        a ridge, e.g. duplicated inputs, is refactored with the smallest jitter that works).
    factor : Tensor of shape (N, N) or None
        The lower Cholesky factor of ``"cholesky"`` (see :meth:`whiten`).

    Raises
    ------
    ValueError
        A kernel that is not (N, N) or a non-symmetric operator, targets with another number of rows,
        an unknown ``solver``, ``diag_reg <= 0`` for ``"cg"`` / ``"nystrom"``, ``n_centres`` > N.
    NotPSDError
        ``"cholesky"`` on an indefinite kernel.

    Examples
    --------
    >>> import torch, ntkit
    >>> g = torch.Generator().manual_seed(0)
    >>> x, xt = torch.randn(60, 3, dtype=torch.float64, generator=g), torch.randn(4, 3, dtype=torch.float64)
    >>> k, kt = ntkit.fc_kernel(x, depth=2).ntk, ntkit.fc_kernel(xt, x, depth=2).ntk
    >>> exact = KernelSystem(k, x[:, 0], diag_reg=1e-2, solver="cholesky").predict(k_test_train=kt)
    >>> cg = KernelSystem(k, x[:, 0], diag_reg=1e-2, solver="cg", tol=1e-12).predict(k_test_train=kt)
    >>> bool(torch.allclose(cg, exact, rtol=1e-8, atol=1e-10))
    True
    """

    def __init__(
        self,
        kernel: Any,
        y_train: Any,
        *,
        diag_reg: float,
        solver: str = "auto",
        tol: float = 1e-8,
        max_iter: int | None = None,
        n_centres: int | None = None,
        generator: torch.Generator | None = None,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        cg_max_n: int = 50_000,
        precond: str = "pivoted_cholesky",
        precond_rank: int | None = None,
        refine: bool = True,
        nystrom_method: str = "auto",
        progress: bool = False,
        n_features: int | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        memory_budget = renamed_keyword(memory_budget, memory_bytes, new="memory_budget", old="memory_bytes",
                                        default=DEFAULT_MEMORY_BUDGET)
        solver = check_choice(solver, "solver", SOLVERS)
        self.precond = check_choice(precond, "precond", ("pivoted_cholesky", "nystrom", "none"))
        self.nystrom_method = check_choice(nystrom_method, "nystrom_method", ("auto", "falkon", "gram"))
        if isinstance(kernel, KernelOperator):
            if not kernel.symmetric:
                raise ValueError("kernel: expected a symmetric KernelOperator K(X, X) (x2 omitted), got K(X1, X2)")
            self.matrix: Tensor | None = None
            self.op = kernel
            dtype = kernel.dtype
        else:
            self.matrix = as_tensor(kernel, "kernel", ndim=2)
            if self.matrix.shape[0] != self.matrix.shape[1]:
                raise ValueError(f"kernel: expected a square matrix (N, N), got {describe(self.matrix)}")
            dtype = self.matrix.dtype
            self.op = KernelOperator(
                index_column(self.matrix.shape[0]), tile_fn=MatrixTiles(self.matrix), dtype=self.matrix.dtype
            )
        self.n = int(self.op.shape[0])
        y = as_tensor(y_train, "y_train", dtype=dtype, ndim=None)
        if y.ndim > 2 or y.shape[0] != self.n:
            raise ValueError(f"y_train: expected shape ({self.n},) or ({self.n}, k) like the kernel, got {describe(y)}")
        self.y_train = y
        self.diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
        self.solver = resolve_solver(solver, self.n, memory_budget=memory_budget, cg_max_n=cg_max_n)
        if self.solver in ("cg", "nystrom", "features") and self.diag_reg <= 0:
            raise ValueError(f"diag_reg: expected a ridge > 0 for solver {self.solver!r}, got {self.diag_reg}")
        self.tol = check_float(tol, "tol", minimum=0.0, strict=True)
        default_iter = 500 if self.solver == "cg" else 100
        self.max_iter = default_iter if max_iter is None else check_int(max_iter, "max_iter", minimum=1)
        self.generator = generator
        self.precond_rank = precond_rank
        self.refine = bool(refine)
        self.progress = bool(progress)
        self.jitter = 0.0
        self.centre_idx: Tensor | None = None
        self._factor: Any = None
        self._pre: Any = None
        self._alpha: Tensor | None = None
        self._features: FeatureSolver | None = None
        self.n_features = None if n_features is None else check_int(n_features, "n_features", minimum=1)
        if self.solver == "features" and not isinstance(self.op.tile_fn, (ModelTiles, FeatureTiles)):
            raise ValueError("solver: 'features' needs the kernel as a KernelOperator of a model (ModelTiles) or with "
                             "tiles that draw features (FeatureTiles, e.g. ntkit.empirical.EmpiricalTiles), got "
                             f"{'a kernel matrix' if self.matrix is not None else type(self.op.tile_fn).__name__}")
        if self.solver == "nystrom":
            m = min(self.n, DEFAULT_CENTRES) if n_centres is None else check_int(n_centres, "n_centres", minimum=1)
            if m > self.n:
                raise ValueError(f"n_centres: expected at most N = {self.n} centres, got {m}")
            self.centre_idx = torch.randperm(self.n, generator=generator)[:m].sort().values
        self._setup()
        self.alpha = self._alpha = self.solve()

    # ------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Factorise (``"cholesky"``), build the preconditioner (``"cg"``) or the random features once."""
        if self.solver == "features":
            self._features = FeatureSolver(self.op, self.y_train, diag_reg=self.diag_reg, n_features=self.n_features,
                                           generator=self.generator, progress=self.progress)
            return
        if self.solver == "cholesky":
            if self.matrix is not None:
                self._factor, self.jitter = robust_cholesky(self.matrix, diag_reg=self.diag_reg)
            else:
                self._factor, self.jitter = dense_cho_factor(self.op.dense, self.diag_reg)
        elif self.solver == "cg" and self.precond != "none":
            rank = min(DEFAULT_PRECOND_RANK, self.n) if self.precond_rank is None else self.precond_rank
            op64 = self._op64()
            if self.precond == "pivoted_cholesky":
                self._pre = pivoted_cholesky_preconditioner(op64, rank, diag_reg=self.diag_reg)
            else:
                self._pre = nystrom_preconditioner(op64, rank, diag_reg=self.diag_reg, generator=self.generator)

    def _op64(self) -> KernelOperator:
        """The operator with tiles in its accumulation dtype (the reference for refinement)."""
        op = self.op
        if op.tile_dtype == op.dtype:
            return op
        return KernelOperator(
            op.x1, tile_fn=op.tile_fn, dtype=op.dtype, tile_rows=op.tile_rows, tile_cols=op.tile_cols,
            progress=op.progress,
        )  # fmt: skip

    def _rhs(self, rhs: Any) -> Tensor:
        if rhs is None:
            return self.y_train
        r = as_tensor(rhs, "rhs", dtype=self.y_train.dtype, ndim=None)
        if r.ndim > 2 or r.shape[0] != self.n:
            raise ValueError(f"rhs: expected shape ({self.n},) or ({self.n}, k), got {describe(r)}")
        return r

    def solve(self, rhs: Any = None) -> Tensor:
        """Coefficients for right-hand side ``rhs`` (default ``y_train``), of the shape of :attr:`alpha`.

        ``"cholesky"`` reuses its factor; ``"cg"`` its preconditioner; ``"nystrom"`` fits again
        with the same centres.
        """
        if rhs is None and self._alpha is not None:
            return self._alpha
        b = self._rhs(rhs)
        if self.solver == "features":
            assert self._features is not None
            return self._features.solve(b, refit=rhs is not None)
        if self.solver == "cholesky":
            return cho_solve(self._factor, b.to(self._factor.dtype)).to(b.dtype)
        if self.solver == "cg":
            matvec = self.matrix if self.matrix is not None else self.op
            ref = None
            if self.matrix is None and self.refine and self.op.tile_dtype != self.op.dtype:
                ref = self._op64()
            return cg_kernel_solve(
                matvec,  # type: ignore[arg-type]
                b, diag_reg=self.diag_reg, precond=self._pre, tol=self.tol, max_iter=self.max_iter,
                reference_op=ref, progress=self.progress,
            )  # fmt: skip
        assert self.centre_idx is not None
        m = int(self.centre_idx.shape[0])
        method = self.nystrom_method
        if method == "auto":
            itemsize = torch.finfo(self.op.tile_dtype).bits // 8
            method = "falkon" if self.n * m * itemsize <= 2 * 1024**3 else "gram"
        model = nystrom_krr(
            self.op.x1, b, n_centres=m, diag_reg=self.diag_reg, tile_fn=self.op.tile_fn,
            centres=self.op.x1[self.centre_idx], tile_dtype=self.op.tile_dtype, tol=self.tol,
            max_iter=self.max_iter, method=method, progress=self.progress,
        )  # fmt: skip
        return model.alpha.to(b.dtype)

    @property
    def factor(self) -> Tensor | None:
        """The lower Cholesky factor ``L`` of ``K + (diag_reg + jitter) I`` (``"cholesky"``), else None.

        ``L L^T = K + (diag_reg + jitter) I``, shape (N, N), in the kernel's dtype (float64 for an
        operator). :meth:`whiten` applies ``L^{-1}``.
        """
        return self._factor if self.solver == "cholesky" else None

    def whiten(self, rhs: Any) -> Tensor:
        """``L^{-1} rhs`` for the Cholesky factor ``L`` (:attr:`factor`): one triangular solve.

        With ``v = L^{-1} K(X, x*)``, ``v^T v = K(x*, X) (K + diag_reg I)^{-1} K(X, x*)``: the term the
        posterior covariance of :func:`ntkit.predict.gp_inference` subtracts.

        Parameters
        ----------
        rhs : array-like of shape (N,) or (N, m)
            For instance ``K(X, x*)``, the transpose of the cross kernel.

        Returns
        -------
        Tensor of the shape of ``rhs``, in the factor's dtype

        Raises
        ------
        ValueError
            A solver other than ``"cholesky"`` (it has no factor), ``rhs`` with another number of rows.

        Examples
        --------
        >>> import torch
        >>> k = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
        >>> system = KernelSystem(k, torch.ones(2, dtype=torch.float64), diag_reg=0.0, solver="cholesky")
        >>> v = system.whiten(k)  # L^-1 K
        >>> bool(torch.allclose(v.T @ v, k))  # K K^-1 K = K
        True
        """
        if self.solver != "cholesky":
            raise ValueError(f"solver: whiten needs the Cholesky factor of solver 'cholesky', got {self.solver!r}")
        r = self._rhs(rhs)
        half = torch.linalg.solve_triangular(self._factor, (r[:, None] if r.ndim == 1 else r).to(self._factor.dtype),
                                             upper=False)
        return half[:, 0] if r.ndim == 1 else half

    # ------------------------------------------------------------------------------------------
    def predict(self, alpha: Tensor | None = None, *, k_test_train: Any = None, x_test: Any = None) -> Tensor:
        """``K(x*, basis) alpha`` for test points given by one of ``k_test_train`` or ``x_test``.

        Parameters
        ----------
        alpha : Tensor, optional
            Coefficients from :meth:`solve` (default :attr:`alpha`).
        k_test_train : array-like of shape (T, N)
            The cross kernel to the training set (the columns of the centres are used by Nystrom).
        x_test : array-like of shape (T, n0)
            Test inputs; only when the system was built from a :class:`~ntkit.solve.KernelOperator`
            (its tile function computes ``K(x*, basis)`` on the fly).

        Returns
        -------
        Tensor of shape (T,) or (T, k)
        """
        coef = self.alpha if alpha is None else alpha
        if (k_test_train is None) == (x_test is None):
            raise ValueError("k_test_train, x_test: expected exactly one of them")
        if self.solver == "features":
            if x_test is None:
                raise ValueError("k_test_train: solver 'features' predicts from the test inputs; pass x_test")
            assert self._features is not None
            return self._features.predict(coef, x_test)
        if k_test_train is not None:
            kt = as_tensor(k_test_train, "k_test_train", dtype=coef.dtype, ndim=2)
            if kt.shape[1] != self.n:
                raise ValueError(f"k_test_train: expected shape (T, {self.n}), got {describe(kt)}")
            if self.centre_idx is not None:
                kt = kt[:, self.centre_idx]
            return kt @ coef
        if self.matrix is not None:
            raise ValueError("x_test: the system was built from a kernel matrix; pass k_test_train instead")
        op = self.op
        xt = as_tensor(x_test, "x_test", dtype=op.dtype, ndim=None)
        if xt.shape[1:] != op.x1.shape[1:]:
            raise ValueError(f"x_test: expected examples of shape {tuple(op.x1.shape[1:])} like the training inputs, "
                             f"got {tuple(xt.shape[1:])}")
        basis = op.x1 if self.centre_idx is None else op.x1[self.centre_idx]
        cross = KernelOperator(
            xt, basis, tile_fn=op.tile_fn, dtype=op.dtype, tile_rows=op.tile_rows, tile_cols=op.tile_cols,
            progress=op.progress,
        )  # fmt: skip
        return cross @ coef

    def predict_train(self, alpha: Tensor | None = None) -> Tensor:
        """``K(X, basis) alpha`` on the training inputs: shape (N,) or (N, k)."""
        coef = self.alpha if alpha is None else alpha
        if self.solver == "features":
            return self.predict(coef, x_test=self.op.x1)
        if self.centre_idx is None:
            return self.op @ coef if self.matrix is None else self.matrix @ coef
        if self.matrix is not None:
            return self.matrix[:, self.centre_idx] @ coef
        return self.predict(coef, x_test=self.op.x1)

    def __repr__(self) -> str:
        return f"KernelSystem(n={self.n}, solver={self.solver!r}, diag_reg={self.diag_reg:.3g})"
