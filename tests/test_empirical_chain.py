"""The structured engine's capture of dense chains (``nn.Sequential`` of linear layers and activations).

Which models take it; the same kernels as the autograd capture (bit for bit where the operations are
the same; the Gram of the layer that feeds the output layer, formed from its factors, to rounding);
brute force.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import ntkit
import ntkit.empirical.structured as st
from ntkit.empirical._common import select_parameters
from ntkit.empirical._structured_chain import dense_chain
from tests._empirical_models import brute_force_ntk, reduce, single_thread  # noqa: F401
from tests.conftest import rel_err

MODES = ["full", "trace", "diagonal"]


def relu_mlp(dtype: torch.dtype = torch.float64, bias: bool = True) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(6, 24, bias=bias), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)
    ).to(dtype)


def engine(model: nn.Module, parameters: Any = None) -> st.StructuredEngine:
    params = select_parameters(model, parameters)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    x = torch.zeros(1, linears[0].in_features, dtype=next(model.parameters()).dtype)
    return st.StructuredEngine(model, params, linears[-1].out_features, x, 4, 4, "full")


def kernel(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, chain: bool, **kw: Any) -> torch.Tensor:
    old = st.CHAIN
    st.CHAIN = chain
    try:
        return ntkit.empirical_ntk(model, x1, x2, implementation="structured", **kw)
    finally:
        st.CHAIN = old


def test_which_models_are_chains() -> None:
    mlp = relu_mlp()
    assert dense_chain(mlp, engine(mlp).layers) is not None
    acts = nn.Sequential(nn.Tanh(), nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8), nn.SiLU(), nn.Sigmoid(),
                         nn.Linear(8, 2)).double()
    assert engine(acts).chain is not None
    others: list[nn.Module] = [
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)),  # in place
        nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2)),  # not elementwise
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2), nn.Tanh()),  # ends in an activation
        nn.Sequential(nn.Linear(6, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 2))),  # nested
    ]
    shared = nn.Linear(6, 6)
    others.append(nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(6, 2)))  # a module twice
    hooked = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    hooked[1].register_forward_hook(lambda m, i, o: o * 2)
    others.append(hooked)
    for model in others:
        assert engine(model.double()).chain is None, model
    model = relu_mlp()
    assert engine(model, ["2.weight", "4.weight", "4.bias"]).chain is None  # layer 0 not selected: autograd


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_kernels_as_the_autograd_capture(dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    no_fed = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 16), nn.Linear(16, 3)).to(dtype)
    g = torch.Generator().manual_seed(6)
    x1 = torch.randn(9, 6, generator=g, dtype=dtype)
    x2 = torch.randn(7, 6, generator=g, dtype=dtype)
    for model, fed in ((relu_mlp(dtype), True), (no_fed, False)):
        assert engine(model).chain is not None
        for mode in MODES:
            for x_2, kw in ((x2, {}), (None, {}), (None, {"pairs": "diagonal"}), (x2, {"memory_budget": 20_000})):
                got = kernel(model, x1, x_2, True, mode=mode, **kw)
                want = kernel(model, x1, x_2, False, mode=mode, **kw)
                if fed:  # the Gram of the layer feeding the output layer from its factors phi' and w_c
                    assert rel_err(got, want) < (1e-6 if dtype == torch.float32 else 1e-14), (mode, x_2 is None, kw)
                else:
                    assert torch.equal(got, want), (mode, x_2 is None, kw)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("acts", [("relu", "tanh"), ("gelu", "sigmoid"), ("silu", "gelu_tanh")])
def test_chains_agree_with_brute_force(acts: tuple[str, str]) -> None:
    make = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
            "gelu_tanh": lambda: nn.GELU(approximate="tanh")}
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 12), make[acts[0]](), nn.Linear(12, 10, bias=False), make[acts[1]](),
                          nn.Linear(10, 4)).double()
    assert engine(model).chain is not None
    g = torch.Generator().manual_seed(8)
    x1 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, 5, generator=g, dtype=torch.float64)
    ref = brute_force_ntk(model, x1, x2)
    for mode in MODES:
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        assert rel_err(got, reduce(ref, mode)) < 1e-12, mode
    sel = ["2.weight", "0.bias", "4.weight", "0.weight"]  # every layer, not every parameter: still a chain
    ref_sel = brute_force_ntk(model, x1, x2, names=sel)
    got = ntkit.empirical_ntk(model, x1, x2, mode="trace", implementation="structured", parameters=sel)
    assert rel_err(got, reduce(ref_sel, "trace")) < 1e-12


def test_wrong_output_width_is_reported() -> None:
    model = relu_mlp()
    x = torch.randn(3, 6, dtype=torch.float64)
    eng = engine(model)
    with pytest.raises(ValueError, match="expected 5 outputs"):
        from ntkit.empirical._structured_chain import capture_chain

        assert eng.chain is not None
        capture_chain(eng.chain, eng.layers, 5, x, trace_rows=None, chunk=2)
