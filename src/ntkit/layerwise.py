"""Per-layer kernels of a fully connected network, and the fixed-first-layers NTKs of Arora et al.

One pass of the recursion of :func:`ntkit.fc_kernel` (NTK parameterization, ``depth`` hidden layers,
``L = depth + 1``) keeps every intermediate kernel:

    Sigma(1)(x, x')   = w_std^2 x.x' / n0 + b_std^2
    Sigma(h+1)        = w_std^2 E_{g ~ N(0, Sigma(h))}[sigma(g(x)) sigma(g(x'))] + b_std^2     (h = 1..depth)
    SigmaDot(h+1)     = w_std^2 E_{g ~ N(0, Sigma(h))}[sigma'(g(x)) sigma'(g(x'))]            (h = 1..depth)

From these, the NTK of the network whose first ``fix`` weight layers are *frozen* (not trained)
keeps only the gradient terms of the later layers (Arora et al. 2020, "Harnessing the Power of
Infinitely Wide Deep Nets on Small-data Tasks", ICLR, Sec. 4 and their ``NTK.py``):

    Theta[dep][fix] = sum_{h=fix..dep} Sigma(h+1) prod_{h'=h+1..dep} SigmaDot(h'+1)

for a network with ``dep`` hidden layers (``0 <= fix <= dep``). ``fix = 0`` is the full NTK
(``fc_kernel(...).ntk``), ``fix = dep`` is the NNGP ``Sigma(dep+1)`` (only the read-out is trained)
and ``dep = 0`` is the linear kernel ``Sigma(1)``. Every ``Theta[dep][fix]`` with ``dep <= depth``
comes out of the same pass, through the recurrence

    Theta[dep][fix] = Theta[dep-1][fix] SigmaDot(dep+1) + Sigma(dep+1)   (fix < dep),
    Theta[dep][dep] = Sigma(dep+1).

**Relation to Arora et al.'s scale.** Their code uses ``S_0 = X X^T`` and ``c_sigma = 1``
(``S_{h+1} = E[relu(u) relu(v)]``, ``Sdot_{h+1} = E[relu'(u) relu'(v)]`` under ``N(0, S_h)``, no bias).
ReLU is positively homogeneous, so with ``b_std = 0`` ntkit's kernels are rescaled copies:
``Sigma(h+1) = w_std^{2h} (w_std^2 / n0) S_h``, ``SigmaDot(h+1) = w_std^2 Sdot_h`` and hence

    Theta_ntkit[dep][fix] = w_std^{2 dep} (w_std^2 / n0) K_Arora[dep][fix].

With ``w_std = 1`` that is ``K_Arora = n0 Theta_ntkit``: :func:`arora_kernels` returns exactly
their matrices (the overall scale matters for an SVM, whose ``C`` is relative to it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ntkit._validation import check_dtype, check_float, check_int, check_pair, renamed_keyword
from ntkit.activations import DualActivation, get_activation
from ntkit.infinite.ops import Dense, Pointwise
from ntkit.infinite.reference import distinct_rows, iter_layers
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import Architecture, describe_model
from ntkit.nn import fc

Tensor = torch.Tensor

__all__ = [
    "LayerKernels",
    "arora_kernels",
    "fc_kernel_diag",
    "fixed_layer_ntks",
    "iter_arora_kernels",
    "iter_fixed_layer_ntks",
    "layer_kernels",
]


@dataclass(frozen=True)
class LayerKernels:
    """Every layer's NNGP and derivative kernel from one pass of the recursion.

    Attributes
    ----------
    sigma : list of Tensor of shape (N1, N2), length ``depth + 1``
        ``sigma[h] = Sigma(h+1)``: the pre-activation covariance after ``h`` hidden layers
        (``sigma[0]`` is the input layer's ``w_std^2 x.x'/n0 + b_std^2``).
    sigma_dot : list of Tensor of shape (N1, N2), length ``depth``
        ``sigma_dot[h-1] = SigmaDot(h+1)`` for ``h = 1..depth``.
    var1, var2 : list of Tensor of shapes (N1,) and (N2,), length ``depth + 1``
        The diagonals ``Sigma(h+1)(x, x)`` of the rows of ``x1`` and ``x2``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.layerwise import layer_kernels
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> lk = layer_kernels(x, depth=2)
    >>> len(lk.sigma), len(lk.sigma_dot), lk.ntk().shape
    (3, 2, torch.Size([4, 4]))
    """

    sigma: list[Tensor]
    sigma_dot: list[Tensor]
    var1: list[Tensor]
    var2: list[Tensor]

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.sigma_dot)

    def ntk(self, dep: int | None = None, fix: int = 0) -> Tensor:
        """``Theta[dep][fix]`` (default: the full NTK of the deepest network)."""
        dep = self.depth if dep is None else check_int(dep, "dep", minimum=0)
        if dep > self.depth:
            raise ValueError(f"dep: expected an integer <= {self.depth} (the depth computed), got {dep}")
        fix = check_int(fix, "fix", minimum=0)
        if fix > dep:
            raise ValueError(f"fix: expected an integer <= dep = {dep}, got {fix}")
        out = self.sigma[fix].clone()
        for h in range(fix + 1, dep + 1):
            out = out * self.sigma_dot[h - 1] + self.sigma[h]
        return out


def _layer_stream(
    x1: Any,
    x2: Any | None,
    *,
    depth: int,
    activation: str | DualActivation | Any,
    b_std: float,
    w_std: float,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Iterator[tuple[Tensor, Tensor | None, Tensor, Tensor]]:
    """Yield ``(Sigma(h+1), SigmaDot(h+1) or None for h = 0, var1, var2)`` for ``h = 0..depth``.

    One pass of the reference evaluator (:func:`ntkit.infinite.reference.iter_layers`) over the model
    of :func:`ntkit.nn.fc`: ``Sigma(h+1)`` after each weight layer, ``SigmaDot(h+1) = w_std^2
    E[sigma'(u) sigma'(v)]`` from each activation.
    """
    depth = check_int(depth, "depth", minimum=0)
    b_std = check_float(b_std, "b_std", minimum=0.0)
    w_std = check_float(w_std, "w_std", minimum=0.0, strict=True)
    check_dtype(dtype)
    act = get_activation(activation)
    if depth > 0 and not act.has_derivative_map:
        raise ValueError(f"activation: expected an activation with a derivative map for the NTK, got {act.name!r}")
    t1, t2 = check_pair(x1, x2, dtype=dtype, device=device)
    b = t1 if t2 is None else t2
    arch = _fc_architecture(t1.shape[1], depth, act, b_std, w_std)
    ids = _row_ids(t1, b)
    _, left, right = distinct_rows(t1, b, *ids)
    w2 = w_std**2
    dot: Tensor | None = None
    for op, rows, cross, derivative in iter_layers(arch, t1, b, *ids, ntk=depth > 0):
        if isinstance(op, Pointwise):
            dot = derivative
        elif isinstance(op, Dense):
            sdot = None if dot is None else w2 * dot
            yield cross.nngp, sdot, rows.nngp[left], rows.nngp[right]


def _fc_architecture(n0: int, depth: int, act: DualActivation, b_std: float, w_std: float) -> Architecture:
    return describe_model(fc(n0, 1, depth=depth, activation=act, w_std=w_std, b_std=b_std, device="meta"), (n0,))


def _row_ids(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    both = torch.cat([a, b])
    _, ids = torch.unique(both.reshape(both.shape[0], -1), dim=0, return_inverse=True)
    return ids[: a.shape[0]], ids[a.shape[0] :]


def layer_kernels(
    x1: Any,
    x2: Any | None = None,
    *,
    depth: int,
    activation: str | DualActivation | Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    beta: float | None = None,
) -> LayerKernels:
    """All per-layer ``Sigma(h)`` and ``SigmaDot(h)`` of :func:`ntkit.fc_kernel` in one pass.

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
        Defaults to ``x1``.
    depth : int
        Number of hidden layers (``>= 0``).
    activation, b_std, w_std, dtype, device
        As in :func:`ntkit.fc_kernel` (``b_std``: the bias scale).
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).

    Returns
    -------
    LayerKernels
        ``depth + 1`` matrices ``Sigma`` and ``depth`` matrices ``SigmaDot`` of shape (N1, N2);
        ``result.ntk()`` equals ``fc_kernel(...).ntk`` and ``result.sigma[-1]`` its ``nngp``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> lk = layer_kernels(x, depth=1)
    >>> round(float(lk.ntk()[0, 1]), 6)
    0.079577
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    sigma: list[Tensor] = []
    sigma_dot: list[Tensor] = []
    var1: list[Tensor] = []
    var2: list[Tensor] = []
    for cov, sdot, v1, v2 in _layer_stream(
        x1, x2, depth=depth, activation=activation, b_std=b_std, w_std=w_std, dtype=dtype, device=device
    ):
        sigma.append(cov)
        if sdot is not None:
            sigma_dot.append(sdot)
        var1.append(v1)
        var2.append(v2)
    return LayerKernels(sigma=sigma, sigma_dot=sigma_dot, var1=var1, var2=var2)


def iter_fixed_layer_ntks(
    x1: Any,
    x2: Any | None = None,
    *,
    depth: int,
    activation: str | DualActivation | Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    beta: float | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """Stream ``(dep, fix, scale * Theta[dep][fix])`` for ``dep = 0..depth``, ``fix = 0..dep`` in that order.

    One pass of the recursion; at most ``depth + 3`` matrices of shape (N1, N2) are alive at a time
    (the caller must not modify the yielded tensors, which are updated in place afterwards; clone
    one to keep it). This is the memory-lean form of :func:`fixed_layer_ntks`.

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
        Defaults to ``x1``.
    depth : int
        Deepest network: ``dep = 0..depth`` hidden layers.
    activation, b_std, w_std, dtype, device
        As in :func:`ntkit.fc_kernel` (``b_std``: the bias scale).
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).
    scale : float
        Multiplies every kernel (Arora et al.'s ``n0``).

    Yields
    ------
    (dep, fix, Tensor of shape (N1, N2))

    Raises
    ------
    ValueError
        ``depth < 0``, ``b_std < 0``, ``w_std <= 0``, NaN / inf inputs, inputs of different widths.

    Examples
    --------
    >>> import torch
    >>> from ntkit.layerwise import iter_fixed_layer_ntks
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> [(dep, fix) for dep, fix, _ in iter_fixed_layer_ntks(x, depth=1)]
    [(0, 0), (1, 0), (1, 1)]
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    scale = check_float(scale, "scale", minimum=0.0, strict=True)
    thetas: list[Tensor] = []
    for dep, (cov, sdot, _, _) in enumerate(
        _layer_stream(x1, x2, depth=depth, activation=activation, b_std=b_std, w_std=w_std, dtype=dtype, device=device)
    ):
        if sdot is not None:
            for theta in thetas:  # Theta[dep][fix] = Theta[dep-1][fix] SigmaDot(dep+1) + Sigma(dep+1)
                theta.mul_(sdot).add_(cov, alpha=scale)
        thetas.append(cov * scale)
        del sdot
        for fix in range(dep + 1):
            yield dep, fix, thetas[fix]


def fixed_layer_ntks(
    x1: Any,
    x2: Any | None = None,
    *,
    depth: int,
    activation: str | DualActivation | Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    beta: float | None = None,
) -> dict[tuple[int, int], Tensor]:
    """All ``scale * Theta[dep][fix]`` for ``0 <= fix <= dep <= depth`` from one pass of the recursion.

    Returns
    -------
    dict mapping (dep, fix) to Tensor of shape (N1, N2)
        ``(depth + 1)(depth + 2) / 2`` kernels (15 for ``depth = 4``).

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
        Defaults to ``x1``.
    depth : int
        Deepest network: ``dep = 0..depth`` hidden layers.
    activation, b_std, w_std, dtype, device
        As in :func:`ntkit.fc_kernel` (``b_std``: the bias scale).
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).
    scale : float
        Multiplies every kernel (Arora et al.'s ``n0``).

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.layerwise import fixed_layer_ntks
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> k = fixed_layer_ntks(x, depth=2, b_std=0.1)
    >>> sorted(k)
    [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    >>> bool(torch.allclose(k[2, 0], ntkit.fc_kernel(x, depth=2, b_std=0.1).ntk))  # nothing frozen
    True
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    return {
        (dep, fix): theta.clone()
        for dep, fix, theta in iter_fixed_layer_ntks(
            x1, x2, depth=depth, activation=activation, b_std=b_std, w_std=w_std, scale=scale, dtype=dtype,
            device=device,
        )
    }


def fc_kernel_diag(
    x: Any,
    *,
    depth: int,
    activation: str | DualActivation | Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    which: str = "ntk",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    beta: float | None = None,
) -> Tensor:
    """The diagonal ``k(x, x)`` of :func:`ntkit.fc_kernel` (``ntk`` or ``nngp``) in O(N) memory.

    Evaluates each input with itself only (the self batch of the reference evaluator, or the fused
    fully connected path): ``Sigma(h+1)(x, x) = w_std^2 E[sigma(u)^2] + b_std^2``,
    ``SigmaDot(h+1)(x, x) = w_std^2 E[sigma'(u)^2]`` with ``u ~ N(0, Sigma(h)(x, x))``, and
    ``Theta(h+1) = Theta(h) SigmaDot(h+1) + Sigma(h+1)``; equal to the diagonal of the full kernel.

    Returns
    -------
    Tensor of shape (N,)

    Parameters
    ----------
    x : array-like of shape (N, n0)
    depth, activation, b_std, w_std, dtype, device
        As in :func:`ntkit.fc_kernel` (``b_std``: the bias scale).
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).
    which : {"ntk", "nngp"}

    Raises
    ------
    ValueError
        ``depth < 0``, ``b_std < 0``, ``w_std <= 0``, an unknown ``which``, NaN / inf inputs, an NTK
        asked of an activation without a derivative map.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.layerwise import fc_kernel_diag
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> bool(torch.allclose(fc_kernel_diag(x, depth=3), ntkit.fc_kernel(x, depth=3).ntk.diagonal()))
    True
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    depth = check_int(depth, "depth", minimum=0)
    b_std = check_float(b_std, "b_std", minimum=0.0)
    w_std = check_float(w_std, "w_std", minimum=0.0, strict=True)
    if which not in ("ntk", "nngp"):
        raise ValueError(f"which: expected one of ['ntk', 'nngp'], got {which!r}")
    check_dtype(dtype)
    act = get_activation(activation)
    if which == "ntk" and not act.has_derivative_map:
        raise ValueError(f"which: the ntk of activation {act.name!r} is undefined (no derivative map); use 'nngp'")
    t, _ = check_pair(x, None, dtype=dtype, device=device)
    tiles = KernelTiles(_fc_architecture(t.shape[1], depth, act, b_std, w_std))
    nngp, ntk = tiles.diag(tiles.prepare(t), _row_ids(t, t[:0])[0], ntk=which == "ntk")
    out = ntk if which == "ntk" else nngp
    assert out is not None
    return out


def _arora_kwargs(t1: Tensor, max_dep: int, dtype: torch.dtype, device: torch.device | str | None) -> dict[str, Any]:
    return {
        "depth": max_dep,
        "activation": "relu",
        "b_std": 0.0,
        "w_std": 1.0,
        "scale": float(t1.shape[1]),
        "dtype": dtype,
        "device": device,
    }


def arora_kernels(
    x1: Any,
    x2: Any | None = None,
    *,
    max_dep: int = 4,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> dict[tuple[int, int], Tensor]:
    """The 15 kernels ``K[dep][fix]`` of Arora et al. (2020) at their scale (``S_0 = X X^T``, ``c_sigma = 1``).

    ReLU network without bias, ``dep = 0..max_dep`` hidden layers, the first ``fix`` layers frozen:
    ``K[dep][fix] = n0 * Theta_ntkit[dep][fix]`` with ``w_std = 1``, ``b_std = 0`` (see the module notes).

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
    max_dep : int
        Deepest network (their ``NTK.kernel_value_batch(X, 5)`` is ``max_dep = 4``).

    Returns
    -------
    dict mapping (dep, fix) to Tensor of shape (N1, N2)

    Raises
    ------
    ValueError
        ``max_dep < 0``, NaN / inf inputs, inputs of different widths.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    >>> k = arora_kernels(x, max_dep=1)
    >>> [round(float(k[key][0, 0]), 6) for key in sorted(k)]  # 25, 25/2 + 25/2, 25/2
    [25.0, 25.0, 12.5]
    """
    t1, t2 = check_pair(x1, x2, dtype=dtype, device=device)
    return fixed_layer_ntks(t1, t2, **_arora_kwargs(t1, max_dep, dtype, device))


def iter_arora_kernels(
    x1: Any,
    x2: Any | None = None,
    *,
    max_dep: int = 4,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """:func:`arora_kernels` as a stream ``(dep, fix, K)`` in the order ``dep -> fix`` (memory-lean;
    the yielded tensors are updated in place later: clone one to keep it).

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
    max_dep : int
    dtype, device

    Yields
    ------
    (dep, fix, Tensor of shape (N1, N2))

    Raises
    ------
    ValueError
        As :func:`arora_kernels`.

    Examples
    --------
    >>> import torch
    >>> from ntkit.layerwise import iter_arora_kernels
    >>> x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    >>> [(dep, fix, round(float(k[0, 0]), 6)) for dep, fix, k in iter_arora_kernels(x, max_dep=1)]
    [(0, 0, 25.0), (1, 0, 25.0), (1, 1, 12.5)]
    """
    t1, t2 = check_pair(x1, x2, dtype=dtype, device=device)
    return iter_fixed_layer_ntks(t1, t2, **_arora_kwargs(t1, max_dep, dtype, device))
