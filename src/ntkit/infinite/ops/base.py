"""The kernel-op protocol: what one layer of an architecture is at infinite width.

A :class:`KernelOp` maps the covariances of its input (a :class:`~ntkit.infinite.state.Pairs`) to
those of its output; its :meth:`~KernelOp.apply` is the readable reference definition every fast
path is tested against. Writing ``K`` for the NNGP covariance and ``T`` for the NTK of one channel,
each op module states its own rule (Jacot et al. 2018; Lee et al. 2018; Arora et al. 2019; Novak et
al. 2020). Besides the transform, an op owns:

* its shape rule and errors: the builder registered for its torch module types
  (:func:`ntkit.infinite.ops.registry.register`) checks the input shape and returns the op;
* the spatial layout it needs (:meth:`~KernelOp.input_mode`) and gives (:meth:`~KernelOp.output_mode`);
* its homogeneity degree (:meth:`~KernelOp.degree`), used to evaluate inputs of huge or tiny norm;
* whether it keeps the features Gaussian (:meth:`~KernelOp.gaussian_out`): a dual map is the exact
  expectation only for Gaussian inputs;
* its optional lowerings: a step of the fused fully connected program (:meth:`~KernelOp.lower_fc`),
  a step of the compiled convolution program (:meth:`~KernelOp.lower_native`) and a random-feature
  step (:meth:`~KernelOp.feature_step`). An op without a lowering is evaluated by the reference
  path, never approximated.

An op may run inner *branches* (:meth:`~KernelOp.branches`: a residual block beside the identity, the
branches of :class:`ntkit.nn.Parallel`): the evaluator runs every branch from the op's input state and
merges their output states with :meth:`~KernelOp.merge`. A branch is a tuple of ops (empty: the
identity); the ``branch_*`` helpers below fold a hook along one.

Ops never mutate their input. ``ntk=False`` skips the NTK (the NNGP alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ntkit.infinite.state import Context, Layout, Pairs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder
    from ntkit.infinite.fused import FCProgramBuilder

Tensor = torch.Tensor
Shape = tuple[int, ...]
#: One random-feature step: ``(phi, psi) -> (phi', psi')`` (``psi`` None for the NNGP alone).
FeatureStep = Callable[[Tensor, "Tensor | None"], "tuple[Tensor, Tensor | None]"]


@dataclass(frozen=True)
class KernelOp:
    """Base class: one layer's kernel transform.

    Attributes
    ----------
    position : str
        Where the layer sits in the model (``"layers.2 (ReLU)"``), for messages.
    in_shape, out_shape : tuple of int
        Shapes of one example at the layer's input and output (``(F,)`` or ``(C, *S)``).
    """

    position: str
    in_shape: Shape
    out_shape: Shape

    #: A weight layer: its output is a fresh centred Gaussian process, independent of earlier branches.
    weighted: ClassVar[bool] = False
    #: A linear reshaping of the features (pooling, flatten, dropping cross-pixel entries): it keeps a
    #: branch Gaussian and independent.
    reshapes: ClassVar[bool] = False
    #: How the op treats channel means that a later layer norm needs: ``"keep"`` passes them on,
    #: ``"reset"`` starts from zero-mean features (weight layers), ``"source"`` creates them
    #: (activations), ``"sink"`` consumes them (layer norm).
    mean_role: ClassVar[str] = "keep"

    @property
    def spatial_in(self) -> Shape:
        """Spatial shape of the input (``()`` for vectors)."""
        return self.in_shape[1:]

    def input_mode(self, out_mode: str) -> str:
        """The covariance layout this layer needs at its input when its output must carry ``out_mode``."""
        return out_mode

    def output_mode(self, in_mode: str) -> str:
        """The layout of the output for an input carried in ``in_mode``."""
        return in_mode

    def degree(self, d: int | None) -> int | None:
        """Homogeneity degree of the features after this layer, given ``d`` before (None: not homogeneous)."""
        return d

    def gaussian_out(self, gaussian: bool) -> bool:
        """Whether the output is a centred Gaussian process given whether the input is (raises if the op
        needs a Gaussian input and does not get one)."""
        return True if self.weighted else gaussian

    def mixed_out(self, mixed: str) -> str:
        """The position of a concatenation whose channel groups still have different kernels after this op
        ("" if none), given ``mixed`` before it.

        The state after a concatenation along channels is the channel-weighted mean of its branches'
        kernels: exact for what averages over the channels next (a weight layer), and through linear
        reshaping on the way (pooling, flatten), but not for an op acting on each channel's law (an
        activation, a layer norm), which raises here.
        """
        if not mixed or self.weighted:
            return ""
        if self.reshapes:
            return mixed
        from ntkit.infinite.errors import ArchitectureError

        raise ArchitectureError(
            f"infinite_kernel: module {self.position} follows the concatenation {mixed}, whose channel groups "
            "have different kernels: expected a weight layer after a concatenation (pooling or flatten between "
            "them at most); this layer would see a mixture of laws, which has no kernel here")

    def fresh(self) -> bool:
        """Whether the output is, in the limit, a centred process independent of every value computed outside
        this op from the same input (a weight layer: its weights are fresh). A branch ending so adds to
        another without a cross-covariance (:func:`ends_fresh`)."""
        return self.weighted

    def branches(self) -> tuple[tuple[KernelOp, ...], ...]:
        """The inner branches this op runs from its input (each a tuple of ops, empty: the identity) and
        merges with :meth:`merge`; empty for a plain layer."""
        return ()

    def with_branches(self, branches: tuple[tuple[KernelOp, ...], ...]) -> KernelOp:
        """The same op with its inner branches replaced (only for ops with :meth:`branches`)."""
        raise TypeError(f"{type(self).__name__} has no inner branch")

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:  # pragma: no cover - abstract
        raise NotImplementedError

    def pairs_as_list(self) -> bool:
        """Whether :meth:`apply` (and :meth:`merge`) also take a *list* of pairs: ``batch_ndim = 1``, the rows
        of pair ``m`` being ``ctx.left_ids[m]`` and ``ctx.right_ids[m]`` of the self batch ``ctx.rows`` (the
        reference evaluator then evaluates the upper triangle of a symmetric block alone). False unless the
        op says so."""
        return False

    def apply_dual(self, p: Pairs, ctx: Context, ntk: bool) -> tuple[Pairs, Tensor | None]:
        """:meth:`apply`, also returning the derivative kernel ``E[sigma'(u) sigma'(v)]`` of an activation
        (None for every other op, or without the NTK)."""
        return self.apply(p, ctx, ntk), None

    def merge(self, states: Sequence[Pairs], ntk: bool) -> Pairs:
        """Kernels of the merged output from the output state of each of :meth:`branches` (in order, all
        run from the same input; only for ops with branches)."""
        raise TypeError(f"{type(self).__name__} has no inner branch")

    def output_layout(self, lay: Layout) -> Layout:
        """The layout after this layer."""
        return Layout(self.out_shape[1:], self.output_mode(lay.mode)) if len(self.out_shape) > 1 else Layout((), "none")

    # --- optional lowerings --------------------------------------------------------------------------

    def lower_fc(self, prog: FCProgramBuilder) -> bool:
        """Append this op's step to the fused fully connected program; False: the op has none (the
        reference evaluator then runs the architecture)."""
        return False

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        """Append this op's step to the compiled convolution program; False: the op has none here
        (the reference evaluator then runs the architecture)."""
        return False

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        """The random-feature step of this op (see :mod:`ntkit.random_features.network`); ``dims`` is
        updated to the output's feature counts. Raises :class:`~ntkit.infinite.errors.ArchitectureError`
        where the op has no random-feature map."""
        from ntkit.infinite.errors import ArchitectureError

        raise ArchitectureError(f"features: {self.position} has no random-feature map")


def affine(p: Pairs, layer: Any, avg_nngp: Tensor, avg_ntk: Tensor | None, layout: Layout) -> Pairs:
    """``K' = w^2 A(K) + b^2`` and the NTK update of a weight layer, from the averaged ``A(K)``, ``A(T)``.

    NTK parameterization: ``T' = w^2 A(T) + K'``; standard parameterization (Sohl-Dickstein et al.
    2020, as neural-tangents): ``T' = fan_in A(K) + w^2 A(T) + [bias]``. ``layer`` carries
    ``w_std``, ``b2``, ``bias``, ``parameterization`` and ``fan_in`` (a :class:`~ntkit.infinite.ops.dense.Dense`).
    """
    w2, b2 = layer.w_std**2, layer.b2
    # one new tensor per kernel, the sums accumulated into it; a product by w^2 = 1 (exact) is skipped
    unit = w2 == 1.0
    if unit and b2 != 0.0:
        nngp = avg_nngp + b2
    else:
        nngp = avg_nngp * w2
        if b2 != 0.0:
            nngp = _add_into(nngp, b2)
    out_ntk: Tensor | None = None
    if avg_ntk is not None:
        if layer.parameterization == "ntk":
            out_ntk = avg_ntk + nngp if unit else _add_into(avg_ntk * w2, nngp)
        else:  # standard: every weight's gradient is an input feature (no 1/fan_in), the bias's is 1
            out_ntk = _add_into(avg_nngp * float(layer.fan_in), avg_ntk if unit else avg_ntk * w2)
            if layer.bias:
                out_ntk = _add_into(out_ntk, 1.0)
    return p.replace(nngp=nngp, ntk=out_ntk, layout=layout, mean=None)


def _add_into(t: Tensor, other: Tensor | float) -> Tensor:
    """``t + other``, written over ``t`` (a new tensor of the caller's) where it has the result's shape."""
    if isinstance(other, Tensor):
        if other.dtype != t.dtype or torch.broadcast_shapes(t.shape, other.shape) != t.shape:
            return t + other
    return t.add_(other)


def reduce_space(p: Pairs, ntk: bool, select: Callable[[Tensor], Tensor]) -> Pairs:
    """The vector state after a read-out: the mean over the spatial axes of ``select(kernel)``."""

    def reduce(t: Tensor) -> Tensor:
        t = select(t)
        axes = tuple(range(p.batch_ndim, t.ndim))
        return t.mean(dim=axes) if axes else t

    mean = None if p.mean is None else p.mean.mean(dim=tuple(range(1, p.mean.ndim)))
    return p.replace(nngp=reduce(p.nngp), ntk=reduce(p.ntk) if ntk and p.ntk is not None else None,
                     layout=Layout((), "none"), mean=mean)


def count_taps(shape: Shape) -> int:
    """Number of taps of a filter / pooling window."""
    return math.prod(shape)


# --- folding a hook along a branch -------------------------------------------------------------------


def branch_input_mode(branch: Sequence[KernelOp], out_mode: str) -> str:
    """The layout a branch needs at its input for ``out_mode`` at its output (backwards through it)."""
    mode = out_mode
    for op in reversed(branch):
        mode = op.input_mode(mode)
    return mode


def branch_output_mode(branch: Sequence[KernelOp], in_mode: str) -> str:
    """The layout at a branch's output for an input carried in ``in_mode``."""
    for op in branch:
        in_mode = op.output_mode(in_mode)
    return in_mode


def branch_degree(branch: Sequence[KernelOp], d: int | None) -> int | None:
    """The homogeneity degree at a branch's output given ``d`` at its input."""
    for op in branch:
        d = op.degree(d)
    return d


def branch_gaussian(branch: Sequence[KernelOp], gaussian: bool) -> bool:
    """Whether a branch's output is a centred Gaussian process (each op checks its input)."""
    for op in branch:
        gaussian = op.gaussian_out(gaussian)
    return gaussian


def branch_mixed(branch: Sequence[KernelOp], mixed: str) -> str:
    """:meth:`KernelOp.mixed_out` folded along a branch."""
    for op in branch:
        mixed = op.mixed_out(mixed)
    return mixed


def ends_fresh(branch: Sequence[KernelOp]) -> bool:
    """Whether the last op of a branch that is not a linear reshaping (pooling, flatten) is
    :meth:`~KernelOp.fresh` (False for the identity): the branch's output is then centred and independent
    of the other branches in the limit."""
    for op in reversed(branch):
        if not op.reshapes:
            return op.fresh()
    return False


__all__ = ["FeatureStep", "KernelOp", "affine", "branch_degree", "branch_gaussian", "branch_input_mode",
           "branch_mixed", "branch_output_mode", "count_taps", "ends_fresh", "reduce_space"]
