"""Per-op moment conformance harness: a finite module's output moments against its kernel op.

One *case* (:class:`MomentCase`) is one finite module (a weight layer, an activation, a pooling, a
layer norm, a residual block, ...) with inputs whose exact covariance is known; its kernel ops
(what :func:`ntkit.infinite.walk.describe_model` builds for it) map that covariance to the
output's. The module is drawn many times and its empirical moments must agree with the op:

* **draws**: the output channels of a layer are i.i.d. single-layer instances (channel ``c`` owns
  its weights; a Gaussian field's channels are i.i.d.), so one wide layer (``width`` channels per
  chunk) gives that many independent samples. Where a module couples its channels (a residual
  block), whole instances are the samples (``instances=True``: each gives its channel mean).
* **NNGP**: ``K'(x, p; x', q) = E[z_c(x, p) z_c(x', q)]`` (N P' x N P' matrix, pixels fastest)
  against the op's ``nngp`` of the input covariance ``K``.
* **NTK increment**: per channel, ``Theta_c = sum_theta dz_c/dtheta dz_c/dtheta`` over the layer's
  own parameters (``torch.func.jacrev`` on a narrow instance: deterministic given the inputs) plus
  the propagated part ``(J u)(x) (J u)(x')`` with ``J u`` the module's Jacobian along tangent
  features ``u`` of exact covariance ``T`` (independent of a Gaussian input), against the op's
  ``ntk`` of ``Pairs(K, T)`` (e.g. ``T' = w^2 A(T) + K'``: ``w^2 A(T)`` is the propagated mean,
  ``K'`` the own part). For an activation ``J u = sigma'(x) u``, and the samples are the
  conditional expectation over ``u``, ``sigma'(x) sigma'(x') T`` (same mean, less noise).
* **derivative kernel** (activations): ``E[sigma'(u) sigma'(v)]``, ``sigma'`` by autograd on the
  module, against ``Pointwise.apply_dual``. Where ``sigma`` has a kink at 0 an exactly-zero input
  is left out: ``sigma'(0)`` is then a convention (``relu'(0)`` is 0 for ``torch.relu``, 1 for
  ``clamp``), and no NTK depends on it (a zero-variance input has a zero tangent, ``T(x, x) = 0``).

Statistics, per entry: the mean of the per-draw products, its standard error ``SE`` (sample
variance on the first chunk, ``>= 1e5`` draws), the natural scale ``s = sqrt(K'(e_x, e_x)
K'(e_x', e_x'))`` of the exact output. After the first chunk the number of draws is raised (up to
``max_draws``) until every ``SE <= SE_TARGET s``. The check passes when every ``SE <= SE_MAX s =
0.003 s`` (the power to see a 1% scale error: it moves second moments by 2.01%, ``>= 6.7 SE``) and
every ``|mean - exact| <= Z_MAX SE = 5 SE`` (SE floored at ``1e-10 max s``, rounding only).

Faults (:func:`faulty`): weight layers get their weights multiplied by 1.01 after their init (the
init scale off by 1%); every other module (parameter-free layers, the residual sum) its output.
:func:`run_case` evaluates several fault factors on the same draws: the fault is the only
difference.

Inputs (:mod:`tests.moment_inputs`) are held channel-first; token inputs (``tokens=True``) reach the
module channels last and graph inputs with their adjacency (``Inputs.bind`` wraps the drawn module).

A new op plugs in with one line in :data:`tests.moment_cases.CASES`, e.g.
``MomentCase("conv2d_same_s2", conv(Conv2d, 2, 3, stride=2, padding="same"), IMAGES)``.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ntkit.infinite.ops import KernelOp, Pointwise
from ntkit.infinite.reference import run_ops
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.infinite.walk import describe_model, iter_ops
from ntkit.nn import Aggregate, Conv1d, Conv2d, Linear
from ntkit.nn.linear import _WeightLayer
from ntkit.nn.structure import GlobalAvgPool, Residual
from tests.moment_inputs import ChannelsLast, Covariance, Inputs, OnGraphs

Tensor = torch.Tensor
F64 = torch.float64

#: Largest accepted |mean - exact| / SE.
Z_MAX = 5.0
#: Largest accepted SE / natural scale (a 1% scale error is then >= 6.7 SE).
SE_MAX = 0.003
#: The draws are raised until SE / natural scale is at most this (a 1% scale error: ~9 SE).
SE_TARGET = 0.0022
#: Absolute floor of the SE, relative to the largest natural scale (rounding only).
FLOOR = 1e-10

#: ``make(width, generator) -> module``: the module under test with ``width`` output channels
#: (weight layers) or any width (parameter-free modules ignore both arguments).
Maker = Callable[[int, torch.Generator], nn.Module]


# ---------------------------------------------------------------- cases and reports


@dataclass(frozen=True)
class MomentCase:
    """One module under test (see the module notes).

    ``make(width, generator)`` builds it; ``width`` channels per draw (channel mode: a chunk of
    i.i.d. channels; ``instances=True``: the module's fixed width, one sample per instance). At
    least ``draws`` samples (instances: exactly), more up to ``max_draws`` where the SE needs them
    (a module coupling its channels, a layer norm, sets ``width = max_draws``: one draw).
    ``own_width``: channels of the instance whose own-parameter gradients autograd takes (``instances=True``:
    ``own_draws`` whole instances).
    ``floor``: the SE floor relative to the largest natural scale, the accuracy of the module's own
    float64 forward and autograd (:data:`FLOOR`, rounding, unless the module is known to be less exact), or of
    a deterministic case's known finite-width remainder (self-attention at exact weights).
    """

    name: str
    make: Maker
    inputs: Inputs
    draws: int = 400_000
    max_draws: int = 2_000_000
    width: int = 100_000
    instances: bool = False
    own_width: int = 16
    own_draws: int = 4
    floor: float = FLOOR

    def __repr__(self) -> str:
        return f"MomentCase({self.name!r})"


@dataclass(frozen=True)
class MomentReport:
    """Per quantity (``nngp``, ``ntk``, ``derivative``): max z-score, max SE / natural scale, its entry."""

    name: str
    z: dict[str, float]
    se_ratio: dict[str, float]
    draws: int
    #: max |ops on the same-pixel layout - those entries of the full layout| / max (None: no such layout).
    layout_gap: float | None
    #: (row, column) of the (N P', N P') matrix where each max z-score sits.
    worst: dict[str, tuple[int, int]]

    @property
    def max_z(self) -> float:
        return max(self.z.values())

    @property
    def max_se_ratio(self) -> float:
        return max(self.se_ratio.values())


# ---------------------------------------------------------------- the exact side


def kernel_ops(module: nn.Module, in_shape: tuple[int, ...], tokens: bool = False) -> tuple[KernelOp, ...]:
    """The ops the walk builds for ``module`` taking inputs of shape ``in_shape`` after a weight layer.

    A 1x1 weight layer on ``meta`` goes in front (the walk starts at a weight layer and wants a
    Gaussian input for an activation), an ``nn.Flatten`` after (it wants a vector output); the ops
    labelled ``1`` are the module's. ``tokens``: ``in_shape = (*S, C)``, channels last (the head is a
    ``Linear`` on every token).
    """
    c = in_shape[-1] if tokens else in_shape[0]
    if len(in_shape) == 1 or tokens:
        head: nn.Module = Linear(c, c, device="meta")
    else:
        head = (Conv1d if len(in_shape) == 2 else Conv2d)(c, c, 1, padding="valid", device="meta")
    arch = describe_model(nn.Sequential(head, module, nn.Flatten()), in_shape)
    return tuple(op for op in arch.ops if op.position.split(" ", 1)[0].split(".")[0] == "1")


def _as_matrix(t: Tensor, layout: Layout) -> Tensor:
    """(N, N, *pair) kernel of the pairs -> (N P, N P) with the pixels fastest."""
    n = t.shape[0]
    if layout.mode == "none":
        return t
    p = layout.pixels
    return t.reshape(n, n, p, p).permute(0, 2, 1, 3).reshape(n * p, n * p)


def exact_moments(ops: tuple[KernelOp, ...], cov: Covariance, mode: str, ntk: bool
                  ) -> tuple[dict[str, Tensor], Pairs]:
    """The ops' output kernels of every pair of inputs (``nngp``, ``ntk``, ``derivative`` of an activation).

    ``(N P', N P')`` matrices for the layouts ``none`` / ``full``; the raw ``Pairs`` tensors for ``diag``.
    """
    rows, cross = cov.pairs(mode, ntk)
    left = right = cov.index
    r, c = torch.nonzero(left[:, None] == right[None, :], as_tuple=True)
    _, out = run_ops(ops, rows, cross, left, right, (r, c, left[r]), ntk)
    res = {"nngp": out.nngp}
    if ntk:
        assert out.ntk is not None
        res["ntk"] = out.ntk
    if ntk and _pointwise(ops):
        dot = ops[0].apply_dual(cross, Context(rows, left, right), True)[1]  # type: ignore[attr-defined]
        assert dot is not None
        res["derivative"] = dot
    if out.layout.mode == "diag":
        return res, out
    return {k: _as_matrix(v, out.layout) for k, v in res.items()}, out


def _pointwise(ops: tuple[KernelOp, ...]) -> bool:
    return len(ops) == 1 and isinstance(ops[0], Pointwise)


def _layout_gap(ops: tuple[KernelOp, ...], cov: Covariance, ntk: bool, full: Tensor) -> float | None:
    """Relative gap between the ops on same-pixel covariances and the same entries of the full run."""
    if not cov.spatial or any(op.input_mode("diag") == "full" for op in ops):
        return None
    diag, out = exact_moments(ops, cov, "diag", ntk)
    if out.layout.mode == "diag":
        n, p = len(cov.index), out.layout.pixels
        full = full.reshape(n, p, n, p).diagonal(dim1=1, dim2=3).reshape(diag["nngp"].shape)
    return float((diag["nngp"] - full).abs().max() / full.abs().max())


# ---------------------------------------------------------------- the empirical side


class Moment:
    """Running mean of i.i.d. samples of an (E, E) matrix, with the variance of its first batch of samples."""

    def __init__(self) -> None:
        self.total: Tensor | float = 0.0
        self.n = 0
        self.var_total: Tensor | float = 0.0
        self.var_square: Tensor | float = 0.0
        self.var_n = 0

    def _add(self, total: Tensor, n: int, square: Tensor | None) -> None:
        self.total, self.n = self.total + total, self.n + n
        if square is not None:
            self.var_total, self.var_square = self.var_total + total, self.var_square + square
            self.var_n += n

    def add_rows(self, z: Tensor) -> None:
        """Samples ``z_k z_k^T`` for every row ``z_k`` of ``z`` (k, E); the variance from the first call."""
        zz = z * z if self.var_n == 0 else None
        self._add(z.T @ z, z.shape[0], None if zz is None else zz.T @ zz)

    def add_units(self, m: Tensor) -> None:
        """Samples ``m[k]`` (k, E, E) (all of them enter the variance)."""
        self._add(m.sum(0), m.shape[0], (m * m).sum(0))

    def variance(self) -> Tensor:
        """The sample variance of one sample, entry by entry."""
        assert isinstance(self.var_square, Tensor) and self.var_n > 1
        m = self.var_total / self.var_n
        return (self.var_square / self.var_n - m * m).clamp_min(0.0) * (self.var_n / (self.var_n - 1))

    def result(self) -> tuple[Tensor, Tensor]:
        """``(mean, SE)``."""
        assert isinstance(self.total, Tensor)
        return self.total / self.n, (self.variance() / self.n).sqrt()


class _Scaled(nn.Module):
    """``factor * module(x)``: the output-scale fault."""

    def __init__(self, module: nn.Module, factor: float) -> None:
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x) * self.factor


def _has_weights(module: nn.Module) -> bool:
    return any(isinstance(m, _WeightLayer) for m in module.modules())


def _has_parameters(module: nn.Module) -> bool:
    """Whether the NTK has an own-parameter part (weight layers, self-attention, ...)."""
    return any(True for _ in module.parameters())


def faulty(module: nn.Module, factor: float) -> nn.Module:
    """``module`` with a scale fault ``factor``: a copy whose weight layers' weights are multiplied after
    their init (a weight layer, a read-out), else the output multiplied (parameter-free, residual sum)."""
    if factor == 1.0:
        return module
    if not _has_weights(module) or isinstance(module, Residual):
        return _Scaled(module, factor)
    module = copy.deepcopy(module)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _WeightLayer):
                m.weight.mul_(factor)
    return module


def _flat(out: Tensor) -> Tensor:
    """(N, C, *S) -> (C, N P)."""
    n, c = out.shape[:2]
    return out.detach().reshape(n, c, -1).permute(1, 0, 2).reshape(c, -1)


def _own_gram(module: nn.Module, x: Tensor) -> Tensor:
    """Per output channel, the Gram of its gradients w.r.t. every parameter of ``module``: (C, N P, N P)."""
    params = {k: v.detach() for k, v in module.named_parameters()}

    def f(p: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(module, p, (x,))

    jac = torch.func.jacrev(f)(params)
    n, c = x.shape[0], next(iter(jac.values())).shape[1]
    pieces = []
    for name, j in jac.items():
        q = params[name].numel()
        pieces.append(j.reshape(n, c, -1, q).permute(1, 0, 2, 3).reshape(c, -1, q))  # (C, N P, Q)
    jj = torch.cat(pieces, -1)
    return jj @ jj.transpose(1, 2)


def _affine(module: nn.Module) -> bool:
    """Whether ``module`` is affine in its input (weight layers, flatten, pooling, residual sums of those)."""
    kinds = (_WeightLayer, nn.Flatten, nn.Sequential, Residual, _Scaled, nn.AvgPool1d, nn.AvgPool2d,
             nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, GlobalAvgPool, ChannelsLast, OnGraphs, Aggregate)
    return all(isinstance(m, kinds) for m in module.modules())


def _jvp(module: nn.Module, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``(module(x), J u)``, ``J`` the Jacobian at ``x``: ``module(u) - module(0)`` for an affine module
    (one pass over ``[x; u; 0]``), else reverse-mode autograd twice (``J u = d/dv <J^T v, u>``)."""
    n = x.shape[0]
    if _affine(module):
        both = module(torch.cat([x, u, torch.zeros_like(x[:1])]))
        return both[:n], both[n : 2 * n] - both[2 * n :]
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = module(xg)
        v = torch.zeros_like(y, requires_grad=True)
        (jt_v,) = torch.autograd.grad(y, xg, v, create_graph=True)
        (ju,) = torch.autograd.grad(jt_v, v, u)
    return y.detach(), ju


def _derivative(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigma(x), sigma'(x))`` of a pointwise module (reverse-mode autograd of the sum)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = module(xg)
        (d,) = torch.autograd.grad(y.sum(), xg)
    return y.detach(), d


def _accumulate(module: nn.Module, x: Tensor, u: Tensor | None, moments: dict[str, Moment], kind: str) -> None:
    """Add one drawn module's samples; ``kind``: "channels", "instances" (channel means) or "pointwise"."""
    samples = {}
    with torch.no_grad():
        if kind == "pointwise" and "derivative" in moments:
            out, deriv = _derivative(module, x)
            samples["derivative"] = _flat(deriv)
        elif "ntk" in moments:
            assert u is not None
            out, jv = _jvp(module, x, u)
            samples["ntk"] = _flat(jv)
        else:
            out = module(x)
    samples["nngp"] = _flat(out)
    for key, z in samples.items():
        if kind == "instances":
            moments[key].add_units((z.T @ z / z.shape[0])[None])
        else:
            moments[key].add_rows(z)


def kinked_at_zero(module: nn.Module) -> bool:
    """Whether the one-sided derivatives of a pointwise module differ at 0 (finite differences)."""
    h = 1e-6
    y = module(torch.tensor([[-h], [0.0], [h]], dtype=F64)).reshape(-1)
    left, right = float(y[1] - y[0]) / h, float(y[2] - y[1]) / h
    return abs(left - right) > 1e-3 * max(1.0, abs(left), abs(right))


# ---------------------------------------------------------------- the check


def run_case(case: MomentCase, faults: tuple[float, ...] = (1.0,), *, seed: int | None = None
             ) -> tuple[MomentReport, ...]:
    """Draw ``case`` and compare its moments with its ops, once per fault factor (:func:`faulty`).

    Every factor sees the same draws (a faulty module is a scaled copy of the drawn one).
    """
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()) if seed is None else seed)
    probe = case.make(case.width if case.instances else 2, torch.Generator().manual_seed(0))
    ops = case_ops(case, probe)
    ntk = all(op.fn.has_derivative_map for op in iter_ops(ops) if isinstance(op, Pointwise))
    cov = case.inputs.covariance()
    exact, _ = exact_moments(ops, cov, "full" if cov.spatial else "none", ntk)
    layout_gap = _layout_gap(ops, cov, ntk, exact["nngp"])
    kind = "instances" if case.instances else "pointwise" if _pointwise(ops) else "channels"
    keys = [k for k in exact if not (kind == "pointwise" and k == "ntk")]
    skip = torch.zeros_like(exact["nngp"], dtype=torch.bool)
    if "derivative" in exact and kinked_at_zero(probe):
        k_in = _as_matrix(cov.pairs("full" if cov.spatial else "none", False)[1].nngp, Layout(cov.spatial, "full"))
        zero = k_in.diagonal() == 0
        skip = zero[:, None] | zero[None, :]

    moments = [{k: Moment() for k in keys} for _ in faults]
    total, done, chunk = case.draws, 0, 0
    while done < total:
        width = case.width if case.instances else min(case.width, total - done)
        module = case.inputs.bind(case.make(width, gen))
        x, u = case.inputs.batch(chunk, width, kind != "pointwise")
        for fault, mom in zip(faults, moments, strict=True):
            _accumulate(faulty(module, fault), x, u, mom, kind)
        done, chunk = done + (1 if case.instances else width), chunk + 1
        if chunk == 1 and not case.instances:
            need = max(_needed(mom, exact, skip) for mom in moments)
            total = min(max(total, math.ceil(need / case.width) * case.width), case.max_draws)
    own = [Moment() for _ in faults]
    if ntk and _has_parameters(probe):
        for k in range(case.own_draws if case.instances else 1):
            width = case.width if case.instances else case.own_width
            module = case.inputs.bind(case.make(width, gen))
            x, _ = case.inputs.batch(-1 - k, width, False)
            for fault, o in zip(faults, own, strict=True):
                gram = _own_gram(faulty(module, fault), x)
                o.add_units(gram.mean(0, keepdim=True) if case.instances else gram)
    tangent = None
    if kind == "pointwise" and ntk:
        tangent = _as_matrix(cov.pairs("full" if cov.spatial else "none", True)[1].ntk, Layout(cov.spatial, "full"))
    return tuple(_report(case.name, done, _estimates(mom, o, tangent), exact, skip, layout_gap, case.floor)
                 for mom, o in zip(moments, own, strict=True))


def case_ops(case: MomentCase, module: nn.Module) -> tuple[KernelOp, ...]:
    """:func:`kernel_ops` of ``module`` (drawn by ``case.make``) on the case's inputs."""
    return kernel_ops(module, case.inputs.in_shape, case.inputs.tokens)


def _scale(ref: Tensor) -> Tensor:
    """Natural scale of every entry: ``sqrt(ref[i, i] ref[j, j])``."""
    d = ref.diagonal().clamp_min(0.0)
    return (d[:, None] * d[None, :]).sqrt()


def _needed(moments: dict[str, Moment], exact: dict[str, Tensor], skip: Tensor) -> float:
    """Draws after which every SE is at most ``SE_TARGET`` natural scales."""
    need = 0.0
    for key, mom in moments.items():
        scale = _scale(exact[key])
        live = (scale > 0) & ~skip if key == "derivative" else scale > 0
        if live.any():
            need = max(need, float((mom.variance()[live] / (SE_TARGET * scale[live]) ** 2).max()))
    return need


def _estimates(moments: dict[str, Moment], own: Moment, tangent: Tensor | None) -> dict[str, tuple[Tensor, Tensor]]:
    """``(mean, SE)`` per quantity: the NTK's own-parameter part added, an activation's NTK from its derivative."""
    est = {key: mom.result() for key, mom in moments.items()}
    if own.n:
        (m, se), (m_own, se_own) = est["ntk"], own.result()
        est["ntk"] = (m + m_own, (se * se + se_own * se_own).sqrt())
    if tangent is not None:  # E[sigma'(x) u sigma'(x') u' | x] = sigma'(x) sigma'(x') T(x, x')
        m, se = est["derivative"]
        est["ntk"] = (m * tangent, se * tangent.abs())
    return est


def _report(name: str, draws: int, est: dict[str, tuple[Tensor, Tensor]], exact: dict[str, Tensor], skip: Tensor,
            layout_gap: float | None, floor: float = FLOOR) -> MomentReport:
    z_max, se_max, worst = {}, {}, {}
    for key in exact:
        mean, se = est[key]
        ref, scale = exact[key], _scale(exact[key])
        keep = ~skip if key == "derivative" else torch.ones_like(skip)
        live = (scale > 0) & keep
        se_max[key] = float((se[live] / scale[live]).max()) if live.any() else 0.0
        z = torch.where(keep, (mean - ref).abs() / se.clamp_min(floor * float(scale.max()) + 1e-300), 0.0)
        z_max[key] = float(z.max())
        at = int(z.argmax())
        worst[key] = (at // z.shape[1], at % z.shape[1])
    return MomentReport(name, z_max, se_max, draws, layout_gap, worst)
