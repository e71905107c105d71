"""The reference evaluator's fast bookkeeping (issue 21): the upper triangle of a symmetric block as a list of pairs,
duplicates snapped in place, and neither changes a value beyond rounding nor a tensor handed out before."""

from __future__ import annotations

import torch
from torch import nn

from ntkit.infinite import reference
from ntkit.infinite.state import Layout, Pairs
from ntkit.infinite.walk import describe_model
from ntkit.nn import LayerNorm, Linear, Residual, SelfAttention


class _TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _encoder(c: int = 4, width: int = 16) -> nn.Module:
    return nn.Sequential(
        Linear(c, width, b_std=0.1, device="meta"),
        Residual(LayerNorm(width), SelfAttention(width, width, n_heads=2, device="meta")),
        Residual(LayerNorm(width), Linear(width, width, b_std=0.1, device="meta"), nn.ReLU(),
                 Linear(width, width, w_std=1.3, b_std=0.1, device="meta")),
        nn.ReLU(), LayerNorm(width), _TokenMean(), Linear(width, 1, b_std=0.1, device="meta"))


def _inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(7, 5, 4, generator=gen, dtype=torch.float64)
    x[4] = x[1]  # a duplicated input
    ids = torch.tensor([0, 1, 2, 3, 1, 4, 5])
    return x, ids


def test_upper_triangle_list_matches_the_whole_block(gen: torch.Generator) -> None:
    arch = describe_model(_encoder(), (5, 4))
    x, ids = _inputs(gen)
    a = arch.prepare(x)
    assert all(op.pairs_as_list() for op in arch.ops)
    sym = reference.evaluate(arch, a, a, ids, ids, ntk=True, symmetric=True)
    full = reference.evaluate(arch, a, a, ids, ids, ntk=True)
    for s, f in ((sym[0], full[0]), (sym[1], full[1])):
        assert s is not None and f is not None
        assert torch.equal(s, s.T)  # exactly symmetric
        assert float((s - f).abs().max()) <= 1e-13 * float(f.abs().max())
        assert s[1, 4] == s[1, 1] == s[4, 4] == s[4, 1]  # duplicates: the self batch's value, bit for bit
        assert torch.equal(s.diagonal(), f.diagonal())


def test_snapping_in_place_leaves_handed_out_tensors_alone(gen: torch.Generator) -> None:
    arch = describe_model(_encoder(), (5, 4))
    x, ids = _inputs(gen)
    a = arch.prepare(x)
    held = []
    for _, _, cross, _ in reference.iter_layers(arch, a, a, ids, ids, ntk=True):
        held.append((cross.nngp, cross.nngp.clone(), cross.ntk, None if cross.ntk is None else cross.ntk.clone()))
    for nngp, nngp_then, ntk, ntk_then in held:  # no later layer (nor its snapping) wrote into an earlier one
        assert torch.equal(nngp, nngp_then)
        assert ntk is None or ntk_then is None or torch.equal(ntk, ntk_then)


def test_snap_duplicates_copies_a_view_of_its_input() -> None:
    rows = Pairs(torch.tensor([5.0]), None, Layout((), "none"), 1)
    base = torch.zeros(2, 2)
    cross = Pairs(base.T, None, Layout((), "none"), 2)  # a view of a tensor to keep
    dup = (torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))
    out = reference.snap_duplicates(cross, rows, dup, [base])
    assert float(out.nngp[1, 1]) == 5.0 and float(base[1, 1]) == 0.0
    fresh = Pairs(torch.zeros(2, 2), None, Layout((), "none"), 2)
    out = reference.snap_duplicates(fresh, rows, dup, [base])
    assert out.nngp is fresh.nngp and float(fresh.nngp[1, 1]) == 5.0  # the layer's own result: in place
    expanded = Pairs(torch.zeros(1).expand(2, 2), None, Layout((), "none"), 2)
    out = reference.snap_duplicates(expanded, rows, dup, [])  # overlapping entries: a copy
    assert out.nngp.tolist() == [[0.0, 0.0], [0.0, 5.0]]
