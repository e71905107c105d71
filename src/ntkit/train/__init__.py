"""Training finite networks the way :mod:`ntkit.predict` predicts them, and measuring how they move.

Loss and learning-rate scaling (the conventions of :mod:`ntkit.predict`): on a batch ``B`` of the
training set with ``k`` outputs,

    L_B(theta) = 1 / (2 |B| k) * sum_{i in B} || f(x_i; theta) - y_i ||^2,     theta <- theta - eta grad L_B.

Full batch (``batch_size=None``) is gradient descent; then ``t`` steps with learning rate ``eta``
correspond to ``gradient_descent_mse(..., learning_rate=eta, discrete=True)`` at time ``t``, and
for small ``eta`` to the gradient flow at the same ``t``. With ``|B| < N`` it is SGD whose expected
step is the full-batch one.

* :func:`train_gd` trains a model in place (plain autograd, or for :class:`ntkit.FCNetwork` an
  exact low-rank accumulation of the weight updates that makes very wide networks cheap);
* :func:`linearize` returns the first-order Taylor model ``f_lin(x; theta) = f(x; theta_0) +
  J(x; theta_0) (theta - theta_0)`` (Lee et al. 2019), computed with ``torch.func.jvp``;
* :func:`kernel_movement` and :func:`function_distance` measure ``||Theta_t - Theta_0||_F /
  ||Theta_0||_F`` and the distance between two models' outputs.

Modules: :mod:`.descent` (:func:`train_gd`, :class:`TrainHistory`, :func:`mse_loss`), :mod:`.linearized`
(:func:`linearize`, :class:`LinearizedModel`), :mod:`.movement` (:func:`kernel_movement`,
:func:`function_distance`).
"""

from ntkit.train.descent import IMPLEMENTATIONS as IMPLEMENTATIONS
from ntkit.train.descent import TrainHistory, mse_loss, train_gd
from ntkit.train.linearized import LinearizedModel, linearize
from ntkit.train.movement import function_distance, kernel_movement

__all__ = [
    "LinearizedModel",
    "TrainHistory",
    "function_distance",
    "kernel_movement",
    "linearize",
    "mse_loss",
    "train_gd",
]
