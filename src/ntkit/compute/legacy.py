"""The call forms of :func:`ntkit.compute.compute_kernel`: model first, or the deprecated data-first form.

``compute_kernel(model, x1, x2)`` (``model`` None with the ``depth=`` shortcut) is the current form;
``compute_kernel(x1, x2, model=...)`` and ``compute_kernel(x1, depth=...)`` still work for one release,
with a ``DeprecationWarning``. :func:`_model_first` reads either into ``(model, x1, x2)``.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn


def _model_first(model: Any, x1: Any, x2: Any, legacy: dict[str, Any], *, shortcut: bool) -> tuple[Any, Any, Any]:
    """``(model, x1, x2)`` of a call in the model-first form, or of the deprecated data-first one.

    Model first: ``compute_kernel(model, x1, x2)`` (``model`` None with the ``depth=`` shortcut).
    Data first (one release, with a ``DeprecationWarning``): ``compute_kernel(x1, x2, model=...)`` or
    ``compute_kernel(x1, depth=...)``; ``x1=`` / ``x2=`` / ``model=`` given by keyword are read too.
    """
    unknown = sorted(set(legacy) - {"model", "x1", "x2"})
    if unknown:
        raise TypeError(f"compute_kernel() got an unexpected keyword argument {unknown[0]!r}")
    data_first = model is not None and not isinstance(model, nn.Module)
    if data_first or "model" in legacy or (model is None and x1 is None and "x1" not in legacy):
        if data_first:
            if x2 is not None:
                raise TypeError("compute_kernel: expected (model, x1, x2) or the deprecated (x1, x2, model=...), "
                                "got three positional arguments and no model first")
            model, x1, x2 = legacy.pop("model", None), model, x1
        else:
            model = legacy.pop("model", model)
        warnings.warn(
            "compute_kernel(x1, x2, model=...) is deprecated; use compute_kernel(model, x1, x2) (model first; "
            "None first with depth=... for the fully connected shortcut)", DeprecationWarning, stacklevel=3)
    for name, value in (("x1", x1), ("x2", x2)):
        if name in legacy:
            if value is not None:
                raise TypeError(f"compute_kernel() got multiple values for argument {name!r}")
            if name == "x1":
                x1 = legacy.pop(name)
            else:
                x2 = legacy.pop(name)
    if x1 is None:
        raise TypeError("compute_kernel: expected the inputs x1 after the model, got none")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. built from ntkit.nn), got {type(model).__name__}")
    if model is None and not shortcut:
        raise ValueError("model: expected a model (e.g. built from ntkit.nn) or the fully connected shortcut "
                         "depth=..., got neither")
    return model, x1, x2
