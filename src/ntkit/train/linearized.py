"""The linearized model: the first-order Taylor expansion of a network around its initial parameters
(Lee et al. 2019), whose gradient descent is exactly linear in function space with the constant empirical NTK."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.func import functional_call, jvp

from ntkit._validation import describe

Tensor = torch.Tensor


class LinearizedModel(nn.Module):
    """``f_lin(x) = f(x; theta_0) + J(x; theta_0) delta`` with trainable ``delta`` (starting at 0).

    The frozen copy ``base`` holds ``theta_0`` (its parameters have ``requires_grad=False``); the
    trainable parameters are the displacements ``delta`` (``theta = theta_0 + delta``), so the
    empirical NTK of this model is the constant ``Theta_0`` of the original, and gradient descent on
    it is exactly linear in function space. Built by :func:`linearize`.

    Parameters
    ----------
    model : torch.nn.Module
        The model to expand around its current parameters (copied; the original is not changed).

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [16], 1, seed=0)
    >>> lin = ntkit.train.LinearizedModel(net)
    >>> [p.shape for p in lin.parameters()][:2]  # the displacements delta, one per parameter
    [torch.Size([16, 2]), torch.Size([16])]
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _prepare_jvp()
        self.base = copy.deepcopy(model)
        self._names = [n for n, p in self.base.named_parameters() if p.requires_grad]
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.delta = nn.ParameterList(
            [nn.Parameter(torch.zeros_like(p)) for n, p in self.base.named_parameters() if n in self._names]
        )

    def forward(self, x: Tensor) -> Tensor:
        primals = {n: p for n, p in self.base.named_parameters() if n in self._names}
        tangents = dict(zip(self._names, self.delta, strict=True))

        def f(params: dict[str, Tensor]) -> Tensor:
            return functional_call(self.base, params, (x,))

        res = jvp(f, (primals,), (tangents,))
        return res[0] + res[1]


_JVP_READY = False


def _prepare_jvp() -> None:
    """Run one tiny ``torch.func.jvp`` with torch's one-time import-time DeprecationWarning
    (``torch.jit.script`` in its jvp decompositions) silenced, so later calls are warning-free."""
    global _JVP_READY
    if _JVP_READY:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        jvp(lambda t: 2.0 * t, (torch.zeros(1),), (torch.ones(1),))
    _JVP_READY = True


def linearize(model: nn.Module) -> LinearizedModel:
    """The first-order Taylor expansion of ``model`` around its current parameters ``theta_0``.

    ``f_lin(x; theta) = f(x; theta_0) + J(x; theta_0)(theta - theta_0)`` (Lee et al. 2019, eq. 6),
    evaluated with a forward-mode Jacobian-vector product (``torch.func.jvp``) and differentiable
    in ``theta``: train it with :func:`train_gd` to get the linearized dynamics that
    :func:`ntkit.predict.gradient_descent_mse` solves in closed form with the empirical NTK.

    Parameters
    ----------
    model : torch.nn.Module
        Any module with trainable parameters.

    Returns
    -------
    LinearizedModel

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ValueError
        ``model`` has no trainable parameter.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [16], 1, seed=0)
    >>> lin = ntkit.linearize(net)
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> torch.allclose(lin(x), net(x))  # equal at initialisation
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model: expected at least one trainable parameter, got none")
    return LinearizedModel(model)


__all__ = ["LinearizedModel", "linearize"]
