"""Empirical (finite-width) NTK and NNGP of any PyTorch model.

For a model ``f(x; theta)`` with ``k`` outputs the empirical NTK is

    Theta(x, x')_{ij} = sum_p  d f_i(x) / d theta_p  *  d f_j(x') / d theta_p,

an (N1, N2, k, k) tensor for inputs of N1 and N2 rows. ``mode`` selects what is returned:

* ``"full"``: the blocks, shape (N1, N2, k, k);
* ``"trace"``: the normalised trace over outputs ``(1/k) sum_i Theta_ii``, shape (N1, N2) — directly
  comparable with the scalar infinite-width kernel, since the limit is ``Theta_inf (x) I_k``;
* ``"diagonal"``: the output diagonal ``Theta_ii``, shape (N1, N2, k).

Implementations
---------------
``"jacobian"``
    Per-example Jacobians by ``torch.func`` (``vmap(jacrev)``) contracted parameter by parameter
    (the method of PyTorch's NTK tutorial). Works for any functional model.
``"fc"``
    Exact layer-factored computation for :class:`ntkit.FCNetwork`: each affine layer contributes
    ``(s_W^2 a(x).a(x') + s_b^2) * (g(x) . g(x'))`` with ``a`` the layer's input and ``g`` the
    cotangents of the ``k`` outputs at the layer's output. Never forms a Jacobian.
``"auto"``
    ``"fc"`` for an FCNetwork with all parameters selected, else ``"jacobian"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkit._validation import check_choice, check_pair, describe

Tensor = torch.Tensor

MODES = ("full", "trace", "diagonal")
IMPLEMENTATIONS = ("auto", "jacobian", "fc")


def _select_parameters(model: nn.Module, parameters: Sequence[str] | None) -> dict[str, Tensor]:
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if parameters is None:
        if not named:
            raise ValueError("model: expected at least one trainable parameter, got none")
        return {n: p.detach() for n, p in named.items()}
    if isinstance(parameters, str):
        parameters = [parameters]
    missing = [n for n in parameters if n not in named]
    if missing:
        raise ValueError(
            f"parameters: expected names of trainable parameters of the model such as "
            f"{list(named)[:6]}, got unknown {missing}"
        )
    return {n: named[n].detach() for n in parameters}


def _model_output(model: nn.Module, x: Tensor, name: str) -> Tensor:
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as err:
        raise ValueError(f"{name}: the model failed on an input of shape {tuple(x[:1].shape)}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"model: expected an output of shape (N, k), got {describe(out)} for N = 1")
    return out


def _contract(j1: Tensor, j2: Tensor, mode: str) -> Tensor:
    """Contract Jacobians (N1, k, P) and (N2, k, P) into the requested kernel mode."""
    if mode == "full":
        return torch.einsum("ikp,jlp->ijkl", j1, j2)
    if mode == "diagonal":
        return torch.einsum("ikp,jkp->ijk", j1, j2)
    return torch.einsum("ikp,jkp->ij", j1, j2) / j1.shape[1]


def _jacobian_ntk(
    model: nn.Module, params: dict[str, Tensor], x1: Tensor, x2: Tensor | None, mode: str
) -> Tensor:
    buffers = dict(model.named_buffers())
    all_params = {n: p.detach() for n, p in model.named_parameters()}

    def f_single(p: dict[str, Tensor], x: Tensor) -> Tensor:
        merged = {**all_params, **p}
        return functional_call(model, (merged, buffers), (x.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(f_single), (None, 0))
    jac1 = jac_fn(params, x1)
    jac2 = jac1 if x2 is None else jac_fn(params, x2)
    total: Tensor | None = None
    for name in params:
        a = jac1[name].flatten(2)
        b = a if x2 is None else jac2[name].flatten(2)
        term = _contract(a, b, mode)
        total = term if total is None else total + term
    assert total is not None
    return total


def _fc_ntk(model: Any, x1: Tensor, x2: Tensor | None, mode: str) -> Tensor:
    """Layer-factored exact NTK of an FCNetwork (see the module docstring)."""
    from ntkit.networks import NTKLinear

    def forward_and_cotangents(x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        linears: list[NTKLinear] = model.linears
        inputs: list[Tensor] = []
        preacts: list[Tensor] = []
        a = x
        with torch.no_grad():
            for i, lin in enumerate(linears):
                inputs.append(a)
                z = lin(a)
                if i < len(linears) - 1:
                    preacts.append(z)
                    a = model.activation(z)
            k = linears[-1].out_features
            g = torch.eye(k, dtype=x.dtype, device=x.device).expand(x.shape[0], k, k)
            cotangents = [g]
            for i in range(len(linears) - 1, 0, -1):
                lin = linears[i]
                g = (g @ lin.weight) * lin.weight_scale * model.activation.derivative(preacts[i - 1])[:, None, :]
                cotangents.append(g)
        return inputs, cotangents[::-1]

    in1, cot1 = forward_and_cotangents(x1)
    in2, cot2 = (in1, cot1) if x2 is None else forward_and_cotangents(x2)
    total: Tensor | None = None
    for lin, a1, a2, g1, g2 in zip(model.linears, in1, in2, cot1, cot2, strict=True):
        outer = (lin.weight_scale**2) * (a1 @ a2.T) + lin.bias_scale**2
        if mode == "full":
            gram = torch.einsum("ikp,jlp->ijkl", g1, g2)
            term = outer[:, :, None, None] * gram
        elif mode == "diagonal":
            term = outer[:, :, None] * torch.einsum("ikp,jkp->ijk", g1, g2)
        else:
            term = outer * torch.einsum("ikp,jkp->ij", g1, g2) / g1.shape[1]
        total = term if total is None else total + term
    assert total is not None
    return total


def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any | None = None,
    *,
    mode: str = "full",
    implementation: str = "auto",
    parameters: Sequence[str] | None = None,
) -> Tensor:
    """Empirical NTK of ``model`` between ``x1`` and ``x2`` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Maps a batch of shape (N, ...) to outputs of shape (N, k). Parameters with
        ``requires_grad=False`` are treated as constants.
    x1 : Tensor of shape (N1, ...)
    x2 : Tensor of shape (N2, ...), optional
        Defaults to ``x1`` (the symmetric kernel, computed once).
    mode : {"full", "trace", "diagonal"}
    implementation : {"auto", "jacobian", "fc"}
    parameters : sequence of str, optional
        Names (as in ``model.named_parameters()``) of the parameters to differentiate; default all.

    Returns
    -------
    Tensor of shape (N1, N2, k, k), (N1, N2) or (N1, N2, k), in the model's dtype.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(3, [64], 2, seed=0)
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> ntkit.empirical_ntk(net, x).shape
    torch.Size([4, 4, 2, 2])
    """
    from ntkit.networks import FCNetwork

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    check_choice(mode, "mode", MODES)
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None else None
    device = ref.device if ref is not None else None
    t1, t2 = check_pair(x1, x2, dtype=dtype, device=device, ndim=None)
    _model_output(model, t1, "x1")
    params = _select_parameters(model, parameters)
    if implementation == "auto":
        implementation = "fc" if isinstance(model, FCNetwork) and parameters is None else "jacobian"
    if implementation == "fc":
        if not isinstance(model, FCNetwork):
            raise ValueError(f"implementation: 'fc' needs an ntkit.FCNetwork, got {type(model).__name__}")
        if parameters is not None:
            raise ValueError("implementation: 'fc' differentiates all parameters; use 'jacobian' for a subset")
        return _fc_ntk(model, t1, t2, mode)
    return _jacobian_ntk(model, params, t1, t2, mode)


def empirical_nngp(model: nn.Module, x1: Any, x2: Any | None = None, *, mode: str = "trace") -> Tensor:
    """Empirical NNGP of one network: inner products of its outputs.

    ``mode="trace"`` gives ``f(x1) . f(x2) / k`` of shape (N1, N2) — an unbiased one-network estimate
    of the NNGP kernel ``Sigma(L)`` when the outputs are i.i.d.; ``"diagonal"`` gives
    ``f_i(x1) f_i(x2)`` of shape (N1, N2, k); ``"full"`` gives ``f_i(x1) f_j(x2)`` of shape
    (N1, N2, k, k).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    check_choice(mode, "mode", MODES)
    ref = next(model.parameters(), None)
    t1, t2 = check_pair(
        x1, x2, dtype=None if ref is None else ref.dtype, device=None if ref is None else ref.device, ndim=None
    )
    _model_output(model, t1, "x1")
    with torch.no_grad():
        f1 = model(t1)
        f2 = f1 if t2 is None else model(t2)
    if mode == "full":
        return f1[:, None, :, None] * f2[None, :, None, :]
    if mode == "diagonal":
        return f1[:, None, :] * f2[None, :, :]
    return f1 @ f2.T / f1.shape[1]
