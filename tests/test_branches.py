"""Series-parallel architectures: :class:`ntkit.nn.Parallel` (sum, concatenation, product of branches), its op and
the forwards captured into it.

neural-tangents agreement is ``tests/test_branches_nt.py``; here: the residual block as the special case
``Parallel(nn.Identity(), block)`` bit for bit, exact identities of the merges, every refusal (dependent branches,
an activation after a concatenation, shapes, shared weights), captured forwards equal to the ``Parallel`` models
bit for bit, homogeneity, random features, and finite wide networks against the limit.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError, describe_model
from ntkit.infinite.ops import Parallel as ParallelOp
from ntkit.infinite.ops import Residual as ResidualOp
from ntkit.infinite.walk import iter_ops

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
P, L, C2 = ntkit.nn.Parallel, ntkit.nn.Linear, ntkit.nn.Conv2d
X = torch.randn(6, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(4, 2, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(1))


def _kernels(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """NNGP and NTK, symmetric and cross (the last rows against the first)."""
    k = ntkit.infinite_kernel(model, x)
    c = ntkit.infinite_kernel(model, x[:3], x[2:])
    return [k.nngp, k.ntk, c.nngp, c.ntk]


def _equal(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    for u, v in zip(_kernels(a, x), _kernels(b, x), strict=True):
        assert torch.equal(u, v)


# --- the residual block as a special case ----------------------------------------------------------------------


def _vector_model(block: nn.Module) -> nn.Module:
    return nn.Sequential(L(5, 8, b_std=0.1, device="meta"), block, ntkit.nn.LayerNorm(), nn.ReLU(),
                         L(8, 1, device="meta"))


def _image_model(block: nn.Module) -> nn.Module:
    return nn.Sequential(C2(2, 4, 3, padding="same", device="meta"), nn.ReLU(), block, C2(4, 4, 3, device="meta"),
                         nn.ReLU(), ntkit.nn.GlobalAvgPool(), L(4, 1, device="meta"))


def test_identity_branch_sum_is_the_residual_bit_for_bit() -> None:
    """``Parallel(nn.Identity(), block)`` (either order) is ``Residual(block)``: NNGP and NTK equal bit for bit, the
    channel means a layer norm reads included (a pre-activation block: ``x`` and the block both carry them)."""
    pre = nn.Sequential(nn.ReLU(), L(8, 8, b_std=0.2, device="meta"), nn.Tanh(), L(8, 8, device="meta"))
    for make, block, x in ((_vector_model, pre, X),
                           (_image_model, nn.Sequential(C2(4, 4, 3, padding="same", device="meta"), nn.AvgPool2d(
                               3, 1, padding=1)), IMAGES)):
        reference = make(ntkit.nn.Residual(block))
        _equal(make(P(nn.Identity(), block)), reference, x)
        _equal(make(P(block, nn.Identity())), reference, x)
    ops = list(iter_ops(describe_model(_vector_model(P(nn.Identity(), pre)), (5,)).ops))
    assert any(isinstance(op, ParallelOp) for op in ops) and not any(isinstance(op, ResidualOp) for op in ops)


def test_merges_of_equal_laws() -> None:
    """Identities of the merge rules: a sum of independent weight layers adds their variances; a concatenation of
    branches with the same kernel is that kernel whatever the widths; a product of two unit layers squares it."""
    sum2 = nn.Sequential(P(L(5, 8, w_std=0.6, device="meta"), L(5, 8, w_std=0.8, b_std=0.3, device="meta")), nn.ReLU(),
                         L(8, 1, device="meta"))
    one = nn.Sequential(L(5, 8, w_std=1.0, b_std=0.3, device="meta"), nn.ReLU(), L(8, 1, device="meta"))
    cat = nn.Sequential(L(5, 8, device="meta"), nn.ReLU(), P(L(8, 3, b_std=0.2, device="meta"),
                                                             L(8, 5, b_std=0.2, device="meta"), merge="concat"),
                        L(8, 1, device="meta"))
    single = nn.Sequential(L(5, 8, device="meta"), nn.ReLU(), L(8, 8, b_std=0.2, device="meta"), L(8, 1, device="meta"))
    for a, b in ((sum2, one), (cat, single)):
        for u, v in zip(_kernels(a, X), _kernels(b, X), strict=True):
            torch.testing.assert_close(u, v, rtol=1e-14, atol=0)
    prod = P(L(5, 8, device="meta"), L(5, 8, device="meta"), merge="prod")
    k = ntkit.infinite_kernel(nn.Sequential(prod, L(8, 1, device="meta")), X)
    lin = ntkit.infinite_kernel(L(5, 1, device="meta"), X)
    torch.testing.assert_close(k.nngp, lin.nngp**2, rtol=1e-14, atol=0)
    torch.testing.assert_close(k.ntk, lin.nngp**2 + 2 * lin.nngp * lin.nngp, rtol=1e-14, atol=0)


def test_homogeneity_of_a_product() -> None:
    """A product of two bias-free degree-1 branches has degree 2: ``K(s x, t x') = (s t)^2 K(x, x')``, and inputs
    whose squared norms would overflow in the dual maps are evaluated exactly by rescaling."""
    model = nn.Sequential(L(5, 8, device="meta"), P(L(8, 8, device="meta"), nn.Sequential(
        nn.ReLU(), L(8, 8, device="meta")), merge="prod"), L(8, 1, device="meta"))
    assert describe_model(model, (5,)).degree == 2
    base = ntkit.infinite_kernel(model, X)
    scaled = ntkit.infinite_kernel(model, X * 4.0)
    torch.testing.assert_close(scaled.ntk, base.ntk * 4.0**4, rtol=1e-13, atol=0)
    huge = ntkit.infinite_kernel(model, X * 2.0**251, which="nngp")  # squared norms ~2^502: rescaled
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge / 2.0**1004, base.nngp, rtol=1e-13, atol=0)


def test_layouts_of_branches() -> None:
    """A branch that pools needs every pixel pair: the merge gets the largest layout of its branches, the walk drops
    to same-pixel entries after it (before a flatten)."""
    pooled = nn.Sequential(nn.AvgPool2d(3, 1, padding=1), C2(4, 4, 3, padding="same", device="meta"))
    model = nn.Sequential(C2(2, 4, 3, padding="same", device="meta"), nn.ReLU(), P(pooled, C2(4, 4, 1, device="meta")),
                          nn.ReLU(), nn.Flatten(), L(100, 1, device="meta"))
    arch = describe_model(model, (2, 5, 5))
    assert arch.input_mode == "full" and arch.pair_entries == 25 * 25
    assert [type(op).__name__ for op in arch.ops] == ["Conv", "Pointwise", "Parallel", "Diagonal", "Pointwise",
                                                      "Flatten", "Dense"]
    plain = nn.Sequential(C2(2, 4, 3, padding="same", device="meta"), nn.ReLU(),
                          P(C2(4, 4, 3, padding="same", device="meta"), C2(4, 4, 1, device="meta")), nn.ReLU(),
                          nn.Flatten(), L(100, 1, device="meta"))
    assert describe_model(plain, (2, 5, 5)).input_mode == "diag"


# --- what the limit refuses ------------------------------------------------------------------------------------


def _head(*rest: nn.Module) -> nn.Module:
    return nn.Sequential(L(5, 8, device="meta"), *rest)


@pytest.mark.parametrize(("model", "match"), [
    (_head(P(nn.Sequential(ntkit.nn.LayerNorm(), nn.ReLU()), nn.Identity()), L(8, 1)),
     r"module 1 \(Parallel\): the sum of branch 0 \(ending with 1\.branches\.0\.1 \(ReLU\)\) and branch 1 \(the "
     r"identity\) is not independent: its kernel needs their cross-covariance, not supported"),
    (_head(P(nn.Identity(), ntkit.nn.LayerNorm()), L(8, 1)), r"the sum of branch 0 \(the identity\) and branch 1 "
                                                             r"\(ending with 1\.branches\.1 \(LayerNorm\)\) is not "
                                                             r"independent"),
    (_head(P(nn.ReLU(), nn.Sequential(ntkit.nn.LayerNorm(), nn.Tanh()), merge="prod"), L(8, 1)),
     r"the product of branch 0 \(ending with 1\.branches\.0 \(ReLU\)\) and branch 1 \(ending with "
     r"1\.branches\.1\.1 \(Tanh\)\) is not independent: its kernel needs their joint law"),
    (_head(P(L(8, 3), L(8, 5), merge="concat"), nn.ReLU(), L(8, 1)),
     r"module 2 \(ReLU\) follows the concatenation 1 \(Parallel\), whose channel groups have different kernels: "
     r"expected a weight layer after a concatenation"),
    (_head(P(L(8, 3), L(8, 5), merge="concat"), ntkit.nn.LayerNorm(), L(8, 1)), r"module 2 \(LayerNorm\) follows the "
                                                                                r"concatenation 1 \(Parallel\)"),
    (_head(P(L(8, 1), L(8, 1), merge="concat")), r"expected a weight layer after the concatenation 1 \(Parallel\).*"
                                                 r"got the model's output"),
    (_head(P(L(8, 8), L(8, 6)), L(8, 1)), r"module 1 \(Parallel\): expected branch outputs of equal shapes for "
                                          r"merge='sum', got \(8,\) \(branch 0\) and \(6,\) \(branch 1\)"),
    (_head(P(P(L(8, 3), L(8, 5), merge="concat"), P(L(8, 4), L(8, 4), merge="concat"), merge="prod"), L(8, 1)),
     r"module 1 \(Parallel\): expected at most one factor of a product to come from a concatenation"),
    (_head(nn.ReLU(), P(L(8, 8), L(8, 8)), nn.ReLU(), P(L(8, 8), nn.Identity(), merge="prod"), nn.ReLU(), L(8, 1)),
     r"module 5 \(ReLU\) receives a non-Gaussian input"),
])
def test_refused(model: nn.Module, match: str) -> None:
    with pytest.raises(ArchitectureError, match=match):
        describe_model(model, (5,))


def test_refused_images_and_shared_weights() -> None:
    conv = C2(4, 4, 3, padding="same", device="meta")
    head = [C2(2, 4, 3, padding="same", device="meta"), nn.ReLU()]
    cases = [
        (P(conv, nn.Sequential(C2(4, 4, 3, padding="valid", device="meta")), merge="concat"),
         r"expected branch outputs of equal shapes but for the channels for merge='concat', got \(4, 5, 5\) \(branch "
         r"0\) and \(4, 3, 3\) \(branch 1\)"),
        (P(conv, C2(4, 2, 1, device="meta"), merge="concat", dim=2),
         r"expected a concatenation along the channels \(dim=1 or -3 for outputs of shape \(N, \*\(4, 5, 5\)\)\), got "
         r"dim=2"),
        (P(conv, nn.Sequential(nn.ReLU(), conv)),
         r"expected branches with their own weights, got the module Conv2d in branch 0 \(the branch itself\) and in "
         r"branch 1 \(1\)"),
    ]
    for block, match in cases:
        model = nn.Sequential(*head, block, C2(8, 4, 1, device="meta"), ntkit.nn.GlobalAvgPool(),
                              L(4, 1, device="meta"))
        with pytest.raises(ArchitectureError, match=match):
            describe_model(model, (2, 5, 5))


def test_the_module() -> None:
    a, b = L(3, 4), L(3, 2)
    x = torch.randn(2, 3)
    assert torch.equal(P(a, b, merge="concat")(x), torch.cat([a(x), b(x)], 1))
    assert torch.equal(P(a, nn.Identity(), merge="concat", dim=-1)(x), torch.cat([a(x), x], -1))
    assert torch.equal(P(a, a, a, merge="prod")(x), a(x) * a(x) * a(x))
    assert "merge='prod'" in repr(P(a, a, merge="prod"))
    with pytest.raises(ValueError, match=r"expected branch outputs of equal shapes for merge='sum', got \(2, 4\) "
                                         r"\(branch 0\) and \(2, 2\) \(branch 1\)"):
        P(a, b)(x)
    with pytest.raises(ValueError, match=r"equal shapes but along dim=1 for merge='concat', got \(2, 4\) \(branch 0\) "
                                         r"and \(4, 1\) \(branch 1\)"):
        P(a, nn.Sequential(b, nn.Flatten(0), nn.Unflatten(0, (4, 1))), merge="concat")(x)
    with pytest.raises(ValueError, match="expected at least two branches, got 1"):
        P(a)
    with pytest.raises(ValueError, match=r"expected merge in \('sum', 'concat', 'prod'\), got 'max'"):
        P(a, b, merge="max")
    with pytest.raises(TypeError, match=r"expected torch.nn.Module branches, got .* at position 1"):
        P(a, lambda t: t)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an integer dim"):
        P(a, b, merge="concat", dim=1.0)  # type: ignore[arg-type]


# --- captured forwards -----------------------------------------------------------------------------------------


class Projection(nn.Module):
    """A ResNet block with a projection shortcut (strided), then a concatenation with a 1x1 branch, then a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = C2(2, 4, 3, padding="same")
        self.c1, self.c2 = C2(4, 6, 3, stride=2, padding="same"), C2(6, 6, 3, padding="same", b_std=0.1)
        self.short = C2(4, 6, 1, stride=2, padding="same")
        self.wide, self.narrow = C2(6, 3, 1), C2(6, 5, 3, padding="same")
        self.mix = C2(8, 6, 1)
        self.gate_a, self.gate_b = C2(6, 6, 1), C2(6, 6, 1, b_std=0.3)
        self.out = L(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(self.c2(F.relu(self.c1(h))) + self.short(h))
        h = self.mix(torch.cat([self.wide(h), F.relu(self.narrow(h))], dim=1))
        h = torch.tanh(self.gate_a(h)) * self.gate_b(h)
        return self.out(h.mean((2, 3)))


def _projection_as_parallel(m: Projection) -> nn.Module:
    body = nn.Sequential(m.c1, nn.ReLU(), m.c2)
    return nn.Sequential(m.stem, nn.ReLU(), P(body, m.short), nn.ReLU(),
                         P(m.wide, nn.Sequential(m.narrow, nn.ReLU()), merge="concat"), m.mix,
                         P(nn.Sequential(m.gate_a, nn.Tanh()), m.gate_b, merge="prod"), ntkit.nn.GlobalAvgPool(), m.out)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.out = L(5, 8), L(8, 8, b_std=0.2), L(8, 8), L(8, 1)
        self.inner = L(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        s = (self.inner(F.relu(h)) + self.b(h)) + self.c(h)  # sums nested on the fork h
        return self.out(h * torch.sigmoid(s))  # h times a gate computed from h: the identity beside a branch


def test_captured_forwards_equal_the_parallel_models() -> None:
    m = Projection()
    _equal(m, _projection_as_parallel(m), IMAGES)

    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = L(5, 6, b_std=0.1), L(11, 4), L(11, 3)
            self.d, self.e, self.out = L(18, 8), L(18, 8), L(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.cat([x, torch.tanh(self.a(x))], dim=-1)
            h = torch.cat((h, self.b(h), F.relu(self.c(h))), 1)
            return self.out(self.d(h) + self.e(h))

    d = Dense()
    grow = P(nn.Identity(), nn.Sequential(d.a, nn.Tanh()), merge="concat", dim=-1)
    _equal(d, nn.Sequential(grow, P(nn.Identity(), d.b, nn.Sequential(d.c, nn.ReLU()), merge="concat"), P(d.d, d.e),
                            d.out), X)

    n = Nested()
    gate = nn.Sequential(P(P(nn.Sequential(nn.ReLU(), n.inner), n.b), n.c), nn.Sigmoid())
    reference = nn.Sequential(n.a, P(nn.Identity(), gate, merge="prod"), n.out)
    _equal(n, reference, X)
    arch = describe_model(n, (5,))
    rules = [op.rule for op in iter_ops(arch.ops) if isinstance(op, ParallelOp)]
    assert rules == ["prod", "sum", "sum"]


def test_captured_residual_sums_stay_residual_ops() -> None:
    """``x + f(x)`` still lifts to the residual op (results unchanged); ``x + (a(x) + b(x))`` nests a Parallel in it."""

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.out = L(5, 8), L(8, 8), L(8, 8, b_std=0.1), L(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            h = h + self.b(F.relu(h))
            h = h + (self.b(F.relu(h)) + self.c(torch.tanh(h)))
            return self.out(h)

    ops = describe_model(Res(), (5,)).ops
    assert [type(op).__name__ for op in ops] == ["Dense", "Residual", "Residual", "Dense"]
    assert isinstance(ops[2], ResidualOp) and isinstance(ops[2].block[0], ParallelOp)


def test_branch_modules_of_a_captured_forward_get_the_source_line() -> None:
    class Same(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.out = L(5, 8), ntkit.nn.LayerNorm(), L(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.out(F.relu(h) + torch.tanh(self.norm(h)))  # dependent, not pointwise

    with pytest.raises(ArchitectureError, match=r"module add \(Parallel\) at test_branches\.py:\d+ in forward: .*: "
                                                r"the sum of branch 0 .* is not independent"):
        ntkit.infinite_kernel(Same(), X)


# --- random features and finite networks -----------------------------------------------------------------------


FEATURE_MODELS = {
    "sum": (nn.Sequential(L(5, 8, b_std=0.1), P(nn.Sequential(nn.ReLU(), L(8, 8)), nn.Sequential(
        nn.Tanh(), L(8, 8, b_std=0.2))), nn.ReLU(), L(8, 1)), X),
    "concat": (nn.Sequential(L(5, 8), nn.ReLU(), P(L(8, 3), nn.Sequential(L(8, 5), nn.Tanh()), nn.Identity(),
                                                   merge="concat"), L(16, 1)), X),
    "prod": (nn.Sequential(L(5, 8, b_std=0.1), nn.ReLU(), P(L(8, 8), nn.Sequential(L(8, 8, b_std=0.3), nn.Tanh()),
                                                            merge="prod"), L(8, 1)), X),
    "conv-concat": (nn.Sequential(C2(2, 4, 3), nn.ReLU(), P(C2(4, 3, 1), nn.Sequential(C2(4, 5, 3, padding="same"),
                                                                                         nn.ReLU()), merge="concat"),
                                  nn.AvgPool2d(2, 1), C2(8, 4, 2), nn.ReLU(), ntkit.nn.GlobalAvgPool(), L(4, 1)),
                    IMAGES),
}


@pytest.mark.parametrize("name", sorted(FEATURE_MODELS))
def test_random_features_converge(name: str) -> None:
    """Features of sums (projected), concatenations (channel-weighted) and products (tensor sketches): the relative
    error of ``phi phi^T`` falls with the number of features (mean of 2 draws, m = 32 -> 1024; 1/sqrt(m): x0.18)."""
    model, x = FEATURE_MODELS[name]
    for which in ("nngp", "ntk"):
        exact = ntkit.infinite_kernel(model, x, which=which)
        errs = []
        for m in (32, 1024):
            feats = [ntkit.features(model, x, n_features=m, which=which, seed=s, dtype=F64) for s in range(2)]
            errs.append(sum(float(torch.linalg.norm(p @ p.T - exact) / torch.linalg.norm(exact)) for p in feats) / 2)
        assert errs[1] < 0.45 * errs[0] and errs[1] * math.sqrt(1024) < 6.0, (which, errs)


def _mixed(n: int, out: int, g: torch.Generator, swap: bool = False) -> nn.Module:
    """Every merge in one model: a sum of two branches, then a concatenation of a dense branch and a gated product."""
    kw = {"generator": g, "dtype": F64}
    wide, narrow = (n // 2, n // 4) if swap else (n // 4, n // 2)
    gate = P(nn.Sequential(L(n, narrow, **kw), nn.Tanh()), L(n, narrow, b_std=0.1, **kw), merge="prod")
    return nn.Sequential(L(5, n, b_std=0.1, **kw), P(nn.Sequential(nn.ReLU(), L(n, n, **kw)), nn.Sequential(
        nn.Tanh(), L(n, n, b_std=0.2, **kw))), nn.ReLU(), P(L(n, wide, **kw), gate, merge="concat"),
        L(n // 4 + n // 2, out, w_std=1.2, **kw))


def _empirical_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``J J^T`` of the one output over every parameter (one backward pass per input: small, fast)."""
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(model(x[i : i + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return jac @ jac.T


def test_limit_is_the_mean_of_finite_networks() -> None:
    """Over 16 networks of width 256 the mean empirical NTK (one output) and NNGP (``f f^T / k`` over k = 256
    outputs) equal the limit within 5 standard errors; the limit of the model with the concatenation's widths
    swapped (other channel fractions, other product widths) is far off (power of the check)."""
    nets = 16
    thetas, nngps = [], []
    for seed in range(nets):
        thetas.append(_empirical_ntk(_mixed(256, 1, torch.Generator().manual_seed(seed)), X))
        nngps.append(ntkit.empirical_nngp(_mixed(256, 256, torch.Generator().manual_seed(seed)), X))
    z = {}
    for swap in (False, True):
        limit = ntkit.infinite_kernel(_mixed(8, 1, torch.Generator(), swap), X)
        for what, samples, ref in (("ntk", thetas, limit.ntk), ("nngp", nngps, limit.nngp)):
            s = torch.stack(samples)
            se = (s.std(0) / math.sqrt(nets)).clamp_min(1e-3 * float(ref.abs().max()))
            z[what, swap] = float(((s.mean(0) - ref).abs() / se).max())
    assert max(z["ntk", False], z["nngp", False]) < 5.0, z
    assert min(z["ntk", True], z["nngp", True]) > 6.0, z
