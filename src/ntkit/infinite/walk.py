"""From a torch model to its :class:`Architecture`: the sequence of kernel transforms it describes.

The walk visits ``nn.Sequential`` containers (nested) and any module with a ``kernel_layers()``
method (returning its layers in order, as :class:`ntkit.FCNetwork` does), and maps every leaf with
:mod:`ntkit.infinite.modules`:

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
from ntkit.activations import Identity
from ntkit.infinite.modules import SUPPORTED, UNSUPPORTED_REASONS, activation_of, is_pass_through
from ntkit.infinite.ops import Dense, Diagonal, Flatten, GlobalPool, KernelOp, LayerNormOp, Pointwise, Residual
from ntkit.infinite.spatial import AvgPool, Conv
from ntkit.nn.builders import fc
from ntkit.nn.linear import Linear, _ConvNd
from ntkit.nn.structure import GlobalAvgPool, LayerNorm
from ntkit.nn.structure import Residual as ResidualModule

Tensor = torch.Tensor
Shape = tuple[int, ...]
Item = tuple[str, nn.Module]


class ArchitectureError(ValueError):
    """A model (or one of its modules) that has no infinite-width kernel, or does not fit the input shape.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import describe_model
    >>> model = torch.nn.Sequential(ntkit.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), ntkit.nn.Linear(8, 1))
    >>> try:
    ...     describe_model(model, (3,))
    ... except ValueError as err:  # an ArchitectureError is a ValueError
    ...     print(type(err).__name__, "--", str(err).split(": ")[1])
    ArchitectureError -- module 1 (BatchNorm1d) has no infinite-width kernel transform
    """


@dataclass(frozen=True)
class Architecture:
    """The kernel transforms a model describes, for inputs of one shape.

    Attributes
    ----------
    input_shape : tuple of int
        Shape of one input example (``(d,)`` or ``(C, *S)``).
    prelude : tuple of (str, nn.Module)
        Parameter-free modules applied to the data before the first weight layer.
    data_shape : tuple of int
        Shape of one example after the prelude (what the first weight layer sees).
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

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (it keys resumable outputs: same description, same kernel)."""
        return {
            "input_shape": list(self.input_shape),
            "prelude": [f"{name}: {module!r}" for name, module in self.prelude],
            "ops": [repr(op) for op in self.ops],
        }

    def prepare(self, x: Tensor) -> Tensor:
        """Apply the prelude to ``x`` of shape (N, *input_shape): shape (N, *data_shape)."""
        if not self.prelude:
            return x
        with torch.no_grad():
            for _, module in self.prelude:
                x = module(x)
        return x

    @property
    def has_ntk(self) -> bool:
        """Whether every activation has a derivative map (else only the NNGP is defined)."""
        return all(op.fn.has_derivative_map for op in iter_ops(self.ops) if isinstance(op, Pointwise))


def iter_ops(ops: Sequence[KernelOp]) -> Iterator[KernelOp]:
    """Every op, residual blocks included (depth first)."""
    for op in ops:
        yield op
        if isinstance(op, Residual):
            yield from iter_ops(op.block)


def _leaves(module: nn.Module, name: str) -> Iterator[Item]:
    if isinstance(module, nn.Sequential):
        for child, sub in module._modules.items():  # not named_children(): it skips a module used twice
            if sub is not None:
                yield from _leaves(sub, f"{name}.{child}" if name else child)
        return
    layers = getattr(module, "kernel_layers", None)
    if callable(layers):
        for child, sub in layers():
            yield from _leaves(sub, f"{name}.{child}" if name else child)
        return
    yield name or "model", module


def _label(name: str, module: nn.Module) -> str:
    return f"{name} ({type(module).__name__})"


def _has_weights(module: nn.Module) -> bool:
    if isinstance(module, (Linear, _ConvNd)):
        return True
    if isinstance(module, ResidualModule):
        return any(_has_weights(m) for _, m in _leaves(module.block, ""))
    return False


def _unsupported(name: str, module: nn.Module) -> ArchitectureError:
    if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)):
        why = "it is random in training mode; call model.eval() first"
    else:
        why = UNSUPPORTED_REASONS.get(type(module), "")
    hint = f": {why}" if why else ""
    if not isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)):
        hint += ". ntkit.monte_carlo_kernel estimates the kernels of any model (averaged over random initialisations)"
    return ArchitectureError(
        f"infinite_kernel: module {_label(name, module)} has no infinite-width kernel transform{hint}. "
        f"Supported: {SUPPORTED}"
    )


def _check_prelude_module(name: str, module: nn.Module) -> None:
    if activation_of(module) is not None or is_pass_through(module):
        return
    if isinstance(module, (LayerNorm, GlobalAvgPool, nn.Flatten, nn.AvgPool1d, nn.AvgPool2d,
                           nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return
    if isinstance(module, ResidualModule):
        for sub_name, sub in _leaves(module.block, f"{name}.block"):
            _check_prelude_module(sub_name, sub)
        return
    raise _unsupported(name, module)


def _prelude_degree(module: nn.Module, d: int | None) -> int | None:
    act = activation_of(module)
    if act is not None:
        return 0 if d == 0 else (None if d is None or act.homogeneous_degree is None else d * act.homogeneous_degree)
    if isinstance(module, LayerNorm):
        return 0 if module.eps == 0.0 and d is not None else None
    if isinstance(module, ResidualModule):
        inner = d
        for _, sub in _leaves(module.block, ""):
            inner = _prelude_degree(sub, inner)
        return d if inner == d else None
    return d  # pooling, flatten, identity: linear


def _shape_error(label: str, expected: str, shape: Shape) -> ArchitectureError:
    return ArchitectureError(f"infinite_kernel: module {label} expected {expected}, got an input of shape {shape}")


def _pool_geometry(label: str, module: nn.Module, shape: Shape, ndim: int) -> tuple[Shape, Shape, Shape]:
    """(window, stride, out spatial) of an average pooling module, validated."""
    if len(shape) != ndim + 1:
        raise _shape_error(label, f"an input of shape (C, {ndim} spatial axes)", shape)
    spatial = shape[1:]
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        size = module.output_size
        sizes = (size,) * ndim if isinstance(size, int) or size is None else tuple(size)
        outs: Shape = tuple(n if o is None else int(o) for n, o in zip(spatial, sizes, strict=True))
        if any(n % o for n, o in zip(spatial, outs, strict=True)):
            raise _shape_error(label, f"spatial sizes divisible by its output size {outs}", shape)
        window = tuple(n // o for n, o in zip(spatial, outs, strict=True))
        return window, window, outs
    assert isinstance(module, (nn.AvgPool1d, nn.AvgPool2d))
    k = module.kernel_size
    s = module.stride if module.stride is not None else k
    pad = module.padding
    window = (k,) * ndim if isinstance(k, int) else tuple(k)
    stride = (s,) * ndim if isinstance(s, int) else tuple(s)
    pads = (pad,) * ndim if isinstance(pad, int) else tuple(pad)
    if any(pads) or module.ceil_mode or getattr(module, "divisor_override", None):
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected padding=0, ceil_mode=False and no divisor_override "
            f"(pad the input with a convolution's padding instead), got padding={pad}, ceil_mode={module.ceil_mode}"
        )
    out = tuple((n - w) // st + 1 for n, w, st in zip(spatial, window, stride, strict=True))
    if any(o < 1 for o in out):
        raise _shape_error(label, f"spatial sizes >= the pooling window {window}", shape)
    return window, stride, out


def _op(name: str, module: nn.Module, shape: Shape) -> KernelOp:
    label = _label(name, module)
    if isinstance(module, Linear):
        if shape != (module.in_features,):
            raise _shape_error(label, f"({module.in_features},) features (add nn.Flatten or a global pooling "
                               "before it for images)", shape)
        return Dense(label, shape, (module.out_features,), module.w_std, module.b_std, module.bias is not None,
                     module.parameterization, module.fan_in)
    if isinstance(module, _ConvNd):
        nd = module.ndim
        if len(shape) != nd + 1 or shape[0] != module.in_channels:
            raise _shape_error(label, f"(C={module.in_channels}, {nd} spatial axes)", shape)
        try:
            out = module.output_shape(shape[1:])
        except ValueError as err:
            raise ArchitectureError(f"infinite_kernel: module {label}: {err}") from None
        return Conv(label, shape, (module.out_channels, *out), module.w_std, module.b_std, module.bias is not None,
                    module.parameterization, module.fan_in, module.kernel_size, module.stride, module.padding)
    act = activation_of(module)
    if act is not None:
        return Pointwise(label, shape, shape, act)
    if isinstance(module, LayerNorm):
        return LayerNormOp(label, shape, shape, module.eps)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise ArchitectureError(f"infinite_kernel: module {label}: expected start_dim=1, end_dim=-1, got "
                                    f"start_dim={module.start_dim}, end_dim={module.end_dim}")
        size = 1
        for n in shape:
            size *= n
        return Flatten(label, shape, (size,))
    if isinstance(module, GlobalAvgPool):
        if len(shape) < 2:
            raise _shape_error(label, "an input of shape (C, *spatial)", shape)
        return GlobalPool(label, shape, shape[:1])
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        nd = 1 if isinstance(module, (nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
        window, stride, out = _pool_geometry(label, module, shape, nd)
        return AvgPool(label, shape, (shape[0], *out), window, stride)
    if isinstance(module, ResidualModule):
        block = _ops(list(_leaves(module.block, f"{name}.block")), shape)
        end = block[-1].out_shape if block else shape
        if end != shape:
            raise ArchitectureError(
                f"infinite_kernel: module {label}: expected its block to keep the input's shape {shape}, got {end}"
            )
        if block and not isinstance(_last_weighted(block), (Dense, Conv)):
            raise ArchitectureError(
                f"infinite_kernel: module {label}: expected a block that ends with a weight layer (then the two "
                "branches are independent in the limit), got one ending with "
                f"{block[-1].position}"
            )
        return Residual(label, shape, shape, tuple(block), module.scale)
    raise _unsupported(name, module)


def _last_weighted(block: Sequence[KernelOp]) -> KernelOp:
    """The last op of a block that is not a linear reshaping (pooling / flatten keep the branch Gaussian)."""
    for op in reversed(block):
        if not isinstance(op, (AvgPool, GlobalPool, Flatten, Diagonal)):
            return op
    return block[-1]


def _ops(items: list[Item], shape: Shape) -> list[KernelOp]:
    ops: list[KernelOp] = []
    for name, module in items:
        if is_pass_through(module):
            continue
        op = _op(name, module, shape)
        ops.append(op)
        shape = op.out_shape
    return ops


def _check_gaussian(ops: Sequence[KernelOp], gaussian: bool) -> bool:
    """Check that every activation receives a Gaussian input; return whether the output is Gaussian.

    Weight layers output centred Gaussian processes; activations do not (but for the identity);
    linear reshaping and layer norm keep the property; a residual sum is Gaussian when both branches
    are. A dual map is the exact expectation only for Gaussian inputs (as in neural-tangents).
    """
    for op in ops:
        if isinstance(op, (Dense, Conv)):
            gaussian = True
        elif isinstance(op, Pointwise):
            if isinstance(op.fn, Identity):
                continue
            if not gaussian:
                raise ArchitectureError(
                    f"infinite_kernel: module {op.position} receives a non-Gaussian input (an activation's output, "
                    "possibly through a residual sum); its kernel is not a function of the input covariance. "
                    "Expected a weight layer (or a pre-activation residual block) before each activation"
                )
            gaussian = False
        elif isinstance(op, Residual):
            inner = _check_gaussian(op.block, gaussian)
            gaussian = gaussian and inner
    return gaussian


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
            if isinstance(op, (Dense, Conv)):
                pend = []
            elif isinstance(op, Pointwise):
                pend = [key]
            elif isinstance(op, LayerNormOp):
                marks.update(pend)
                pend = []
            elif isinstance(op, Residual):
                inner = visit(op.block, key, list(pend))
                pend = pend + inner
        return pend

    visit(ops, (), [])

    def rebuild(seq: Sequence[KernelOp], prefix: tuple[int, ...]) -> tuple[KernelOp, ...]:
        new: list[KernelOp] = []
        for i, op in enumerate(seq):
            key = (*prefix, i)
            if isinstance(op, Pointwise) and key in marks:
                op = dataclasses.replace(op, track_mean=True)
            elif isinstance(op, Residual):
                op = dataclasses.replace(op, block=rebuild(op.block, key))
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
        (nested ``nn.Sequential``; a module with a ``kernel_layers()`` method is walked through it);
        it is read, not run, so it may live on the ``meta`` device.
    input_shape : sequence of int
        Shape of one input example: ``(d,)`` for vectors, ``(C, *S)`` for images.

    Returns
    -------
    Architecture

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ArchitectureError (a ValueError)
        A module without a kernel transform (named, with its position and the supported list), a
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
    items = list(_leaves(model, ""))
    first = next((i for i, (_, m) in enumerate(items) if _has_weights(m)), None)
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
    ops = _ops(items[first:], data_shape)
    if len(ops[-1].out_shape) != 1:
        raise ArchitectureError(
            f"infinite_kernel: expected the model to output vectors (end with nn.Flatten or a global pooling and "
            f"a Linear read-out), got outputs of shape {ops[-1].out_shape} after {ops[-1].position}"
        )
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
                        _pair_entries(final, data_shape, mode))


def _pair_entries(ops: Sequence[KernelOp], shape: Shape, mode: str) -> int:
    """The largest covariance size per pair along the layers (see :attr:`Architecture.pair_entries`)."""

    def size(s: Shape, m: str) -> int:
        pixels = 1
        for n in s[1:]:
            pixels *= n
        return {"none": 1, "diag": pixels, "full": pixels * pixels}[m]

    best = size(shape, mode)
    for op in iter_ops(ops):
        if isinstance(op, Residual):
            continue
        mode = op.output_mode(mode) if len(op.out_shape) > 1 else "none"
        best = max(best, size(op.out_shape, mode))
    return best


__all__ = ["Architecture", "ArchitectureError", "describe_model", "fc_model", "iter_ops"]
