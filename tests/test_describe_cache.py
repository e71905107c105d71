"""The architecture descriptions kept between calls (ntkit.infinite.describe_cache): reused while the model is
unchanged, rebuilt after any change the description depends on, and never keeping a model alive."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import describe_cache, describe_model
from ntkit.infinite.walk import _describe
from ntkit.nn import LayerNorm, Linear, Residual, SelfAttention

F64 = torch.float64
META = {"device": "meta"}
SCALE = 0.5  # read by ScaledResidual's forward: a global of a captured forward


class TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class ScaledResidual(nn.Module):
    """``x + SCALE * f(x)``: a captured forward reading a module global."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.ReLU(), Linear(4, 4, **META))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + SCALE * self.f(x)


class Shift(nn.Module):
    """``x + self.scale * f(x)``: a captured forward reading a plain attribute."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.f = nn.Sequential(nn.ReLU(), Linear(4, 4, **META))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.f(x)


def _encoder() -> nn.Sequential:
    return nn.Sequential(Linear(3, 4, b_std=0.1, **META),
                         Residual(LayerNorm(4), SelfAttention(4, 4, n_heads=2, **META)),
                         Residual(LayerNorm(4), Linear(4, 4, b_std=0.1, **META), nn.ReLU(), Linear(4, 4, **META)),
                         TokenMean(), Linear(4, 1, b_std=0.1, **META))


def _fresh(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    return [repr(op) for op in _describe(model, shape).ops]


def _kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    k = ntkit.infinite_kernel(model, x)
    return torch.stack([k.nngp, k.ntk])


def _same_as_uncached(model: nn.Module, shape: tuple[int, ...]) -> None:
    arch = describe_model(model, shape)
    assert [repr(op) for op in arch.ops] == _fresh(model, shape)


def test_the_description_is_reused_while_the_model_is_unchanged() -> None:
    model = _encoder()
    first = describe_model(model, (5, 3))  # the first description only notes the model
    a = describe_model(model, (5, 3))
    assert a is not first and a.describe() == first.describe()
    assert describe_model(model, (5, 3)) is a
    assert describe_model(model, [5, 3]) is a  # the shape as ints, whatever the sequence
    b = describe_model(model, (6, 3))  # another shape: its own description, both kept
    assert b is not a and b.input_shape == (6, 3) and describe_model(model, (6, 3)) is b
    assert describe_model(model, (5, 3)) is a
    assert a.describe() == _describe(model, (5, 3)).describe()


def test_a_changed_hyper_parameter_gives_the_new_kernel() -> None:
    model = _encoder()
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    before = _kernel(model, x)
    model[0].b_std = 0.5
    after = _kernel(model, x)
    assert not torch.equal(before, after)
    assert torch.equal(after, _kernel(_with(model, 0, Linear(3, 4, b_std=0.5, **META)), x))
    model[1].block[1].mechanism = "relu"  # SelfAttention inside a Residual: read by the op builder
    _same_as_uncached(model, (5, 3))
    assert "relu" in repr(describe_model(model, (5, 3)).ops)
    model[1].block[0].eps = 0.25
    _same_as_uncached(model, (5, 3))


def _with(model: nn.Sequential, i: int, module: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[module if j == i else m for j, m in enumerate(model)])


def test_a_swapped_submodule_gives_the_new_description() -> None:
    model = _encoder()
    describe_model(model, (5, 3))
    a = describe_model(model, (5, 3))
    model[2].block[2] = nn.Tanh()
    b = describe_model(model, (5, 3))
    assert b is not a and "tanh" in repr(b.ops).lower()
    _same_as_uncached(model, (5, 3))
    model[2].block[2] = nn.ReLU()  # back to the same configuration: the same ops again
    assert [repr(op) for op in describe_model(model, (5, 3)).ops] == [repr(op) for op in a.ops]
    model.append(Linear(1, 1, **META))  # a new last layer
    assert len(describe_model(model, (5, 3)).ops) == len(a.ops) + 1


def test_train_and_eval_with_dropout() -> None:
    model = nn.Sequential(Linear(3, 8, **META), nn.ReLU(), nn.Dropout(0.3), Linear(8, 1, **META)).eval()
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ntkit.infinite_kernel(model, x)
    k = ntkit.infinite_kernel(model, x)  # cached from here on
    for _ in range(2):
        model.train()
        with pytest.raises(ValueError, match=r"call model\.eval"):
            ntkit.infinite_kernel(model, x)
        model.eval()
        assert torch.equal(ntkit.infinite_kernel(model, x).ntk, k.ntk)
    model[2].p = 0.0  # dropout with p = 0 is the identity even in training mode
    model.train()
    assert torch.equal(ntkit.infinite_kernel(model, x).ntk, k.ntk)


def test_captured_forwards_follow_their_attributes_globals_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    shift = nn.Sequential(Linear(4, 4, **META), Shift(0.5), nn.ReLU(), Linear(4, 1, **META))
    k = _kernel(shift, x)
    shift[1].scale = 2.0
    assert not torch.equal(_kernel(shift, x), k)
    _same_as_uncached(shift, (4,))

    model = nn.Sequential(Linear(4, 4, **META), ScaledResidual(), nn.ReLU(), Linear(4, 1, **META))
    k = _kernel(model, x)
    monkeypatch.setitem(globals(), "SCALE", 2.0)  # the global the forward reads
    k2 = _kernel(model, x)
    assert not torch.equal(k2, k)
    _same_as_uncached(model, (4,))

    def forward(self: ScaledResidual, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)

    monkeypatch.setattr(ScaledResidual, "forward", forward)  # new code for the class
    assert not torch.equal(_kernel(model, x), k2)
    _same_as_uncached(model, (4,))


def test_an_activation_changed_in_place() -> None:
    model = nn.Sequential(Linear(3, 8, **META), nn.LeakyReLU(0.1), Linear(8, 1, **META))
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    k = _kernel(model, x)
    model[1].negative_slope = 0.3
    assert not torch.equal(_kernel(model, x), k)
    act = nn.Sequential(Linear(3, 8, **META), ntkit.nn.Activation("relu"), Linear(8, 1, **META))
    describe_model(act, (3,))
    a = describe_model(act, (3,))
    act[1].activation = ntkit.activations.get_activation("tanh")
    assert describe_model(act, (3,)) is not a
    _same_as_uncached(act, (3,))


def test_a_buffer_changed_in_place_is_a_miss() -> None:
    model = _encoder()
    model[3].register_buffer("weights", torch.ones(3))
    describe_model(model, (5, 3))
    a = describe_model(model, (5, 3))
    assert describe_model(model, (5, 3)) is a
    model[3].weights.mul_(2.0)  # its version counter moves
    assert describe_model(model, (5, 3)) is not a


def test_the_cache_keeps_no_model_alive() -> None:
    gc.collect()
    before = describe_cache.size()
    model = _encoder()  # a captured forward, on the token path
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(4))
    for _ in range(3):  # noted, cached, reused
        ntkit.infinite_kernel(model, x, dtype=torch.float32)
    assert describe_cache.size() == before + 1
    ref = weakref.ref(model)
    sub = weakref.ref(model[1])
    del model
    gc.collect()
    assert ref() is None and sub() is None
    assert describe_cache.size() == before


def test_errors_are_not_cached_and_clear_empties() -> None:
    model = nn.Sequential(Linear(3, 4, **META), nn.MaxPool1d(2), Linear(2, 1, **META))
    for _ in range(2):
        with pytest.raises(ValueError, match="MaxPool1d"):
            describe_model(model, (3,))
    model[1] = nn.ReLU()
    model[2] = Linear(4, 1, **META)
    describe_model(model, (3,))
    a = describe_model(model, (3,))
    assert describe_model(model, (3,)) is a
    describe_cache.clear()
    assert describe_cache.size() == 0 and describe_model(model, (3,)) is not a


def test_uncacheable_models_are_described_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _encoder()
    model.table = list(range(100))  # an attribute of 100 values
    monkeypatch.setattr(describe_cache, "MAX_ITEMS", 50)
    with pytest.raises(describe_cache.Uncacheable, match="more than 50"):
        describe_cache.fingerprint(model)
    describe_model(model, (5, 3))
    a = describe_model(model, (5, 3))
    assert describe_model(model, (5, 3)) is not a
    model.table = None
    model.array = np.zeros(200)
    with pytest.raises(describe_cache.Uncacheable, match="more than 50"):  # an array is read by value
        describe_cache.fingerprint(model)
    monkeypatch.setattr(describe_cache, "MAX_ITEMS", 20_000)
    before = describe_cache.fingerprint(model)
    model.array[3] = 1.0
    assert describe_cache.fingerprint(model) != before
    with torch.inference_mode():
        frozen = torch.ones(2)
    model[3].register_buffer("frozen", frozen)
    with pytest.raises(describe_cache.Uncacheable):
        describe_cache.fingerprint(model)


def test_fingerprints_of_equal_models_differ_only_by_identity() -> None:
    a, b = _encoder(), _encoder()
    assert describe_cache.fingerprint(a) == describe_cache.fingerprint(a)
    assert describe_cache.fingerprint(a) != describe_cache.fingerprint(b)  # module identities differ
    assert describe_model(a, (5, 3)) is not describe_model(b, (5, 3))


def test_a_model_used_once_is_noted_not_fingerprinted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model: nn.Module) -> None:
        raise AssertionError("fingerprinted")

    monkeypatch.setattr(describe_cache, "_take", refuse)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    ntkit.fc_kernel(x, depth=2)  # a new model at each call
    ntkit.fc_kernel(x, depth=2)
