"""The activation object: one description serving the finite network and the kernels.

A :class:`DualActivation` is a pointwise nonlinearity ``sigma`` together with its Gaussian *dual maps*:
for a centred bivariate Gaussian ``(u, v)`` with covariance ``[[var1, cov], [cov, var2]]``

* ``expect(var1, cov, var2)            = E[sigma(u) sigma(v)]``       (drives the NNGP recursion)
* ``expect_derivative(var1, cov, var2) = E[sigma'(u) sigma'(v)]``     (drives the NTK recursion)

All three arguments are tensors broadcastable to a common shape; the result has that shape. The
finite forward pass is ``activation(x)``, the derivative ``activation.derivative(x)``.

Subclasses with closed forms override the two maps. The base class computes them on the *general
path*, so a subclass that only defines :meth:`forward` is already complete. By default
(``method="auto"``) the general path is the Mehler / Hermite expansion
(:mod:`ntkit.activations.mehler`): one-dimensional Hermite coefficients per distinct variance, then a
polynomial in the correlation, with a rigorous truncation bound that hands the entries it cannot
certify (correlation near +-1 with a slowly converging expansion) to split composite quadrature
(:mod:`ntkit.activations.quadrature`). Activations declared ``smooth=False`` (ELU, SELU: their
derivative jumps) or with breakpoints other than 0, and ``method="quadrature"``, use the quadrature
for everything; kinks at the declared :attr:`DualActivation.breakpoints` (default ``(0,)``) are integrated
to full accuracy. :meth:`dual` returns both maps at once (sharing the function evaluations); the
kernel recursion uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ntkit.activations.mehler import MAX_TERMS, MehlerInfo, gaussian_norms, mehler_expectations, tolerance
from ntkit.activations.quadrature import _checked, gaussian_dual, gaussian_expectation, gaussian_expectation_1d

Tensor = torch.Tensor
#: The general-path methods (see :meth:`DualActivation.general_method`).
METHODS = ("auto", "mehler", "quadrature")


class DualActivation:
    """Base class of all activations: a pointwise ``sigma`` with its Gaussian dual maps.

    Not to be confused with :class:`ntkit.nn.Activation`, the torch module that applies one in a model.
    Subclasses implement :meth:`forward`; they may override :meth:`derivative`,
    :meth:`expect` and :meth:`expect_derivative` with exact formulas.

    Attributes
    ----------
    name : str
        Registry name, used in messages and reports.
    has_derivative_map : bool
        ``False`` for activations whose derivative is a Dirac delta (step, sign): their NTK is
        undefined and :func:`ntkit.fc_kernel` refuses to compute it.

    Examples
    --------
    >>> import torch, ntkit
    >>> relu = ntkit.get_activation("relu")
    >>> relu(torch.tensor([-1.0, 2.0])), relu.derivative(torch.tensor([-1.0, 2.0]))
    (tensor([0., 2.]), tensor([0., 1.]))
    >>> v = torch.ones(3, dtype=torch.float64)
    >>> k, kdot = relu.dual(v, torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), v)
    >>> kdot.tolist()  # P(u > 0, v > 0) for correlations 1, 0, -1
    [0.5, 0.25, 0.0]
    """

    name: str = "activation"
    has_derivative_map: bool = True
    #: Points where ``sigma`` or ``sigma'`` has a kink or a jump (used to split the quadrature panels).
    breakpoints: tuple[float, ...] = (0.0,)
    #: Gauss-Legendre nodes per panel of the general path (see :mod:`ntkit.activations.quadrature`).
    quadrature_nodes: int = 16
    #: ``True`` where :meth:`expect` / :meth:`expect_derivative` are exact closed forms.
    closed_form: bool = False
    #: General path: ``"auto"``, ``"mehler"`` (Hermite expansion) or ``"quadrature"`` (see :meth:`general_method`).
    method: str = "auto"
    #: ``False`` where the derivative jumps (ELU, SELU): ``"auto"`` keeps such activations on quadrature.
    #: ``None`` (unknown) and ``True`` let ``"auto"`` use the Mehler expansion, whose bound falls back
    #: to quadrature entry by entry where the expansion converges too slowly.
    smooth: bool | None = None
    #: ``k`` where ``sigma(s x) = s^k sigma(x)`` for every ``s > 0`` (ReLU family: 1), else None. Networks
    #: built from such activations and bias-free weight layers have kernels ``K(s x, t x') = (s t)^k K(x, x')``,
    #: which lets :func:`ntkit.infinite_kernel` evaluate inputs whose squared norms overflow the dtype.
    homogeneous_degree: int | None = None

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
        if type(self).derivative is not DualActivation.derivative:
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

    def general_method(self) -> str:
        """``"mehler"`` or ``"quadrature"``: how the general path computes this activation's dual maps.

        ``method="auto"`` picks the Mehler expansion (:mod:`ntkit.activations.mehler`) unless the
        activation is declared non-smooth (``smooth=False``: ELU, SELU) or has breakpoints other than 0.

        Raises
        ------
        ValueError
            For an unknown ``method``, or ``method="mehler"`` with a breakpoint other than 0.
        """
        method = self.method
        if method not in METHODS:
            raise ValueError(f"activation {self.name!r}: method expected one of {list(METHODS)}, got {method!r}")
        off_zero = any(b != 0 for b in self.breakpoints)
        if method == "mehler" and off_zero:
            raise ValueError(
                f"activation {self.name!r}: method='mehler' expects breakpoints at 0 only, got "
                f"{self.breakpoints!r}; use method='quadrature' or 'auto'"
            )
        if method == "auto":
            return "quadrature" if self.smooth is False or off_zero else "mehler"
        return method

    def _evaluator(self, which: str) -> Callable[[Tensor], tuple[Tensor, ...]]:
        name = self.name
        if which == "value":
            return lambda t: _checked(self.forward, t, name)
        if which == "derivative":
            return lambda t: (_checked(self.value_and_derivative, t, name)[1],)
        return lambda t: _checked(self.value_and_derivative, t, name)

    def _quadrature(self, var1: Tensor, cov: Tensor, var2: Tensor, which: str) -> tuple[Tensor, ...]:
        opts = {"breakpoints": self.breakpoints, "nodes": self.quadrature_nodes, "name": self.name}
        if which == "value":
            out = gaussian_expectation(self.forward, var1, cov, var2, **opts)  # type: ignore[arg-type]
            assert isinstance(out, torch.Tensor)
            return (out,)
        nngp, deriv = gaussian_dual(self.value_and_derivative, var1, cov, var2, **opts)  # type: ignore[arg-type]
        return (deriv,) if which == "derivative" else (nngp, deriv)

    def mehler(
        self, var1: Tensor, cov: Tensor, var2: Tensor, *, which: str = "both", tol: float | None = None,
        max_terms: int | None = None,
    ) -> tuple[list[Tensor], MehlerInfo]:
        """The general path by the Mehler expansion, with its report (terms used, entries by quadrature).

        ``which``: ``"value"`` (``E[s(u) s(v)]``), ``"derivative"`` (``E[s'(u) s'(v)]``) or ``"both"``.
        ``tol`` / ``max_terms`` as in :func:`ntkit.activations.mehler.mehler_expectations`; entries the
        truncation bound cannot certify are computed by quadrature.
        """
        if which not in ("value", "derivative", "both"):
            raise ValueError(f"which: expected 'value', 'derivative' or 'both', got {which!r}")
        if which != "value" and not self.has_derivative_map:
            raise ValueError(f"activation {self.name!r}: its derivative map is undefined (has_derivative_map=False)")
        count = 2 if which == "both" else 1
        var1, cov, var2 = (torch.as_tensor(t) for t in (var1, cov, var2))
        return mehler_expectations(
            self._evaluator(which),
            count,
            var1,
            cov,
            var2,
            fallback=lambda a, c, b: self._quadrature(a, c, b, which),
            tol=tol,
            max_terms=MAX_TERMS if max_terms is None else max_terms,
        )

    def _general(self, var1: Tensor, cov: Tensor, var2: Tensor, which: str) -> tuple[Tensor, ...]:
        """The general path (Mehler expansion or quadrature, see :meth:`general_method`)."""
        if which != "value" and not self.has_derivative_map:
            raise ValueError(f"activation {self.name!r}: its derivative map is undefined (has_derivative_map=False)")
        if self.general_method() == "mehler":
            return tuple(self.mehler(var1, cov, var2, which=which)[0])
        return self._quadrature(var1, cov, var2, which)

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        """``E[sigma(u) sigma(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
        return self._general(var1, cov, var2, "value")[0]

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        """``E[sigma'(u) sigma'(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``."""
        return self._general(var1, cov, var2, "derivative")[0]

    def dual(self, var1: Tensor, cov: Tensor, var2: Tensor, *, derivative: bool = True) -> tuple[Tensor, Tensor | None]:
        """Both maps at once: ``(expect(...), expect_derivative(...) or None)``.

        On the general path the two expectations share their nodes (one evaluation of ``sigma``
        and ``sigma'``), which is about twice as fast as calling them one by one.
        """
        if not derivative:
            return self.expect(var1, cov, var2), None
        base = DualActivation
        if type(self).expect is base.expect and type(self).expect_derivative is base.expect_derivative:
            nngp, deriv = self._general(var1, cov, var2, "both")
            return nngp, deriv
        return self.expect(var1, cov, var2), self.expect_derivative(var1, cov, var2)

    def mean(self, var: Tensor) -> Tensor:
        """``E[sigma(u)]`` for ``u ~ N(0, var)``, elementwise (the mean of a channel after this activation).

        General path: one-dimensional split composite Gauss-Legendre quadrature (exact at the
        :attr:`breakpoints`); closed-form activations override it. Needed where a layer norm follows
        the activation (it subtracts the channel mean).
        """
        return gaussian_expectation_1d(
            self.forward, var, breakpoints=self.breakpoints, nodes=self.quadrature_nodes, name=self.name
        )

    def expect_diag(self, var: Tensor) -> Tensor:
        """``E[sigma(u)^2]`` for ``u ~ N(0, var)``: the diagonal of :meth:`expect`.

        On the Mehler path this is the Parseval norm of the expansion (the same rule, so that
        :meth:`dual` at ``(q, q, q)`` returns exactly this value).
        """
        if type(self).expect is DualActivation.expect:

            def square(x: Tensor) -> Tensor:
                y = self.forward(x)
                return y * y if isinstance(y, torch.Tensor) else y

            def quadrature(v: Tensor) -> Tensor:
                return gaussian_expectation_1d(
                    square, v, breakpoints=self.breakpoints, nodes=self.quadrature_nodes, name=self.name
                )

            if self.general_method() == "mehler":
                ((norm2, err),) = gaussian_norms(self._evaluator("value"), var)
                bad = ~(err <= tolerance(var.dtype))
                if bool(bad.any()):
                    norm2[bad] = quadrature(var[bad]).to(norm2.dtype)
                return norm2.to(var.dtype)
            return quadrature(var)
        return self.expect(var, var, var)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CallableActivation(DualActivation):
    """Any pointwise callable ``fn(x) -> tensor`` (e.g. ``torch.tanh``), kernels by the general path.

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
        activations at unit variance, see docs/user_guide/activations_accuracy.md).
    method : {"auto", "mehler", "quadrature"}
        General path: ``"auto"`` (default) uses the Mehler expansion unless ``smooth=False`` or a
        breakpoint is not 0; ``"quadrature"`` forces split composite quadrature everywhere.
    smooth : bool or None
        ``False`` declares a derivative with a jump (ELU, SELU): ``"auto"`` then uses quadrature.

    Raises
    ------
    TypeError
        ``fn`` (or ``derivative``) is not callable, or an option has the wrong type.
    ValueError
        An option is out of range; when a kernel is evaluated, a function that returns NaN / inf, a
        wrong shape or a non-tensor (the message names the activation).

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
        method: str = "auto",
        smooth: bool | None = None,
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
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
        if smooth is not None and not isinstance(smooth, bool):
            raise TypeError(f"smooth: expected a bool or None, got {type(smooth).__name__}")
        self.method = method
        self.smooth = smooth
        self.general_method()  # method='mehler' with breakpoints off 0: a clear error now

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def value_and_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._derivative is not None:
            return self.fn(x), self._derivative(x)
        return super().value_and_derivative(x)

    def __repr__(self) -> str:
        return f"CallableActivation({self.name})"


#: The former name of :class:`DualActivation` (kept so that old imports and pickles still work; the top
#: level ``ntkit.Activation`` warns, see :mod:`ntkit`).
Activation = DualActivation
