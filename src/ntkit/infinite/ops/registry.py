"""The one map from torch module types to kernel ops, filled by the op modules themselves.

An op module registers the module types it accepts with :func:`register`, giving a *builder*
``build(name, module, shape, block) -> KernelOp`` that checks the input shape (a clear
:class:`~ntkit.infinite.errors.ArchitectureError` naming the module otherwise) and returns the op;
``block(items, shape)`` builds the ops of an inner branch (a residual block). The walk
(:mod:`ntkit.infinite.walk`) looks every leaf module up here, through the type's MRO, so a subclass
of a registered type is understood too. Nothing else dispatches on module types.

Modules before the first weight layer act on the data itself (the *prelude*); the entry says
whether a type may appear there (``on_data``) and its homogeneity rule on data (``data_degree``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from torch import nn

from ntkit.infinite.ops.base import KernelOp, Shape

Item = tuple[str, nn.Module]
#: Builds the ops of an inner branch: ``block(items, shape) -> list of ops``.
BlockBuilder = Callable[[list[Item], Shape], list[KernelOp]]
Builder = Callable[[str, nn.Module, Shape, BlockBuilder], KernelOp]


def _linear_degree(module: nn.Module, d: int | None) -> int | None:
    return d


def _no_weights(module: nn.Module) -> bool:
    return False


@dataclass(frozen=True)
class Entry:
    """What the walk needs to know of a registered module type.

    Attributes
    ----------
    build : Builder or None
        ``(name, module, input shape, block builder) -> KernelOp``, validating the shape; None: the
        module takes tokens only (see ``tokens``).
    names : str
        The supported types as users write them (the error message's list).
    has_weights : callable
        ``module -> bool``: whether the module holds weight layers (the first one ends the prelude).
    on_data : bool
        Whether the module may act on the raw data before the first weight layer (False: it ends the prelude,
        as a weight layer does).
    data_degree : callable
        ``(module, d) -> degree`` on the data (the homogeneity rule of the prelude).
    children : callable or None
        ``(module, name) -> items``: the leaf modules of an inner branch (a residual block), checked
        like the module itself where it acts on the data.
    tokens : Builder or None
        The builder for a *token* input: a tensor of torch shape ``(N, *S, C)``, channels last (see
        :mod:`ntkit.infinite.ops.tokens`); it gets the same channel-first shape ``(C, *S)`` as
        ``build`` and returns a channel-first op. None: the module is refused on tokens.
    """

    build: Builder | None
    names: str
    has_weights: Callable[[nn.Module], bool] = _no_weights
    on_data: bool = True
    data_degree: Callable[[nn.Module, int | None], int | None] = _linear_degree
    children: Callable[[nn.Module, str], list[Item]] | None = None
    tokens: Builder | None = None


_ENTRIES: dict[type, Entry] = {}
_EXACT: set[type] = set()  # types whose subclasses are not accepted (they may change the function)
_ORDER: list[Entry] = []

#: Modules that are the identity at inference (dropout in eval mode or with p = 0).
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)

#: Why some common modules have no transform (shown in the error).
UNSUPPORTED_REASONS: dict[type, str] = {
    nn.Linear: "torch.nn.Linear is standard-parameterized with uniform init; use ntkit.nn.Linear "
    "(parameterization='ntk' or 'standard')",
    nn.Conv1d: "use ntkit.nn.Conv1d (NTK or standard parameterization)",
    nn.Conv2d: "use ntkit.nn.Conv2d (NTK or standard parameterization)",
    nn.ConvTranspose1d: "use ntkit.nn.ConvTranspose1d (NTK or standard parameterization)",
    nn.ConvTranspose2d: "use ntkit.nn.ConvTranspose2d (NTK or standard parameterization)",
    nn.LayerNorm: "use ntkit.nn.LayerNorm (over the channels at each pixel or over whole examples, without learned "
    "gain and bias)",
    nn.MaxPool1d: "max pooling has no closed-form Gaussian kernel; use nn.AvgPool1d",
    nn.MaxPool2d: "max pooling has no closed-form Gaussian kernel; use nn.AvgPool2d",
    nn.BatchNorm1d: "batch norm couples the examples of a batch; it has no per-pair kernel",
    nn.BatchNorm2d: "batch norm couples the examples of a batch; it has no per-pair kernel",
    nn.PReLU: "its slope is a trained parameter; use nn.LeakyReLU",
    nn.RReLU: "its slope is random per forward pass; use nn.LeakyReLU",
}


def register(*types: type, build: Builder | None, names: str, has_weights: Callable[[nn.Module], bool] = _no_weights,
             on_data: bool = True, data_degree: Callable[[nn.Module, int | None], int | None] = _linear_degree,
             exact: tuple[type, ...] = (), children: Callable[[nn.Module, str], list[Item]] | None = None,
             tokens: Builder | None = None) -> Entry:
    """Register ``build`` for the module ``types`` and their subclasses, and for the ``exact`` types
    only as themselves (a subclass of ``nn.ReLU`` may compute something else); see :class:`Entry`.
    A type registers once."""
    entry = Entry(build, names, has_weights, on_data, data_degree, children, tokens)
    for t in (*types, *exact):
        if t in _ENTRIES:
            raise ValueError(f"register: {t.__name__} is already registered ({_ENTRIES[t].names})")
        _ENTRIES[t] = entry
    _EXACT.update(exact)
    _ORDER.append(entry)
    return entry


def register_tokens(registered: type, build: Builder) -> Entry:
    """Give the entry of the already registered type ``registered`` (and every type sharing it) the
    token builder ``build`` (see :attr:`Entry.tokens`); returns the new entry."""
    old = _ENTRIES.get(registered)
    if old is None:
        raise ValueError(f"register_tokens: {registered.__name__} is not registered")
    if old.tokens is not None:
        raise ValueError(f"register_tokens: {registered.__name__} already has a token builder ({old.names})")
    new = replace(old, tokens=build)
    for t, entry in _ENTRIES.items():
        if entry is old:
            _ENTRIES[t] = new
    _ORDER[:] = [new if entry is old else entry for entry in _ORDER]
    return new


def lookup(module: nn.Module) -> Entry | None:
    """The entry of ``module``'s type (or of its nearest registered base class), None if it has none."""
    for t in type(module).__mro__:
        entry = _ENTRIES.get(t)
        if entry is not None and (t is type(module) or t not in _EXACT):
            return entry
    return None


def registered_types() -> Iterator[type]:
    """Every registered module type."""
    yield from _ENTRIES


def supported() -> str:
    """The supported modules, as the error message lists them (weight layers first)."""
    weights_first = sorted(_ORDER, key=lambda e: (e.has_weights is _no_weights or e.children is not None, e.names))
    return ", ".join([e.names for e in weights_first] + ["nn.Sequential, nn.Identity, nn.Dropout (eval mode)"])


def is_pass_through(module: nn.Module) -> bool:
    """True for modules that are the identity at inference (dropout must be in eval mode or have p = 0)."""
    if not isinstance(module, PASS_THROUGH):
        return False
    if isinstance(module, nn.Identity):
        return True
    return not module.training or float(getattr(module, "p", 0.0)) == 0.0


def leaves(module: nn.Module, name: str) -> Iterator[Item]:
    """The leaf modules of ``module`` in order, with their dotted names: ``nn.Sequential`` containers
    (nested) and modules with a ``kernel_layers()`` method (returning their layers in order, as
    :class:`ntkit.FCNetwork` does) are opened; everything else is a leaf."""
    if isinstance(module, nn.Sequential):
        for child, sub in module._modules.items():  # not named_children(): it skips a module used twice
            if sub is not None:
                yield from leaves(sub, f"{name}.{child}" if name else child)
        return
    layers = getattr(module, "kernel_layers", None)
    if callable(layers):
        for child, sub in layers():
            yield from leaves(sub, f"{name}.{child}" if name else child)
        return
    yield name or "model", module


def block_has_weights(items: Sequence[Item]) -> bool:
    """Whether any module of ``items`` holds weight layers."""
    for _, m in items:
        entry = lookup(m)
        if entry is not None and entry.has_weights(m):
            return True
    return False


__all__ = ["PASS_THROUGH", "UNSUPPORTED_REASONS", "BlockBuilder", "Builder", "Entry", "Item", "block_has_weights",
           "is_pass_through", "leaves", "lookup", "register", "register_tokens", "registered_types", "supported"]
