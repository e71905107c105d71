"""One vocabulary in ntkit.compute: model first, ``b_std``, ``memory_budget``, ``pairs``; the old spellings warn
(``DeprecationWarning``) and give the same kernels."""

from __future__ import annotations

import pytest
import torch

import ntkit
from ntkit.compute import compute_kernel
from ntkit.solve import KernelOperator
from ntkit.solve.operator import FusedTiles

F64 = torch.float64
X = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
MODEL = ntkit.nn.fc(3, depth=2, b_std=0.2, device="meta")


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(a, b)


def test_compute_kernel_is_model_first_and_the_data_first_form_warns() -> None:
    new = compute_kernel(MODEL, X)
    with pytest.warns(DeprecationWarning, match=r"compute_kernel\(model, x1, x2\)"):
        old = compute_kernel(X, model=MODEL)
    _same(new.ntk, old.ntk)
    _same(new.nngp, old.nngp)
    with pytest.warns(DeprecationWarning, match="model first"):
        old2 = compute_kernel(X, X[:3], model=MODEL, which="ntk")
    _same(compute_kernel(MODEL, X, X[:3], which="ntk").ntk, old2.ntk)
    _same(compute_kernel(MODEL, x1=X).ntk, new.ntk)  # the data by keyword after the model


def test_the_fully_connected_shortcut_takes_none_first() -> None:
    new = compute_kernel(None, X, depth=2, b_std=0.2)
    _same(new.ntk, compute_kernel(MODEL, X).ntk)
    with pytest.warns(DeprecationWarning):
        old = compute_kernel(X, depth=2, b_std=0.2)
    _same(old.ntk, new.ntk)


@pytest.mark.parametrize(
    ("old_kw", "new_kw"),
    [({"beta": 0.3}, {"b_std": 0.3}), ({"budget": "64M"}, {"memory_budget": "64M"}),
     ({"diag": True}, {"pairs": "diagonal"})],
)
def test_old_keywords_of_compute_kernel_warn_and_agree(old_kw: dict, new_kw: dict) -> None:
    new = compute_kernel(None, X, depth=2, **new_kw)
    with pytest.warns(DeprecationWarning, match=f"{next(iter(old_kw))} is deprecated; use {next(iter(new_kw))}"):
        old = compute_kernel(None, X, depth=2, **old_kw)
    _same(old.ntk, new.ntk)


def test_both_spellings_or_a_bad_call_are_refused() -> None:
    with pytest.raises(TypeError, match="b_std, beta: expected one of them, got both"), \
            pytest.warns(DeprecationWarning):
        compute_kernel(None, X, depth=2, b_std=0.1, beta=0.2)
    with pytest.raises(TypeError, match="expected the inputs x1 after the model"):
        compute_kernel(MODEL)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bugdet'"):
        compute_kernel(MODEL, X, bugdet="1G")
    with pytest.raises(ValueError, match="pairs: expected one of"):
        compute_kernel(MODEL, X, pairs="diag")
    with pytest.raises(ValueError, match="pairs: expected x2 = None with 'diagonal'"):
        compute_kernel(MODEL, X, X[:2], pairs="diagonal")
    with pytest.raises(ValueError, match=r"model: expected a model .* or the fully connected shortcut"):
        compute_kernel(None, X)


def test_infinite_kernel_fc_kernel_and_tile_functions() -> None:
    ref = ntkit.infinite_kernel(MODEL, X, which="ntk")
    with pytest.warns(DeprecationWarning, match="budget is deprecated; use memory_budget"):
        _same(ntkit.infinite_kernel(MODEL, X, which="ntk", budget="64M"), ref)
    _same(ntkit.infinite_kernel(MODEL, X, which="ntk", memory_budget="64M"), ref)
    _same(ntkit.fc_kernel(X, depth=2, b_std=0.2).ntk, ref)
    with pytest.warns(DeprecationWarning, match="beta is deprecated; use b_std"):
        _same(ntkit.fc_kernel(X, depth=2, beta=0.2).ntk, ref)
    with pytest.warns(DeprecationWarning, match="beta is deprecated"):
        _same(ntkit.kernel_tile_fn(depth=2, beta=0.2)(X, X), ntkit.kernel_tile_fn(depth=2, b_std=0.2)(X, X))
    with pytest.warns(DeprecationWarning, match="beta is deprecated"):
        _same(FusedTiles(depth=2, beta=0.2)(X, X), FusedTiles(depth=2, b_std=0.2)(X, X))
    v = torch.ones(7, dtype=F64)
    with pytest.warns(DeprecationWarning, match="beta is deprecated"):
        old = KernelOperator(X, depth=2, beta=0.2) @ v
    _same(old, KernelOperator(X, depth=2, b_std=0.2) @ v)
    assert KernelOperator(X, model=MODEL, memory_budget="1M").budget == 1 << 20
