"""Parameter drawing shared by the weight layers of :mod:`ntkit.nn`.

NTK parameterization (Jacot et al. 2018): every weight and bias entry is drawn i.i.d. N(0, 1) and the
forward pass multiplies ``W a`` by ``w_std / sqrt(fan_in)`` and ``b`` by ``b_std``. Standard
parameterization: the same function at initialisation, with the scales folded into the parameters
(``W ~ N(0, w_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``) and a forward pass ``W a + b``. Both give
the same NNGP; their NTKs differ (see :mod:`ntkit.infinite`).

``init="orthogonal"`` draws each weight matrix (a convolution's as ``(out, in * taps)``) as a
Haar-random semi-orthogonal matrix scaled to unit-variance entries (Huang et al. 2020): its
infinite-width kernels are those of the Gaussian draw.
"""

from __future__ import annotations

import math

import torch

from ntkit._validation import check_choice, check_float, describe

Tensor = torch.Tensor

PARAMETERIZATIONS = ("ntk", "standard")
INITS = ("gaussian", "orthogonal")


def orthogonal_(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``weight`` (out, in) with a Haar-random semi-orthogonal matrix scaled to unit-variance entries.

    The rows (if ``out <= in``) or columns are orthonormal, multiplied by ``sqrt(max(out, in))`` so
    that ``E[W_ij^2] = 1`` as for the Gaussian draw. Sign-corrected QR of a Gaussian matrix gives the
    Haar measure (Mezzadri 2007).

    Parameters
    ----------
    weight : Tensor of shape (out, in)
        Filled in place (a convolution's weight as ``weight.view(out, -1)``); drawn in float64, then
        cast to its dtype.
    generator : torch.Generator, optional
        The random draw (torch's global generator when omitted).

    Returns
    -------
    Tensor
        ``weight``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.nn import orthogonal_
    >>> w = orthogonal_(torch.empty(3, 5), torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(w @ w.T, 5 * torch.eye(3), atol=1e-5))  # orthonormal rows times sqrt(5)
    True
    """
    rows, cols = weight.shape
    big, small = max(rows, cols), min(rows, cols)
    g = torch.randn(big, small, generator=generator, dtype=torch.float64, device=weight.device)
    q, r = torch.linalg.qr(g)
    d = torch.diagonal(r)
    q = q * torch.where(d != 0, torch.sign(d), torch.ones((), dtype=q.dtype, device=q.device))
    if rows < cols:
        q = q.T
    with torch.no_grad():
        weight.copy_(q * math.sqrt(big))
    return weight


def check_layer_options(
    w_std: float, b_std: float, parameterization: str, init: str, generator: torch.Generator | None
) -> tuple[float, float, str, str]:
    """Validate the options every weight layer takes (``expected ..., got ...`` errors)."""
    w_std = check_float(w_std, "w_std", minimum=0.0, strict=True)
    b_std = check_float(b_std, "b_std", minimum=0.0)
    parameterization = check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
    init = check_choice(init, "init", INITS)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {describe(generator)}")
    return w_std, b_std, parameterization, init


def draw_(
    weight: Tensor, bias: Tensor | None, *, fan_in: int, w_std: float, b_std: float, parameterization: str,
    init: str, generator: torch.Generator | None,
) -> None:
    """Draw ``weight`` (out, ...) and ``bias`` in place; nothing on the ``meta`` device (no memory there)."""
    if weight.device.type == "meta":
        return
    with torch.no_grad():
        if init == "orthogonal":
            orthogonal_(weight.view(weight.shape[0], -1), generator)
        else:
            weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float64, device=weight.device))
        if bias is not None:
            bias.copy_(torch.randn(bias.shape, generator=generator, dtype=torch.float64, device=bias.device))
        if parameterization == "standard":
            weight.mul_(w_std / math.sqrt(fan_in))
            if bias is not None:
                bias.mul_(b_std)
