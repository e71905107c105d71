"""Kernel ridge regression / GP posterior mean with NTK or NNGP kernels, by the solver that fits.

``mean(x_test) = K(x_test, x_train) (K(x_train, x_train) + diag_reg I)^{-1} y_train`` — the GP
posterior mean of the NNGP (Lee et al. 2018) and, with ``diag_reg -> 0``, the prediction of an
infinitely wide network trained by gradient descent on the MSE to ``t = infinity`` (Jacot et al.
2018; Lee et al. 2019).

Solvers:

* ``"cholesky"``: the exact dense solve (``8 N^2`` bytes, O(N^3) time), factored in place;
* ``"cg"``: preconditioned conjugate gradients on the kernel operator (``K`` never stored; O(N^2)
  kernel work per iteration; pivoted-Cholesky preconditioner);
* ``"nystrom"``: Falkon-style Nystrom KRR with ``n_centres`` centres (:func:`nystrom_krr`; O(N M)
  per iteration, an approximation that is exact for ``M = N``);
* ``"auto"``: ``"cholesky"`` when the dense matrix fits ``memory_budget``, ``"cg"`` up to
  ``N = 50k``, ``"nystrom"`` beyond.

:func:`kernel_regression` is a front over :class:`ntkit.solve.system.KernelSystem` (which also
serves :mod:`ntkit.predict` and :mod:`ntkit.sklearn`); the solvers themselves and the choice of
``"auto"`` (:func:`~ntkit.solve.resolve_solver`) are in :mod:`ntkit.solve.kernel_solvers`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ntkit._validation import as_tensor, check_choice, describe, renamed_keyword
from ntkit.empirical.sketch_tiles import EmpiricalTiles
from ntkit.solve.kernel_solvers import DEFAULT_MEMORY_BUDGET
from ntkit.solve.operator import KernelOperator, TileFn
from ntkit.solve.system import KernelSystem

Tensor = torch.Tensor


def kernel_regression(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    *,
    diag_reg: float,
    solver: str = "auto",
    model: nn.Module | None = None,
    kernel: str = "infinite",
    tile_fn: TileFn | None = None,
    depth: int | None = None,
    activation: Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    which: str = "ntk",
    tile_dtype: torch.dtype | None = None,
    tol: float = 1e-8,
    max_iter: int = 500,
    precond: str = "pivoted_cholesky",
    precond_rank: int | None = None,
    n_centres: int = 1000,
    n_features: int | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    refine: bool = True,
    nystrom_method: str = "auto",
    progress: bool = False,
    beta: float | None = None,
    memory_bytes: int | None = None,
) -> Tensor:
    """Kernel regression predictions ``K(x_test, x) (K(x, x) + diag_reg I)^{-1} y`` by any solver.

    Parameters
    ----------
    x_train : array-like of shape (N, n0)
    y_train : array-like of shape (N,) or (N, k)
        Finite targets.
    x_test : array-like of shape (N_test, n0)
    diag_reg : float
        Absolute ridge (``>= 0``; ``> 0`` for ``"cg"`` and ``"nystrom"``), e.g. the noise variance.
    solver : {"auto", "cholesky", "cg", "nystrom", "features"}
    model, tile_fn, depth, activation, b_std, w_std, which
        The kernel (see :class:`~ntkit.solve.KernelOperator`): a model's (any architecture
        :func:`ntkit.infinite_kernel` understands), a tile function's, or the fully connected shortcut's
        (``depth`` 1 by default; ``b_std`` and ``w_std`` the bias and weight scales).
    kernel : {"infinite", "empirical"}
        ``"infinite"``: the infinite-width kernel of ``model`` (or of the shortcut). ``"empirical"``: the
        empirical NTK of the finite torch ``model`` as it is (its weights), :class:`ntkit.empirical.EmpiricalTiles`
        -- ``which="ntk"`` the trace NTK ``(1/k) sum_c Theta_cc``, ``which="pntk"`` the pseudo-NTK; exact
        tiles for ``"cholesky"`` / ``"cg"`` / ``"nystrom"``, and for ``solver="features"`` ridge regression on
        ``n_features`` sketched features per output (:func:`ntkit.empirical_features`), streamed over the
        training inputs. For a checkpoint, a batch size or another sketch pass
        ``tile_fn=EmpiricalTiles(model, ...)`` instead.
    tile_dtype : torch.dtype, optional
        ``torch.float32`` evaluates tiles in single precision (accumulation stays float64).
    tol, max_iter
        CG stopping rule (relative residual); non-convergence warns and returns the best iterate.
    precond : {"pivoted_cholesky", "nystrom", "none"}
        Preconditioner of ``"cg"``, of rank ``precond_rank`` (``<= N``; default ``min(1000, N)``).
    n_centres : int
        ``M`` for ``"nystrom"`` (``<= N``).
    n_features : int, optional
        Random features for ``"features"`` (default ``min(N, 4096)``); with ``kernel="empirical"`` the
        sketch's ``m`` per output (the ridge has ``k m`` features for ``k`` outputs with ``which="ntk"``;
        default ``max(1, min(N, 4096) // k)``).
    generator : torch.Generator, optional
        Random centres / columns.
    memory_budget : int or str
        Budget for ``"auto"`` (dense solve only if ``8 N^2`` bytes fit), in bytes or as a string
        such as ``"512M"`` / ``"2GiB"``.
    refine : bool
        ``"cg"`` with float32 tiles: mixed-precision iterative refinement against float64 products
        (:func:`cg_kernel_solve`), so that ``tol`` is met in float64.
    nystrom_method : {"auto", "falkon", "gram"}
        See :func:`~ntkit.solve.nystrom_krr`; ``"auto"``: ``"falkon"`` when ``K_nm`` fits 2 GiB, else ``"gram"``.
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).
    memory_bytes : int, optional
        Deprecated alias of ``memory_budget`` (a ``DeprecationWarning``).

    Returns
    -------
    Tensor of shape (N_test,) or (N_test, k)
        The predictive mean (float64).

    Raises
    ------
    ValueError
        Targets with another number of rows, test inputs of another shape than the training inputs,
        an unknown ``solver`` or ``kernel``, ``diag_reg = 0`` for an iterative solver, ``n_centres`` > N;
        ``kernel="empirical"`` without a torch ``model``, with ``tile_fn`` or ``depth``, or with ``which``
        other than ``"ntk"`` / ``"pntk"``; the errors of :class:`ntkit.empirical.EmpiricalTiles` (a model
        whose output is not (N, k), ``n_features < 1``).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, xt = torch.randn(80, 4, generator=g), torch.randn(5, 4, generator=g)
    >>> y = x[:, 0]
    >>> a = kernel_regression(x, y, xt, diag_reg=1e-2, solver="cholesky", depth=2)
    >>> b = kernel_regression(x, y, xt, diag_reg=1e-2, solver="cg", depth=2)
    >>> bool(torch.allclose(a, b, rtol=1e-6, atol=1e-8))
    True
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    memory_budget = renamed_keyword(memory_budget, memory_bytes, new="memory_budget", old="memory_bytes",
                                    default=DEFAULT_MEMORY_BUDGET)
    x = as_tensor(x_train, "x_train", dtype=torch.float64, ndim=None)
    n = x.shape[0]
    y = as_tensor(y_train, "y_train", dtype=torch.float64, ndim=None)
    if y.ndim > 2 or y.shape[0] != n:
        raise ValueError(f"y_train: expected shape ({n},) or ({n}, k), got {tuple(y.shape)}")
    xt = as_tensor(x_test, "x_test", dtype=torch.float64, ndim=None)
    if xt.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_test: expected examples of shape {tuple(x.shape[1:])} like x_train, got "
                         f"{tuple(xt.shape[1:])}")
    kw: dict[str, Any] = dict(
        model=model, tile_fn=tile_fn, depth=depth, activation=activation, b_std=b_std, w_std=w_std, which=which
    )
    if check_choice(kernel, "kernel", ("infinite", "empirical")) == "empirical":
        kw = {"tile_fn": _empirical_tiles(model, tile_fn, depth, which)}
    op = KernelOperator(x, tile_dtype=tile_dtype, progress=progress, **kw)
    system = KernelSystem(
        op, y, diag_reg=diag_reg, solver=solver, tol=tol, max_iter=max_iter, n_centres=n_centres, n_features=n_features,
        generator=generator, memory_budget=memory_budget, precond=precond, precond_rank=precond_rank,
        refine=refine, nystrom_method=nystrom_method, progress=progress,
    )  # fmt: skip
    return system.predict(x_test=xt)


def _empirical_tiles(model: Any, tile_fn: Any, depth: int | None, which: str) -> EmpiricalTiles:
    """The tiles of ``kernel="empirical"``, the arguments checked."""
    if tile_fn is not None or depth is not None:
        raise ValueError("kernel: 'empirical' takes the finite torch model as model=, got "
                         f"{'tile_fn' if tile_fn is not None else 'depth'} as well")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: kernel 'empirical' needs a torch.nn.Module, got {describe(model)}")
    mode = {"ntk": "trace", "pntk": "pntk"}.get(which)
    if mode is None:
        raise ValueError(f"which: expected 'ntk' or 'pntk' for kernel 'empirical', got {which!r}")
    return EmpiricalTiles(model, mode=mode)
