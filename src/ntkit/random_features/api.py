"""``ntkit.features``: explicit random features of a model's infinite-width kernels, linear in N.

``phi = features(model, x, n_features=m)`` gives ``phi @ phi.T ~ infinite_kernel(model, x)`` (NNGP
or NTK) with a relative error that falls like ``1 / sqrt(m)`` (Zandieh et al. 2021, "Scaling neural
tangent kernels via sketching and random features"; Han et al. 2022; Cho & Saul 2009 for the
arc-cosine features of ReLU networks): the work is O(N) instead of the O(N^2) of the kernel matrix,
so kernel regression on features (:func:`ntkit.solve.feature_ridge`) reaches data sets far beyond
the exact kernel. The construction is :class:`ntkit.random_features.network.FeatureMap`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_choice, check_dtype, check_int, describe, parse_memory_budget
from ntkit.compute.api import architecture
from ntkit.compute.model_kernels import infinite_kernel
from ntkit.graphs import Graphs, split_graphs
from ntkit.infinite.ops.aggregate import check_adjacency
from ntkit.random_features.network import DEFAULT_WEIGHT_BUDGET, FeatureMap

Tensor = torch.Tensor

#: The ways of drawing the projections before each activation.
METHODS = ("orthogonal", "gaussian")


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {describe(generator)}")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else check_int(seed, "seed"))


def feature_map(
    model: nn.Module, input_shape: tuple[int, ...], *, n_features: int, which: str = "ntk",
    generator: torch.Generator | None = None, seed: int | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None, memory_budget: int | str = DEFAULT_WEIGHT_BUDGET,
    method: str = "orthogonal",
) -> FeatureMap:
    """A drawn random feature map of ``model`` for inputs of shape ``(N, *input_shape)`` (apply it to batches).

    The same map applied to training and test inputs gives consistent features.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (see :func:`features`).
    input_shape : tuple of int
        Shape of one input example: ``(d,)`` or ``(C, *S)``.
    n_features, which, generator, seed, dtype, device, memory_budget, method
        As in :func:`features`.

    Returns
    -------
    FeatureMap
        ``fmap(x)``: features of shape (N, n_features) of a batch ``x`` of shape ``(N, *input_shape)``.

    Raises
    ------
    ValueError
        ``which`` or ``method`` not one of their choices, ``n_features < 1``, a negative ``seed``, a
        model without a kernel transform or that does not fit ``input_shape``, an architecture
        without a feature map (layer norm), an unreadable ``memory_budget`` or weights beyond it.
    TypeError
        A non-integer ``n_features`` or ``seed``, a ``dtype`` that is not floating, a ``generator``
        that is not a ``torch.Generator``, a ``model`` that is not a ``torch.nn.Module``.

    Examples
    --------
    >>> import torch, ntkit
    >>> fmap = ntkit.random_features.feature_map(ntkit.nn.fc(3, depth=2, device="meta"), (3,), n_features=256)
    >>> fmap(torch.randn(5, 3)).shape
    torch.Size([5, 256])
    """
    check_choice(which, "which", ("nngp", "ntk"))
    check_choice(method, "method", METHODS)
    n_features = check_int(n_features, "n_features", minimum=1)
    check_dtype(dtype)
    arch = architecture(model, tuple(input_shape))
    return FeatureMap(arch, n_features, which, generator=_generator(generator, seed), dtype=dtype, device=device,
                      memory_budget=parse_memory_budget(memory_budget), method=method)


def features(
    model: nn.Module,
    x: Any,
    *,
    n_features: int,
    which: str = "ntk",
    method: str = "orthogonal",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    memory_budget: int | str = DEFAULT_WEIGHT_BUDGET,
    progress: bool = False,
) -> Tensor:
    """Random features ``phi`` of shape (N, n_features) with ``phi @ phi.T ~`` the model's NNGP or NTK.

    Parameters
    ----------
    model : torch.nn.Module
        Any model :func:`ntkit.infinite_kernel` understands, but layer norm (dense and convolutional
        stacks, every activation, pooling, flatten, residual blocks).
    x : array-like of shape (N, *input_shape), or ntkit.Graphs
        Graphs :class:`ntkit.Graphs` for a model with :class:`ntkit.nn.Aggregate`.
    n_features : int
        ``m``: features per layer (per pixel for images) and of the output; the relative error of
        ``phi @ phi.T`` falls like ``1 / sqrt(m)``.
    which : {"ntk", "nngp"}
    method : {"orthogonal", "gaussian"}
        The random projections before every activation: blocks of orthogonal rows with Gaussian
        lengths (orthogonal random features, Yu et al. 2016: the same expectation, a lower variance;
        the default) or i.i.d. Gaussian rows (plain Monte Carlo).
    generator, seed : torch.Generator or int, optional
        The random draw (deterministic; default seed 0).
    batch_size : int, optional
        Inputs per batch (memory; the result does not depend on it). Default: as many as fit the
        memory budget beside the weights (at most 4096).
    dtype : torch.dtype
        float32 (default) or float64.
    device : torch.device or str, optional
    memory_budget : int or str
        Bytes the drawn weights may take (default 4 GiB; ``"8GB"`` accepted). Dense maps draw about
        ``depth x m^2`` weights, convolutional ones ``depth x m^2 x taps``.
    progress : bool

    Returns
    -------
    Tensor of shape (N, n_features)

    Raises
    ------
    ValueError
        Bad arguments; an architecture without a feature map (layer norm); weights beyond
        ``memory_budget``.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> model = ntkit.nn.fc(3, depth=2, device="meta")
    >>> phi = ntkit.features(model, x, n_features=2048, dtype=torch.float64)
    >>> k = ntkit.infinite_kernel(model, x, which="ntk")
    >>> bool(torch.linalg.norm(phi @ phi.T - k) / torch.linalg.norm(k) < 0.2)  # about 6 / sqrt(m) here
    True
    """
    t, _, adjacency, _ = split_graphs(x, None) if isinstance(x, Graphs) else (as_tensor(x, "x", ndim=None), 0, None, 0)
    fmap = feature_map(model, tuple(t.shape[1:]), n_features=n_features, which=which, generator=generator,
                       seed=seed, dtype=dtype, device=device, memory_budget=memory_budget, method=method)
    check_adjacency(fmap.arch.ops, adjacency)
    batch_size = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    out = torch.empty(t.shape[0], n_features, dtype=dtype, device=device)
    bar = Progress(t.shape[0], "features", enabled=progress)
    for rows, phi in fmap.batches(t, batch_size, adjacency):
        out[rows] = phi
        bar.update(phi.shape[0])
    bar.close()
    return out


def feature_error(
    model: nn.Module, x: Any, *, n_features: int, which: str = "ntk", method: str = "orthogonal",
    generator: torch.Generator | None = None, seed: int | None = None, dtype: torch.dtype = torch.float32,
) -> float:
    """Relative Frobenius error ``||phi phi^T - K|| / ||K||`` of the features on the inputs ``x`` (a sample).

    ``K`` is the exact :func:`ntkit.infinite_kernel` (so keep ``x`` to a few hundred rows).

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (see :func:`features`).
    x : array-like of shape (N, *input_shape)
        The sample the error is measured on.
    n_features, which, method, generator, seed, dtype
        As in :func:`features`.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        As :func:`features` (bad arguments, an architecture without a feature map, weights beyond
        the default memory budget; inputs that are empty or not finite).
    TypeError
        As :func:`features` (non-numeric inputs, a ``dtype`` that is not floating, a ``generator``
        that is not a ``torch.Generator``, a non-integer ``seed`` or ``n_features``).

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> model = ntkit.nn.fc(3, depth=2, device="meta")
    >>> err = ntkit.random_features.feature_error(model, x, n_features=512, which="nngp")
    >>> 0 < err < 0.2
    True
    """
    t = x if isinstance(x, Graphs) else as_tensor(x, "x", ndim=None)
    phi = features(model, t, n_features=n_features, which=which, method=method, generator=generator, seed=seed,
                   dtype=dtype)
    exact = infinite_kernel(model, t, which=which)
    approx = (phi.double() @ phi.double().T).to(exact.device)
    return float(torch.linalg.norm(approx - exact) / torch.linalg.norm(exact))


__all__ = ["METHODS", "feature_error", "feature_map", "features"]
