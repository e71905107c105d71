"""Build the ``ntkit.nn`` model of an architecture case of :mod:`tests.arch_cases`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import ntkit
from ntkit.activations import ABReLU, Erf, Gelu, Identity, LeakyReLU, ReLU, Sin


def activation(layer: dict[str, Any]) -> ntkit.activations.Activation:
    """The ntkit activation of an ``{"op": "act", ...}`` layer."""
    name = layer["name"]
    if name == "relu":
        return ReLU()
    if name == "leaky_relu":
        return LeakyReLU(alpha=layer["alpha"])
    if name == "abs":
        return ABReLU(-1.0, 1.0)
    if name == "erf":
        return Erf(layer["a"], layer["b"], layer["c"])
    if name == "gelu":
        return Gelu()
    if name == "sin":
        return Sin(layer["a"], layer["b"], layer["c"])
    if name == "identity":
        return Identity()
    raise KeyError(name)


def build(spec: list[dict[str, Any]], input_shape: list[int], *, width: int | None = None,
          generator: torch.Generator | None = None, device: str | torch.device | None = "meta",
          dtype: torch.dtype | None = torch.float64, last: int | None = None) -> tuple[nn.Sequential, list[int]]:
    """The model of ``spec`` for inputs of shape ``input_shape``, and its output shape.

    ``width`` overrides every hidden width but the last read-out's (for Monte Carlo width sweeps);
    ``last`` overrides the last weight layer's width (a residual block's, to keep its input's shape).
    """
    shape = list(input_shape)
    layers: list[nn.Module] = []
    n_weighted = sum(1 for layer in spec if layer["op"] in ("dense", "conv"))
    seen = 0
    for layer in spec:
        op = layer["op"]
        if op in ("dense", "conv"):
            seen += 1
            out = layer["width"] if width is None or seen == n_weighted else width
            if seen == n_weighted and last is not None:
                out = last
            opts: dict[str, Any] = {
                "w_std": layer["w_std"], "b_std": layer["b_std"] or 0.0, "bias": layer["b_std"] is not None,
                "parameterization": layer["parameterization"], "generator": generator, "device": device,
                "dtype": dtype,
            }
            if op == "dense":
                layers.append(ntkit.nn.Linear(shape[0], out, **opts))
                shape = [out]
            else:
                cls = ntkit.nn.Conv1d if len(layer["filter"]) == 1 else ntkit.nn.Conv2d
                conv = cls(shape[0], out, layer["filter"], stride=layer["stride"], padding=layer["padding"], **opts)
                layers.append(conv)
                shape = [out, *conv.output_shape(shape[1:])]
        elif op == "act":
            layers.append(ntkit.nn.Activation(activation(layer)))
        elif op == "layernorm":
            layers.append(ntkit.nn.LayerNorm(eps=layer["eps"]))
        elif op == "residual":
            block, end = build(layer["block"], shape, width=width, generator=generator, device=device, dtype=dtype,
                               last=shape[0])
            assert end == shape
            layers.append(ntkit.nn.Residual(block))
        elif op == "avgpool":
            pool = nn.AvgPool2d if len(layer["window"]) == 2 else nn.AvgPool1d
            layers.append(pool(layer["window"], layer["stride"]))
            shape = [shape[0], *((n - w) // s + 1 for n, w, s in zip(shape[1:], layer["window"], layer["stride"],
                                                                      strict=True))]
        elif op == "gap":
            layers.append(ntkit.nn.GlobalAvgPool())
            shape = shape[:1]
        elif op == "flatten":
            layers.append(nn.Flatten())
            size = 1
            for n in shape:
                size *= n
            shape = [size]
        else:
            raise KeyError(op)
    return nn.Sequential(*layers), shape
