"""The arc-cosine closed form of the ABReLU family (ReLU, leaky ReLU, abs): its one definition and constants.

For ``sigma(x) = a min(x, 0) + b max(x, 0)``, ``d = b - a`` and ``(u, v) ~ N(0, [[v1, c], [c, v2]])``,
with ``sqrt(det) = sqrt(max(v1 v2 - c^2, 0))`` and ``pi - theta = atan2(sqrt(det), -c)`` in ``[0, pi]``
(the arc-cosine kernels of degree 1 and 0; Cho & Saul 2009):

    s E[sigma(u) sigma(v)]   = k1 (sqrt(det) + (pi - theta) c) + k2 c
    s E[sigma'(u) sigma'(v)] = ks (ka (pi - theta) p1 p2 + kb (p1 + p2) + kc),       p = [v > 0]

with ``k1 = s d^2 / (2 pi)``, ``k2 = s a b`` and, unfactored, ``ka = s d^2 / (2 pi)``, ``kb = s a d / 2``,
``kc = s a^2``, ``ks = 1`` (:func:`abrelu_constants`; ``s`` is a layer's ``w_std^2``, 1 for the dual map).
The zero-variance convention ``p = 0`` is ``step(0) = 0``, PyTorch's derivative at 0.

Every evaluation of these kernels uses this module: the dual maps of
:class:`~ntkit.activations.ABReLU` and the fused fully connected recursion of
:mod:`ntkit.infinite.fused` call :func:`abrelu_closed_form`; the compiled loops (``_fc_native.c``,
``_cntk_native.c``) run the same arithmetic with the constants of :func:`abrelu_constants`, which
:mod:`ntkit.infinite.native` and :mod:`ntkit.infinite.conv_fast` pass to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ntkit._validation import check_float

Tensor = torch.Tensor


class ABReLUConstants(NamedTuple):
    """Constants of the ABReLU closed form (see the module docstring for the two formulas).

    The first five, in this order, are the ``ACT`` record of ``_cntk_native.c`` (unfactored, ``ks = 1``);
    ``(k1, k2, ka, kb, kc, ks)`` are those of ``_fc_native.c`` (with the bias variance beside them).

    Attributes
    ----------
    k1 : float
        ``s d^2 / (2 pi)``: coefficient of ``sqrt(det) + (pi - theta) c`` in the NNGP map.
    k2 : float
        ``s a b``: coefficient of ``c`` in the NNGP map.
    ka, kb, kc : float
        Coefficients of ``(pi - theta) p1 p2``, ``p1 + p2`` and 1 in the derivative map.
    ks : float
        Factor of the derivative map.
    """

    k1: float
    k2: float
    ka: float
    kb: float
    kc: float
    ks: float


def abrelu_constants(a: float, b: float, scale: float = 1.0, *, factored: bool = False) -> ABReLUConstants:
    """The constants of ``scale E[sigma sigma]`` and ``scale E[sigma' sigma']`` for ``sigma = ABReLU(a, b)``.

    Parameters
    ----------
    a, b : float
        Slopes for ``x < 0`` and ``x > 0``.
    scale : float
        Factor ``s >= 0`` of both maps (a layer's ``w_std^2``; 1 for the maps themselves).
    factored : bool
        False: ``ka = s d^2 / (2 pi)``, ``kb = s a d / 2``, ``kc = s a^2``, ``ks = 1``. True: the common
        factor of the derivative map is taken out, ``ks = s`` with the unscaled ``ka, kb, kc``, or, for
        ``a = 0`` (ReLU: one term), ``ka = 1``, ``kb = kc = 0``, ``ks = s d^2 / (2 pi)``; evaluating
        ``ks g`` then costs a pass less per layer.

    Returns
    -------
    ABReLUConstants

    Raises
    ------
    TypeError, ValueError
        ``a``, ``b`` or ``scale`` is not a finite real number, or ``scale < 0``.

    Examples
    --------
    >>> from ntkit.activations.arccos import abrelu_constants
    >>> abrelu_constants(0.0, 1.0)  # ReLU
    ABReLUConstants(k1=0.15915494309189535, k2=0.0, ka=0.15915494309189535, kb=0.0, kc=0.0, ks=1.0)
    >>> abrelu_constants(0.0, 1.0, 2.0, factored=True)
    ABReLUConstants(k1=0.3183098861837907, k2=0.0, ka=1.0, kb=0.0, kc=0.0, ks=0.3183098861837907)
    """
    a, b = check_float(a, "a"), check_float(b, "b")
    scale = check_float(scale, "scale", minimum=0.0)
    d = b - a
    k1, k2 = scale * d * d / (2 * math.pi), scale * a * b
    if not factored:
        return ABReLUConstants(k1, k2, k1, scale * 0.5 * a * d, scale * a * a, 1.0)
    if a == 0.0:
        return ABReLUConstants(k1, k2, 1.0, 0.0, 0.0, k1)
    return ABReLUConstants(k1, k2, d * d / (2 * math.pi), 0.5 * a * d, a * a, scale)


def abrelu_closed_form(
    var1: Tensor, var2: Tensor, cov: Tensor, k: ABReLUConstants, *, nngp: bool = True, derivative: bool = True,
    shift: float = 0.0, shape: tuple[int, ...] | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """The ABReLU arc-cosine kernels: ``(k1 (sqrt(det) + (pi - theta) c) + k2 c + shift, g)``.

    ``g = ka (pi - theta) p1 p2 + kb (p1 + p2) + kc``, so that ``s E[sigma' sigma'] = ks g``; with
    ``kb = kc = 0`` and ``ka = 1`` (factored ReLU) ``g`` is ``pi - theta`` itself where every variance is
    positive. Masks multiply by 1.0 and add 0.0 exactly, so an entry's value does not depend on the
    other entries (nor on a tiling). No fused multiply-add in ``det``: a duplicated input
    (``c == v1 == v2``) gives ``det = 0`` exactly, hence angle 0. Intermediate results overwrite the
    buffers made here (no new tile-sized tensor per step), except where autograd records the inputs
    (plain tensors that require grad): then every step makes a new tensor, with the same values.

    Parameters
    ----------
    var1, var2, cov : Tensor
        Variances and covariance, broadcast together (``shape=None``). With ``shape``, ``cov`` is a
        flat buffer whose first ``prod(shape)`` entries are the entries of ``shape`` (the rest padding,
        computed alike and never read), and ``var1``, ``var2`` broadcast to ``shape`` (e.g. (t1, 1) and
        (1, t2)); the outputs are flat buffers of the same length.
    k : ABReLUConstants
        From :func:`abrelu_constants`.
    nngp, derivative : bool
        Which of the two kernels to return (the other is None).
    shift : float
        Added to the NNGP map (a layer's bias variance).
    shape : tuple of int, optional
        The shape of the entries of a flat ``cov``; None for plain tensors.

    Returns
    -------
    (Tensor or None, Tensor or None)
        The NNGP map and ``g``, of the broadcast shape (or flat, with ``shape``).

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations.arccos import abrelu_closed_form, abrelu_constants
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> e, g = abrelu_closed_form(one, one, zero, abrelu_constants(0.0, 1.0))  # ReLU, orthogonal unit inputs
    >>> round(float(e), 12), float(g)  # 1 / (2 pi), P(u > 0, v > 0) = 1/4
    (0.159154943092, 0.25)
    """
    view: Callable[[Tensor], Tensor]
    pos1, pos2 = var1 > 0, var2 > 0  # before broadcasting: per row, not per entry
    if shape is None:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (var1, cov, var2))
        prod = var1 * var2
        view = _whole
    else:
        n = math.prod(shape)
        grad = False

        def view(t: Tensor) -> Tensor:
            return t[:n].view(shape)

        prod = torch.empty_like(cov)
        prod[n:] = 0
        torch.mul(var1, var2, out=view(prod))

    def into(t: Tensor) -> Tensor | None:  # where a step writes its result: over t, or a new tensor under autograd
        return None if grad else t

    tmp = cov * cov
    root = torch.sub(prod, tmp, out=into(prod))
    root = torch.sqrt(torch.clamp_min(root, 0, out=into(root)), out=into(root))  # sqrt(det)
    pmt = torch.atan2(root, torch.neg(cov, out=into(tmp)), out=into(tmp))  # pi - theta = atan2(sqrt(det), -c)
    g = _derivative(pmt, pos1, pos2, k, view, into) if derivative else None
    if not nngp:
        return None, g
    out = torch.addcmul(root, pmt, cov, out=into(root))
    out = torch.mul(out, k.k1, out=into(out))
    if k.k2 != 0.0:
        out = torch.add(out, cov, alpha=k.k2, out=into(out))
    if shift != 0.0:
        out = torch.add(out, shift, out=into(out))
    return out, g


def _whole(t: Tensor) -> Tensor:
    return t


def _derivative(
    pmt: Tensor, pos1: Tensor, pos2: Tensor, k: ABReLUConstants, view: Callable[[Tensor], Tensor],
    into: Callable[[Tensor], Tensor | None],
) -> Tensor:
    """``ka (pi - theta) p1 p2 + kb (p1 + p2) + kc`` (``pmt`` itself where that is the value).

    The masks act on ``view(g)``, the entries of a padded buffer (the buffer is returned); without
    padding ``view`` is :func:`_whole` and the result of the last step is returned.
    """
    all_pos = bool(pos1.all()) and bool(pos2.all())
    if k.kb == 0.0 and k.kc == 0.0:  # a = 0: one term
        g = pmt if k.ka == 1.0 else pmt * k.ka
        if all_pos:
            return g
        g = pmt.clone() if g is pmt else g
        gv = torch.mul(view(g), pos1 & pos2, out=into(view(g)))
        return gv if view is _whole else g
    g = pmt * k.ka
    if all_pos:
        return torch.add(g, 2 * k.kb + k.kc, out=into(g))  # (p1 + p2) kb + kc at p1 = p2 = 1
    gv = torch.mul(view(g), pos1 & pos2, out=into(view(g)))
    gv = torch.add(gv, (pos1.to(g.dtype) + pos2.to(g.dtype)) * k.kb + k.kc, out=into(gv))
    return gv if view is _whole else g


__all__ = ["ABReLUConstants", "abrelu_closed_form", "abrelu_constants"]
