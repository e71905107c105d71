"""Build the ``ntkit.nn`` model of an architecture case of :mod:`tests.arch_cases`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import ntkit
from ntkit.activations import ABReLU, Erf, Gelu, Identity, LeakyReLU, ReLU, Sin


def activation(layer: dict[str, Any]) -> ntkit.DualActivation:
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


def symmetric_padding(spatial: list[int], window: list[int], stride: list[int], padding: str) -> list[int]:
    """Torch's symmetric pooling padding equal to ``padding`` (``"valid"``: none; ``"same"``: TF's SAME pads,
    ``low = total // 2``, ``high = total - low``, which must be equal and give the same output size)."""
    if padding == "valid":
        return [0] * len(window)
    assert padding == "same", padding
    pads = []
    for n, w, s in zip(spatial, window, stride, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + w - n, 0)
        low = total // 2
        if total - low != low or (n + 2 * low - w) // s + 1 != out:
            raise ValueError(f"SAME pooling of {n} with window {w}, stride {s} pads ({low}, {total - low}): "
                             "not a symmetric torch padding")
        pads.append(low)
    return pads


def build(spec: list[dict[str, Any]], input_shape: list[int], *, width: int | None = None,
          generator: torch.Generator | None = None, device: str | torch.device | None = "meta",
          dtype: torch.dtype | None = torch.float64, last: int | None = None) -> tuple[nn.Sequential, list[int]]:
    """The model of ``spec`` for inputs of shape ``input_shape``, and its output shape.

    ``width`` overrides every hidden width but the last read-out's (for Monte Carlo width sweeps);
    ``last`` overrides the last weight layer's width (a residual block's, to keep its input's shape).
    """
    shape = list(input_shape)
    layers: list[nn.Module] = []
    n_weighted = sum(1 for layer in spec if layer["op"] in ("dense", "conv", "convtranspose"))
    seen = 0
    for layer in spec:
        op = layer["op"]
        if op in ("dense", "conv", "convtranspose"):
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
            elif op == "convtranspose":
                up = (ntkit.nn.ConvTranspose1d if len(layer["filter"]) == 1 else ntkit.nn.ConvTranspose2d)(
                    shape[0], out, layer["filter"], layer["stride"], layer["padding"], **opts)
                layers.append(up)
                shape = [out, *up.output_shape(shape[1:])]
            else:
                cls = ntkit.nn.Conv1d if len(layer["filter"]) == 1 else ntkit.nn.Conv2d
                conv = cls(shape[0], out, layer["filter"], stride=layer["stride"], padding=layer["padding"], **opts)
                layers.append(conv)
                shape = [out, *conv.output_shape(shape[1:])]
        elif op == "act":
            layers.append(ntkit.nn.Activation(activation(layer)))
        elif op == "layernorm":
            axes = tuple(shape) if layer.get("axes") == "all" else None
            layers.append(ntkit.nn.LayerNorm(axes, eps=layer["eps"]))
        elif op == "residual":
            block, end = build(layer["block"], shape, width=width, generator=generator, device=device, dtype=dtype,
                               last=shape[0])
            assert end == shape
            layers.append(ntkit.nn.Residual(block))
        elif op in ("avgpool", "sumpool"):
            pads = symmetric_padding(shape[1:], layer["window"], layer["stride"], layer["padding"])
            two_d = len(layer["window"]) == 2
            if op == "sumpool":
                layers.append((ntkit.nn.SumPool2d if two_d else ntkit.nn.SumPool1d)(
                    layer["window"], layer["stride"], padding=pads))
            elif any(pads):
                layers.append((nn.AvgPool2d if two_d else nn.AvgPool1d)(
                    layer["window"], layer["stride"], padding=pads,
                    count_include_pad=not layer["normalize_edges"]))
            else:
                layers.append((nn.AvgPool2d if two_d else nn.AvgPool1d)(layer["window"], layer["stride"]))
            shape = [shape[0], *((n + 2 * p - w) // s + 1 for n, w, s, p in zip(
                shape[1:], layer["window"], layer["stride"], pads, strict=True))]
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
