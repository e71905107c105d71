"""Gradient-descent dynamics as scalar functions of the training kernel's eigenvalues, shared by
:func:`ntkit.predict.gradient_descent_mse` and :func:`ntkit.predict.gradient_descent_mse_ensemble`.
"""

from __future__ import annotations

import math
import warnings

import torch

from ntkit.predict._common import Layout
from ntkit.predict.learning_rate import warn_unstable_learning_rate
from ntkit.solve.eigen import EigenDecomposition, SingularKernelWarning, psd_eigh

Tensor = torch.Tensor


class SpectralDynamics:
    """Scalar functions of the training kernel's eigenvalues for the gradient-descent solution.

    ``eig`` is the eigendecomposition of the (regularised) training kernel, ``size = N k`` and
    ``rate = learning_rate / size``; :meth:`decay` and :meth:`phi` return vectors of the shape of
    ``eig.evals``.
    """

    def __init__(self, eig: EigenDecomposition, learning_rate: float, size: int, discrete: bool) -> None:
        self.eig = eig
        self.learning_rate = learning_rate
        self.size = size
        self.rate = learning_rate / size  # eta / (N k)
        self.discrete = discrete

    def decay(self, t: float) -> Tensor:
        """Eigenvalues of ``exp(-rate K t)`` or ``(I - rate K)^t``."""
        lam = self.eig.evals
        if math.isinf(t):
            return torch.where(lam > self.eig.rank_tol, torch.zeros_like(lam), torch.ones_like(lam))
        if not self.discrete:
            return torch.exp(-self.rate * lam * t)
        return torch.pow(1.0 - self.rate * lam, t)

    def phi(self, t: float) -> Tensor:
        """Eigenvalues of ``K^-1 (I - decay)``, finite for zero eigenvalues at finite ``t``."""
        lam = self.eig.evals
        c = self.rate
        pos = lam > 0
        safe = torch.where(pos, lam, torch.ones_like(lam))
        if math.isinf(t):
            good = lam > self.eig.rank_tol
            return torch.where(good, 1.0 / torch.where(good, lam, torch.ones_like(lam)), torch.zeros_like(lam))
        if not self.discrete:
            one_minus = -torch.expm1(-c * lam * t)
        else:
            base = 1.0 - c * lam
            small = base > 0
            one_minus = torch.where(
                small,
                -torch.expm1(t * torch.log1p(-c * torch.where(small, lam, torch.zeros_like(lam)))),
                1.0 - torch.pow(base, t),
            )
        return torch.where(pos, one_minus / safe, torch.full_like(lam, c * t))


def make_dynamics(
    mat: Tensor, layout: Layout, learning_rate: float, diag_reg: float, discrete: bool, name: str
) -> SpectralDynamics:
    """Eigendecompose ``mat + diag_reg I`` (``mat`` (N k, N k) or (N, N), see :class:`Layout`) once;
    for discrete gradient descent, warn about an unstable ``learning_rate``."""
    eig = psd_eigh(mat, diag_reg=diag_reg, name=name)
    if discrete:
        warn_unstable_learning_rate(learning_rate, eig.lambda_max, layout.size, stacklevel=4)
    return SpectralDynamics(eig, learning_rate, layout.size, discrete)


def check_infinite_time(dyn: SpectralDynamics, t: float, name: str) -> None:
    """At ``t = inf``: raise if discrete gradient descent diverges, warn (:class:`SingularKernelWarning`)
    if the kernel ``name`` is singular without a ridge (the pseudo-inverse is then used)."""
    if not math.isinf(t):
        return
    if dyn.discrete and dyn.rate * dyn.eig.lambda_max >= 2.0:
        raise ValueError(
            f"t: gradient descent with learning_rate {dyn.learning_rate:.4g} diverges, so t = inf has no limit "
            f"(maximum stable learning rate {2.0 * dyn.size / dyn.eig.lambda_max:.4g})"
        )
    if dyn.eig.n_singular:
        warnings.warn(
            f"{name} is singular ({dyn.eig.n_singular} eigenvalue(s) <= {dyn.eig.rank_tol:.3g}) and diag_reg = 0: "
            "the t = inf prediction uses its pseudo-inverse (the limit of the gradient flow on the kernel's "
            "range); pass diag_reg > 0 for kernel ridge regression",
            SingularKernelWarning,
            stacklevel=3,
        )
