"""One pointwise function built from activations: their sums, products, compositions and constant factors.

A value computed from one node ``u`` by activations, multiplications by constants and sums, differences or
products of such values -- ``u + relu(u)``, ``relu(u) - 0.3 tanh(u)``, ``relu(u) * tanh(u)``,
``relu(u) + relu(relu(u))`` -- is one pointwise function ``g(u)``. Where ``u`` is a centred Gaussian process
its kernels are ``g``'s dual maps, ``K' = E[g(u) g(v)]`` and ``T' = T E[g'(u) g'(v)]`` for
``(u, v) ~ N(0, [[K(x, x), K(x, x')], [K(x, x'), K(x', x')]])``, like any activation's.

An :data:`Expr` describes ``g``: :class:`Leaf` (``u`` itself), :class:`Scaled` (``c e``), :class:`Applied`
(``sigma(e)``), :class:`Sum` and :class:`Product`. :func:`composite` turns it into the activation:

* a positively homogeneous piecewise-linear ``g`` -- built from ``u``, constant factors, sums and the
  ABReLU family (ReLU, leaky ReLU, abs, :class:`~ntkit.activations.ABReLU`) and the identity, composed in
  any order -- is ``ABReLU(a, b)`` with ``a = -g(-1)``, ``b = g(1)``: the arc-cosine closed form, exactly
  (:mod:`ntkit.activations.arccos`);
* a single activation is that activation; ``u`` alone is the identity;
* anything else is a :class:`Composite`, a :class:`~ntkit.activations.CallableActivation` whose dual maps
  come from the general path like any callable's (the Mehler expansion with a certified truncation bound,
  or split composite Gauss-Legendre quadrature where ``g`` is declared non-smooth or kinks off 0; about
  ``1e-9`` relative or better at unit variance with 16 nodes per panel, see
  docs/user_guide/activations_accuracy.md). Its derivative is the chain and product rules applied to each
  component's own derivative, its breakpoints (where the quadrature splits) those of every component pulled
  back through the inner functions, its homogeneity degree the components' combined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ntkit.activations.base import CallableActivation, DualActivation
from ntkit.activations.closed_form import ABReLU, Identity

Tensor = torch.Tensor


@dataclass(frozen=True)
class Leaf:
    """The node ``u`` itself."""


@dataclass(frozen=True)
class Scaled:
    """``c e``."""

    c: float
    inner: Expr


@dataclass(frozen=True, eq=False)
class Applied:
    """``sigma(e)`` for the activation ``fn``."""

    fn: DualActivation
    inner: Expr


@dataclass(frozen=True)
class Sum:
    """``e_1 + e_2 + ...``."""

    terms: tuple[Expr, ...]


@dataclass(frozen=True)
class Product:
    """``e_1 e_2 ...``."""

    factors: tuple[Expr, ...]


Expr = Leaf | Scaled | Applied | Sum | Product
LEAF = Leaf()


def substitute(expr: Expr, inner: Expr) -> Expr:
    """``expr`` with ``inner`` in place of ``u``: ``expr(inner(u))``."""
    if isinstance(expr, Leaf):
        return inner
    if isinstance(expr, Scaled):
        return Scaled(expr.c, substitute(expr.inner, inner))
    if isinstance(expr, Applied):
        return Applied(expr.fn, substitute(expr.inner, inner))
    if isinstance(expr, Sum):
        return Sum(tuple(substitute(t, inner) for t in expr.terms))
    return Product(tuple(substitute(f, inner) for f in expr.factors))


def chain(fns: Sequence[DualActivation], inner: Expr = LEAF) -> Expr:
    """``fns[-1](... fns[0](inner))``."""
    for fn in fns:
        inner = Applied(fn, inner)
    return inner


def nonlinear(expr: Expr) -> bool:
    """Whether ``expr`` holds an activation, a sum or a product (not just ``c u``)."""
    while isinstance(expr, Scaled):
        expr = expr.inner
    return not isinstance(expr, Leaf)


def slopes(expr: Expr) -> tuple[float, float] | None:
    """``(a, b)`` with ``g(x) = a min(x, 0) + b max(x, 0)`` where ``g`` is positively homogeneous piecewise
    linear by construction (else None)."""
    if isinstance(expr, Leaf):
        return 1.0, 1.0
    if isinstance(expr, Scaled):
        inner = slopes(expr.inner)
        return None if inner is None else (expr.c * inner[0], expr.c * inner[1])
    if isinstance(expr, Sum):
        parts = [slopes(t) for t in expr.terms]
        if any(p is None for p in parts):
            return None
        return sum(p[0] for p in parts if p is not None), sum(p[1] for p in parts if p is not None)
    if isinstance(expr, Applied):
        inner = slopes(expr.inner)
        if inner is None:
            return None
        if isinstance(expr.fn, Identity):
            return inner
        if isinstance(expr.fn, ABReLU):
            a, b = inner  # x < 0: the inner value a x is > 0 iff a < 0; x > 0: b x is > 0 iff b > 0
            fa, fb = expr.fn.a, expr.fn.b
            return (fb if a < 0 else fa) * a, (fb if b > 0 else fa) * b
    return None


def evaluate(expr: Expr, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(g(x), g'(x))``: each component's own value and derivative, by the chain and product rules."""
    if isinstance(expr, Leaf):
        return x, torch.ones_like(x)
    if isinstance(expr, Scaled):
        v, d = evaluate(expr.inner, x)
        return v * expr.c, d * expr.c
    if isinstance(expr, Applied):
        v, d = evaluate(expr.inner, x)
        fv, fd = expr.fn.value_and_derivative(v)
        return fv, fd * d
    if isinstance(expr, Sum):
        parts = [evaluate(t, x) for t in expr.terms]
        value, slope = parts[0]
        for v, d in parts[1:]:
            value, slope = value + v, slope + d
        return value, slope
    parts = [evaluate(f, x) for f in expr.factors]
    value, slope = parts[0]
    for v, d in parts[1:]:
        value, slope = value * v, slope * v + value * d
    return value, slope


def describe(expr: Expr) -> str:
    """The formula, e.g. ``u + relu(u)``."""
    if isinstance(expr, Leaf):
        return "u"
    if isinstance(expr, Scaled):
        inner = describe(expr.inner)
        inner = f"({inner})" if isinstance(expr.inner, (Sum, Product)) else inner
        return f"-{inner}" if expr.c == -1.0 else f"{expr.c!r}*{inner}"
    if isinstance(expr, Applied):
        return f"{expr.fn.name}({describe(expr.inner)})"
    if isinstance(expr, Sum):
        return " + ".join(describe(t) for t in expr.terms).replace("+ -", "- ")
    return " * ".join(f"({describe(f)})" if isinstance(f, Sum) else describe(f) for f in expr.factors)


def _components(expr: Expr) -> list[DualActivation]:
    if isinstance(expr, Leaf):
        return []
    if isinstance(expr, Scaled):
        return _components(expr.inner)
    if isinstance(expr, Applied):
        return [*_components(expr.inner), expr.fn]
    parts = expr.terms if isinstance(expr, Sum) else expr.factors
    return [fn for p in parts for fn in _components(p)]


def degree(expr: Expr) -> int | None:
    """``k`` with ``g(s x) = s^k g(x)`` for ``s > 0`` (None: not homogeneous, or unknown)."""
    if isinstance(expr, Leaf):
        return 1
    if isinstance(expr, Scaled):
        return degree(expr.inner)
    if isinstance(expr, Applied):
        inner, k = degree(expr.inner), expr.fn.homogeneous_degree
        return None if inner is None or k is None else inner * k
    parts = [degree(p) for p in (expr.terms if isinstance(expr, Sum) else expr.factors)]
    if any(k is None for k in parts):
        return None
    if isinstance(expr, Product):
        return sum(k for k in parts if k is not None)
    return parts[0] if all(k == parts[0] for k in parts) else None


#: Where the breakpoints of an outer activation are looked for through a nonlinear inner function.
_GRID = torch.cat([-torch.logspace(3, -6, 600, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-6, 3, 600, dtype=torch.float64)])


def _preimages(expr: Expr, p: float) -> list[float]:
    """The points ``x`` with ``expr(x) = p``: exact through piecewise-linear functions, else the sign changes
    of ``expr(x) - p`` on a grid of ``|x|`` in ``[1e-6, 1e3]`` (and 0) refined by bisection."""
    ab = slopes(expr)
    if ab is not None:
        a, b = ab
        out = [0.0] if p == 0.0 else []
        out += [p / b] if b != 0.0 and p / b > 0 else []
        out += [p / a] if a != 0.0 and p / a < 0 else []
        return out
    with torch.no_grad():
        y = evaluate(expr, _GRID)[0] - p
    found = [float(x) for x in _GRID[y == 0]]
    for i in torch.nonzero((y[:-1] * y[1:]) < 0).flatten().tolist():
        lo, hi = _GRID[i : i + 1].clone(), _GRID[i + 1 : i + 2].clone()
        y_lo = y[i]
        for _ in range(100):
            mid = (lo + hi) / 2
            y_mid = evaluate(expr, mid)[0] - p
            if bool((y_mid * y_lo) > 0):
                lo, y_lo = mid, y_mid[0]
            else:
                hi = mid
        found.append(float((lo + hi) / 2))
    return found


def breakpoints(expr: Expr) -> tuple[float, ...]:
    """Where ``g`` or ``g'`` may kink: 0 and each activation's breakpoints pulled back through its input."""
    points: set[float] = {0.0}

    def visit(e: Expr) -> None:
        if isinstance(e, Scaled):
            visit(e.inner)
        elif isinstance(e, Applied):
            visit(e.inner)
            for b in e.fn.breakpoints:
                points.update(_preimages(e.inner, float(b)))
        elif isinstance(e, (Sum, Product)):
            for part in e.terms if isinstance(e, Sum) else e.factors:
                visit(part)

    visit(expr)
    return tuple(sorted(points))


class Composite(CallableActivation):
    """The activation ``g`` of an expression (see the module notes); its kernels by the general path.

    Parameters
    ----------
    expr : Expr
        The function of ``u``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import ReLU, get_activation
    >>> g = Composite(Sum((Applied(get_activation("tanh"), LEAF), Applied(ReLU(), LEAF))))
    >>> g.name, g.breakpoints, g.homogeneous_degree
    ('tanh(u) + relu(u)', (0.0,), None)
    >>> g.value_and_derivative(torch.tensor([1.0]))[1]  # 1 - tanh(1)^2 + 1
    tensor([1.4200])
    """

    def __init__(self, expr: Expr) -> None:
        parts = _components(expr)
        smooth = False if any(fn.smooth is False for fn in parts) else None
        super().__init__(lambda x: evaluate(expr, x)[0], name=describe(expr), breakpoints=breakpoints(expr),
                         smooth=smooth)
        self.expr = expr
        self.has_derivative_map = all(fn.has_derivative_map for fn in parts)
        self.homogeneous_degree = degree(expr)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return evaluate(self.expr, x)

    def __repr__(self) -> str:
        return f"Composite({self.name})"


def composite(expr: Expr) -> DualActivation:
    """The activation applying ``expr``: ``ABReLU(a, b)`` (closed form) where ``expr`` is positively homogeneous
    piecewise linear, the activation itself for a single one, else a :class:`Composite`.

    Examples
    --------
    >>> from ntkit.activations import ReLU
    >>> composite(Sum((LEAF, Applied(ReLU(), LEAF))))  # u + relu(u)
    ABReLU(a=1.0, b=2.0)
    >>> composite(Applied(ReLU(), Applied(ReLU(), LEAF)))  # relu(relu(u))
    ABReLU(a=0.0, b=1.0)
    """
    ab = slopes(expr)
    if ab is not None:
        return ABReLU(*ab)
    if isinstance(expr, Applied) and isinstance(expr.inner, Leaf):
        return expr.fn
    return Composite(expr)


__all__ = ["LEAF", "Applied", "Composite", "Expr", "Leaf", "Product", "Scaled", "Sum", "breakpoints", "chain",
           "composite", "degree", "describe", "evaluate", "nonlinear", "slopes", "substitute"]
