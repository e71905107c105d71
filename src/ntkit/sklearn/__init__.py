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

Modules: :mod:`.regressor` (:class:`NTKRegressor`), :mod:`.classifier` (:class:`NTKClassifier`),
:mod:`.gp_kernel` (:class:`NTKKernel`); shared: ``_common`` (the architecture from the parameters,
``X`` as model inputs), ``_ridge`` (the estimators' parameter checks and kernel-ridge core).

Examples
--------
>>> import numpy as np
>>> from ntkit.sklearn import NTKRegressor
>>> x = np.linspace(-1, 1, 20)[:, None]
>>> reg = NTKRegressor(depth=2, b_std=0.1).fit(x, np.sin(3 * x[:, 0]))
>>> bool(reg.score(x, np.sin(3 * x[:, 0])) > 0.99)
True
"""

try:  # before the submodules: a clear message without scikit-learn (validate_data is new in 1.6)
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError("ntkit.sklearn needs scikit-learn >= 1.6: pip install 'ntkit[sklearn]'") from _err

from ntkit.sklearn._common import SOLVERS as SOLVERS
from ntkit.sklearn._common import WHICH as WHICH
from ntkit.sklearn.classifier import NTKClassifier
from ntkit.sklearn.gp_kernel import NTKKernel
from ntkit.sklearn.regressor import NTKRegressor

del _validate_data

__all__ = ["NTKClassifier", "NTKKernel", "NTKRegressor"]
