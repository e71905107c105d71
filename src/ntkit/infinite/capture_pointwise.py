"""Values of a captured forward that are one pointwise function of an earlier value (:mod:`ntkit.infinite.capture`).

A link (:class:`~ntkit.infinite.capture_links.Link`) whose steps from an earlier value ``u`` are activations,
multiplications by constants and identities (eval-mode dropout, ``contiguous``) is ``g(u)`` for one pointwise
``g`` (an :data:`~ntkit.activations.composite.Expr`); so is a sum, difference or product of such values of the
same ``u``, and a composition of them. :meth:`PointwiseForms.form` traces a link back to its *base* -- the
nearest value not computed so, i.e. the last node that is Gaussian where the network's graph allows it (a
weight layer's output; the data itself, which the prelude transforms deterministically) -- and returns the
expression of ``g``. :meth:`PointwiseForms.lift` makes the merged or scaled value one activation module of
the base, ``ntkit.nn.Activation(composite(g))`` (:func:`~ntkit.activations.composite.composite`: the
arc-cosine closed form for the piecewise-linear ``g`` of the ReLU family), whose kernel is ``g``'s dual
map. Whether the base is Gaussian is checked by the walk (an activation receiving a non-Gaussian input is
refused there, named).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx
from torch import nn

from ntkit.activations.composite import LEAF, Applied, Expr, Product, Scaled, Sum, composite, nonlinear, substitute
from ntkit.infinite.capture_links import Link, between, computed
from ntkit.infinite.ops.activation_modules import activation_of
from ntkit.infinite.ops.registry import is_pass_through
from ntkit.nn.structure import Activation

Step = Callable[[Expr], Expr]


def _identity(e: Expr) -> Expr:
    return e


class PointwiseForms:
    """The pointwise form of the links of one captured graph (see the module notes)."""

    def __init__(self, qual: Callable[[str], str]) -> None:
        self.qual = qual
        self.exprs: dict[nn.Module, Expr] = {}  # the lifted activation modules -> their expression

    def step(self, module: nn.Module | None) -> Step | None:
        """The expression map of one item (None: the module is not pointwise)."""
        if module is None or is_pass_through(module):
            return _identity
        lifted = self.exprs.get(module)
        if lifted is not None:
            return lambda e: substitute(lifted, e)
        fn = activation_of(module)
        if fn is None:
            return None
        return lambda e: Applied(fn, e)

    def form(self, link: Link) -> tuple[Link, Expr] | None:
        """``(base, g)`` with ``link = g(base)``, the base the nearest value on the chain not computed by pointwise
        steps (``link`` itself if its own items are not pointwise: ``g = u``); None for a pending scale of a
        value that is not pointwise (not a function of one earlier value)."""
        steps = [self.step(module) for _, module in link.items]
        if link.prev is None or any(s is None for s in steps):
            return (link, LEAF) if link.scale is None else None
        found = self.form(link.prev)
        if found is None:
            return None
        base, expr = found
        for s in steps:
            assert s is not None
            expr = s(expr)
        return base, expr if link.scale is None else Scaled(link.scale, expr)

    def lift(self, node: fx.Node, base: Link, expr: Expr, inner: frozenset[fx.Node]) -> Link:
        """The link ``node = g(base)``: one activation module applying ``composite(expr)``."""
        module = Activation(composite(expr))
        self.exprs[module] = expr
        return Link(node, base, ((self.qual(node.name), module),), inner=inner)

    def apply(self, node: fx.Node, link: Link, module: nn.Module | None) -> Link:
        """``node = module(link)`` for a pointwise ``module`` (:meth:`step`) and a ``link`` with a pending scale:
        ``sigma(c x)`` is one activation of ``x``'s base; an identity keeps the scale pending."""
        step = self.step(module)
        found = self.form(link)
        assert step is not None and link.scale is not None and link.prev is not None
        if step is _identity or found is None:
            return Link(node, link.prev, link.items, scale=link.scale, inner=computed(link))
        base, expr = found
        return self.lift(node, base, step(expr), between(link, base)[1])

    def fold(self, link: Link) -> Link | None:
        """A pending scale taken by a step that is not pointwise: ``c g(base)`` lifted to one activation of the
        base where ``g`` holds an activation, a sum or a product; None for ``c`` times a value that is not
        pointwise (a constant scaling of a weight layer's output: not supported)."""
        found = self.form(link)
        if found is None or not nonlinear(found[1]):
            return None
        base, expr = found
        return self.lift(link.node, base, expr, between(link, base)[1])

    def merge(self, node: fx.Node, operands: list[tuple[Link, float]], rule: str) -> Link | None:
        """``sum_i c_i a_i`` (``rule="sum"``) or ``prod_i c_i a_i`` (``"prod"``) of operands that are pointwise
        functions of one base: one activation of that base; None where their bases differ."""
        forms = [self.form(link) for link, _ in operands]
        found = [f for f in forms if f is not None]
        if len(found) < len(forms) or any(f[0] is not found[0][0] for f in found):
            return None
        base = found[0][0]
        exprs = tuple(e if c == 1.0 else Scaled(c, e) for (_, e), (_, c) in zip(found, operands, strict=True))
        inner = frozenset().union(*(between(link, base)[1] for link, _ in operands))
        return self.lift(node, base, Sum(exprs) if rule == "sum" else Product(exprs), inner)


def pointwise_module(module: nn.Module) -> bool:
    """Whether ``module`` is an activation or the identity (a step a pointwise function may take)."""
    return is_pass_through(module) or activation_of(module) is not None


__all__ = ["PointwiseForms", "pointwise_module"]
