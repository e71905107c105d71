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
the dense factorisation while the N x N float64 matrix fits ``memory_budget`` (bytes, or a string
such as ``"8G"``; default 4 GiB: N <= 23,170), then CG up to N = 50,000, then Nystrom. Iterative
solvers need ``diag_reg > 0``, give no finite-time dynamics and no posterior covariance.

Any loss. :func:`gradient_descent` (module :mod:`.any_loss`) integrates the function-space gradient
flow ``d f / dt = -eta Theta dL/df`` for any differentiable total training loss ``L(f)`` (built in:
``"mse"``, the loss above, and ``"cross_entropy"``, the mean over examples of the softmax
cross-entropy) as an ODE (``scipy.integrate.solve_ivp``); with ``"mse"`` it is the gradient flow of
:func:`gradient_descent_mse`.

Modules: :mod:`.mse` (:func:`gradient_descent_mse`), :mod:`.any_loss`
(:func:`gradient_descent`), :mod:`.gp`
(:func:`gp_inference`), :mod:`.ensemble` (:func:`gradient_descent_mse_ensemble`),
:mod:`.learning_rate` (:func:`max_learning_rate`); shared: ``_common`` (result types, input
validation), ``_spectral`` (eigenvalue functions of the dynamics), ``_kernel_system`` (the
iterative solvers).
"""

from ntkit.predict._common import GaussianPrediction, Prediction
from ntkit.predict.any_loss import gradient_descent
from ntkit.predict.ensemble import gradient_descent_mse_ensemble
from ntkit.predict.gp import gp_inference
from ntkit.predict.learning_rate import LearningRateWarning, max_learning_rate
from ntkit.predict.mse import gradient_descent_mse
from ntkit.solve.eigen import SingularKernelWarning

__all__ = [
    "GaussianPrediction",
    "LearningRateWarning",
    "Prediction",
    "SingularKernelWarning",
    "gp_inference",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "max_learning_rate",
]
