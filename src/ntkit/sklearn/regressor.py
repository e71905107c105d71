"""Kernel ridge regression with the infinite-width NTK / NNGP as a scikit-learn regressor."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ntkit.activations import Activation
from ntkit.sklearn._common import _DEFAULT_B_STD
from ntkit.sklearn._ridge import _check_params, _KernelRidge

__all__ = ["NTKRegressor"]


class NTKRegressor(_KernelRidge, RegressorMixin, BaseEstimator):
    """Kernel ridge regression / GP posterior mean with the infinite-width NTK or NNGP.

    ``f(x) = k(x, X) (k(X, X) + diag_reg * mean(diag k(X, X)) I)^{-1} (y - mean y) + mean y`` where ``k``
    is ``ntkit.infinite_kernel(model, ...)``'s NTK (or NNGP). With the NTK this is the
    mean output of an infinitely wide network trained by gradient flow on the MSE to convergence
    (Jacot et al. 2018, Lee et al. 2019); with the NNGP it is the exact Bayesian posterior mean
    (Lee et al. 2018) with noise variance ``diag_reg * mean(diag k)``.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The architecture (any model :func:`ntkit.infinite_kernel` understands, e.g.
        ``ntkit.nn.cntk(1, depth=3, device="meta")``). Default: the fully connected shortcut below.
    input_shape : tuple of int, optional
        Shape of one example for ``model`` (``X`` rows are reshaped to it, e.g. ``(1, 8, 8)``);
        default: the rows as vectors.
    depth : int
        Without ``model``: hidden layers of the fully connected network (``>= 0``).
    activation : str or Activation
        Any name of :func:`ntkit.get_activation`.
    b_std, w_std : float
        Bias and weight scales (NTK parameterization, as :class:`ntkit.FCNetwork`).
    which : {"ntk", "nngp"}
    diag_reg : float
        Ridge relative to the mean of the kernel's diagonal (``>= 0``; ``> 0`` for ``"cg"`` and
        ``"nystrom"``).
    solver : {"auto", "cholesky", "cg", "nystrom", "features"}
        ``"features"``: ridge regression on random features (``n_features``; never chosen by
        ``"auto"``). ``"cholesky"``: dense exact solve. ``"cg"``: the same solution by preconditioned conjugate
        gradients without storing the kernel. ``"nystrom"``: Nystrom kernel ridge regression with
        ``n_centres`` random training points as centres (Falkon; an approximation, exact for
        ``n_centres = n_samples``). ``"auto"``: ``"cholesky"`` up to 23,170 samples (the N x N
        float64 kernel within ``memory_budget``, 4 GiB by default), ``"cg"`` up to 50,000, ``"nystrom"``
        beyond (:func:`ntkit.solve.resolve_solver`).
    tol : float
        Relative residual at which ``"cg"`` / ``"nystrom"`` stop.
    n_centres : int, optional
        Nystrom centres, ``<= n_samples`` (default ``min(n_samples, 5000)``).
    random_state : int, RandomState or None
        Sampling of the Nystrom centres (and of the random features).
    n_features : int, optional
        Random features for ``solver="features"``: ridge regression on ``n_features`` random features
        of the kernel (:mod:`ntkit.random_features`; ``O(N m^2)``, an approximation whose error falls
        like ``1 / sqrt(m)``; default ``min(n_samples, 4096)``).
    memory_budget : int or str, optional
        Budget of ``solver="auto"`` for the dense N x N float64 kernel, in bytes or as a string such
        as ``"512M"`` / ``"2GiB"`` (default 4 GiB).
    beta : float, optional
        Deprecated alias of ``b_std``: when not None, ``fit`` warns (``DeprecationWarning``) and uses
        it instead of ``b_std``.

    Attributes
    ----------
    solver_ : str
        The solver that ran (``"auto"`` resolved).
    b_std_ : float
        The bias scale that was used (``b_std``, or the deprecated ``beta``).
    dual_coef_ : ndarray of shape (n_basis,) or (n_basis, n_targets)
        ``f(x) = k(x, centres_) dual_coef_ + y_mean_`` (``solver="features"``: the weights of the
        ``n_basis = n_features`` random features, ``f(x) = phi(x) dual_coef_ + y_mean_``).
    centres_ : ndarray of shape (n_basis, n_features)
        The training inputs (``n_basis = n_samples``), or the Nystrom centres.
    y_mean_ : float or ndarray of shape (n_targets,)
    X_fit_ : ndarray of shape (n_samples, n_features)
    jitter_ : float
        Extra diagonal jitter the Cholesky factorisation needed (0 almost always).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.sklearn import NTKRegressor
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((60, 3))
    >>> y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    >>> reg = NTKRegressor(depth=2, diag_reg=1e-3).fit(x[:50], y[:50])
    >>> reg.predict(x[50:]).shape, reg.solver_
    ((10,), 'cholesky')
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
        depth: int = 1,
        activation: str | Activation = "relu",
        b_std: float = _DEFAULT_B_STD,
        w_std: float = 1.0,
        which: str = "ntk",
        diag_reg: float = 1e-6,
        solver: str = "auto",
        tol: float = 1e-8,
        n_centres: int | None = None,
        random_state: Any = None,
        n_features: int | None = None,
        memory_budget: int | str | None = None,
        beta: float | None = None,
    ) -> None:
        self.model = model
        self.input_shape = input_shape
        self.depth = depth
        self.activation = activation
        self.b_std = b_std
        self.w_std = w_std
        self.which = which
        self.diag_reg = diag_reg
        self.solver = solver
        self.tol = tol
        self.n_centres = n_centres
        self.random_state = random_state
        self.n_features = n_features
        self.memory_budget = memory_budget
        self.beta = beta

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        """Factor the training kernel and solve for the dual coefficients.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        """
        self.b_std_ = _check_params(self)
        x, y_arr = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        self._fit_targets(x, np.asarray(y_arr, dtype=np.float64))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of shape (n_samples,) or (n_samples, n_targets)."""
        check_is_fitted(self, "dual_coef_")
        x = validate_data(self, X, dtype=np.float64, reset=False)
        return self._predict_targets(x)
