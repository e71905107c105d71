"""The error every infinite-width description raises: a model (or module) without a kernel, or a wrong shape."""

from __future__ import annotations


class ArchitectureError(ValueError):
    """A model (or one of its modules) that has no infinite-width kernel, or does not fit the input shape.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import describe_model
    >>> model = torch.nn.Sequential(ntkit.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), ntkit.nn.Linear(8, 1))
    >>> try:
    ...     describe_model(model, (3,))
    ... except ValueError as err:  # an ArchitectureError is a ValueError
    ...     print(type(err).__name__, "--", str(err).split(": ")[1])
    ArchitectureError -- module 1 (BatchNorm1d) has no infinite-width kernel transform
    """


def shape_error(label: str, expected: str, shape: tuple[int, ...]) -> ArchitectureError:
    """``module <label> expected <expected>, got an input of shape <shape>``."""
    return ArchitectureError(f"infinite_kernel: module {label} expected {expected}, got an input of shape {shape}")


__all__ = ["ArchitectureError", "shape_error"]
