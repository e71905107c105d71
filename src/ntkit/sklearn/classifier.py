"""Classification with the infinite-width NTK / NNGP as a scikit-learn classifier: one-hot kernel regression or
an SVM on the precomputed kernel."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ntkit._validation import check_choice, check_float
from ntkit.activations import Activation
from ntkit.sklearn._common import _DEFAULT_B_STD
from ntkit.sklearn._ridge import _check_params, _KernelRidge

__all__ = ["NTKClassifier"]


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
