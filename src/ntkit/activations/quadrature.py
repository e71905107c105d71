"""Bivariate Gaussian expectations of arbitrary pointwise functions by Gauss-Hermite quadrature.

For ``(u, v) ~ N(0, [[a, c], [c, b]])`` write the Cholesky factorisation
``u = sqrt(a) z1``, ``v = (c / sqrt(a)) z1 + sqrt(b - c^2 / a) z2`` with ``z1, z2 ~ N(0, 1)``
independent, and approximate

    E[f(u) g(v)] = sum_{i,j} w_i w_j f(u(z_i)) g(v(z_i, z_j))

with the probabilists' Gauss-Hermite nodes ``z_i`` and weights ``w_i`` (summing to one). The rule
of order ``n`` is exact for polynomials of degree ``< 2n``; for smooth functions it converges
geometrically. Kinked functions (ReLU-like) converge only algebraically with this rule: use a
closed form where one exists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

Tensor = torch.Tensor

DEFAULT_ORDER = 64
_CHUNK_ELEMENTS = 2**22  # evaluations per chunk (bounded memory)


@lru_cache(maxsize=16)
def _nodes(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes and weights normalised to a probability measure."""
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / w.sum()


def hermite_nodes(order: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes ``z`` and weights ``w`` (summing to 1) of the order-``order`` rule, as tensors."""
    z, w = _nodes(order)
    return (
        torch.as_tensor(z, dtype=dtype, device=device),
        torch.as_tensor(w, dtype=dtype, device=device),
    )


def _checked(fn: Callable[[Tensor], Tensor], x: Tensor, name: str) -> Tensor:
    try:
        y = fn(x)
    except Exception as err:  # user code: report which activation failed
        raise ValueError(f"activation {name!r} failed on a tensor of shape {tuple(x.shape)}: {err}") from err
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"activation {name!r}: expected a tensor output, got {type(y).__name__}")
    if y.shape != x.shape:
        raise ValueError(
            f"activation {name!r}: expected an elementwise function (output shape {tuple(x.shape)}), "
            f"got output shape {tuple(y.shape)}"
        )
    if not bool(torch.isfinite(y).all()):
        raise ValueError(
            f"activation {name!r} returned NaN/inf on Gaussian quadrature nodes "
            f"(inputs up to {float(x.abs().max()):.3g} in magnitude); it cannot be integrated"
        )
    return y.to(x.dtype)


def gaussian_expectation(
    fn: Callable[[Tensor], Tensor],
    var1: Tensor,
    cov: Tensor,
    var2: Tensor,
    *,
    fn2: Callable[[Tensor], Tensor] | None = None,
    order: int = DEFAULT_ORDER,
    name: str = "activation",
) -> Tensor:
    """``E[fn(u) fn2(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])`` (``fn2`` defaults to ``fn``).

    Parameters
    ----------
    var1, cov, var2 : Tensor
        Broadcastable to a common shape ``S``; ``var1, var2 >= 0`` and ``cov^2 <= var1 var2``
        (small violations from rounding are clipped).
    order : int
        Number of Gauss-Hermite nodes per dimension.

    Returns
    -------
    Tensor of shape ``S``.
    """
    fn2 = fn if fn2 is None else fn2
    var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
    shape = var1.shape
    dtype, device = var1.dtype, var1.device
    a = var1.reshape(-1).clamp_min(0)
    b = var2.reshape(-1).clamp_min(0)
    c = cov.reshape(-1)
    sa = a.sqrt()
    l21 = torch.where(sa > 0, c / torch.where(sa > 0, sa, torch.ones_like(sa)), torch.zeros_like(c))
    l22 = (b - l21 * l21).clamp_min(0).sqrt()
    z, w = hermite_nodes(order, dtype, device)
    out = torch.empty_like(a)
    step = max(1, _CHUNK_ELEMENTS // (order * order))
    for start in range(0, a.numel(), step):
        sl = slice(start, start + step)
        u = sa[sl, None] * z[None, :]  # (m, n)
        fu = _checked(fn, u, name)  # (m, n)
        v = l21[sl, None, None] * z[None, :, None] + l22[sl, None, None] * z[None, None, :]
        gv = _checked(fn2, v, name)  # (m, n, n)
        inner = gv @ w  # (m, n): E[g(v) | z1]
        out[sl] = (fu * inner) @ w
    return out.reshape(shape)
