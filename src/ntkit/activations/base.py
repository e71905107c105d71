"""The activation object: one description serving the finite network and the kernels.

An :class:`Activation` is a pointwise nonlinearity ``sigma`` together with its Gaussian *dual maps*:
for a centred bivariate Gaussian ``(u, v)`` with covariance ``[[var1, cov], [cov, var2]]``

* ``expect(var1, cov, var2)            = E[sigma(u) sigma(v)]``       (drives the NNGP recursion)
* ``expect_derivative(var1, cov, var2) = E[sigma'(u) sigma'(v)]``     (drives the NTK recursion)

All three arguments are tensors broadcastable to a common shape; the result has that shape. The
finite forward pass is ``activation(x)``, the derivative ``activation.derivative(x)``.

Subclasses with closed forms override the two maps. The base class computes them by numerical
quadrature (:mod:`ntkit.activations.quadrature`), so a subclass that only defines :meth:`forward`
is already complete.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


class Activation:
    """Base class of all activations.

    Subclasses implement :meth:`forward`; they may override :meth:`derivative`,
    :meth:`expect` and :meth:`expect_derivative` with exact formulas.

    Attributes
    ----------
    name : str
        Registry name, used in messages and reports.
    has_derivative_map : bool
        ``False`` for activations whose derivative is a Dirac delta (step, sign): their NTK is
        undefined and :func:`ntkit.fc_kernel` refuses to compute it.
    """

    name: str = "activation"
    has_derivative_map: bool = True

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def derivative(self, x: Tensor) -> Tensor:
        """``sigma'(x)`` elementwise; by default through autograd of :meth:`forward`."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            y = self.forward(xg)
            (g,) = torch.autograd.grad(y.sum(), xg, allow_unused=True)
        if g is None:  # the function does not depend on its input
            return torch.zeros_like(x)
        return g.detach()

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        """``E[sigma(u) sigma(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
        from ntkit.activations.quadrature import gaussian_expectation

        return gaussian_expectation(self.forward, var1, cov, var2, name=self.name)

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        """``E[sigma'(u) sigma'(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
        from ntkit.activations.quadrature import gaussian_expectation

        return gaussian_expectation(self.derivative, var1, cov, var2, name=f"{self.name}'")

    def expect_diag(self, var: Tensor) -> Tensor:
        """``E[sigma(u)^2]`` for ``u ~ N(0, var)``: the diagonal of :meth:`expect`."""
        return self.expect(var, var, var)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CallableActivation(Activation):
    """Any pointwise callable ``fn(x) -> tensor`` (e.g. ``torch.tanh``), kernels by quadrature.

    Parameters
    ----------
    fn : callable
        Elementwise function on tensors; must be differentiable by autograd unless
        ``derivative`` is given.
    derivative : callable, optional
        ``sigma'`` supplied by the user (used for the NTK map and the derivative).
    name : str, optional
        Display name; defaults to ``fn.__name__``.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        derivative: Callable[[Tensor], Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"activation: expected a callable, got {type(fn).__name__}")
        if derivative is not None and not callable(derivative):
            raise TypeError(
                f"derivative: expected a callable or None, got {type(derivative).__name__}"
            )
        self.fn = fn
        self._derivative = derivative
        self.name = str(name or getattr(fn, "__name__", type(fn).__name__))

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def derivative(self, x: Tensor) -> Tensor:
        if self._derivative is not None:
            return self._derivative(x)
        return super().derivative(x)

    def __repr__(self) -> str:
        return f"CallableActivation({self.name})"
