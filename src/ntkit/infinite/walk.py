"""From a torch model to its :class:`Architecture`: the sequence of kernel transforms it describes.

The walk visits ``nn.Sequential`` containers (nested) and any module with a ``kernel_layers()``
method (returning its layers in order, as :class:`ntkit.FCNetwork` does), captures any other module
with its own ``forward`` by torch.fx (:mod:`ntkit.infinite.capture`: the traced chain and its residual
sums, lifted to modules), and maps every leaf to its op through the registry the op modules fill
(:mod:`ntkit.infinite.ops.registry`):

* the modules before the first weight layer act on the data itself, deterministically (a
  flatten, a pooling, a layer norm or an activation of the raw inputs): they form the *prelude*,
  applied to the inputs by :meth:`Architecture.prepare`;
* from the first weight layer on, every module becomes a :class:`~ntkit.infinite.ops.KernelOp`.

Shapes are checked on the way (a clear error names the module, its position and what it expected);
widths never enter the NTK-parameterized limit, so a model built on ``device="meta"`` works. The
walk also decides how much spatial covariance each layer carries (``none`` / ``diag`` / ``full``,
see :mod:`ntkit.infinite.state`), whether the architecture is positively homogeneous in its inputs
(used to evaluate inputs of huge or tiny norm exactly), and which activations must report their
channel means (for a layer norm that follows them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_float, check_int, describe
from ntkit.infinite import describe_cache
from ntkit.infinite.capture import expand
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops import Diagonal, KernelOp, Pointwise
from ntkit.infinite.ops.base import branch_gaussian, branch_mixed
from ntkit.infinite.ops.registry import (
    UNSUPPORTED_REASONS,
    Item,
    block_has_weights,
    is_pass_through,
    lookup,
    supported,
)
from ntkit.nn.builders import fc

Tensor = torch.Tensor
Shape = tuple[int, ...]
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


@dataclass(frozen=True)
class Architecture:
    """The kernel transforms a model describes, for inputs of one shape.

    Attributes
    ----------
    input_shape : tuple of int
        Shape of one input example (``(d,)``, ``(C, *S)``, or tokens ``(L, C)``).
    prelude : tuple of (str, nn.Module)
        Parameter-free modules applied to the data before the first weight layer.
    data_shape : tuple of int
        Shape of one example after the prelude (what the first weight layer sees), channels first.
    ops : tuple of KernelOp
        The kernel transforms, first weight layer first.
    input_mode : str
        Layout of the input covariances (``"none"`` for vectors, ``"diag"`` or ``"full"`` for images).
    degree : int or None
        ``k`` such that ``K(s x, t x') = (s t)^k K(x, x')`` for ``s, t > 0`` (None: not homogeneous).
    inhomogeneous_at : str
        The first module that breaks homogeneity ("" if none).
    pair_entries : int
        The largest number of covariance entries one pair of inputs carries at any layer (1 for
        vectors; pixels for ``diag``; pixels squared for ``full``): the memory a pair needs.
    tokens : bool
        The data are tokens ``(L, C)`` (channels last, batch first as transformers take them; more
        generally ``(*S, C)``): :meth:`prepare` moves the channels first after the prelude, and
        ``data_shape`` is the channel-first ``(C, *S)`` every op sees (see :mod:`ntkit.infinite.ops.tokens`).

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import describe_model
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), ntkit.nn.Linear(12, 8, device="meta"), torch.nn.ReLU(),
    ...                             ntkit.nn.Linear(8, 1, device="meta"))
    >>> arch = describe_model(model, (3, 2, 2))  # the Flatten acts on the data: the prelude
    >>> [name for name, _ in arch.prelude], arch.data_shape, len(arch.ops), arch.degree
    (['0'], (12,), 3, 1)
    """

    input_shape: Shape
    prelude: tuple[Item, ...]
    data_shape: Shape
    ops: tuple[KernelOp, ...]
    input_mode: str
    degree: int | None
    inhomogeneous_at: str
    pair_entries: int = 1
    tokens: bool = False

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (it keys resumable outputs: same description, same kernel)."""
        out: dict[str, Any] = {
            "input_shape": list(self.input_shape),
            "prelude": [f"{name}: {module!r}" for name, module in self.prelude],
            "ops": [repr(op) for op in self.ops],
        }
        if self.tokens:
            out["tokens"] = True
        return out

    def prepare(self, x: Tensor) -> Tensor:
        """Apply the prelude to ``x`` of shape (N, *input_shape), then for tokens move the channels from the
        last axis to axis 1: shape (N, *data_shape)."""
        if self.prelude:
            with torch.no_grad():
                for _, module in self.prelude:
                    x = module(x)
        return x.movedim(-1, 1) if self.tokens else x

    @property
    def has_ntk(self) -> bool:
        """Whether every activation has a derivative map (else only the NNGP is defined)."""
        return all(op.fn.has_derivative_map for op in iter_ops(self.ops) if isinstance(op, Pointwise))


def iter_ops(ops: Sequence[KernelOp]) -> Iterator[KernelOp]:
    """Every op, inner branches (residual blocks, parallel branches) included (depth first)."""
    for op in ops:
        yield op
        for branch in op.branches():
            yield from iter_ops(branch)


def _label(name: str, module: nn.Module) -> str:
    return f"{name} ({type(module).__name__})"


def _unsupported(name: str, module: nn.Module) -> ArchitectureError:
    if isinstance(module, _DROPOUT):
        hint = ": it is random in training mode; call model.eval() first"
    else:
        why = UNSUPPORTED_REASONS.get(type(module), "")
        hint = (f": {why}" if why else "") + (
            ". ntkit.monte_carlo_kernel estimates the kernels of any model (averaged over random initialisations)")
    return ArchitectureError(
        f"infinite_kernel: module {_label(name, module)} has no infinite-width kernel transform{hint}. "
        f"Supported: {supported()}"
    )


def _check_prelude_module(name: str, module: nn.Module) -> None:
    """A module before the first weight layer must act on the data deterministically."""
    if is_pass_through(module):
        return
    entry = lookup(module)
    if entry is None or not entry.on_data:
        raise _unsupported(name, module)
    if entry.children is not None:
        for sub_name, sub in entry.children(module, name):
            _check_prelude_module(sub_name, sub)


def _ends_prelude(item: Item) -> bool:
    """A weight layer, or a registered module that cannot act on the data alone (a graph aggregation)."""
    entry = lookup(item[1])
    return block_has_weights([item]) or (entry is not None and not entry.on_data)


def _prelude_degree(module: nn.Module, d: int | None) -> int | None:
    entry = lookup(module)
    return d if entry is None else entry.data_degree(module, d)


class _Builder:
    """Builds the ops of a chain of items (and, through :meth:`ops` as the block builder, of inner branches).

    ``tokens``: the model's tensors of rank >= 2 are tokens ``(N, *S, C)``, channels last (each module is
    built by its entry's token builder, :attr:`~ntkit.infinite.ops.registry.Entry.tokens`), else channels
    first ``(N, C, *S)``. Builders always get the channel-first shape ``(C, *S)``. ``built`` measures how
    far an attempt got before an error: half a module for reaching a module's own builder (its shape
    checks), half for passing it; a module refused for the layout of its input does not count.
    """

    def __init__(self, tokens: bool) -> None:
        self.tokens = tokens
        self.built = 0.0

    def op(self, name: str, module: nn.Module, shape: Shape) -> KernelOp:
        entry = lookup(module)
        if entry is None:
            raise _unsupported(name, module)
        build = entry.tokens if self.tokens and len(shape) > 1 else entry.build
        if build is None:
            raise _not_on_tokens(name, module, shape) if self.tokens else _tokens_only(name, module, shape)
        self.built += 0.5
        op = build(name, module, shape, self.ops)
        self.built += 0.5
        return op

    def ops(self, items: list[Item], shape: Shape) -> list[KernelOp]:
        ops: list[KernelOp] = []
        for name, module in items:
            if is_pass_through(module):
                continue
            op = self.op(name, module, shape)
            ops.append(op)
            shape = op.out_shape
        return ops


def _not_on_tokens(name: str, module: nn.Module, shape: Shape) -> ArchitectureError:
    tokens = ", ".join(["N", *map(str, shape[1:]), str(shape[0])])
    return ArchitectureError(
        f"infinite_kernel: module {_label(name, module)} takes channel-first inputs (N, C, *spatial), got tokens "
        f"({tokens}), channels last as the ntkit.nn.Linear / SelfAttention layers of this model take them; "
        "modules that act on tokens: ntkit.nn.Linear, ntkit.nn.SelfAttention, ntkit.nn.LayerNorm(C), the "
        "activations, nn.Flatten, x.mean / x.sum over the token axes, residual sums and branches")


def _tokens_only(name: str, module: nn.Module, shape: Shape) -> ArchitectureError:
    return ArchitectureError(
        f"infinite_kernel: module {_label(name, module)} takes tokens (N, L, C), channels last, got a channel-first "
        f"tensor of shape (N, {', '.join(map(str, shape))}) (after a convolution or another channel-first layer)")


def _build_ops(items: list[Item], shape: Shape) -> tuple[list[KernelOp], bool]:
    """The ops of ``items`` for data of torch shape ``shape``, and whether the data are tokens.

    Data of rank >= 2 are channels first ``(C, *S)`` unless the model only fits them as tokens
    ``(*S, C)`` (its ``Linear`` / ``SelfAttention`` act on the last axis): the channel-first reading is
    tried first, then the token one; if both fail, the error of the reading that got further is raised.
    """
    first = _Builder(False)
    try:
        return first.ops(items, shape), False
    except ArchitectureError as err:
        if len(shape) < 2:
            raise
        last = _Builder(True)
        try:
            return last.ops(items, (shape[-1], *shape[:-1])), True
        except ArchitectureError as err_tokens:
            raise (err_tokens if last.built > first.built else err) from None


def _check_gaussian(ops: Sequence[KernelOp], gaussian: bool) -> bool:
    """Check that every activation receives a Gaussian input; return whether the output is Gaussian.

    Weight layers output centred Gaussian processes; activations do not (but for the identity);
    linear reshaping and layer norm keep the property; a sum of branches is Gaussian when every branch
    is, a product is not (each op's :meth:`~ntkit.infinite.ops.base.KernelOp.gaussian_out`). A dual map
    is the exact expectation only for Gaussian inputs (as in neural-tangents).
    """
    return branch_gaussian(ops, gaussian)


def _check_mixtures(ops: Sequence[KernelOp]) -> None:
    """After a concatenation along channels only linear reshaping may come before the next weight layer
    (:meth:`~ntkit.infinite.ops.base.KernelOp.mixed_out`), and the output must not be such a mixture."""
    mixed = branch_mixed(ops, "")
    if mixed:
        raise ArchitectureError(
            f"infinite_kernel: expected a weight layer after the concatenation {mixed} (its channel groups have "
            "different kernels), got the model's output: end with a Linear read-out")


def _modes(ops: list[KernelOp], out_mode: str) -> tuple[str, list[str]]:
    """Required input mode of the sequence, and of each op (backward from ``out_mode``)."""
    needs = [""] * len(ops)
    mode = out_mode
    for i in range(len(ops) - 1, -1, -1):
        needs[i] = ops[i].input_mode(mode)
        mode = needs[i]
    return mode, needs


def _place_diagonals(ops: list[KernelOp], needs: list[str], mode: str) -> list[KernelOp]:
    """Insert a :class:`Diagonal` where the carried mode is ``full`` but only ``diag`` is needed from there on."""
    out: list[KernelOp] = []
    for op, need in zip(ops, needs, strict=True):
        if mode == "full" and need == "diag":
            out.append(Diagonal(op.position, op.in_shape, op.in_shape))
            mode = "diag"
        out.append(op)
        mode = op.output_mode(mode)
    return out


def _track_means(ops: Sequence[KernelOp]) -> tuple[KernelOp, ...]:
    """Mark the activations whose channel mean reaches a later layer norm (``track_mean=True``)."""
    marks: set[tuple[int, ...]] = set()

    def visit(seq: Sequence[KernelOp], prefix: tuple[int, ...], pend: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        for i, op in enumerate(seq):
            key = (*prefix, i)
            if op.branches():  # the merge carries every branch's means (the identity's: those before it)
                outs = [visit(branch, (*key, b), list(pend)) for b, branch in enumerate(op.branches())]
                pend = [k for out in outs for k in out]
            elif op.mean_role == "reset":
                pend = []
            elif op.mean_role == "source":
                pend = [key]
            elif op.mean_role == "sink":
                marks.update(pend)
                pend = []
        return pend

    visit(ops, (), [])

    def rebuild(seq: Sequence[KernelOp], prefix: tuple[int, ...]) -> tuple[KernelOp, ...]:
        new: list[KernelOp] = []
        for i, op in enumerate(seq):
            key = (*prefix, i)
            if isinstance(op, Pointwise) and key in marks:
                op = dataclasses.replace(op, track_mean=True)
            elif op.branches():
                op = op.with_branches(tuple(rebuild(branch, (*key, b)) for b, branch in enumerate(op.branches())))
            new.append(op)
        return tuple(new)

    return rebuild(ops, ())


def fc_model(in_features: int, *, depth: int, activation: Any = "relu", b_std: float = 0.0, w_std: float = 1.0
             ) -> nn.Module:
    """The fully connected model of the shortcut ``depth, activation, b_std, w_std`` (on ``meta``: no memory).

    Raises ``ValueError`` / ``TypeError`` naming ``depth``, ``b_std`` or ``w_std`` for bad values.
    """
    depth = check_int(depth, "depth", minimum=0)
    b_std = check_float(b_std, "b_std", minimum=0.0)
    w_std = check_float(w_std, "w_std", minimum=0.0, strict=True)
    return fc(in_features, 1, depth=depth, activation=activation, w_std=w_std, b_std=b_std, device="meta")


def describe_model(model: nn.Module, input_shape: Sequence[int]) -> Architecture:
    """The :class:`Architecture` of ``model`` for inputs of shape ``(N, *input_shape)``.

    Parameters
    ----------
    model : torch.nn.Module
        Built from :mod:`ntkit.nn` layers and the torch modules :func:`ntkit.infinite_kernel` lists
        (nested ``nn.Sequential``; a module with a ``kernel_layers()`` method is walked through it; a
        module with its own ``forward`` is traced by torch.fx, :mod:`ntkit.infinite.capture`); it is
        read, not run, so it may live on the ``meta`` device.
    input_shape : sequence of int
        Shape of one input example: ``(d,)`` for vectors, ``(C, *S)`` for images, ``(L, C)`` for tokens
        (channels last, read so when the model's ``Linear`` / ``SelfAttention`` act on the last axis).

    Returns
    -------
    Architecture
        From a model's second call on, the same object again for the same model and shape while nothing it
        depends on changed (the module tree, hyper-parameters, training flags, a captured forward's code):
        :mod:`ntkit.infinite.describe_cache`.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ArchitectureError (a ValueError)
        A module without a kernel transform (named, with its position and the supported list), an
        operation of a captured forward without one (named, with its source line), a
        module whose expected input shape does not match, a residual block that changes the shape
        or does not end with a weight layer, a model without weight layers, a spatial output.

    Examples
    --------
    >>> import ntkit
    >>> arch = describe_model(ntkit.nn.cntk(1, depth=2, device="meta"), (1, 4, 4))
    >>> arch.input_mode, arch.pair_entries  # full pixel-pair covariances: 16 x 16 per pair of images
    ('full', 256)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. built from ntkit.nn), got {describe(model)}")
    shape = tuple(int(n) for n in input_shape)
    return describe_cache.cached(model, shape, lambda: _describe(model, shape))


def _describe(model: nn.Module, shape: Shape) -> Architecture:
    """:func:`describe_model` without the cache (:mod:`ntkit.infinite.describe_cache`)."""
    items = list(expand(model, ""))
    first = next((i for i, item in enumerate(items) if _ends_prelude(item)), None)
    if first is None:
        for name, module in items:  # a module without a transform explains more than "no weight layer"
            if not is_pass_through(module):
                _check_prelude_module(name, module)
        raise ArchitectureError(
            "infinite_kernel: expected a model with at least one weight layer (ntkit.nn.Linear / Conv1d / Conv2d), "
            f"got {type(model).__name__} without one"
        )
    prelude = tuple((name, m) for name, m in items[:first] if not is_pass_through(m))
    degree: int | None = 1
    breaker = ""
    for name, module in prelude:
        _check_prelude_module(name, module)
        new = _prelude_degree(module, degree)
        if new is None and degree is not None:
            breaker = _label(name, module)
        degree = new
    data_shape = shape
    if prelude:
        probe = torch.zeros(1, *shape, dtype=torch.float64)
        try:
            with torch.no_grad():
                for _, module in prelude:
                    probe = module(probe)
        except (RuntimeError, ValueError) as err:
            raise ArchitectureError(
                f"infinite_kernel: the modules before the first weight layer cannot take inputs of shape {shape}: "
                f"{err}"
            ) from None
        data_shape = tuple(probe.shape[1:])
    ops, tokens = _build_ops(items[first:], data_shape)
    if tokens:
        data_shape = (data_shape[-1], *data_shape[:-1])
    if len(ops[-1].out_shape) != 1:
        raise ArchitectureError(
            f"infinite_kernel: expected the model to output vectors (end with nn.Flatten or a global pooling and "
            f"a Linear read-out), got outputs of shape {ops[-1].out_shape} after {ops[-1].position}"
        )
    _check_mixtures(ops)
    _check_gaussian(ops, False)
    mode, needs = _modes(ops, "none")
    if len(data_shape) == 1:
        mode = "none"
    ops = _place_diagonals(ops, needs, mode)
    for op in ops:
        new = op.degree(degree)
        if new is None and degree is not None:
            breaker = op.position
        degree = new
    final = _track_means(ops)
    return Architecture(shape, prelude, data_shape, final, mode, degree, breaker if degree is None else "",
                        _pair_entries(final, data_shape, mode), tokens)


def _pair_entries(ops: Sequence[KernelOp], shape: Shape, mode: str) -> int:
    """The largest covariance size per pair along the layers (see :attr:`Architecture.pair_entries`)."""

    def size(s: Shape, m: str) -> int:
        pixels = 1
        for n in s[1:]:
            pixels *= n
        return {"none": 1, "diag": pixels, "full": pixels * pixels}[m]

    def visit(seq: Sequence[KernelOp], mode: str) -> tuple[int, str]:
        """The largest size along ``seq`` from ``mode``, and the mode after it."""
        best = 0
        for op in seq:
            for branch in op.branches():  # every branch starts from the op's input
                best = max(best, visit(branch, mode)[0])
            mode = op.output_mode(mode) if len(op.out_shape) > 1 else "none"
            best = max(best, size(op.out_shape, mode))
        return best, mode

    return max(size(shape, mode), visit(ops, mode)[0])


__all__ = ["Architecture", "ArchitectureError", "describe_model", "fc_model", "iter_ops"]
