"""The infinite-width NTK / NNGP as a scikit-learn Gaussian-process kernel, with tunable hyperparameters."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.gaussian_process.kernels import Hyperparameter
from sklearn.gaussian_process.kernels import Kernel as _SKKernel
from torch import nn

from ntkit._validation import check_choice, check_int, renamed_keyword
from ntkit.compute import infinite_kernel
from ntkit.sklearn._common import _B_STD_BOUNDS, _DEFAULT_B_STD, WHICH, _model, _rows
from ntkit.solve.operator import ModelTiles

__all__ = ["NTKKernel"]


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
