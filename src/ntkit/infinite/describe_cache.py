"""Architecture descriptions kept between calls, for as long as the model lives and is unchanged.

Describing a model (:func:`ntkit.infinite.walk.describe_model`) walks its module tree, builds every op and, for
a module with its own ``forward``, traces it with torch.fx (:mod:`ntkit.infinite.capture`): about 2 ms for a
two-block transformer encoder, a third of the native evaluation of its kernel at N = 64, L = 16. :func:`cached`
keeps the description of a model per input shape and returns it again while a *fingerprint* of everything the
description depends on is unchanged; anything else is a miss, and the description is rebuilt.

The fingerprint of a model is one tuple (compared with ``==``), built from

* every module reachable from it (through ``_modules`` and through its attributes: lists, dicts, objects): its
  identity, type, ``training`` flag, child structure (names and identities), parameters' names, shapes and dtypes
  (their values never enter an infinite-width kernel), buffers (identity, shape, version counter: an in-place
  change moves it) and every other attribute of its ``__dict__`` (hyper-parameters such as ``w_std``, ``b_std``,
  ``eps``, ``mechanism``, hooks), read recursively: numbers, strings and other plain values by value, tensors by
  identity, shape and version counter, functions by identity, code object, defaults, closure contents and the
  globals their code names (plain values by value, others by identity), other objects by type, identity and
  their own attributes;
* for each module class, its classes outside torch: plain attributes by value, the others (methods, properties)
  by identity, held with the fingerprint so that a rebound one's ``id`` cannot be reused, and ``forward`` /
  ``kernel_layers`` in full (what a captured forward's trace reads);
* the registry of module types (:mod:`ntkit.infinite.ops.registry`): registering a type changes it.

Modules and the objects of their attributes enter by identity only (and an entry is found only through a weak
reference to the model whose ``id`` is its key), so the cache does not keep a model alive: its entries go when
the model does. A model is cached from its second description on (the first only notes it: a model built for one
call, as :func:`ntkit.fc_kernel` builds one, costs no fingerprint). A fingerprint that would read more than
:data:`MAX_ITEMS` values (an attribute holding a long list, or a large numpy array: read by value) or cannot be
read (a tensor without a version counter: inference mode) leaves the model uncached (described at every call, as
without the cache).

Not seen, hence the only ways to a stale description (call :func:`clear` after them): an in-place change inside
an object the fingerprint reads by identity only (an opaque object without ``__dict__`` or slots, a global
object -- not a plain value -- that a forward uses, a mutable class attribute), a tensor changed through
``.data`` or numpy (which bypass the version counter), a torch class patched.

Measured (1 thread, loaded machine): for the two-block encoder of ``benchmarks/bench_attention.py`` the
fingerprint costs 0.11-0.17 ms against 1.1-2 ms for the description it saves (mostly the torch.fx capture of
its ``x.mean(dim=1)`` module); for a 3-layer ``ntkit.nn.fc`` model both cost about 0.05 ms.
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ntkit.infinite.ops import registry

T = TypeVar("T")
Shape = tuple[int, ...]

#: Models kept (least recently used first out) and input shapes kept per model.
MAX_MODELS, MAX_SHAPES = 64, 8
#: Values a fingerprint may read before the model is left uncached.
MAX_ITEMS = 20_000

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.layout,
          torch.memory_format, torch.Size, range, type(Ellipsis))
_PLAIN_TYPES = frozenset(_PLAIN)
_OPAQUE = (types.ModuleType, types.BuiltinFunctionType, types.MethodWrapperType, types.WrapperDescriptorType,
           types.MethodDescriptorType, types.GetSetDescriptorType, types.MemberDescriptorType,
           type(threading.Lock()))


class Uncacheable(Exception):
    """The model's fingerprint cannot be taken (too large, or an unreadable value): describe it every time."""


class _Fingerprint:
    """One fingerprint in the making: objects already read (cycles, shared modules) by their first index."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # the objects read, alive until the fingerprint is done (their ids stay unique)
        self.hold: list[Any] = []  # class attributes read by identity: kept with the fingerprint
        self.classes: dict[type, Hashable] = {}
        self.items = 0

    def _ref(self, obj: Any) -> int | None:
        """The index of ``obj`` if already read, else None (and it is marked read)."""
        key = id(obj)
        index = self.seen.get(key)
        if index is None:
            self.seen[key] = len(self.seen)
            self.keep.append(obj)
        return index

    def value(self, v: Any) -> Hashable:
        self.items += 1
        if self.items > MAX_ITEMS:
            raise Uncacheable(f"more than {MAX_ITEMS} values")
        if isinstance(v, _PLAIN):
            return (type(v), v)
        if isinstance(v, nn.Module):
            return self.module(v)
        if isinstance(v, torch.Tensor):
            return self.tensor(v)
        if isinstance(v, type):
            return ("type", v)
        index = self._ref(v)
        if index is not None:
            return ("ref", index)
        if isinstance(v, (tuple, list)):
            return (type(v), tuple(self.value(x) for x in v))
        if isinstance(v, dict):
            return (type(v), tuple((self.value(k), self.value(x)) for k, x in v.items()))
        if isinstance(v, (set, frozenset)):
            return (type(v), frozenset(self.value(x) for x in v))
        if isinstance(v, types.FunctionType):
            return self.function(v)
        if isinstance(v, types.MethodType):
            return ("method", self.value(v.__func__), self.value(v.__self__))
        if isinstance(v, (staticmethod, classmethod)):
            return (type(v), self.value(v.__func__))
        if isinstance(v, property):
            return ("property", self.value(v.fget), self.value(v.fset))
        if isinstance(v, np.ndarray):  # no version counter: read by value, if small
            self.items += v.size
            if self.items > MAX_ITEMS:
                raise Uncacheable(f"more than {MAX_ITEMS} values")
            return ("ndarray", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, _OPAQUE):
            return ("opaque", type(v), id(v))
        state = getattr(v, "__dict__", None)
        slots = tuple((s, self.value(getattr(v, s))) for s in _slots(type(v)) if hasattr(v, s))
        if state is None and not slots:
            return ("opaque", type(v), id(v))
        return ("object", type(v), id(v), self.value(dict(state or {})), slots)

    def tensor(self, t: torch.Tensor) -> Hashable:
        try:
            version = t._version
        except RuntimeError as err:  # inference tensors carry no version counter
            raise Uncacheable(str(err)) from None
        return ("tensor", _Same(t), version, tuple(t.shape), t.dtype, t.device.type)

    def function(self, f: types.FunctionType) -> Hashable:
        code = f.__code__
        names = f.__globals__
        plain = tuple((n, names[n]) for n in code.co_names if n in names and isinstance(names[n], _PLAIN))
        others = tuple((n, id(names[n])) for n in code.co_names if n in names and not isinstance(names[n], _PLAIN))
        cells = tuple(self.value(c.cell_contents) for c in f.__closure__ or () if _filled(c))
        return ("function", id(f), code, self.value(f.__defaults__), self.value(f.__kwdefaults__), cells, plain,
                others)

    def module(self, m: nn.Module) -> Hashable:
        index = self._ref(m)
        if index is not None:
            return ("ref", index)
        out: list[Hashable] = ["module", id(m), self.cls(type(m))]
        for k, v in m.__dict__.items():
            t = type(v)
            if t in _PLAIN_TYPES:
                out.append((k, t, v))  # the common case first: hyper-parameters, the training flag
            elif (t is dict or t is OrderedDict or t is set) and not v:
                out.append((k, t))  # torch's hook dicts and buffer names, mostly empty
            elif k == "_parameters":  # their names and shapes: the values never enter the kernel
                out.append((k, tuple((n, None if p is None else (p.shape, p.dtype)) for n, p in v.items())))
            elif k == "_buffers":
                out.append((k, tuple((n, None if b is None else self.tensor(b)) for n, b in v.items())))
            elif k == "_modules":
                out.append((k, tuple((n, None if c is None else self.module(c)) for n, c in v.items())))
            else:
                out.append((k, self.value(v)))
        self.items += len(out)
        return tuple(out)

    def cls(self, c: type) -> Hashable:
        """The attributes of the classes of ``c`` outside torch: plain values by value, anything else (methods,
        properties, descriptors) by identity -- held in :attr:`hold`, so that a rebound attribute's old object
        stays alive with the fingerprint and no new one can take its ``id`` --, and ``forward`` /
        ``kernel_layers`` in full (code, defaults, closures and globals: what a captured forward's trace reads)."""
        got = self.classes.get(c)
        if got is None:
            self.classes[c] = ("type", c)  # while reading (a class attribute of its own type)
            own = [vars(k) for k in c.__mro__ if not k.__module__.startswith(("torch.", "builtins"))]
            for attrs in own:
                self.hold.extend(attrs.values())
            got = ("type", c, tuple((n, type(v), v) if type(v) in _PLAIN_TYPES else (n, id(v))
                                    for attrs in own for n, v in attrs.items()),
                   tuple(self.value(attrs[n]) for attrs in own for n in ("forward", "kernel_layers") if n in attrs))
            self.classes[c] = got
        return got


class _Same:
    """Equal to another ``_Same`` of the very same object while it lives (an id could be reused once it is gone)."""

    __slots__ = ("key", "ref")

    def __init__(self, obj: Any) -> None:
        self.ref, self.key = weakref.ref(obj), id(obj)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Same):
            return NotImplemented
        mine = self.ref()
        return mine is not None and mine is other.ref()

    def __hash__(self) -> int:
        return self.key


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _slots(c: type) -> tuple[str, ...]:
    out: list[str] = []
    for k in c.__mro__:
        s = k.__dict__.get("__slots__", ())
        out += [s] if isinstance(s, str) else [n for n in s if n not in ("__dict__", "__weakref__")]
    return tuple(out)


def fingerprint(model: nn.Module) -> Hashable:
    """The fingerprint of ``model`` (see the module docstring); equal fingerprints, equal descriptions.

    Raises
    ------
    Uncacheable
        More than :data:`MAX_ITEMS` values, or a tensor without a version counter (an inference tensor).
    """
    return _take(model)[0]


def _take(model: nn.Module) -> tuple[Hashable, list[Any]]:
    """The fingerprint, and the objects it names by identity that must live as long as it (class attributes, the
    registry's entries)."""
    fp = _Fingerprint()
    try:
        out = (tuple(map(id, registry._ORDER)), fp.module(model))
    except RecursionError:
        raise Uncacheable("too deeply nested") from None
    return out, [*fp.hold, *registry._ORDER]


class _Entry:
    """A model's descriptions: per input shape, the fingerprint it was built with (and the objects it names by
    identity) and the description."""

    def __init__(self, ref: weakref.ref[nn.Module]) -> None:
        self.ref = ref
        self.shapes: OrderedDict[Shape, tuple[Hashable, list[Any], Any]] = OrderedDict()


_lock = threading.RLock()
_cache: OrderedDict[int, _Entry] = OrderedDict()


def _forget(key: int, ref: weakref.ref[nn.Module]) -> None:
    """The model of ``ref`` is gone: drop its entry (unless the key was already reused)."""
    with _lock:
        entry = _cache.get(key)
        if entry is not None and entry.ref is ref:
            del _cache[key]


def cached(model: nn.Module, shape: Shape, build: Callable[[], T]) -> T:
    """``build()``, the description of ``model`` for inputs of shape ``shape``, or the one built before for them
    while the model's :func:`fingerprint` is unchanged. A ``build`` that raises caches nothing.

    A model is cached from its second description on: the first only notes it (a model built for one call, as
    :func:`ntkit.fc_kernel` builds one, costs no fingerprint).
    """
    key = id(model)
    with _lock:
        entry = _cache.get(key)
        if entry is None or entry.ref() is not model:  # first seen: noted, not fingerprinted
            _cache[key] = _Entry(weakref.ref(model, functools.partial(_forget, key)))
            while len(_cache) > MAX_MODELS:
                _cache.popitem(last=False)
            entry = None
        else:
            _cache.move_to_end(key)
    if entry is None:
        return build()
    try:
        fp, hold = _take(model)
    except Uncacheable:
        return build()
    with _lock:
        hit = entry.shapes.get(shape)
        if hit is not None and hit[0] == fp:
            entry.shapes.move_to_end(shape)
            return hit[2]
    out = build()
    with _lock:
        entry.shapes[shape] = (fp, hold, out)
        entry.shapes.move_to_end(shape)
        while len(entry.shapes) > MAX_SHAPES:
            entry.shapes.popitem(last=False)
    return out


def clear() -> None:
    """Forget every cached description."""
    with _lock:
        _cache.clear()


def size() -> int:
    """Models with cached descriptions (alive, or not yet collected)."""
    with _lock:
        return len(_cache)


__all__ = ["MAX_ITEMS", "MAX_MODELS", "MAX_SHAPES", "Uncacheable", "cached", "clear", "fingerprint", "size"]
