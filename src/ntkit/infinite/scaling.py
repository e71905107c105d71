"""Inputs whose squared norms overflow (or underflow) the dtype: exact evaluation by scaling.

If every layer of an architecture is positively homogeneous — bias-free weight layers, ABReLU-family
or monomial activations, pooling, flatten, a layer norm with ``eps = 0`` — its kernels satisfy
``K(s x, t x') = (s t)^k K(x, x')`` for ``s, t > 0`` (:attr:`Architecture.degree` is ``k``). Each
row is then divided by a power of two (exactly), the kernels of the scaled rows are computed, and
each entry is multiplied back by ``2^(k (e_i + e_j))`` with :func:`torch.ldexp` (exact, or an
overflow to infinity that is reported). Inputs of norm ``1e200`` in float64 or ``1e20`` in float32
thus get their exact kernels (where those are representable) instead of NaN.

Without homogeneity, inputs whose squared norms would overflow are refused with an error naming the
first layer that breaks it; tiny inputs are evaluated as they are (their contribution next to the
biases is below rounding).
"""

from __future__ import annotations

import math

import torch

from ntkit.infinite.walk import Architecture

Tensor = torch.Tensor

#: Safety factor between the largest (smallest) squared norm allowed and the square root of the
#: dtype's largest (smallest normal) number: the dual maps multiply two variances (``v1 v2 - c^2``).
MARGIN = 1e4


def row_exponents(arch: Architecture, x: Tensor) -> Tensor | None:
    """Per-row exponents ``e`` (int64, shape (N,)) to divide the rows of ``x`` by ``2^e``, or None if not needed.

    Raises
    ------
    ValueError
        Squared norms overflow the dtype and the architecture is not positively homogeneous.
    """
    if x.shape[0] == 0:
        return None
    m = x.detach().abs().reshape(x.shape[0], -1).amax(dim=1)
    numel = math.prod(x.shape[1:])
    info = torch.finfo(x.dtype)
    # the largest entry and the smallest positive one decide (one synchronisation): m^2 numel against the bounds
    top, low = torch.stack([m.max(), torch.where(m > 0, m, torch.full_like(m, math.inf)).min()]).tolist()
    if top * top * numel <= math.sqrt(info.max) / MARGIN and not low * low * numel < math.sqrt(info.tiny) * MARGIN:
        return None
    m = m.to(torch.float64)
    sq = m * m * numel
    huge = sq > math.sqrt(info.max) / MARGIN
    if arch.degree is None:
        if not bool(huge.any()):
            return None
        raise ValueError(
            f"x: expected inputs whose squared norms fit {x.dtype} (largest entry {float(m.max()):.3g}); the "
            f"architecture is not positively homogeneous (at {arch.inhomogeneous_at}), so it cannot be "
            "evaluated by rescaling: rescale the inputs or use float64"
        )
    _, e = torch.frexp(m)
    return torch.where(m > 0, e.to(torch.int64), torch.zeros_like(e, dtype=torch.int64))


def scale_rows(x: Tensor, exponents: Tensor | None) -> Tensor:
    """``x_i / 2^e_i`` (exact)."""
    if exponents is None:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    power = (-exponents).reshape(shape).to(device=x.device, dtype=torch.float64)  # 2^e exact in float64
    return torch.ldexp(x.to(torch.float64), power).to(x.dtype)


def unscale(k: Tensor, degree: int, e1: Tensor | None, e2: Tensor | None) -> Tensor:
    """``k_ij * 2^(degree (e1_i + e2_j))`` for a tile ``k`` (N1, N2) or a diagonal (N,) with ``e2`` None.

    Raises
    ------
    ValueError
        An entry overflows the dtype (the exact kernel is not representable in it).
    """
    if (e1 is None and e2 is None) or degree == 0:
        return k
    if k.ndim == 1:
        assert e1 is not None
        total = 2 * degree * e1
    else:
        a = torch.zeros(k.shape[0], dtype=torch.int64, device=k.device) if e1 is None else e1.to(k.device)
        b = torch.zeros(k.shape[1], dtype=torch.int64, device=k.device) if e2 is None else e2.to(k.device)
        total = degree * (a[:, None] + b[None, :])
    total = total.to(k.device)
    half = torch.div(total, 2, rounding_mode="floor")  # two exact steps: 2^total alone may over/underflow
    wide = torch.ldexp(torch.ldexp(k.to(torch.float64), half.to(torch.float64)), (total - half).to(torch.float64))
    out = wide.to(k.dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"x: expected inputs whose kernel fits {k.dtype}; some entries of the exact kernel exceed its range "
            "(use float64, or rescale the inputs)"
        )
    return out


__all__ = ["MARGIN", "row_exponents", "scale_rows", "unscale"]
