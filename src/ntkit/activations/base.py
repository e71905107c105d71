"""The activation object: one description serving the finite network and the kernels.

An :class:`Activation` is a pointwise nonlinearity ``sigma`` together with its Gaussian *dual maps*:
for a centred bivariate Gaussian ``(u, v)`` with covariance ``[[var1, cov], [cov, var2]]``

* ``expect(var1, cov, var2)            = E[sigma(u) sigma(v)]``       (drives the NNGP recursion)
* ``expect_derivative(var1, cov, var2) = E[sigma'(u) sigma'(v)]``     (drives the NTK recursion)

All three arguments are tensors broadcastable to a common shape; the result has that shape. The
finite forward pass is ``activation(x)``, the derivative ``activation.derivative(x)``.

Subclasses with closed forms override the two maps. The base class computes them by split
composite quadrature (:mod:`ntkit.activations.quadrature`, the *general path*), so a subclass that
only defines :meth:`forward` is already complete: kinks at the declared :attr:`Activation.breakpoints`
(default ``(0,)``) are integrated to full accuracy. :meth:`dual` returns both maps at once
(sharing the quadrature nodes on the general path); the kernel recursion uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
    #: Points where ``sigma`` or ``sigma'`` has a kink or a jump (used to split the quadrature panels).
    breakpoints: tuple[float, ...] = (0.0,)
    #: Gauss-Legendre nodes per panel of the general path (see :mod:`ntkit.activations.quadrature`).
    quadrature_nodes: int = 16
    #: ``True`` where :meth:`expect` / :meth:`expect_derivative` are exact closed forms.
    closed_form: bool = False

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def derivative(self, x: Tensor) -> Tensor:
        """``sigma'(x)`` elementwise; by default through autograd of :meth:`forward`."""
        return self.value_and_derivative(x)[1]

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigma(x), sigma'(x))`` with one forward pass (autograd unless :meth:`derivative` is overridden).

        Raises
        ------
        ValueError
            Naming the activation, when ``sigma`` is not differentiable by autograd (its output
            does not depend on its input through torch operations).
        """
        if type(self).derivative is not Activation.derivative:
            return self.forward(x), self.derivative(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            y = self.forward(xg)
            if not isinstance(y, torch.Tensor) or not y.requires_grad:
                raise ValueError(
                    f"activation {self.name!r} is not differentiable by autograd (its output does not depend "
                    "on its input through torch operations); expected a torch-differentiable function or "
                    "an explicit derivative=... (CallableActivation)"
                )
            (g,) = torch.autograd.grad(y.sum(), xg, allow_unused=True)
        if g is None:
            g = torch.zeros_like(x)
        return y.detach(), g.detach()

    def _general(self, var1: Tensor, cov: Tensor, var2: Tensor, which: str) -> tuple[Tensor, Tensor]:
        from ntkit.activations.quadrature import gaussian_dual

        if which == "both" and not self.has_derivative_map:
            raise ValueError(f"activation {self.name!r}: its derivative map is undefined (has_derivative_map=False)")
        return gaussian_dual(
            self.value_and_derivative,
            var1,
            cov,
            var2,
            breakpoints=self.breakpoints,
            nodes=self.quadrature_nodes,
            name=self.name,
        )

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        """``E[sigma(u) sigma(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
        from ntkit.activations.quadrature import gaussian_expectation

        out = gaussian_expectation(
            self.forward, var1, cov, var2, breakpoints=self.breakpoints, nodes=self.quadrature_nodes, name=self.name
        )
        assert isinstance(out, torch.Tensor)
        return out

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        """``E[sigma'(u) sigma'(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
        return self._general(var1, cov, var2, "both")[1]

    def dual(self, var1: Tensor, cov: Tensor, var2: Tensor, *, derivative: bool = True) -> tuple[Tensor, Tensor | None]:
        """Both maps at once: ``(expect(...), expect_derivative(...) or None)``.

        On the general path the two expectations share their quadrature nodes (one evaluation
        of ``sigma`` and ``sigma'``), which is about twice as fast as calling them one by one.
        """
        if not derivative:
            return self.expect(var1, cov, var2), None
        if type(self).expect is Activation.expect and type(self).expect_derivative is Activation.expect_derivative:
            nngp, deriv = self._general(var1, cov, var2, "both")
            return nngp, deriv
        return self.expect(var1, cov, var2), self.expect_derivative(var1, cov, var2)

    def expect_diag(self, var: Tensor) -> Tensor:
        """``E[sigma(u)^2]`` for ``u ~ N(0, var)``: the diagonal of :meth:`expect`."""
        if type(self).expect is Activation.expect:
            from ntkit.activations.quadrature import gaussian_expectation_1d

            def square(x: Tensor) -> Tensor:
                y = self.forward(x)
                return y * y if isinstance(y, torch.Tensor) else y

            return gaussian_expectation_1d(
                square, var, breakpoints=self.breakpoints, nodes=self.quadrature_nodes, name=self.name
            )
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
    breakpoints : sequence of float
        Where ``fn`` or its derivative has kinks or jumps (default ``(0,)``); the quadrature panels
        are split there, so piecewise-smooth functions converge geometrically.
    nodes : int
        Gauss-Legendre nodes per quadrature panel (default 16: ~1e-9 or better on smooth and kinked
        activations at unit variance, see docs/activations.md).

    Examples
    --------
    >>> import torch
    >>> relu6 = CallableActivation(lambda x: x.clamp(0, 6), name="relu6", breakpoints=(0.0, 6.0))
    >>> one = torch.ones((), dtype=torch.float64)
    >>> round(float(relu6.expect(one, one, one)), 6)  # ~ E[relu(u)^2] = 1/2
    0.5
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        derivative: Callable[[Tensor], Tensor] | None = None,
        name: str | None = None,
        *,
        breakpoints: Sequence[float] = (0.0,),
        nodes: int = 16,
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
        try:
            self.breakpoints = tuple(float(b) for b in breakpoints)
        except (TypeError, ValueError):
            raise TypeError(f"breakpoints: expected a sequence of floats, got {breakpoints!r}") from None
        if not all(math.isfinite(b) for b in self.breakpoints):
            raise ValueError(f"breakpoints: expected finite floats, got {breakpoints!r}")
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
            raise ValueError(f"nodes: expected an integer >= 2, got {nodes!r}")
        self.quadrature_nodes = nodes

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._derivative is not None:
            return self.fn(x), self._derivative(x)
        return super().value_and_derivative(x)

    def __repr__(self) -> str:
        return f"CallableActivation({self.name})"
