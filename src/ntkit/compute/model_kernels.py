"""The exact infinite-width kernels of a model: :func:`infinite_kernel`, its shortcut :func:`fc_kernel`, tiles.

These are the in-memory front of :func:`ntkit.compute.compute_kernel`: the same tiles, the same
fast paths (the fused fully connected recursion and its native loop), the same reference
evaluator for everything else, within a memory budget and on the CPU's threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_choice, check_dtype, check_pair, renamed_keyword
from ntkit.compute.api import _WHICH, architecture, check_ntk, distinct_x2, evaluate_tiles
from ntkit.compute.tiling import DEFAULT_BUDGET
from ntkit.graphs import split_graphs
from ntkit.infinite.row_ids import row_ids
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import fc_model
from ntkit.kernel import Kernel

Tensor = torch.Tensor

WHICH = ("both", "nngp", "ntk")


def infinite_kernel(
    model: nn.Module,
    x1: Any,
    x2: Any | None = None,
    *,
    which: str = "both",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    memory_budget: int | str = DEFAULT_BUDGET,
    progress: bool = False,
    budget: int | str | None = None,
) -> Any:
    """The exact infinite-width NNGP and NTK of the architecture ``model`` describes.

    The model is read, not run: every ``ntkit.nn`` weight layer (:class:`ntkit.nn.Linear`,
    :class:`~ntkit.nn.Conv1d`, :class:`~ntkit.nn.Conv2d`), activation module (``nn.ReLU``,
    ``nn.Tanh``, ``nn.GELU``, ... or :class:`ntkit.nn.Activation`), pooling, flatten, residual block
    and layer norm maps to its kernel transform (Jacot et al. 2018; Lee et al. 2018; Arora et al.
    2019; Novak et al. 2020); the modules before the first weight layer are applied to the inputs.
    In NTK parameterization the widths (channel counts) do not enter the limit, so a model built on
    ``device="meta"`` costs no memory. In standard parameterization the NNGP is the same, but the
    NTK grows with the widths: each weight layer adds ``fan_in x`` its input covariance, ``fan_in``
    being the layer's actual input width (Sohl-Dickstein et al. 2020; as neural-tangents).

    Exactness: every entry, the diagonal of ``K(X, X)`` and pairs of identical inputs included, is
    computed to float64 rounding (tested against 30-digit references); float32 agrees with float64
    to 1e-5 of the largest entry. Inputs whose squared norms overflow the dtype are evaluated exactly
    by rescaling when the architecture is positively homogeneous (bias-free ReLU-type networks), and
    refused with a clear error otherwise.

    Parameters
    ----------
    model : torch.nn.Module
        Built from :mod:`ntkit.nn` layers and the torch modules listed there (nested
        ``nn.Sequential`` allowed; a module with a ``kernel_layers()`` method is walked through it).
    x1 : array-like of shape (N1, *input_shape), or ntkit.Graphs
        Vectors ``(N1, d)`` or images ``(N1, C, H, W)`` / ``(N1, C, L)`` (channels first); for a model
        of ``(x, adjacency)`` (:class:`ntkit.nn.Aggregate`), graphs :class:`ntkit.Graphs` ``(x, adjacency)``.
    x2 : array-like of shape (N2, *input_shape), or ntkit.Graphs, optional
        Defaults to ``x1`` (the kernel is then exactly symmetric); graphs if ``x1`` is.
    which : {"both", "nngp", "ntk"}
        ``"both"`` returns a :class:`~ntkit.Kernel`; ``"nngp"`` / ``"ntk"`` return that matrix only
        (``"nngp"`` skips the NTK's work).
    dtype : torch.dtype
        float64 (the reference) or float32.
    device : torch.device or str, optional
        Where to compute (the inputs' device by default).
    memory_budget : int or str
        Working memory of the tiles (``"1G"``); see :func:`ntkit.compute.compute_kernel`.
    progress : bool
        Progress with ETA on stderr.
    budget : int or str, optional
        Deprecated spelling of ``memory_budget``.

    Returns
    -------
    Kernel or Tensor of shape (N1, N2)
        ``kernel.nngp`` / ``kernel.ntk`` (None where an activation has no derivative map) and the
        diagonals ``var1``, ``var2``; the kernel of the ``n_L`` outputs is ``ntk (x) I`` (``kernel.blocks``).

    Raises
    ------
    ValueError
        A module without an infinite-width kernel (named, with its position and what is supported),
        a model whose layers do not fit the input shape, a residual block that changes the shape,
        NaN / inf inputs, norms that overflow a non-homogeneous architecture.

    Examples
    --------
    >>> import torch, ntkit
    >>> model = torch.nn.Sequential(ntkit.nn.Linear(3, 512), torch.nn.ReLU(), ntkit.nn.Linear(512, 1))
    >>> x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    >>> k = ntkit.infinite_kernel(model, x)
    >>> round(float(k.ntk[0, 1]), 6)  # Sigma(2) + Sigma(1) SigmaDot(2) = 1 / (6 pi) + 0
    0.053052
    """
    budget = renamed_keyword(memory_budget, budget, new="memory_budget", old="budget", default=DEFAULT_BUDGET)
    check_choice(which, "which", WHICH)
    check_dtype(dtype)
    t1, t2, adj1, adj2 = split_graphs(x1, x2, dtype=dtype, device=device)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. built from ntkit.nn), got {type(model).__name__}")
    t2 = distinct_x2(t1, t2, (adj1, adj2))
    arch = architecture(model, tuple(t1.shape[1:]))  # described once: every evaluation below shares it
    want = "nngp" if which == "nngp" or (which == "both" and not arch.has_ntk) else which
    check_ntk(arch, _WHICH[want])
    tiles = KernelTiles.of(arch)
    pair = tiles.prepare_pair(t1, t2, (adj1, adj2))  # validated, prepared and numbered once
    res = evaluate_tiles(tiles, pair, _WHICH[want], budget=budget, progress=progress)
    if which != "both":
        return res.ntk if which == "ntk" else res.nngp
    if t2 is None and tiles.path_for(t1) != "fused":
        # the reference evaluator (and the spatial path, its native prefix) gave every pair of identical
        # inputs the value of its self batch, K(x_i, x_i) itself: the diagonal is already computed
        var1 = res.nngp.diagonal().clone()
    else:
        var1 = evaluate_tiles(tiles, pair.first(), ("nngp",), diag=True, budget=budget).nngp
    var2 = var1 if t2 is None else evaluate_tiles(tiles, pair.second(), ("nngp",), diag=True, budget=budget).nngp
    return Kernel(nngp=res.nngp, ntk=res.ntk, var1=var1, var2=var2)


def fc_kernel(
    x1: Any,
    x2: Any | None = None,
    *,
    depth: int,
    activation: Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    beta: float | None = None,
) -> Kernel:
    """Infinite-width NNGP and NTK of a fully connected network: :func:`infinite_kernel` of :func:`ntkit.nn.fc`.

    ``depth`` hidden layers, each an affine map followed by ``activation``, and an affine read-out
    (NTK parameterization, every weight and bias scale ``w_std`` and ``b_std``)::

        Sigma(1) = w_std^2 x.x'/n0 + b_std^2,   Sigma(l+1) = w_std^2 E[sigma(u) sigma(v)] + b_std^2
        Theta(1) = Sigma(1),                     Theta(l+1) = Theta(l) w_std^2 E[sigma'(u) sigma'(v)] + Sigma(l+1)

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
        Defaults to ``x1``.
    depth : int
        Number of hidden layers (``>= 0``; 0 gives the linear kernel ``Sigma(1)``).
    activation : str, DualActivation or callable
        Closed forms where available (``ntkit.activations.available_activations()``); any other
        callable by the general path (Mehler / Hermite expansion certified below 1e-13 per layer,
        quadrature for kinked ones); derivatives by autograd.
    b_std : float
        Bias scale (``>= 0``; ``beta`` in Jacot et al. 2018).
    w_std : float
        Weight scale (``> 0``).
    dtype : torch.dtype
        float64 (the reference) or float32.
    device : torch.device or str, optional
        Where to compute (the inputs' device by default).
    beta : float, optional
        Deprecated spelling of ``b_std``.

    Returns
    -------
    Kernel
        ``nngp`` and ``ntk`` of shape (N1, N2); ``kernel.blocks(n_L)`` gives ``Theta (x) I_{n_L}``.

    Raises
    ------
    ValueError
        Inputs that are not 2-D, empty or not finite, or ``x1`` and ``x2`` of different widths;
        ``depth < 0``, ``b_std < 0``, ``w_std <= 0``; an unknown activation name; norms that overflow
        a network that is not positively homogeneous (see :func:`infinite_kernel`).
    TypeError
        Non-numeric inputs; a ``dtype`` that is not floating; a ``depth``, ``b_std``, ``w_std`` or
        ``activation`` of the wrong type.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> k = ntkit.fc_kernel(x, depth=1, activation="relu")
    >>> round(float(k.ntk[0, 1]), 6)  # Sigma(2) + Sigma(1) * SigmaDot(2) = 1/(4 pi) + 0 * 1/4
    0.079577
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    check_dtype(dtype)
    t1, t2 = check_pair(x1, x2, dtype=dtype, device=device)
    model = fc_model(t1.shape[1], depth=depth, activation=activation, b_std=b_std, w_std=w_std)
    kernel = infinite_kernel(model, t1, t2, dtype=dtype)
    assert isinstance(kernel, Kernel)
    return kernel


def kernel_tile_fn(
    model: nn.Module | None = None,
    *,
    depth: int | None = None,
    activation: Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    which: str = "ntk",
    dtype: torch.dtype | None = None,
    beta: float | None = None,
) -> Callable[[Any, Any], Tensor]:
    """A function ``tile_fn(x1_tile, x2_tile) -> Tensor`` of shape (t1, t2): one block of a model's kernel.

    For iterative solvers that stream ``K(x_i, x_j)`` without forming the whole matrix. The model
    (or the fully connected shortcut ``depth, activation, b_std, w_std``) is read on the first call
    (it needs the input shape); inputs follow their own device; ``dtype`` (default: the input's)
    is the computation dtype.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The architecture (see :func:`infinite_kernel`); may live on the ``meta`` device.
    depth, activation, b_std, w_std
        Instead of ``model``: the fully connected network of :func:`ntkit.nn.fc` with ``depth`` hidden
        layers, as in :func:`ntkit.compute.compute_kernel`.
    which : {"ntk", "nngp"}
        The kernel the tiles hold.
    dtype : torch.dtype, optional
        Computation dtype (default: the inputs' floating dtype, float64 for integer inputs).
    beta : float, optional
        Deprecated spelling of ``b_std``.

    Returns
    -------
    callable
        ``tile_fn(x1_tile, x2_tile)``: ``K(x1_tile, x2_tile)`` of shape (t1, t2), for tiles of shape
        ``(t1, *input_shape)`` and ``(t2, *input_shape)``.

    Raises
    ------
    ValueError
        Here: ``which`` not ``"ntk"`` / ``"nngp"``; neither ``model`` nor ``depth``; bad shortcut
        values (``depth < 0``, ``b_std < 0``, ``w_std <= 0``, an unknown activation). From
        ``tile_fn``: both ``model`` and ``depth``, a model without a kernel transform or that does
        not fit the tiles' shape, ``which="ntk"`` for a model whose NTK is undefined (an activation
        without a derivative map), tiles that are empty, not finite or of different feature shapes.
    TypeError
        A ``dtype`` that is not floating, shortcut values of the wrong type; from ``tile_fn``: a
        ``model`` that is not a ``torch.nn.Module``, non-numeric tiles.

    Examples
    --------
    >>> import torch, ntkit
    >>> tile_fn = ntkit.kernel_tile_fn(ntkit.nn.fc(3, depth=3, device="meta"), which="ntk")
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> tile_fn(x[:2], x).shape
    torch.Size([2, 5])
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    check_choice(which, "which", ("nngp", "ntk"))
    if dtype is not None:
        check_dtype(dtype)
    shortcut: dict[tuple[int, ...], KernelTiles] = {}  # the fully connected shortcut cannot change
    if model is None:  # validate the shortcut now, not at the first tile
        architecture(None, (1,), depth=depth, activation=activation, b_std=b_std, w_std=w_std)

    def tiles_for(shape: tuple[int, ...]) -> KernelTiles:
        if shape in shortcut:
            return shortcut[shape]
        # a model is described at every call: the description cache returns the same Architecture (and so the
        # same shared KernelTiles) while it is unchanged, and a new one after it was changed between tiles
        arch = architecture(model, shape, depth=depth, activation=activation, b_std=b_std, w_std=w_std)
        if which == "ntk" and not arch.has_ntk:
            raise ValueError("which: the NTK of this model is undefined (an activation has no derivative map); "
                             "use 'nngp'")
        tiles = KernelTiles.of(arch)
        if model is None:
            shortcut[shape] = tiles
        return tiles

    def tile_fn(x1_tile: Any, x2_tile: Any) -> Tensor:
        t1, t2 = check_pair(x1_tile, x2_tile, dtype=dtype, ndim=None)
        assert t2 is not None
        tiles = tiles_for(tuple(t1.shape[1:]))
        ids1, ids2 = row_ids(t1, t2)
        nngp, ntk = tiles.tile(tiles.prepare(t1), tiles.prepare(t2), ids1, ids2, ntk=which == "ntk")
        out = ntk if which == "ntk" else nngp
        assert out is not None
        return out

    return tile_fn


__all__ = ["fc_kernel", "infinite_kernel", "kernel_tile_fn"]
