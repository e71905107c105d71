"""Integer token inputs of the empirical kernels: kept as integers for models with an embedding.

A language model takes token ids (N, L) of an integer dtype and looks them up in an ``nn.Embedding``;
casting them to the model's floating dtype, as other inputs are, would break the lookup. Its
empirical NTK differentiates the parameters only (the embedding's rows included), never the input,
so integer inputs need no other change. Integer inputs of a model without an embedding keep the
former behaviour: they are cast to the model's dtype (:func:`ntkit._validation.check_pair`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._validation import describe
from ntkit.empirical._common import Tensor

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def is_integer(x: Any) -> bool:
    """Whether ``x`` is a tensor or ndarray of an integer dtype (bool excluded)."""
    if isinstance(x, torch.Tensor):
        return x.dtype in _INT_DTYPES
    return isinstance(x, np.ndarray) and x.dtype.kind in "iu"


def token_inputs(
    model: nn.Module, x1: Any, x2: Any | None, device: torch.device | str | None
) -> tuple[Tensor, Tensor | None] | None:
    """``(t1, t2)``: integer ``x1`` and ``x2`` as tensors on ``device``, if ``x1`` is integer and the
    model has an ``nn.Embedding`` or ``nn.EmbeddingBag``; None otherwise (the caller casts them).

    Raises
    ------
    TypeError
        ``x2`` given and not integer.
    ValueError
        An empty input or one without a batch axis; ``x1`` and ``x2`` of different trailing shapes.
    """
    if not is_integer(x1) or not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()):
        return None
    if x2 is not None and not is_integer(x2):
        raise TypeError(f"x2: expected integer token ids like x1 ({describe(x1)}), got {describe(x2)}")
    t1 = torch.as_tensor(x1, device=device)
    t2 = None if x2 is None else torch.as_tensor(x2, device=device)
    for name, t in (("x1", t1), ("x2", t2)):
        if t is not None and (t.ndim < 1 or t.numel() == 0):
            raise ValueError(f"{name}: expected a non-empty array of token ids with a batch axis, got {describe(t)}")
    if t2 is not None and t1.shape[1:] != t2.shape[1:]:
        raise ValueError(
            f"x1 and x2: expected the same feature shape, got {tuple(t1.shape[1:])} for x1 and "
            f"{tuple(t2.shape[1:])} for x2"
        )
    return t1, t2
