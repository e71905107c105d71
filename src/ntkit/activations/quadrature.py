"""Accurate Gaussian expectations of arbitrary pointwise functions: the general path.

For ``(u, v) ~ N(0, [[v1, c], [c, v2]])`` write ``u = s1 z1`` and ``v = l21 z1 + l22 z2`` with
``s1 = sqrt(v1)``, ``l21 = c / s1``, ``l22 = sqrt(det / v1)`` (``det = v1 v2 - c^2`` taken from the
covariance entries, never from a rounded correlation) and ``z1, z2`` independent standard normals.
The bivariate expectation is an iterated one-dimensional integral

    E[f(u) g(v)] = int phi(z1) f(s1 z1) H(z1) dz1,      H(z1) = int phi(z2) g(l21 z1 + l22 z2) dz2,

each truncated to ``[-L, L]`` (``L = 9``: the neglected Gaussian mass is ``< 3e-19``) and evaluated by
*composite Gauss-Legendre* quadrature (``nodes`` per panel, default 16) on a fixed background grid
``GRID`` whose panels are further split where the integrand is not smooth. An activation declares its
breakpoints ``b`` (default ``(0,)``: ReLU, leaky ReLU, ELU, SELU, ... all kink at 0; splitting there
is harmless for smooth functions). The outer integral is split at ``z1 = b / s1`` (kink of ``f``) and
around ``z1 = b / l21`` at ``+-k l22 / |l21|`` (``k`` in ``LAYERS``), where ``H`` becomes a kink
smoothed over the width ``l22 / |l21|`` as the correlation tends to +-1; the inner one at
``z2 = (b - l21 z1) / l22``, a different point for every outer node. When a standard deviation
exceeds ``STEEP`` the activation itself varies on the scale ``1 / s`` around its breakpoint
(``tanh(s z)`` is nearly a step for large ``s``) and further layers at ``b / s +- k / s`` are added.
On every panel the integrand is smooth, so the rule converges geometrically for piecewise-analytic
activations (ReLU-like functions included), instead of the algebraic rate of a plain Gauss-Hermite
rule across a kink (~1e-2 for ReLU at 64 nodes).

The error estimate of :func:`gaussian_expectation` (``return_error=True``) is the difference
between the rule with ``nodes`` and with ``nodes // 2`` nodes per panel: an upper bound in
practice, since the finer rule is many orders more accurate than the coarse one.

Everything is vectorised over the broadcast shape of ``(v1, c, v2)`` in chunks of bounded memory;
the cost is ``O(n1 n2)`` function evaluations per entry (2e4 to 5e4 with the defaults).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch

Tensor = torch.Tensor
Pointwise = Callable[[Tensor], Tensor]
ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]

LIMIT = 9.0
GRID = (-LIMIT, -5.0, -2.5, 0.0, 2.5, 5.0, LIMIT)
#: Multiples of the smoothing width ``l22 / |l21|`` around an outer kink (resolves correlation -> +-1).
LAYERS = (1.0, 8.0)
#: Above this standard deviation the activation itself is resolved by layers at ``k / s`` around
#: each breakpoint (``tanh(s z)`` is nearly a step for large ``s``); below it the grid suffices.
STEEP = 1.5
DEFAULT_NODES = 16
_CHUNK_ELEMENTS = 2**21  # evaluations per chunk (bounded memory)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@lru_cache(maxsize=32)
def _unit_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Graded Gauss-Legendre nodes in ``(0, 1)`` and weights summing to 1 (``x -> x^2 (3 - 2x)``)."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    return (t + 1.0) / 2.0, w / 2.0


def unit_rule(nodes: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The graded rule on ``[0, 1]`` as tensors ``(x, w)`` of shape ``(nodes,)``."""
    x, w = _unit_rule(nodes)
    return torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device)


def _checked(fn: Callable[[Tensor], object], x: Tensor, name: str) -> tuple[Tensor, ...]:
    """Call ``fn`` on ``x`` and check every returned tensor is a tensor of ``x``'s shape.

    Finiteness is checked on the (much smaller) results by :func:`_check_finite`.
    """
    try:
        out = fn(x)
    except (ValueError, TypeError) as err:
        if str(err).startswith("activation "):
            raise
        raise ValueError(f"activation {name!r} failed on a tensor of shape {tuple(x.shape)}: {err}") from err
    except Exception as err:  # user code: report which activation failed
        raise ValueError(f"activation {name!r} failed on a tensor of shape {tuple(x.shape)}: {err}") from err
    outs = out if isinstance(out, tuple) else (out,)
    checked = []
    for y in outs:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"activation {name!r}: expected a tensor output, got {type(y).__name__}")
        if y.shape != x.shape:
            raise ValueError(
                f"activation {name!r}: expected an elementwise function (output shape {tuple(x.shape)}), "
                f"got output shape {tuple(y.shape)}"
            )
        checked.append(y if y.dtype == x.dtype else y.to(x.dtype))
    return tuple(checked)


def _check_finite(values: Sequence[Tensor], name: str, scale: Tensor) -> None:
    """Raise a clear error if a quadrature result is NaN/inf (the activation returned NaN/inf)."""
    for val in values:
        if not bool(torch.isfinite(val).all()):
            raise ValueError(
                f"activation {name!r} gave a NaN/inf Gaussian expectation (it returned NaN/inf, or grows too fast, "
                f"on quadrature nodes up to {LIMIT * float(scale.max()):.3g} in magnitude); it cannot be integrated"
            )


def _panel_nodes(edges: Tensor, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes and Gaussian-weighted weights of the composite rule on sorted ``edges`` (..., P+1).

    Returns ``z`` and ``w * phi(z)`` of shape (..., P * n).
    """
    lo, width = edges[..., :-1, None], (edges[..., 1:] - edges[..., :-1])[..., None]
    z = torch.addcmul(lo, width, x)
    weight = torch.exp(torch.addcmul(torch.log(width * _INV_SQRT_2PI) + torch.log(w), z, z, value=-0.5))
    return z.flatten(-2), weight.flatten(-2)


def _edges(points: Tensor) -> Tensor:
    """Sorted panel edges: the background ``GRID`` merged with ``clamp(points, -L, L)`` (last axis)."""
    pts = points.clamp(-LIMIT, LIMIT)
    grid = torch.as_tensor(GRID, dtype=pts.dtype, device=pts.device).expand(*pts.shape[:-1], len(GRID))
    return torch.sort(torch.cat([grid, pts], dim=-1), dim=-1).values


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


_MAXEXP = {torch.float64: 1024, torch.float32: 128}


def _stored(t: Tensor) -> Tensor:
    """The distinct elements of a broadcast view (stride-0 dimensions collapsed): cheap to reduce."""
    return t[tuple(0 if st == 0 and n > 1 else slice(None) for st, n in zip(t.stride(), t.shape, strict=True))]


def scaled_covariance(
    var1: Tensor, cov: Tensor, var2: Tensor, *, upward_only: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(v1 p^2, c p^2, v2 p^2, p)`` broadcast, the covariance scaled by an exact power of two ``p^2 = 2^(-2j)``.

    Dual maps form products of the entries (``det = v1 v2 - c^2``), which overflow or underflow in
    float64 once ``g = sqrt(v1 v2)`` leaves ``[1e-154, 1e154]`` (NaN at variance 3e299, the angle of
    two rows of variance 3e-301 lost). With ``2^(2j) ~ g`` the scaled entries have ``v1' v2' ~ 1`` and
    ``|c'| <= ~1``, so ``det' = v1' v2' - c'^2`` is formed in range, and

        det = det' / p^4,   sqrt(det) = sqrt(det') / p^2,   atan2(sqrt(det), c) = atan2(sqrt(det'), c').

    Multiplying by a power of two is exact (no rounding; nothing here becomes subnormal), so exact
    duplicates ``c = v1 = v2`` keep ``det' = 0`` bit for bit. Where ``g`` is inside
    ``[2^-(E/4), 2^(E/4)]`` (``E``: the largest binary exponent; 1e-77 .. 1e77 in float64) ``j = 0``,
    ``p = 1``: the entry is unchanged and every formula gives the bits it gave without scaling. When
    every nonzero variance is inside that range (one reduction over the variances), ``p`` is ``None``
    and nothing is scaled (the usual case: no cost). ``upward_only`` keeps ``j >= 0`` (for maps of the
    form ``1 + v1 + v2 + det``, where tiny variances underflow nothing that matters). ``|j|`` is capped
    at ``E / 2 - 12`` so that ``p^-2`` is finite.
    """
    var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
    maxexp = _MAXEXP.get(cov.dtype) or math.frexp(torch.finfo(cov.dtype).max)[1]  # 1024 (float64), 128 (float32)
    if var1.numel() == 0:
        return var1, cov, var2, None
    mags = torch.cat([_stored(var1).reshape(-1), _stored(var2).reshape(-1)]).abs()
    out = mags > 2.0 ** (maxexp // 4)
    if not upward_only:
        out |= (mags < 2.0 ** -(maxexp // 4)) & (mags > 0)
    if not bool(out.any()):
        return var1, cov, var2, None
    _, e1 = torch.frexp(var1)
    _, e2 = torch.frexp(var2)
    total = e1 + e2  # ~ log2(v1 v2) = 2 log2 g
    lim = maxexp // 2 - 12
    j = torch.div(total, 4, rounding_mode="floor").clamp(-lim, lim)
    j = torch.where(total.abs() > maxexp // 2, j, torch.zeros_like(j))
    if upward_only:
        j = j.clamp_min(0)
    p = torch.exp2(-j.to(cov.dtype))
    return var1 * p * p, cov * p * p, var2 * p * p, p


def unscale(x: Tensor, p: Tensor | None, power: int) -> Tensor:
    """``x / p^power`` (``power`` may be negative) by exact steps of ``p``; ``x`` itself when ``p`` is None."""
    if p is None:
        return x
    for _ in range(abs(power)):
        x = x / p if power > 0 else x * p
    return x


def _factor(var1: Tensor, cov: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``s1, l21, l22`` of the Cholesky factor of ``[[v1, c], [c, v2]]`` (flattened, clipped).

    ``l22 = sqrt(det / v1)`` from the power-of-two scaled covariance (:func:`scaled_covariance`:
    ``det / v1 = (det' / v1') / p^2``), so two rows of variance ~1e-300 keep their angle.
    """
    v1 = var1.reshape(-1).clamp_min(0)
    v2 = var2.reshape(-1).clamp_min(0)
    c = cov.reshape(-1)
    s1 = v1.sqrt()
    l21 = _safe_div(c, s1)
    v1s, cs, v2s, p = scaled_covariance(v1, c, v2)
    det = (v1s * v2s - cs * cs).clamp_min(0)
    l22 = torch.where(v1 > 0, unscale(_safe_div(det, v1s).sqrt(), p, 1), v2.sqrt())
    return s1, l21, l22


def _outer_points(s1: Tensor, l21: Tensor, l22: Tensor, breakpoints: Sequence[float]) -> Tensor:
    """Outer split points (m, P): kinks of ``f(s1 z)`` and of ``H`` with layers at their scales."""
    outer: list[Tensor] = []
    steep = bool(s1.numel()) and float(s1.max()) > STEEP
    for b in breakpoints:
        at_f = _safe_div(torch.full_like(s1, b), s1)
        outer.append(at_f)
        if steep:  # f(s1 z) varies on the scale 1 / s1 around its breakpoint
            inv = _safe_div(torch.ones_like(s1), s1)
            outer.extend(at_f + k * sgn * inv for k in LAYERS for sgn in (-1.0, 1.0))
        centre = _safe_div(torch.full_like(l21, b), l21)
        if b != 0:
            outer.append(centre)
        width = _safe_div(l22, l21.abs())
        outer.extend(centre + k * sgn * width for k in LAYERS for sgn in (-1.0, 1.0))
    return torch.stack(outer, dim=-1)


def _inner_points(mean: Tensor, l22: Tensor, breakpoints: Sequence[float]) -> Tensor:
    """Inner split points (m, n1, P) at ``(b - l21 z1) / l22`` (with layers when ``g`` is steep)."""
    scale = l22[:, None].expand_as(mean)
    steep = bool(l22.numel()) and float(l22.max()) > STEEP
    inner: list[Tensor] = []
    for b in breakpoints:
        at_g = _safe_div(b - mean, scale)
        inner.append(at_g)
        if steep:
            inv = _safe_div(torch.ones_like(scale), scale)
            inner.extend(at_g + k * sgn * inv for k in LAYERS for sgn in (-1.0, 1.0))
    return torch.stack(inner, dim=-1)


def _expect_chunk(
    evaluate: Callable[[Tensor], tuple[Tensor, ...]],
    s1: Tensor,
    l21: Tensor,
    l22: Tensor,
    breakpoints: Sequence[float],
    x: Tensor,
    w: Tensor,
) -> list[Tensor]:
    """``[E[f_k(u) f_k(v)]]_k`` for one chunk of entries; ``evaluate`` returns the tuple ``(f_k(x))_k``."""
    z1, w1 = _panel_nodes(_edges(_outer_points(s1, l21, l22, breakpoints)), x, w)  # (m, n1)
    mean = l21[:, None] * z1  # (m, n1)
    z2, w2 = _panel_nodes(_edges(_inner_points(mean, l22, breakpoints)), x, w)  # (m, n1, n2)
    fu = evaluate(s1[:, None] * z1)
    gv = evaluate(torch.addcmul(mean[..., None], l22[:, None, None], z2))
    out = []
    for f, g in zip(fu, gv, strict=True):
        inner_mean = torch.linalg.vecdot(g, w2)  # (m, n1): E[g(v) | z1]
        out.append(torch.linalg.vecdot(f * w1, inner_mean))
    return out


def _expect_many(
    evaluate: Callable[[Tensor], tuple[Tensor, ...]],
    count: int,
    var1: Tensor,
    cov: Tensor,
    var2: Tensor,
    breakpoints: Sequence[float],
    nodes: int,
    name: str,
) -> list[Tensor]:
    var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
    shape, dtype, device = var1.shape, var1.dtype, var1.device
    s1, l21, l22 = _factor(var1, cov, var2)
    x, w = unit_rule(nodes, dtype, device)
    bps = tuple(float(b) for b in breakpoints) or (0.0,)
    n1 = nodes * (len(GRID) + 4 * len(LAYERS) * len(bps) + 2 * len(bps))
    n2 = nodes * (len(GRID) + (1 + 2 * len(LAYERS)) * len(bps))
    step = max(1, _CHUNK_ELEMENTS // (n1 * n2))
    outs = [torch.empty_like(s1) for _ in range(count)]
    scale = torch.maximum(s1.max(), (l21.abs() + l22).max()) if s1.numel() else s1.sum()
    for start in range(0, s1.numel(), step):
        sl = slice(start, start + step)
        for out, val in zip(outs, _expect_chunk(evaluate, s1[sl], l21[sl], l22[sl], bps, x, w), strict=True):
            out[sl] = val
    _check_finite(outs, name, scale)
    return [o.reshape(shape) for o in outs]


def gaussian_expectation(
    fn: Pointwise,
    var1: Tensor,
    cov: Tensor,
    var2: Tensor,
    *,
    breakpoints: Sequence[float] = (0.0,),
    nodes: int = DEFAULT_NODES,
    name: str = "activation",
    return_error: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``E[fn(u) fn(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])`` by split composite quadrature.

    Parameters
    ----------
    fn : callable
        Elementwise function on tensors, smooth between its ``breakpoints``.
    var1, cov, var2 : Tensor
        Broadcastable to a common shape ``S``; ``var1, var2 >= 0`` and ``cov^2 <= var1 var2``
        (rounding violations are clipped).
    breakpoints : sequence of float
        Where ``fn`` (or its derivative) has kinks or jumps.
    nodes : int
        Gauss-Legendre nodes per panel (per dimension).
    return_error : bool
        Also return an error estimate ``|Q(nodes) - Q(nodes // 2)|`` of shape ``S``.

    Returns
    -------
    Tensor of shape ``S`` (and its error estimate when ``return_error``).

    Examples
    --------
    >>> import torch
    >>> one = torch.ones((), dtype=torch.float64)
    >>> relu = gaussian_expectation(torch.relu, one, 0 * one, one)  # E[relu(u) relu(v)], u, v indep.
    >>> round(float(relu), 12) == round(1 / (2 * 3.141592653589793), 12)
    True
    """

    def evaluate(t: Tensor) -> tuple[Tensor, ...]:
        return _checked(fn, t, name)

    (value,) = _expect_many(evaluate, 1, var1, cov, var2, breakpoints, nodes, name)
    if not return_error:
        return value
    (coarse,) = _expect_many(evaluate, 1, var1, cov, var2, breakpoints, max(2, nodes // 2), name)
    return value, (value - coarse).abs()


def gaussian_dual(
    value_and_grad: ValueAndGrad,
    var1: Tensor,
    cov: Tensor,
    var2: Tensor,
    *,
    breakpoints: Sequence[float] = (0.0,),
    nodes: int = DEFAULT_NODES,
    name: str = "activation",
) -> tuple[Tensor, Tensor]:
    """``(E[f(u) f(v)], E[f'(u) f'(v)])`` sharing one set of nodes; ``value_and_grad(x) = (f(x), f'(x))``."""

    def evaluate(t: Tensor) -> tuple[Tensor, ...]:
        return _checked(value_and_grad, t, name)

    nngp, deriv = _expect_many(evaluate, 2, var1, cov, var2, breakpoints, nodes, name)
    return nngp, deriv


def gaussian_expectation_1d(
    fn: Pointwise,
    var: Tensor,
    *,
    breakpoints: Sequence[float] = (0.0,),
    nodes: int = DEFAULT_NODES,
    name: str = "activation",
) -> Tensor:
    """``E[fn(u)]`` for ``u ~ N(0, var)`` (any shape), by the same split composite rule in 1-D."""
    v = var.clamp_min(0)
    s = v.reshape(-1).sqrt()
    x, w = unit_rule(nodes, v.dtype, v.device)
    bps = tuple(float(b) for b in breakpoints) or (0.0,)
    pts = _outer_points(s, torch.zeros_like(s), torch.zeros_like(s), bps)
    z, wz = _panel_nodes(_edges(pts), x, w)
    (fz,) = _checked(fn, s[:, None] * z, name)
    out = (fz * wz).sum(-1)
    _check_finite([out], name, s if s.numel() else torch.zeros(1, dtype=s.dtype))
    return out.reshape(var.shape)
