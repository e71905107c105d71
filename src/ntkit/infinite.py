"""Infinite-width NNGP and NTK of fully connected networks (Jacot et al. 2018; Lee et al. 2018).

For the network of :class:`ntkit.FCNetwork` with ``depth`` hidden layers (``L = depth + 1``):

    Sigma(1)(x, x')    = w_std^2 x.x' / n0 + beta^2
    Sigma(l+1)(x, x')  = w_std^2 E_{g ~ N(0, Sigma(l))}[sigma(g(x)) sigma(g(x'))] + beta^2
    SigmaDot(l+1)      = w_std^2 E_{g ~ N(0, Sigma(l))}[sigma'(g(x)) sigma'(g(x'))]
    Theta(1)           = Sigma(1)
    Theta(l+1)         = Theta(l) SigmaDot(l+1) + Sigma(l+1)

and the kernel of the ``n_L`` outputs is ``Theta(L) (x) I_{n_L}``.
"""

from __future__ import annotations

from typing import Any

import torch

from ntkit._validation import check_dtype, check_float, check_int, check_pair
from ntkit.activations import Activation, get_activation
from ntkit.kernel import Kernel

Tensor = torch.Tensor


def duplicate_mask(x1: Tensor, x2: Tensor) -> Tensor:
    """Boolean (N1, N2) mask of pairs of bitwise-identical rows.

    Used to make ``Sigma(x, x') == Sigma(x, x)`` exactly for duplicated inputs, so that the
    arc-cosine angle of a duplicate pair is exactly 0 and no rounding enters through it.
    """
    both = torch.cat([x1, x2]).reshape(x1.shape[0] + x2.shape[0], -1)
    _, ids = torch.unique(both, dim=0, return_inverse=True)
    return ids[: x1.shape[0], None] == ids[None, x1.shape[0] :]


def input_kernel(x1: Tensor, x2: Tensor, *, beta: float, w_std: float) -> tuple[Tensor, Tensor, Tensor]:
    """Layer-1 covariances ``(var1, cov, var2)``: ``w_std^2 x.x'/n0 + beta^2`` (shapes (N1,), (N1, N2), (N2,))."""
    n0 = x1.shape[1]
    scale = w_std**2 / n0
    var1 = scale * (x1 * x1).sum(-1) + beta**2
    var2 = scale * (x2 * x2).sum(-1) + beta**2
    cov = scale * (x1 @ x2.T) + beta**2
    if x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2)):
        cov = 0.5 * (cov + cov.T)  # exactly symmetric; every later layer is elementwise and symmetric
    dup = duplicate_mask(x1, x2)
    if bool(dup.any()):
        cov = torch.where(dup, var1[:, None].expand_as(cov), cov)
    return var1, cov, var2


def fc_recursion(
    var1: Tensor,
    cov: Tensor,
    var2: Tensor,
    *,
    depth: int,
    activation: Activation,
    beta: float,
    w_std: float,
    compute_ntk: bool = True,
    symmetric: bool = False,
) -> Kernel:
    """Run the NNGP/NTK recursion for ``depth`` (activation, affine) layers from layer-1 covariances.

    ``symmetric=True`` (``x2`` is ``x1``) evaluates the dual maps on the upper triangle only and
    mirrors it, so the kernel is exactly symmetric and the general path costs half.
    """
    w2, b2 = w_std**2, beta**2
    ntk: Tensor | None = cov.clone() if compute_ntk else None
    n1, n2 = cov.shape[-2], cov.shape[-1]
    sym = symmetric and cov.ndim == 2 and n1 == n2
    iu = torch.triu_indices(n1, n2, device=cov.device) if sym else None
    if iu is not None:  # x1 @ x1.T need not be bitwise symmetric: mirror the upper triangle
        cov = cov.clone()
        cov[iu[1], iu[0]] = cov[iu[0], iu[1]]
        ntk = cov.clone() if compute_ntk else None
    for _ in range(depth):
        if iu is not None:
            m, d = activation.dual(var1[iu[0]], cov[iu[0], iu[1]], var2[iu[1]], derivative=ntk is not None)
            full_m = torch.empty_like(cov)
            full_m[iu[0], iu[1]] = m
            full_m[iu[1], iu[0]] = m
            mapped, sdot_raw = full_m, None
            if d is not None:
                sdot_raw = torch.empty_like(cov)
                sdot_raw[iu[0], iu[1]] = d
                sdot_raw[iu[1], iu[0]] = d
        else:
            mapped, sdot_raw = activation.dual(var1[:, None], cov, var2[None, :], derivative=ntk is not None)
        cov = w2 * mapped + b2
        var1 = w2 * activation.expect_diag(var1) + b2
        var2 = var1 if sym else w2 * activation.expect_diag(var2) + b2
        if ntk is not None:
            assert sdot_raw is not None
            ntk = ntk * (w2 * sdot_raw) + cov
    return Kernel(nngp=cov, ntk=ntk, var1=var1, var2=var2)


def fc_kernel(
    x1: Any,
    x2: Any | None = None,
    *,
    depth: int,
    activation: str | Activation | Any = "relu",
    beta: float = 0.0,
    w_std: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Kernel:
    """Infinite-width NNGP and NTK of a fully connected network with ``depth`` hidden layers.

    Each hidden layer is an affine map followed by ``activation``; the last layer is affine. The
    network is the NTK-parameterized one of :class:`ntkit.FCNetwork` (its NNGP is also that of the
    standard parameterization).

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
        Defaults to ``x1``.
    depth : int
        Number of hidden layers (``>= 0``; 0 gives the linear kernel ``Sigma(1)``).
    activation : str, Activation or callable
        Closed forms where available (see ``ntkit.activations.available_activations()`` and
        docs/activations.md); any other callable by the general path: the Mehler / Hermite
        expansion for smooth ones (truncation error certified below 1e-13 relative per layer in
        float64, entries it cannot certify by quadrature), split composite quadrature for kinked
        ones (accurate to ~1e-12 at unit variance); derivatives by autograd.
    beta : float
        Bias scale (``>= 0``).
    w_std : float
        Weight scale (``> 0``); ``Sigma(1) = w_std^2 x.x'/n0 + beta^2``.
    dtype : torch.dtype
        Computation dtype (float64 is the reference).

    Returns
    -------
    Kernel
        ``nngp`` and ``ntk`` of shape (N1, N2); ``kernel.blocks(n_L)`` gives ``Theta (x) I_{n_L}``.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> k = ntkit.fc_kernel(x, depth=1, activation="relu")
    >>> round(float(k.ntk[0, 1]), 6)  # Sigma(2) + Sigma(1) * SigmaDot(2) = 1/(4 pi) + 0 * 1/4
    0.079577
    """
    depth = check_int(depth, "depth", minimum=0)
    beta = check_float(beta, "beta", minimum=0.0)
    w_std = check_float(w_std, "w_std", minimum=0.0, strict=True)
    check_dtype(dtype)
    act = get_activation(activation)
    t1, t2 = check_pair(x1, x2, dtype=dtype, device=device)
    symmetric = t2 is None or (t1.shape == t2.shape and torch.equal(t1, t2))
    if t2 is None:
        t2 = t1
    var1, cov, var2 = input_kernel(t1, t2, beta=beta, w_std=w_std)
    return fc_recursion(
        var1,
        cov,
        var2,
        depth=depth,
        activation=act,
        beta=beta,
        w_std=w_std,
        compute_ntk=act.has_derivative_map,
        symmetric=symmetric,
    )
