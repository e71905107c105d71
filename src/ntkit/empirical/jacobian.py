"""Empirical NTK by Jacobian contraction (the method of PyTorch's NTK tutorial).

Per-example Jacobians ``J(x) = d f(x) / d theta`` of shape (k, P) are computed with
``torch.func.vmap(jacrev(...))`` over the rows of a block, then contracted:
``Theta(x, x')_{ab} = sum_p J(x)_{ap} J(x')_{bp}``. Memory grows as ``N k P``; the tiler bounds it.

Reference: PyTorch tutorial "Neural Tangent Kernels" (torch.func); Novak et al. (2022), "Fast
finite width neural tangent kernel", ICML, section 3.1 ("Jacobian contraction").
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkit.empirical._common import Engine, Tensor, contract_jacobian_pairs, contract_jacobians


def per_example_function(model: nn.Module, params: dict[str, Tensor]) -> Any:
    """``f(p, x)`` for one example ``x`` (no batch axis) as a pure function of the selected parameters."""
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    fixed = {n: p.detach() for n, p in model.named_parameters()}

    def f_single(p: dict[str, Tensor], x: Tensor) -> Tensor:
        merged = {**fixed, **p}
        return functional_call(model, (merged, buffers), (x.unsqueeze(0),)).squeeze(0)

    return f_single


class JacobianEngine(Engine):
    """Features: per-example Jacobians ``{name: (N, k, P_name)}``; contraction parameter by parameter."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor], k: int, forward_flops: float) -> None:
        self.params = params
        self.k = k
        ref = next(iter(params.values()))
        self.itemsize = ref.element_size()
        self.n_params = sum(p.numel() for p in params.values())
        self.forward_flops = forward_flops
        self._jac = vmap(jacrev(per_example_function(model, params)), (None, 0))

    def features(self, x: Tensor) -> dict[str, Tensor]:
        jac: dict[str, Tensor] = self._jac(self.params, x)
        return {n: j.reshape(j.shape[0], self.k, -1) for n, j in jac.items()}

    splits = True

    def split(self, f: dict[str, Tensor], n1: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {n: j[:n1] for n, j in f.items()}, {n: j[n1:] for n, j in f.items()}

    def block(self, f1: dict[str, Tensor], f2: dict[str, Tensor], mode: str) -> Tensor:
        total: Tensor | None = None
        for name in f1:
            term = contract_jacobians(f1[name], f2[name], mode)
            total = term if total is None else total + term
        assert total is not None
        return total

    def pairs(self, f1: dict[str, Tensor], f2: dict[str, Tensor], mode: str) -> Tensor:
        total: Tensor | None = None
        for name in f1:
            term = contract_jacobian_pairs(f1[name], f2[name], mode)
            total = term if total is None else total + term
        assert total is not None
        return total

    def row_bytes(self) -> float:
        # the Jacobian rows plus what jacrev's vmapped backward holds (about as much again)
        return 2.0 * self.k * self.n_params * self.itemsize

    def tile_bytes(self, b1: int, b2: int, mode: str) -> float:
        width = {"full": self.k * self.k, "trace": 1, "diagonal": self.k}[mode]
        return 2.0 * b1 * b2 * width * self.itemsize

    def flops(self, n1: int, n2: int, mode: str) -> float:
        feats = 3.0 * (n1 + n2) * self.k * self.forward_flops
        contract = 2.0 * n1 * n2 * self.n_params * (self.k * self.k if mode == "full" else self.k)
        return feats + contract
