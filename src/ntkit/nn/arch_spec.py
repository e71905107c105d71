"""Architectures as text (for the command line) or as a Python file that builds the model.

The text is a sequence of layers separated by spaces or commas; arguments in parentheses::

    dense relu dense relu dense                         # a depth-2 fully connected network
    dense residual(relu, dense, relu, dense) relu dense # a pre-activation residual block
    dense layernorm relu dense(b_std=0.5) layernorm relu dense
    conv(3) relu conv(3, stride=2) relu gap dense       # images: convolutions, global pooling
    repeat(3, dense, tanh) dense                        # [dense, tanh] three times

Layers: ``dense`` / ``linear`` and ``conv`` / ``conv2d`` / ``conv1d`` (``kernel_size`` first,
``stride``, ``padding`` = ``same`` | ``valid`` | ``circular``; both take ``w_std``, ``b_std``,
``width``), any activation name of :func:`ntkit.activations.get_activation` (``relu``, ``erf``,
``tanh``, ``gelu``, ...; ``leaky_relu(0.2)`` takes its slope), ``residual(...)`` (optional
``scale=``), ``layernorm`` (``eps=``), ``avgpool(window[, stride])``, ``gap``, ``flatten`` and
``repeat(n, ...)``. Hidden weight layers get the width of the sweep unless ``width=`` says otherwise;
the last weight layer of the top level is the read-out (``out_features`` outputs); ``w_std`` and
``b_std`` default to the command's ``--w-std`` / ``--b-std``.

A path ending in ``.py`` instead names a file that defines
``build(width: int, in_shape: tuple[int, ...], out_features: int) -> torch.nn.Module``
(random initialisation from torch's global generator, which the caller seeds). Where the width does
not matter (``ntkit kernel --model``: ``load_arch(path, allow_model=True)``) the file may instead
define ``model``, a ``torch.nn.Module`` used as it is.
"""

from __future__ import annotations

import re
import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntkit.activations import LeakyReLU, available_activations, get_activation
from ntkit.nn.linear import Conv1d, Conv2d, Linear
from ntkit.nn.structure import Activation, GlobalAvgPool, LayerNorm, Residual

Value = int | float | str
_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|([(),=]))")


@dataclass
class Layer:
    """One parsed layer: its name, positional and keyword arguments, and (for containers) children.

    Attributes
    ----------
    name : str
        The layer's name, lower-cased (``"dense"``, ``"conv"``, ``"relu"``, ``"residual"``, ...).
    args : list of int, float or str
        Positional arguments (``conv(3)``: ``[3]``).
    kwargs : dict of str to int, float or str
        Keyword arguments (``dense(b_std=0.5)``: ``{"b_std": 0.5}``).
    children : list of Layer
        The layers inside ``residual(...)`` and ``repeat(n, ...)``.

    Examples
    --------
    >>> layer = parse_arch("residual(relu, dense, scale=0.5)")[0]
    >>> layer.name, layer.kwargs, [child.name for child in layer.children]
    ('residual', {'scale': 0.5}, ['relu', 'dense'])
    """

    name: str
    args: list[Value] = field(default_factory=list)
    kwargs: dict[str, Value] = field(default_factory=dict)
    children: list[Layer] = field(default_factory=list)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"arch: cannot read {text[pos:pos + 20]!r} (position {pos}) in {text!r}")
        out.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    return out


def _value(token: str) -> Value:
    if re.fullmatch(r"[-+]?\d+", token):
        return int(token)
    try:
        return float(token)
    except ValueError:
        return token


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"arch: expected {expected or 'more'} at token {self.i} of {self.text!r}, got {tok!r}")
        self.i += 1
        return tok

    def sequence(self, end: str | None) -> list[Layer]:
        layers: list[Layer] = []
        while self.peek() is not None and self.peek() != end:
            if self.peek() == ",":
                self.take(",")
                continue
            layers.append(self.layer())
        return layers

    def layer(self) -> Layer:
        name = self.take()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"arch: expected a layer name at token {self.i - 1} of {self.text!r}, got {name!r}")
        layer = Layer(name.lower())
        if self.peek() != "(":
            return layer
        self.take("(")
        while self.peek() != ")":
            if self.peek() == ",":
                self.take(",")
                continue
            tok = self.take()
            if self.peek() == "=":
                self.take("=")
                layer.kwargs[tok] = _value(self.take())
            elif re.fullmatch(r"[A-Za-z_]\w*", tok) and layer.name in ("residual", "repeat"):
                self.i -= 1
                layer.children.append(self.layer())
            else:
                layer.args.append(_value(tok))
        self.take(")")
        return layer


def parse_arch(text: str) -> list[Layer]:
    """The layers of an architecture text (see the module notes).

    Parameters
    ----------
    text : str
        Layers separated by spaces or commas, arguments in parentheses (``"dense relu dense"``).

    Returns
    -------
    list of Layer
        The top-level layers, containers (``residual``, ``repeat``) holding theirs; names are
        checked when the model is built, not here.

    Raises
    ------
    ValueError
        For text that cannot be read, with the position; an empty text or one that is not a string.

    Examples
    --------
    >>> [layer.name for layer in parse_arch("dense relu repeat(2, dense, tanh) dense")]
    ['dense', 'relu', 'repeat', 'dense']
    >>> parse_arch("conv(3, stride=2)")
    [Layer(name='conv', args=[3], kwargs={'stride': 2}, children=[])]
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"arch: expected a description such as 'dense relu dense', got {text!r}")
    parser = _Parser(text)
    layers = parser.sequence(None)
    if parser.peek() is not None:
        raise ValueError(f"arch: unexpected {parser.peek()!r} in {text!r}")
    return layers


@dataclass
class _Context:
    width: int
    w_std: float
    b_std: float
    generator: torch.Generator | None
    dtype: torch.dtype | None
    device: torch.device | str | None


def _expand(layers: list[Layer]) -> list[Layer]:
    out: list[Layer] = []
    for layer in layers:
        if layer.name == "repeat":
            if not layer.args or not isinstance(layer.args[0], int) or layer.args[0] < 1:
                raise ValueError(f"arch: expected repeat(n, layers...) with n >= 1, got args {layer.args}")
            out += _expand(layer.children) * layer.args[0]
        else:
            out.append(layer)
    return out


def _float(layer: Layer, key: str, default: float) -> float:
    v = layer.kwargs.get(key, default)
    if not isinstance(v, (int, float)):
        raise ValueError(f"arch: {layer.name}({key}=...) expects a number, got {v!r}")
    return float(v)


def _int(layer: Layer, index: int, key: str, default: int | None) -> int:
    v: Value | None = layer.kwargs.get(key, layer.args[index] if len(layer.args) > index else default)
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"arch: {layer.name} expects a positive integer {key}, got {v!r}")
    return v


def _build(layers: list[Layer], shape: tuple[int, ...], ctx: _Context, out_features: int | None
           ) -> tuple[list[nn.Module], tuple[int, ...]]:
    """Modules for ``layers`` on inputs of ``shape``; the last weight layer outputs ``out_features``."""
    layers = _expand(layers)
    weighted = [i for i, layer in enumerate(layers) if layer.name in _WEIGHTED]
    modules: list[nn.Module] = []
    for i, layer in enumerate(layers):
        name = layer.name
        opts: dict[str, Any] = {"w_std": _float(layer, "w_std", ctx.w_std), "b_std": _float(layer, "b_std", ctx.b_std),
                                "generator": ctx.generator, "dtype": ctx.dtype, "device": ctx.device}
        last = out_features is not None and weighted and i == weighted[-1]
        width = out_features if last else int(layer.kwargs.get("width", ctx.width))
        assert width is not None
        if name in ("dense", "linear"):
            if len(shape) != 1:
                raise ValueError(f"arch: dense expects vector inputs, got shape {shape} (add flatten or gap before it)")
            modules.append(Linear(shape[0], width, **opts))
            shape = (width,)
        elif name in ("conv", "conv2d", "conv1d"):
            kernel_size, stride = _int(layer, 0, "kernel_size", 3), _int(layer, 1, "stride", 1)
            if len(shape) not in (2, 3):
                raise ValueError(f"arch: {name} expects images (C, H, W) or signals (C, L), got shape {shape}")
            cls = Conv1d if name == "conv1d" or len(shape) == 2 else Conv2d
            conv = cls(shape[0], width, kernel_size, stride=stride, padding=str(layer.kwargs.get("padding", "same")),
                       **opts)
            modules.append(conv)
            shape = (width, *conv.output_shape(shape[1:]))
        elif name == "residual":
            block, end = _build(layer.children, shape, ctx, None)
            if end != shape:
                raise ValueError(f"arch: residual block changes the shape {shape} to {end}")
            modules.append(Residual(*block, scale=_float(layer, "scale", 1.0)))
        elif name == "layernorm":
            modules.append(LayerNorm(eps=_float(layer, "eps", 1e-5)))
        elif name == "gap":
            modules.append(GlobalAvgPool())
            shape = shape[:1]
        elif name == "flatten":
            modules.append(nn.Flatten())
            size = 1
            for n in shape:
                size *= n
            shape = (size,)
        elif name == "avgpool":
            window = _int(layer, 0, "window", None)
            stride = _int(layer, 1, "stride", window)
            pool = nn.AvgPool1d(window, stride) if len(shape) == 2 else nn.AvgPool2d(window, stride)
            modules.append(pool)
            shape = (shape[0], *((n - window) // stride + 1 for n in shape[1:]))
        elif name == "leaky_relu" and (layer.args or layer.kwargs):
            modules.append(Activation(LeakyReLU(alpha=float(layer.kwargs.get("alpha", layer.args[0])))))
        elif name in available_activations():
            if layer.args or layer.kwargs or layer.children:
                raise ValueError(f"arch: activation {name!r} takes no arguments, got {layer.args or layer.kwargs}")
            modules.append(Activation(get_activation(name)))
        else:
            raise ValueError(
                f"arch: unknown layer {name!r}; expected dense, conv, conv1d, residual(...), layernorm, avgpool, "
                f"gap, flatten, repeat(n, ...) or an activation ({', '.join(available_activations())})"
            )
    return modules, shape


_WEIGHTED = ("dense", "linear", "conv", "conv2d", "conv1d")


@dataclass
class ArchSpec:
    """A buildable architecture: from text (:func:`parse_arch`) or from a Python file's ``build``.

    Attributes
    ----------
    source : str
        The text, or the path of the file.
    layers : list of Layer or None
        The parsed text (None for a file).
    builder : callable or None
        The file's ``build(width, in_shape, out_features)`` (None for a text).

    Examples
    --------
    >>> spec = load_arch("conv(3) relu gap dense")
    >>> model = spec.build(8, (1, 5, 5), out_features=2, device="meta")  # width 8, inputs (N, 1, 5, 5)
    >>> [type(m).__name__ for m in model]
    ['Conv2d', 'Activation', 'GlobalAvgPool', 'Linear']
    """

    source: str
    layers: list[Layer] | None = None
    builder: Callable[[int, tuple[int, ...], int], nn.Module] | None = None

    def build(
        self, width: int, in_shape: tuple[int, ...], out_features: int = 1, *, w_std: float = 1.0,
        b_std: float = 0.0, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The model at hidden ``width`` for inputs of shape ``in_shape`` (one example), ``out_features`` outputs."""
        if self.builder is not None:
            if generator is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                    model = self.builder(width, in_shape, out_features)
            else:
                model = self.builder(width, in_shape, out_features)
            if not isinstance(model, nn.Module):
                raise TypeError(f"arch: build() in {self.source} must return a torch.nn.Module, got "
                                f"{type(model).__name__}")
            return model.to(dtype=dtype) if dtype is not None else model
        assert self.layers is not None
        ctx = _Context(width, w_std, b_std, generator, dtype, device)
        modules, shape = _build(self.layers, tuple(in_shape), ctx, out_features)
        if shape != (out_features,):
            raise ValueError(f"arch: expected the architecture to end with a dense read-out, got output shape {shape}")
        return nn.Sequential(*modules)


def load_arch(arch: str, *, allow_model: bool = False) -> ArchSpec:
    """An :class:`ArchSpec` from architecture text or from a ``.py`` file defining ``build``.

    Parameters
    ----------
    arch : str
        Architecture text (see the module notes), or the path of a ``.py`` file that defines
        ``build(width, in_shape, out_features) -> torch.nn.Module`` (run once, here).
    allow_model : bool
        Also accept a file that defines ``model`` (a ``torch.nn.Module``) instead of ``build``: the
        spec then builds that module whatever the width (for the infinite-width kernel, where the
        width does not matter; not for a width sweep).

    Returns
    -------
    ArchSpec

    Raises
    ------
    ValueError
        Unreadable text, or a file without ``build``.
    FileNotFoundError
        A ``.py`` path that does not exist.

    Examples
    --------
    >>> import torch
    >>> spec = load_arch("dense relu dense")
    >>> model = spec.build(16, (3,), generator=torch.Generator().manual_seed(0))
    >>> model(torch.ones(2, 3)).shape
    torch.Size([2, 1])
    """
    if arch.strip().endswith(".py"):
        path = Path(arch.strip())
        if not path.exists():
            raise FileNotFoundError(f"arch: no such file {str(path)!r}")
        namespace = runpy.run_path(str(path))
        builder = namespace.get("build")
        model = namespace.get("model")
        if not callable(builder) and allow_model and isinstance(model, nn.Module):
            return ArchSpec(str(path), builder=lambda width, in_shape, out_features: model)
        if not callable(builder):
            alternative = " or model = <a torch.nn.Module>" if allow_model else ""
            got = "none" if not allow_model else "neither" if model is None else f"model of type {type(model).__name__}"
            raise ValueError(f"arch: {path} must define build(width, in_shape, out_features) -> torch.nn.Module"
                             f"{alternative}, got {got}")
        return ArchSpec(str(path), builder=builder)
    return ArchSpec(arch, layers=parse_arch(arch))


__all__ = ["ArchSpec", "Layer", "load_arch", "parse_arch"]
