"""scikit-learn estimators and a Gaussian-process kernel built on the infinite-width NTK / NNGP.

* :class:`NTKRegressor` — kernel ridge regression (``solver="auto" | "cholesky" | "cg" | "nystrom"``,
  :class:`ntkit.solve.KernelSystem`), i.e. the posterior mean of the GP with the NNGP,
  or the mean prediction of an infinitely wide network trained to convergence by gradient descent
  on the MSE with the NTK (Jacot et al. 2018; Lee et al. 2019):
  ``f(x) = k(x, X) (k(X, X) + lambda I)^{-1} (y - mean y) + mean y``.
* :class:`NTKClassifier` — one-hot regression with the same predictor (``method="regression"``,
  Arora et al. 2019; Lee et al. 2020) or an SVM on the precomputed kernel (``method="svc"``,
  Arora et al. 2020).
* :class:`NTKKernel` — a :class:`sklearn.gaussian_process.kernels.Kernel` whose hyperparameters
  ``depth``, ``b_std``, ``w_std``, ``activation`` work in ``GaussianProcessRegressor``, ``GridSearchCV``
  and pipelines (``b_std`` and ``w_std`` are optimised in log space, ``depth`` and ``activation`` are
  fixed hyperparameters chosen by grid search).

Every estimator takes the architecture as a model (``model=ntkit.nn.cntk(...)``, any model
:func:`ntkit.infinite_kernel` understands; scikit-learn's ``X`` is then flattened and
``input_shape`` gives each example's shape, e.g. ``(1, 8, 8)`` for images), or as the fully connected
shortcut ``depth, activation, b_std, w_std``. ``which="ntk" | "nngp"`` chooses the kernel. The old name
of ``b_std``, ``beta``, is a deprecated alias (a ``DeprecationWarning`` when it is used).

scikit-learn is an optional extra (``pip install 'ntkit[sklearn]'``); importing :mod:`ntkit` never
imports it, importing this module does.

Examples
--------
>>> import numpy as np
>>> from ntkit.sklearn import NTKRegressor
>>> x = np.linspace(-1, 1, 20)[:, None]
>>> reg = NTKRegressor(depth=2, b_std=0.1).fit(x, np.sin(3 * x[:, 0]))
>>> bool(reg.score(x, np.sin(3 * x[:, 0])) > 0.99)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.gaussian_process.kernels import Hyperparameter
    from sklearn.gaussian_process.kernels import Kernel as _SKKernel
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError("ntkit.sklearn needs scikit-learn >= 1.6: pip install 'ntkit[sklearn]'") from _err

from torch import nn

from ntkit._validation import check_choice, check_float, check_int, describe, parse_memory_budget, renamed_keyword
from ntkit.activations import Activation, get_activation
from ntkit.compute import infinite_kernel
from ntkit.infinite.walk import fc_model
from ntkit.solve.kernel_solvers import DEFAULT_MEMORY_BUDGET, resolve_solver
from ntkit.solve.kernel_solvers import SOLVERS as _SOLVERS
from ntkit.solve.operator import KernelOperator, ModelTiles
from ntkit.solve.system import KernelSystem

__all__ = ["NTKClassifier", "NTKKernel", "NTKRegressor"]

SOLVERS = _SOLVERS
WHICH = ("ntk", "nngp")
_DEFAULT_B_STD = 0.1
_B_STD_BOUNDS = (1e-5, 1e5)


def _model(model: nn.Module | None, n_inputs: int, depth: int, activation: Any, b_std: float, w_std: float
           ) -> nn.Module:
    """``model``, or the fully connected model of the shortcut (on ``meta``)."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module (e.g. built from ntkit.nn), got {describe(model)}")
        return model
    return fc_model(n_inputs, depth=depth, activation=activation, b_std=b_std, w_std=w_std)


def _rows(x: np.ndarray, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """scikit-learn's 2-D ``X`` as model inputs: float64 rows reshaped to ``(n, *input_shape)``."""
    t = torch.from_numpy(np.array(x, dtype=np.float64, order="C"))
    if input_shape is None:
        return t
    shape = tuple(int(n) for n in input_shape)
    if int(np.prod(shape)) != t.shape[1]:
        raise ValueError(f"input_shape: expected a shape with {t.shape[1]} entries (X's features), got {shape}")
    return t.reshape(t.shape[0], *shape)


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


class NTKClassifier(_KernelRidge, ClassifierMixin, BaseEstimator):
    """Classification with the infinite-width NTK / NNGP.

    ``method="regression"``: regress the one-hot labels with :class:`NTKRegressor`'s predictor and
    predict the class of the largest output (the infinitely wide network trained on the MSE; Arora
    et al. 2019). ``method="svc"``: ``sklearn.svm.SVC(kernel="precomputed", C=C)`` on the kernel
    (one-vs-one; Arora et al. 2020).

    Parameters
    ----------
    model, input_shape, depth, activation, b_std, w_std, which, diag_reg, solver, tol, n_centres
        As in :class:`NTKRegressor`.
    random_state, n_features, memory_budget
        As in :class:`NTKRegressor` (``diag_reg`` and the solver options are used by ``"regression"``).
    beta : float, optional
        Deprecated alias of ``b_std`` (as in :class:`NTKRegressor`).
    method : {"regression", "svc"}
    C : float
        SVM penalty (``"svc"`` only).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    svc_ : sklearn.svm.SVC
        The fitted SVM (``"svc"`` only).
    dual_coef_ : ndarray of shape (n_basis, n_classes)
        One-hot regression coefficients (``"regression"`` only).
    solver_, centres_ : str, ndarray of shape (n_basis, n_features)
        As in :class:`NTKRegressor` (``"regression"`` only).
    b_std_ : float
        The bias scale that was used.

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.sklearn import NTKClassifier
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((80, 2))
    >>> y = (x[:, 0] * x[:, 1] > 0).astype(int)
    >>> clf = NTKClassifier(depth=3, method="svc", C=10.0).fit(x[:60], y[:60])
    >>> clf.score(x[60:], y[60:]) > 0.7
    True
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
        method: str = "regression",
        C: float = 1.0,
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
        self.method = method
        self.C = C
        self.diag_reg = diag_reg
        self.solver = solver
        self.tol = tol
        self.n_centres = n_centres
        self.random_state = random_state
        self.n_features = n_features
        self.memory_budget = memory_budget
        self.beta = beta

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Fit on ``X`` of shape (n_samples, n_features) and labels ``y`` of shape (n_samples,)."""
        from sklearn.utils.multiclass import check_classification_targets

        self.b_std_ = _check_params(self)
        check_choice(self.method, "method", ("regression", "svc"))
        check_float(self.C, "C", minimum=0.0, strict=True)
        x, y_arr = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y_arr)
        self.classes_, codes = np.unique(y_arr, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y: expected at least 2 classes, got 1 class ({self.classes_[0]!r})")
        if self.method == "svc":
            from sklearn.svm import SVC

            self.X_fit_ = x
            self.svc_ = SVC(kernel="precomputed", C=self.C).fit(self._k(x).numpy(), codes)
        else:
            self._fit_targets(x, np.eye(len(self.classes_))[codes])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores of shape (n_samples,) for two classes (positive: ``classes_[1]``), else (n_samples, n_classes)."""
        check_is_fitted(self, "classes_")
        x = validate_data(self, X, dtype=np.float64, reset=False)
        if self.method == "svc":
            return np.asarray(self.svc_.decision_function(self._k(x, self.X_fit_).numpy()))
        scores = self._predict_targets(x)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels of shape (n_samples,)."""
        check_is_fitted(self, "classes_")
        if self.method == "svc":
            x = validate_data(self, X, dtype=np.float64, reset=False)
            return np.asarray(self.classes_[self.svc_.predict(self._k(x, self.X_fit_).numpy())])
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return np.asarray(self.classes_[idx])


class NTKKernel(_SKKernel):
    """The infinite-width NTK (or NNGP) of a network as a scikit-learn GP kernel.

    ``k(x, x') = ntkit.infinite_kernel(model, x, x', which=which)``; by default the fully connected
    shortcut (a fully connected network of ``depth``, ``activation``, ``b_std``, ``w_std``), whose ``b_std``
    and ``w_std`` are continuous hyperparameters (``theta = log([b_std, w_std])``, the gradient by central finite
    differences in log space, step ``1e-5``: relative error ~1e-10); ``depth`` and ``activation`` are
    fixed hyperparameters (choose them with ``GridSearchCV`` over ``kernel__depth``). With a
    ``model`` every hyperparameter lives in the model (``theta`` is empty). Combine with
    ``WhiteKernel`` / ``ConstantKernel`` as usual. Non-stationary.

    Parameters
    ----------
    depth : int
    activation : str
    b_std : float
        The bias scale, ``> 0`` unless ``b_std_bounds="fixed"`` (log space).
    w_std : float
        The weight scale.
    which : {"ntk", "nngp"}
    b_std_bounds, w_std_bounds : pair of float or "fixed"
    model : torch.nn.Module, optional
        Any model :func:`ntkit.infinite_kernel` understands (then ``b_std``, ``w_std`` are unused).
    input_shape : tuple of int, optional
        Shape of one example for ``model`` (rows are reshaped to it).
    beta, beta_bounds : optional
        Deprecated aliases of ``b_std`` and ``b_std_bounds`` (a ``DeprecationWarning``; the value moves
        to the new name, at construction and in :meth:`set_params`, and the old one reads ``None``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from ntkit.sklearn import NTKKernel
    >>> x = np.random.default_rng(0).standard_normal((30, 2))
    >>> kernel = NTKKernel(depth=2, b_std=0.1)
    >>> kernel(x[:3]).shape, kernel.diag(x[:3]).shape
    ((3, 3), (3,))
    >>> gp = GaussianProcessRegressor(kernel, alpha=1e-2, optimizer=None).fit(x, np.cos(x[:, 0]))
    >>> gp.predict(x[:2], return_std=True)[1].shape
    (2,)
    """

    _FD_STEP = 1e-5

    def __init__(
        self,
        depth: int = 1,
        activation: str = "relu",
        b_std: float = _DEFAULT_B_STD,
        w_std: float = 1.0,
        which: str = "ntk",
        b_std_bounds: tuple[float, float] | str = _B_STD_BOUNDS,
        w_std_bounds: tuple[float, float] | str = (1e-3, 1e3),
        model: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
        beta: float | None = None,
        beta_bounds: tuple[float, float] | str | None = None,
    ) -> None:
        self.depth = depth
        self.activation = activation
        self.b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=_DEFAULT_B_STD)
        self.w_std = w_std
        self.which = which
        self.b_std_bounds = renamed_keyword(b_std_bounds, beta_bounds, new="b_std_bounds", old="beta_bounds",
                                            default=_B_STD_BOUNDS)
        self.w_std_bounds = w_std_bounds
        self.model = model
        self.input_shape = input_shape
        self.beta = None  # the deprecated spellings: their values live under the new names
        self.beta_bounds = None

    def set_params(self, **params: Any) -> NTKKernel:
        """Set parameters (scikit-learn's); ``beta`` / ``beta_bounds`` are deprecated aliases of ``b_std`` /
        ``b_std_bounds``."""
        for old, new in (("beta", "b_std"), ("beta_bounds", "b_std_bounds")):
            value = params.pop(old, None)
            if value is not None:
                current = getattr(self, new)
                params[new] = renamed_keyword(params.get(new, current), value, new=new, old=old, default=current)
        super().set_params(**params)
        return self

    @property
    def hyperparameter_depth(self) -> Hyperparameter:
        return Hyperparameter("depth", "numeric", "fixed")

    @property
    def hyperparameter_activation(self) -> Hyperparameter:
        return Hyperparameter("activation", "categorical", "fixed")

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return Hyperparameter("b_std", "numeric", "fixed" if self.model is not None else self.b_std_bounds)

    @property
    def hyperparameter_w_std(self) -> Hyperparameter:
        return Hyperparameter("w_std", "numeric", "fixed" if self.model is not None else self.w_std_bounds)

    # depth / activation are fixed: scikit-learn looks these attributes up by name.
    depth_bounds = "fixed"
    activation_bounds = "fixed"

    def _model(self, n_features: int, b_std: float, w_std: float) -> nn.Module:
        check_choice(self.which, "which", WHICH)
        depth = check_int(self.depth, "depth", minimum=0) if self.model is None else 0
        return _model(self.model, n_features, depth, self.activation, b_std, w_std)

    def _matrix(self, x1: np.ndarray, x2: np.ndarray | None, b_std: float, w_std: float) -> np.ndarray:
        model = self._model(x1.shape[1], b_std, w_std)
        out = infinite_kernel(model, _rows(x1, self.input_shape), None if x2 is None else _rows(x2, self.input_shape),
                              which=self.which)
        return np.asarray(out)

    def __call__(self, X: Any, Y: Any | None = None, eval_gradient: bool = False) -> Any:
        """Kernel matrix of shape (n_X, n_Y); with ``eval_gradient`` also its gradient (n_X, n_X, n_theta)."""
        x = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if Y is not None and eval_gradient:
            raise ValueError("Y: expected None when eval_gradient=True, got an array")
        y = None if Y is None else np.atleast_2d(np.asarray(Y, dtype=np.float64))
        k = self._matrix(x, y, self.b_std, self.w_std)
        if not eval_gradient:
            return k
        grads = []
        h = self._FD_STEP
        for name in ("b_std", "w_std"):
            if getattr(self, f"hyperparameter_{name}").fixed:
                continue
            params = {"b_std": self.b_std, "w_std": self.w_std}
            up, down = dict(params), dict(params)
            up[name] = params[name] * np.exp(h)
            down[name] = params[name] * np.exp(-h)
            grads.append((self._matrix(x, None, **up) - self._matrix(x, None, **down)) / (2 * h))
        grad = np.stack(grads, axis=-1) if grads else np.empty((x.shape[0], x.shape[0], 0))
        return k, grad

    def diag(self, X: Any) -> np.ndarray:
        """``k(x, x)`` for each row, shape (n_X,), without forming the matrix."""
        x = np.atleast_2d(np.asarray(X, dtype=np.float64))
        model = self._model(x.shape[1], self.b_std, self.w_std)
        tiles = ModelTiles(model, which=self.which)
        return tiles.diag(_rows(x, self.input_shape)).numpy()

    def is_stationary(self) -> bool:
        """``False``: the NTK depends on the norms of the inputs, not only on their difference."""
        return False

    @property
    def requires_vector_input(self) -> bool:
        return True

    def __repr__(self) -> str:
        if self.model is not None:
            return f"NTKKernel(model={type(self.model).__name__}, which={self.which!r})"
        return (
            f"NTKKernel(depth={self.depth}, activation={self.activation!r}, b_std={self.b_std:.3g}, "
            f"w_std={self.w_std:.3g}, which={self.which!r})"
        )
