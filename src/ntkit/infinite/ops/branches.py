"""Branches merged by a sum, a concatenation along channels or a product (:class:`ntkit.nn.Parallel`).

Every branch runs from the same input state (:meth:`Parallel.branches`, empty: the identity); the
evaluator then merges the output states of the branches ``a_1, ..., a_n`` (kernels ``K_i``, NTKs
``T_i``, ``C_i`` channels) with :meth:`Parallel.merge`:

* sum: ``K = sum_i K_i + sum_{i != j} E[a_i a_j']``. A branch whose last op (pooling or flatten
  apart) is a weight layer is, in the limit, a centred process independent of the other branches
  (its weights are fresh; :func:`~ntkit.infinite.ops.base.ends_fresh`), so the cross terms vanish when
  all branches but at most one end so: ``K = sum_i K_i``, ``T = sum_i T_i`` (neural-tangents'
  ``FanInSum``). The other branches need their cross-covariances ``E[a(u) b(v)]``: where they are all
  activations of the input (``x + relu(x)``: :func:`_pointwise`) their sum is one pointwise function ``g``
  of the input, and they become one branch, the activation ``g`` (:func:`_pointwise_merge`; alone, the
  whole op); else the sum is refused, never given a kernel that drops the cross terms.
* concat along channels: a channel of the output is a channel of branch ``i`` with frequency
  ``f_i = C_i / sum_j C_j``, and the next weight layer sums over its input channels with independent
  weights, so what it sees is exactly ``K = sum_i f_i K_i`` (``T`` alike), for any branches (dependent
  ones too; neural-tangents' ``FanInConcat`` on the channel axis). The state is that mean: only linear
  reshaping (pooling, flatten) may come before the next weight layer (:meth:`Parallel.mixed_out`), as an
  activation or a layer norm would act on each group's law.
* prod: for independent branches ``E[prod_i a_i a_i'] = prod_i K_i`` and, the gradient of a product
  being ``sum_i (prod_{j != i} a_j) grad a_i``, ``T = sum_i T_i prod_{j != i} K_j`` (the cross terms
  ``E[a_i a_j'] <grad a_j, grad a_i'>`` vanish in the limit; neural-tangents' ``FanInProd``). A branch
  holding a weight layer on every path from the fork depends on the input only through fresh
  Gaussian processes, so it is independent of the other branches: all branches but at most one must
  be so, or the others be activations of the input (one activation ``g = prod_i g_i``, as for a sum).
  The product is not Gaussian.

A weight module may not appear in two branches (its weights would be shared). Random features: a sum
is ``[phi_1, ..., phi_n]`` projected back to ``m``, a concatenation ``[sqrt(f_1) phi_1, ...]`` projected,
a product the tensor sketch ``TS(phi_1 (x) phi_2)`` (the NTK's: ``[TS(psi_1 (x) phi_2), TS(phi_1 (x)
psi_2)]``), branch by branch. Native lowering (the compiled convolution program,
:meth:`~ntkit.infinite.conv_fast.NativeProgramBuilder.fork`): a sum or a concatenation is a weighted sum of the
branches' kernels, run branch by branch from the saved input where every op of every branch lowers; a product
runs on the reference evaluator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntkit.activations.composite import Product, Sum, chain, composite
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import (
    FeatureStep,
    KernelOp,
    Shape,
    branch_degree,
    branch_gaussian,
    branch_input_mode,
    branch_mixed,
    branch_output_mode,
    ends_fresh,
)
from ntkit.infinite.ops.pointwise import Pointwise
from ntkit.infinite.ops.registry import BlockBuilder, Item, block_has_weights, lookup, register
from ntkit.infinite.state import Pairs, max_mode
from ntkit.nn.branches import Parallel as ParallelModule

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor
Branch = tuple[KernelOp, ...]


@dataclass(frozen=True)
class Parallel(KernelOp):
    """Branches run from the same input, merged by ``rule`` (``"sum"``, ``"concat"`` or ``"prod"``).

    Attributes
    ----------
    paths : tuple of tuple of KernelOp
        The ops of each branch (empty: the identity).
    rule : str
        The merge.
    widths : tuple of int
        Channels of each branch's output (the weights of a concatenation).
    """

    paths: tuple[Branch, ...] = ()
    rule: str = "sum"
    widths: tuple[int, ...] = ()

    def input_mode(self, out_mode: str) -> str:
        mode = "none"
        for path in self.paths:
            mode = max_mode(mode, branch_input_mode(path, out_mode))
        return mode

    def output_mode(self, in_mode: str) -> str:
        mode = "none"
        for path in self.paths:
            mode = max_mode(mode, branch_output_mode(path, in_mode))
        return mode

    def degree(self, d: int | None) -> int | None:
        inner = [branch_degree(path, d) for path in self.paths]
        if any(k is None for k in inner):
            return None
        if self.rule == "prod":
            return sum(k for k in inner if k is not None)
        return inner[0] if all(k == inner[0] for k in inner) else None

    def gaussian_out(self, gaussian: bool) -> bool:
        inner = [branch_gaussian(path, gaussian) for path in self.paths]
        return self.rule != "prod" and all(inner)

    def mixed_out(self, mixed: str) -> str:
        inner = [m for m in (branch_mixed(path, mixed) for path in self.paths) if m]
        if self.rule == "concat":
            return self.position
        if self.rule == "prod" and len(inner) > 1:
            raise ArchitectureError(
                f"infinite_kernel: module {self.position}: expected at most one factor of a product to come from a "
                f"concatenation ({inner[0]}, {inner[1]}) without a weight layer between them: the product of two "
                "mixtures of channel groups has no kernel here")
        return inner[0] if inner else ""

    def fresh(self) -> bool:
        if self.rule == "prod":  # independent of the outside if every factor is, centred if one factor is
            return all(_screened(path) for path in self.paths) and any(ends_fresh(path) for path in self.paths)
        return all(ends_fresh(path) for path in self.paths)

    def branches(self) -> tuple[Branch, ...]:
        return self.paths

    def with_branches(self, branches: tuple[Branch, ...]) -> KernelOp:
        return dataclasses.replace(self, paths=tuple(branches))

    def merge(self, states: Sequence[Pairs], ntk: bool) -> Pairs:
        """The merged kernels from each branch's output state (see the module notes)."""
        first = states[0]
        assert all(s.layout == first.layout for s in states), [s.layout for s in states]
        want = ntk and all(s.ntk is not None for s in states)
        nngp, out_ntk = first.nngp, first.ntk if want else None
        if self.rule == "prod":
            for s in states[1:]:
                if want:
                    assert out_ntk is not None and s.ntk is not None
                    out_ntk = out_ntk * s.nngp + nngp * s.ntk
                nngp = nngp * s.nngp
            means = [s.mean for s in states if s.mean is not None]
            mean = None
            if len(means) == len(states):  # else a centred factor: a centred product
                mean = means[0]
                for m in means[1:]:
                    mean = mean * m
            return first.replace(nngp=nngp, ntk=out_ntk, mean=mean)
        # a concatenation: sum_i C_i K_i / sum_i C_i (sum_i K_i / n for equal widths, as neural-tangents)
        weights = [1.0] * len(states)
        if self.rule == "concat" and len(set(self.widths)) > 1:
            weights = [float(w) for w in self.widths]
        divisor = sum(weights) if self.rule == "concat" else 1.0
        nngp = _weighted_sum([s.nngp for s in states], weights, divisor)
        if want:
            out_ntk = _weighted_sum([s.ntk for s in states if s.ntk is not None], weights, divisor)
        terms = [(m, w) for m, w in zip((s.mean for s in states), weights, strict=True) if m is not None]
        mean = _weighted_sum([m for m, _ in terms], [w for _, w in terms], divisor) if terms else None
        return first.replace(nngp=nngp, ntk=out_ntk, mean=mean)

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        """A sum (weights 1) or a concatenation (weights ``C_i / sum_j C_j``): fork, each branch's ops, join."""
        if self.rule == "prod":
            return False
        total = float(sum(self.widths))
        weights = [w / total if self.rule == "concat" else 1.0 for w in self.widths]
        slot = prog.fork()
        if slot is None:
            return False
        for i, (path, weight) in enumerate(zip(self.paths, weights, strict=True)):
            if not all(op.lower_native(prog) for op in path):
                return False
            if not prog.join(slot, weight, last=i == len(self.paths) - 1):
                return False
        return True

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        subs = [dataclasses.replace(dims) for _ in self.paths]
        steps = [fmap.build(path, sub) for path, sub in zip(self.paths, subs, strict=True)]
        if self.rule == "prod":
            return _product_features(fmap, dims, subs, steps)
        total = sum(self.widths)
        scales = [math.sqrt(w / total) if self.rule == "concat" else 1.0 for w in self.widths]
        proj_phi = fmap.proj(sum(s.phi for s in subs), fmap.m_phi)
        proj_psi = fmap.proj(sum(s.psi for s in subs), fmap.m_psi) if fmap.ntk else None
        dims.phi, dims.psi, dims.spatial = fmap.m_phi, (fmap.m_psi if fmap.ntk else 0), subs[0].spatial

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            outs = [_run(branch, phi, psi) for branch in steps]
            new_phi = proj_phi(torch.cat([_scaled(p, c) for (p, _), c in zip(outs, scales, strict=True)], dim=1))
            if proj_psi is None:
                return new_phi, None
            parts = [_scaled(q, c) for (_, q), c in zip(outs, scales, strict=True) if q is not None]
            return new_phi, proj_psi(torch.cat(parts, dim=1))

        return step


def _weighted_sum(ts: Sequence[Tensor], weights: Sequence[float], divisor: float = 1.0) -> Tensor:
    """``sum_i w_i t_i / divisor`` in order (a weight or divisor 1 is skipped: a plain sum is bit for bit
    ``t_1 + t_2``)."""
    out = _scaled(ts[0], weights[0])
    for t, w in zip(ts[1:], weights[1:], strict=True):
        out = out + _scaled(t, w)
    return out / divisor if divisor != 1.0 else out


def _scaled(t: Tensor, c: float) -> Tensor:
    return t * c if c != 1.0 else t


def _run(steps: list[Any], phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
    for step in steps:
        phi, psi = step(phi, psi)
    return phi, psi


def _product_features(fmap: Any, dims: Any, subs: list[Any], steps: list[list[Any]]) -> FeatureStep:
    """``phi = TS(phi_acc (x) phi_i)``, ``psi = [TS(psi_acc (x) phi_i), TS(phi_acc (x) psi_i)]`` branch by branch:
    ``phi.phi' = prod K_i`` and ``psi.psi' = sum_i T_i prod_{j != i} K_j`` in expectation."""
    ntk, mp, ms = fmap.ntk, fmap.m_phi, fmap.m_psi
    d_phi, d_psi = subs[0].phi, subs[0].psi
    sketches = []
    for sub in subs[1:]:
        ts_phi = fmap.tensor_sketch(d_phi, sub.phi, mp)
        ts_psi = (fmap.tensor_sketch(d_psi, sub.phi, ms), fmap.tensor_sketch(d_phi, sub.psi, ms)) if ntk else None
        sketches.append((ts_phi, ts_psi))
        d_phi, d_psi = mp, 2 * ms
    dims.phi, dims.psi, dims.spatial = d_phi, (d_psi if ntk else 0), subs[0].spatial

    def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
        outs = [_run(branch, phi, psi) for branch in steps]
        acc_phi, acc_psi = outs[0]
        for (b_phi, b_psi), (ts_phi, ts_psi) in zip(outs[1:], sketches, strict=True):
            if ts_psi is not None:
                assert acc_psi is not None and b_psi is not None
                acc_psi = torch.cat([ts_psi[0](acc_psi, b_phi), ts_psi[1](acc_phi, b_psi)], dim=1)
            acc_phi = ts_phi(acc_phi, b_phi)
        return acc_phi, acc_psi if ntk else None

    return step


def _screened(path: Sequence[KernelOp]) -> bool:
    """Whether every path from the branch's input to its output passes a weight layer: the output then depends
    on the input only through fresh Gaussian processes, and is independent of the other branches."""
    return any(op.weighted or (isinstance(op, Parallel) and all(_screened(p) for p in op.paths)) for op in path)


# --- the module ----------------------------------------------------------------------------------------


def _branch_items(module: nn.Module, name: str) -> list[list[Item]]:
    """Each branch's items: containers opened, a custom forward captured (:func:`~ntkit.infinite.capture.expand`)."""
    from ntkit.infinite.capture import expand  # the capture builds Parallel modules: imported where used

    assert isinstance(module, ParallelModule)
    return [list(expand(branch, f"{name}.branches.{i}")) for i, branch in enumerate(module.branches)]


def _ending(path: Branch) -> str:
    return f"ending with {path[-1].position}" if path else "the identity"


def _check_shared(label: str, module: nn.Module) -> None:
    """No module with parameters in two branches (shared weights: dependent branches)."""
    assert isinstance(module, ParallelModule)
    owner: dict[int, tuple[int, str]] = {}
    for i, branch in enumerate(module.branches):
        for sub_name, sub in branch.named_modules(remove_duplicate=False):
            if next(sub.parameters(recurse=False), None) is None:
                continue
            j, first = owner.setdefault(id(sub), (i, sub_name))
            if j != i:
                raise ArchitectureError(
                    f"infinite_kernel: module {label}: expected branches with their own weights, got the module "
                    f"{type(sub).__name__} in branch {j} ({first or 'the branch itself'}) and in branch {i} "
                    f"({sub_name or 'the branch itself'}): shared weights make the branches dependent")


def _merged_shape(label: str, rule: str, dim: int, ends: list[Shape]) -> Shape:
    """The output shape of the merge, or an error naming two branch shapes that do not fit it."""
    first = ends[0]
    if rule != "concat":
        for i, end in enumerate(ends[1:], 1):
            if end != first:
                raise ArchitectureError(
                    f"infinite_kernel: module {label}: expected branch outputs of equal shapes for merge={rule!r}, "
                    f"got {first} (branch 0) and {end} (branch {i})")
        return first
    if dim not in (1, -len(first)):
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected a concatenation along the channels (dim=1 or "
            f"{-len(first)} for outputs of shape (N, *{first})), got dim={dim}: a concatenation along another axis "
            "has no kernel here")
    for i, end in enumerate(ends[1:], 1):
        if end[1:] != first[1:]:
            raise ArchitectureError(
                f"infinite_kernel: module {label}: expected branch outputs of equal shapes but for the channels for "
                f"merge='concat', got {first} (branch 0) and {end} (branch {i})")
    return (sum(end[0] for end in ends), *first[1:])


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, ParallelModule)
    label = f"{name} ({type(module).__name__})"
    # the messages name where a captured forward merges ("module add (Parallel) at model.py:42 in forward: ...")
    where = f"{label} at {module.traced_at}" if module.traced_at else label
    _check_shared(where, module)
    paths = [tuple(block(items, shape)) for items in _branch_items(module, name)]
    ends = [path[-1].out_shape if path else shape for path in paths]
    rule = module.merge
    out = _merged_shape(where, rule, module.dim, ends)
    loose = [i for i, path in enumerate(paths) if not (ends_fresh if rule == "sum" else _screened)(path)]
    if rule != "concat" and len(loose) > 1 and all(_pointwise(paths[i]) for i in loose):
        merged = _pointwise_merge(label, shape, rule, [paths[i] for i in loose])  # one activation of the input
        if len(loose) == len(paths):
            return merged
        paths = [(merged,), *(path for i, path in enumerate(paths) if i not in loose)]
        ends, loose = [path[-1].out_shape for path in paths], [0]
    if rule == "sum" and len(loose) > 1:
        i, j = loose[:2]
        raise ArchitectureError(
            f"infinite_kernel: module {where}: the sum of branch {i} ({_ending(paths[i])}) and branch {j} "
            f"({_ending(paths[j])}) is not independent: its kernel needs their cross-covariance, not supported. "
            "Expected every branch but one to end with a weight layer (pooling or flatten after it at most), "
            "whose fresh weights make it independent of the others in the limit, or the dependent branches to be "
            "activations only (then their sum is one activation of the input)")
    if rule == "prod" and len(loose) > 1:
        i, j = loose[:2]
        raise ArchitectureError(
            f"infinite_kernel: module {where}: the product of branch {i} ({_ending(paths[i])}) and branch {j} "
            f"({_ending(paths[j])}) is not independent: its kernel needs their joint law, not supported. "
            "Expected every branch but one to hold a weight layer on its way from the input (then it "
            "depends on the input only through fresh Gaussian processes), or the dependent branches to be "
            "activations only (then their product is one activation of the input)")
    return Parallel(label, shape, out, tuple(paths), rule, tuple(end[0] for end in ends))


def _pointwise(path: Branch) -> bool:
    """A branch of activations only (the identity included): a pointwise function of the input."""
    return all(isinstance(op, Pointwise) for op in path)


def _pointwise_merge(label: str, shape: Shape, rule: str, paths: list[Branch]) -> Pointwise:
    """The sum / product of pointwise branches ``g_i`` as one activation ``g = sum_i g_i`` (``prod_i g_i``)
    (:func:`~ntkit.activations.composite.composite`: the arc-cosine closed form for the ReLU family)."""
    exprs = tuple(chain([op.fn for op in path if isinstance(op, Pointwise)]) for path in paths)
    return Pointwise(label, shape, shape, composite(Sum(exprs) if rule == "sum" else Product(exprs)))


def _has_weights(module: nn.Module) -> bool:
    return any(block_has_weights(items) for items in _branch_items(module, ""))


def _data_degree(module: nn.Module, d: int | None) -> int | None:
    assert isinstance(module, ParallelModule)
    inner: list[int | None] = []
    for items in _branch_items(module, ""):
        k = d
        for _, sub in items:
            entry = lookup(sub)
            if entry is not None:  # pass-through modules (identity, eval dropout) keep the degree
                k = entry.data_degree(sub, k)
        inner.append(k)
    if any(k is None for k in inner):
        return None
    if module.merge == "prod":
        return sum(k for k in inner if k is not None)
    return inner[0] if all(k == inner[0] for k in inner) else None


register(ParallelModule, build=_build, names="ntkit.nn.Parallel", has_weights=_has_weights,
         data_degree=_data_degree, children=lambda m, name: [it for items in _branch_items(m, name) for it in items])

__all__ = ["Parallel"]
