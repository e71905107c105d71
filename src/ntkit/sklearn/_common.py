"""What the estimators and the GP kernel of :mod:`ntkit.sklearn` share: their choices and defaults, the
architecture from their parameters, and scikit-learn's 2-D ``X`` as the model's inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._validation import describe
from ntkit.infinite.walk import fc_model
from ntkit.solve.kernel_solvers import SOLVERS as _SOLVERS

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
