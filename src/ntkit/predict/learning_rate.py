"""The largest learning rate for which full-batch gradient descent on the MSE converges, and the
warning given above it (used by :mod:`ntkit.predict` and :func:`ntkit.train.train_gd`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ntkit._validation import as_tensor
from ntkit.predict._common import kernel_as_matrix
from ntkit.solve.eigen import psd_eigh


class LearningRateWarning(UserWarning):
    """The learning rate exceeds the largest one for which discrete gradient descent converges.

    Examples
    --------
    >>> import warnings, torch
    >>> from ntkit.predict import LearningRateWarning, gradient_descent_mse
    >>> k = torch.eye(2, dtype=torch.float64)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = gradient_descent_mse(k, torch.ones(2, 1), learning_rate=10.0, discrete=True)
    >>> any(issubclass(w.category, LearningRateWarning) for w in caught)  # 10 > 2 N k / lambda_max = 4
    True
    """


def max_learning_rate(k_train_train: Any, *, n_outputs: int | None = None, dtype: torch.dtype = torch.float64) -> float:
    """Largest learning rate for which full-batch gradient descent on the MSE converges.

    With the loss ``1/(2 N k) sum ||f - y||^2`` (see :mod:`ntkit.predict`), the linearized
    residual evolves as ``(I - eta Theta / (N k))^t``, which contracts iff
    ``eta < 2 N k / lambda_max(Theta)``.

    Parameters
    ----------
    k_train_train : Tensor of shape (N, N) or (N, N, k, k)
        The NTK on the training set.
    n_outputs : int, optional
        ``k``: inferred from a block kernel; for a shared (N, N) kernel defaults to 1.

    Returns
    -------
    float
        ``2 N k / lambda_max`` (``inf`` for the zero kernel).

    Raises
    ------
    ValueError
        A kernel that is not a square matrix nor an (N, N, k, k) block tensor, ``n_outputs`` < 1, a
        kernel without a positive eigenvalue.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import max_learning_rate
    >>> max_learning_rate(torch.eye(4, dtype=torch.float64))  # 2 * 4 / 1
    8.0
    """
    kt = as_tensor(k_train_train, "k_train_train", dtype=dtype, ndim=None)
    mat, block = kernel_as_matrix(kt, "k_train_train")
    n = int(kt.shape[0])
    k = int(kt.shape[2]) if block else 1
    if n_outputs is not None:
        if block and n_outputs != k:
            raise ValueError(f"n_outputs: expected {k} for a kernel of shape {tuple(kt.shape)}, got {n_outputs}")
        k = int(n_outputs)
        if k < 1:
            raise ValueError(f"n_outputs: expected an integer >= 1, got {n_outputs}")
    eig = psd_eigh(mat)
    return math.inf if eig.lambda_max == 0 else 2.0 * n * k / eig.lambda_max


def warn_unstable_learning_rate(learning_rate: float, lambda_max: float, size: int, stacklevel: int = 3) -> None:
    """Warn (:class:`LearningRateWarning`) if ``learning_rate >= 2 size / lambda_max``.

    ``lambda_max`` is the largest eigenvalue of the (N k, N k) training kernel and ``size = N k``;
    ``stacklevel`` as the caller would pass it to :func:`warnings.warn`.
    """
    if lambda_max > 0 and learning_rate * lambda_max / size >= 2.0:
        lr_max = 2.0 * size / lambda_max
        warnings.warn(
            f"learning_rate {learning_rate:.4g} is above the maximum stable rate {lr_max:.4g} "
            f"(2 N k / lambda_max of the kernel, N k = {size}); discrete gradient descent diverges",
            LearningRateWarning,
            stacklevel=stacklevel,
        )
