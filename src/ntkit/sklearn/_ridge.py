"""The core :class:`~ntkit.sklearn.NTKRegressor` and :class:`~ntkit.sklearn.NTKClassifier` share: the check of
their parameters and kernel ridge regression,
``alpha = (K + diag_reg * mean(diag K) * I)^{-1} (Y - mean Y)``, ``f(x) = k(x, X) alpha + mean Y``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._validation import check_choice, check_float, check_int, describe, parse_memory_budget, renamed_keyword
from ntkit.activations import Activation, get_activation
from ntkit.compute import infinite_kernel
from ntkit.sklearn._common import _DEFAULT_B_STD, SOLVERS, WHICH, _model, _rows
from ntkit.solve.kernel_solvers import DEFAULT_MEMORY_BUDGET, resolve_solver
from ntkit.solve.operator import KernelOperator, ModelTiles
from ntkit.solve.system import KernelSystem


def _check_params(est: Any) -> float:
    """Check an estimator's parameters; returns the bias scale (``b_std``, or the deprecated ``beta``)."""
    # stacklevel 4: the warning points at the call of fit
    b_std = renamed_keyword(est.b_std, est.beta, new="b_std", old="beta", default=_DEFAULT_B_STD, stacklevel=4)
    if est.model is None:
        check_int(est.depth, "depth", minimum=0)
        b_std = check_float(b_std, "b_std", minimum=0.0)
        check_float(est.w_std, "w_std", minimum=0.0, strict=True)
        get_activation(est.activation)
    elif not isinstance(est.model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. built from ntkit.nn), got {describe(est.model)}")
    if est.input_shape is not None and (
        not isinstance(est.input_shape, (tuple, list)) or not all(isinstance(n, int) and n > 0 for n in est.input_shape)
    ):
        raise ValueError(f"input_shape: expected a tuple of positive integers such as (1, 8, 8), got "
                         f"{describe(est.input_shape)}")
    check_float(est.diag_reg, "diag_reg", minimum=0.0)
    check_choice(est.which, "which", WHICH)
    check_choice(est.solver, "solver", SOLVERS)
    check_float(est.tol, "tol", minimum=0.0, strict=True)
    if est.n_centres is not None:
        check_int(est.n_centres, "n_centres", minimum=1)
    if est.n_features is not None:
        check_int(est.n_features, "n_features", minimum=1)
    if est.memory_budget is not None:
        parse_memory_budget(est.memory_budget, "memory_budget")
    get_activation(est.activation)
    return b_std


class _KernelRidge:
    """Shared kernel-ridge core: ``alpha = (K + diag_reg * mean(diag K) * I)^{-1} (Y - mean Y)``.

    Every solver runs in :class:`ntkit.solve.KernelSystem`: ``"cholesky"`` on the dense kernel of
    :func:`ntkit.infinite_kernel` (the fitted estimator keeps ``dual_coef_``, not the N x N kernel and
    its factor); ``"cg"``, ``"nystrom"`` and ``"features"`` on a :class:`ntkit.solve.KernelOperator`
    (the kernel is never stored), and predict through the operator too.
    """

    model: nn.Module | None
    input_shape: tuple[int, ...] | None
    depth: int
    activation: str | Activation
    b_std: float
    w_std: float
    which: str
    diag_reg: float
    solver: str
    tol: float
    n_centres: int | None
    n_features: int | None
    random_state: Any
    memory_budget: int | str | None
    beta: float | None
    b_std_: float

    def _arch_model(self, n_inputs: int) -> nn.Module:
        return _model(self.model, n_inputs, self.depth, self.activation, self.b_std_, self.w_std)

    def _k(self, x1: np.ndarray, x2: np.ndarray | None = None) -> torch.Tensor:
        a = _rows(x1, self.input_shape)
        b = None if x2 is None else _rows(x2, self.input_shape)
        out = infinite_kernel(self._arch_model(x1.shape[1]), a, b, which=self.which)
        assert isinstance(out, torch.Tensor)
        return out

    def _operator(self, x1: np.ndarray, x2: np.ndarray | None = None) -> KernelOperator:
        model = self._arch_model(x1.shape[1])
        return KernelOperator(_rows(x1, self.input_shape), None if x2 is None else _rows(x2, self.input_shape),
                              tile_fn=ModelTiles(model, which=self.which))

    def _fit_targets(self, x: np.ndarray, targets: np.ndarray) -> None:
        from sklearn.utils import check_random_state

        budget = DEFAULT_MEMORY_BUDGET if self.memory_budget is None else self.memory_budget
        self.solver_ = resolve_solver(self.solver, x.shape[0], memory_budget=budget)
        self.y_mean_ = targets.mean(axis=0)
        rhs = torch.from_numpy(np.ascontiguousarray(targets - self.y_mean_, dtype=np.float64))
        self.X_fit_ = x
        self.centres_ = x
        if self.solver_ == "cholesky":
            k_train_train = self._k(x)
            scale = float(torch.diagonal(k_train_train).abs().mean()) or 1.0
            dense = KernelSystem(k_train_train, rhs, diag_reg=self.diag_reg * scale, solver="cholesky")
            self.dual_coef_ = dense.alpha.numpy()
            self.jitter_ = dense.jitter
            return
        op = self._operator(x)
        scale = float(op.diag().abs().mean()) or 1.0
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        system = KernelSystem(
            op, rhs, diag_reg=self.diag_reg * scale, solver=self.solver_, tol=self.tol, n_centres=self.n_centres,
            generator=torch.Generator().manual_seed(seed), n_features=self.n_features,
        )  # fmt: skip
        self.system_ = system
        self.dual_coef_ = system.alpha.numpy()
        self.jitter_ = 0.0
        if system.centre_idx is not None:
            self.centres_ = x[system.centre_idx.numpy()]

    def _predict_targets(self, x: np.ndarray) -> np.ndarray:
        if self.solver_ == "features":  # the features' weights, not kernel coefficients
            out = self.system_.predict(x_test=_rows(x, self.input_shape)).numpy()
            return np.asarray(out + self.y_mean_)
        if self.solver_ == "cholesky":
            k_test_train = self._k(x, self.centres_).numpy()
            return np.asarray(k_test_train @ self.dual_coef_ + self.y_mean_)
        cross = self._operator(x, self.centres_)
        return np.asarray((cross @ torch.from_numpy(self.dual_coef_)).numpy() + self.y_mean_)
