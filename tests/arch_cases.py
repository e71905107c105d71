"""Architectures and inputs shared by three independent kernel implementations.

Each case is a plain-data description of a network (a list of layer dicts, no ntkit objects) and
of its inputs, so that the same case can be evaluated by

* ntkit (``tests/test_infinite_reference.py`` builds the ``ntkit.nn`` model from the spec),
* neural-tangents (``benchmarks/nt_reference.py``, run in its own virtual environment, writes
  ``tests/data/nt_reference.npz``), and
* the high-precision mpmath reference of ``tests/reference_arch.py``.

Layer dicts (widths only matter for the standard parameterization):

``{"op": "dense", "width": 64, "w_std": 1.0, "b_std": 0.0 | None, "parameterization": "ntk" | "standard"}``
    ``b_std=None`` means no bias parameter at all.
``{"op": "act", "name": "relu" | "erf" | "leaky_relu" | "abs" | "gelu" | "sin" | "identity", ...}``
    ``leaky_relu`` takes ``alpha``; ``erf`` takes ``a, b, c`` (``a erf(b x) + c``); ``sin`` takes
    ``a, b, c`` (``a sin(b x + c)``).
``{"op": "residual", "block": [...]}``
    ``x + block(x)`` (the block must end with a weight layer). When ``x`` is not Gaussian (it comes
    from an activation) the sum is not Gaussian either: only a weight layer or a layer norm may
    follow it (``residual_relu``, ``conv_residual_layernorm``; neural-tangents refuses these).
``{"op": "layernorm", "eps": 1e-12}`` (``"axes": "all"``: over the channels and the pixels of each example)
    Normalisation over the feature / channel axis (``ntkit.nn.LayerNorm()``, neural-tangents'
    ``LayerNorm(axis=-1)``), or with ``"axes": "all"`` over whole examples (``ntkit.nn.LayerNorm((C, *S))``,
    neural-tangents' ``LayerNorm(axis=(1, ..., d + 1))``: one variance ``V = mean_p K(x, x)[p, p] - mu^2`` per
    example, ``mu`` the mean of the channel means). Its input is usually a centred Gaussian (after a
    weight layer); after a residual sum whose skip branch is an activation's output, the channel
    mean ``E[sigma(u)]`` is subtracted: ``K' = (K - m m') / sqrt((V + eps)(V' + eps))`` with
    ``V = K(x, x) - m^2``.
``{"op": "conv", "width": 8, "filter": [3, 3], "stride": [1, 1], "padding": "same" | "valid" | "circular",
"w_std", "b_std", "parameterization"}``
``{"op": "convtranspose", "width": 8, "filter": [3, 3], "stride": [2, 2], "padding": "same" | "valid", ...}``
    A transposed convolution (:class:`ntkit.nn.ConvTranspose2d` / ``1d``, neural-tangents' ``ConvTranspose``),
    the other keys as ``conv``'s: outputs ``n s`` ("same") or ``n s + max(k - s, 0)`` ("valid") per axis.
``{"op": "avgpool", "window": [2, 2], "stride": [2, 2], "padding": "valid" | "same", "normalize_edges": False}``
    ``"same"`` is TF's SAME padding (neural-tangents' ``AvgPool(..., 'SAME', normalize_edges)``); ntkit's
    model uses ``nn.AvgPool2d(..., padding=p, count_include_pad=not normalize_edges)``, so a case must
    pick a geometry where SAME pads ``p`` on both sides (odd window and stride 1, or e.g. n=7, w=3, s=2).
``{"op": "sumpool", "window": [2, 2], "stride": [2, 2], "padding": "valid" | "same"}``
    :class:`ntkit.nn.SumPool2d` / ``SumPool1d`` (neural-tangents' ``SumPool``), the same SAME rule.
``{"op": "gap"}`` (global average pooling over space) and ``{"op": "flatten"}``.

Inputs: ``make_inputs(name, input_shape, n1, n2)`` returns ``(x1, x2)`` as float64 numpy arrays of shape
``(n1, *input_shape)`` / ``(n2, *input_shape)`` (channels first for images). ``x2`` repeats two rows
of ``x1`` (duplicated inputs) and ``x1`` repeats its own first row in its last row.

This module imports numpy only (it is also imported from the neural-tangents virtual environment).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Spec = list[dict[str, Any]]


def _dense(width: int = 64, w_std: float = 1.0, b_std: float | None = 0.0, parameterization: str = "ntk") -> dict:
    return {"op": "dense", "width": width, "w_std": w_std, "b_std": b_std, "parameterization": parameterization}


def _act(name: str, **kw: float) -> dict:
    return {"op": "act", "name": name, **kw}


def _fc(depth: int, act: dict, *, w_std: float = 1.0, b_std: float | None = 0.0, width: int = 64,
        parameterization: str = "ntk") -> Spec:
    layers: Spec = []
    for _ in range(depth):
        layers += [_dense(width, w_std, b_std, parameterization), act]
    return [*layers, _dense(1, w_std, b_std, parameterization)]


def _conv(width: int = 8, filt: tuple[int, ...] = (3, 3), stride: tuple[int, ...] = (1, 1), padding: str = "same",
          w_std: float = 1.0, b_std: float | None = 0.0, parameterization: str = "ntk") -> dict:
    return {"op": "conv", "width": width, "filter": list(filt), "stride": list(stride), "padding": padding,
            "w_std": w_std, "b_std": b_std, "parameterization": parameterization}


def _pool(op: str, window: tuple[int, ...], stride: tuple[int, ...], padding: str = "valid", *,
          edges: bool = False) -> dict:
    """A ``sumpool`` / ``avgpool`` layer (``edges``: average pooling's ``normalize_edges``)."""
    layer: dict[str, Any] = {"op": op, "window": list(window), "stride": list(stride), "padding": padding}
    if op == "avgpool" and padding != "valid":
        layer["normalize_edges"] = edges
    return layer


def _convt(width: int = 8, filt: tuple[int, ...] = (3, 3), stride: tuple[int, ...] = (2, 2), padding: str = "same",
           w_std: float = 1.0, b_std: float | None = 0.0, parameterization: str = "ntk") -> dict:
    return {**_conv(width, filt, stride, padding, w_std, b_std, parameterization), "op": "convtranspose"}


def _norm(eps: float = 1e-12, axes: str | None = None) -> dict:
    """A ``layernorm`` layer (``axes="all"``: over whole examples)."""
    return {"op": "layernorm", "eps": eps} if axes is None else {"op": "layernorm", "eps": eps, "axes": axes}


RELU = _act("relu")

#: Fully connected, residual and layer-normed cases: (name, spec, input_shape, n1, n2).
DENSE_CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("fc_relu_d1", _fc(1, RELU), [20], 6, 5),
    ("fc_relu_d2_bias", _fc(2, RELU, b_std=0.3), [20], 6, 5),
    ("fc_relu_d5_wstd", _fc(5, RELU, w_std=1.4, b_std=0.1), [3], 6, 5),
    ("fc_relu_d3_d100", _fc(3, RELU, b_std=0.2), [100], 6, 5),
    ("fc_leaky_d3", _fc(3, _act("leaky_relu", alpha=0.2), b_std=0.1), [20], 6, 5),
    ("fc_abs_d4", _fc(4, _act("abs")), [7], 6, 5),
    ("fc_erf_d3", _fc(3, _act("erf", a=1.0, b=1.0, c=0.0), b_std=0.5), [20], 6, 5),
    ("fc_erf_shift_d2", _fc(2, _act("erf", a=0.7, b=1.3, c=0.2), w_std=1.2, b_std=0.1), [5], 6, 5),
    ("fc_gelu_d3", _fc(3, _act("gelu"), b_std=0.2), [20], 6, 5),
    ("fc_sin_d2", _fc(2, _act("sin", a=1.0, b=1.0, c=0.0), b_std=0.1), [10], 6, 5),
    ("fc_identity_d2", _fc(2, _act("identity"), b_std=0.3), [4], 6, 5),
    ("fc_relu_standard", _fc(2, RELU, b_std=0.2, parameterization="standard", width=48), [12], 6, 5),
    ("fc_relu_nobias", _fc(3, RELU, b_std=None), [12], 6, 5),
    ("residual_relu", [_dense(64, 1.0, 0.1), RELU,
                       {"op": "residual", "block": [_dense(64, 1.0, 0.1), RELU, _dense(64, 1.0, 0.1)]},
                       _dense(64, 1.0, 0.1), RELU, _dense(1, 1.0, 0.1)], [10], 6, 5),
    ("residual_preact_relu", [_dense(64, 1.0, 0.1),
                              {"op": "residual", "block": [RELU, _dense(64, 1.0, 0.1), RELU, _dense(64, 1.0, 0.1)]},
                              RELU, _dense(1, 1.0, 0.1)], [10], 6, 5),
    ("residual_erf_twice", [_dense(64, 1.3, 0.2),
                            {"op": "residual", "block": [_act("erf", a=1.0, b=1.0, c=0.0), _dense(64, 1.0, 0.0)]},
                            {"op": "residual", "block": [_act("erf", a=1.0, b=1.0, c=0.0), _dense(64, 0.8, 0.3)]},
                            _act("erf", a=1.0, b=1.0, c=0.0), _dense(1, 1.0, 0.0)], [8], 6, 5),
    ("layernorm_relu", [_dense(64, 1.0, 0.2), {"op": "layernorm", "eps": 1e-12}, RELU,
                        _dense(64, 1.5, 0.1), {"op": "layernorm", "eps": 1e-12}, RELU, _dense(1, 1.0, 0.0)],
     [16], 6, 5),
    ("layernorm_residual_gelu", [_dense(64, 1.0, 0.1),
                                 {"op": "residual", "block": [RELU, _dense(64, 1.0, 0.1)]},
                                 {"op": "layernorm", "eps": 1e-12}, _act("gelu"), _dense(1, 1.0, 0.1)], [9], 6, 5),
]

#: Convolutional cases (channels-first images).
CONV_CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("conv_same_gap", [_conv(), RELU, _conv(), RELU, {"op": "gap"}, _dense(1)], [2, 6, 6], 4, 3),
    ("conv_same_flatten", [_conv(b_std=0.2), RELU, _conv(b_std=0.2), RELU, {"op": "flatten"}, _dense(1)],
     [2, 6, 6], 4, 3),
    ("conv_valid_even", [_conv(filt=(2, 2), padding="valid", w_std=1.3), _act("erf", a=1.0, b=1.0, c=0.0),
                         _conv(filt=(3, 2), padding="valid"), RELU, {"op": "flatten"}, _dense(1)], [1, 6, 5], 4, 3),
    ("conv_same_even", [_conv(filt=(4, 4), padding="same", b_std=0.1), RELU, {"op": "gap"}, _dense(1)],
     [2, 5, 5], 4, 3),
    ("conv_same_stride2", [_conv(filt=(3, 3), stride=(2, 2), padding="same"), RELU,
                           _conv(filt=(2, 2), stride=(2, 1), padding="same"), RELU, {"op": "gap"}, _dense(1)],
     [2, 7, 6], 4, 3),
    ("conv_circular", [_conv(padding="circular", b_std=0.1), RELU, _conv(filt=(2, 3), padding="circular"),
                       _act("abs"), {"op": "gap"}, _dense(1)], [1, 5, 6], 4, 3),
    ("conv_circular_stride", [_conv(filt=(3, 3), stride=(2, 2), padding="circular"), RELU, {"op": "flatten"},
                              _dense(1)], [2, 7, 7], 4, 3),
    ("conv_avgpool", [_conv(), RELU, {"op": "avgpool", "window": [2, 2], "stride": [2, 2], "padding": "valid"},
                      _conv(), RELU, {"op": "gap"}, _dense(1)], [2, 8, 8], 4, 3),
    ("conv_avgpool_overlap", [_conv(), RELU, {"op": "avgpool", "window": [3, 3], "stride": [1, 1], "padding": "valid"},
                              {"op": "flatten"}, _dense(1)], [1, 6, 6], 4, 3),
    ("conv_residual_layernorm", [_conv(b_std=0.1), RELU,
                                 {"op": "residual", "block": [_conv(), RELU, _conv(b_std=0.1)]},
                                 {"op": "layernorm", "eps": 1e-12}, _conv(), RELU, {"op": "gap"}, _dense(1)],
     [2, 5, 5], 4, 3),
    ("conv_residual_preact", [_conv(b_std=0.1),
                              {"op": "residual", "block": [RELU, _conv(), RELU, _conv(b_std=0.1)]},
                              {"op": "layernorm", "eps": 1e-12}, RELU, {"op": "gap"}, _dense(1)], [2, 5, 5], 4, 3),
    ("conv_standard", [_conv(width=6, parameterization="standard", b_std=0.2), RELU,
                       _conv(width=5, parameterization="standard", b_std=0.2), RELU, {"op": "gap"},
                       _dense(1, parameterization="standard", b_std=0.2)], [3, 5, 5], 4, 3),
    ("conv1d_same", [_conv(filt=(3,), stride=(1,), padding="same"), RELU,
                     _conv(filt=(2,), stride=(1,), padding="valid"), RELU, {"op": "gap"}, _dense(1)], [3, 9], 4, 3),
    ("conv1d_circular_flatten", [_conv(filt=(4,), stride=(2,), padding="circular", b_std=0.1), _act("gelu"),
                                 {"op": "flatten"}, _dense(1)], [2, 8], 4, 3),
    # sum pooling and zero-padded average pooling (the padding is TF SAME's, symmetric here)
    ("conv_sumpool", [_conv(), RELU, _pool("sumpool", (2, 2), (2, 2)), _conv(b_std=0.1), RELU, {"op": "flatten"},
                      _dense(1)], [2, 8, 8], 4, 3),
    ("conv_sumpool_same", [_conv(), _act("erf", a=1.0, b=1.0, c=0.0), _pool("sumpool", (3, 3), (1, 1), "same"),
                           _conv(), RELU, {"op": "gap"}, _dense(1)], [1, 5, 5], 4, 3),
    ("conv_avgpool_same", [_conv(), RELU, _pool("avgpool", (3, 3), (1, 1), "same"), _conv(), RELU, {"op": "gap"},
                           _dense(1)], [2, 6, 6], 4, 3),
    ("conv_avgpool_same_edges", [_conv(b_std=0.2), RELU, _pool("avgpool", (3, 3), (1, 1), "same", edges=True),
                                 _conv(), RELU, {"op": "flatten"}, _dense(1)], [2, 6, 6], 4, 3),
    ("conv_avgpool_same_stride2", [_conv(), RELU, _pool("avgpool", (3, 3), (2, 2), "same", edges=True),
                                   {"op": "flatten"}, _dense(1)], [1, 7, 7], 4, 3),
    ("conv1d_sumpool", [_conv(filt=(3,), stride=(1,)), RELU, _pool("sumpool", (2,), (2,)),
                        _conv(filt=(3,), stride=(1,)), RELU, {"op": "gap"}, _dense(1)], [3, 10], 4, 3),
    ("conv1d_avgpool_same_edges", [_conv(filt=(3,), stride=(1,)), _act("gelu"),
                                   _pool("avgpool", (5,), (1,), "same", edges=True), {"op": "flatten"}, _dense(1)],
     [2, 9], 4, 3),
]

#: Transposed convolutions and layer norm over whole examples (channels and pixels).
UPSAMPLING_CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("conv_transpose_same_s1", [_conv(b_std=0.1), RELU, _convt(filt=(3, 2), stride=(1, 1), b_std=0.2), RELU,
                                {"op": "gap"}, _dense(1)], [2, 4, 5], 4, 3),
    ("conv_transpose_same_s2", [_convt(filt=(3, 3), stride=(2, 2), w_std=1.2), RELU, _conv(), RELU, {"op": "gap"},
                                _dense(1)], [2, 3, 4], 4, 3),
    ("conv_transpose_valid_s2_flatten", [_convt(filt=(2, 3), stride=(2, 1), padding="valid", b_std=0.2),
                                         _act("erf", a=1.0, b=1.0, c=0.0),
                                         _convt(filt=(3, 3), stride=(1, 2), padding="valid"), RELU,
                                         {"op": "flatten"}, _dense(1)], [1, 3, 4], 4, 3),
    ("conv_transpose_standard_even", [_convt(width=5, filt=(2, 2), stride=(2, 2), b_std=0.2,
                                             parameterization="standard"), RELU,
                                      _convt(width=4, filt=(3, 2), stride=(1, 1), padding="valid",
                                             parameterization="standard"), RELU, {"op": "gap"},
                                      _dense(1, parameterization="standard", b_std=0.2)], [3, 3, 3], 4, 3),
    ("conv_transpose1d_same_s2", [_conv(filt=(3,), stride=(1,)), RELU, _convt(filt=(4,), stride=(2,), b_std=0.1),
                                  _act("gelu"), {"op": "gap"}, _dense(1)], [3, 6], 4, 3),
    ("conv_transpose1d_valid_standard", [_convt(filt=(3,), stride=(1,), padding="valid"), RELU,
                                         _convt(width=6, filt=(2,), stride=(3,), padding="valid", b_std=0.3,
                                                parameterization="standard"), RELU, {"op": "flatten"},
                                         _dense(1, parameterization="standard")], [2, 5], 4, 3),
    ("conv_layernorm_all", [_conv(b_std=0.1), RELU, _conv(b_std=0.2), _norm(axes="all"), RELU, {"op": "gap"},
                            _dense(1)], [2, 5, 5], 4, 3),
    ("conv_transpose_layernorm_all_eps", [_convt(filt=(2, 2), stride=(2, 2)), _norm(0.05, "all"), _act("gelu"),
                                          _conv(b_std=0.1), RELU, {"op": "flatten"}, _dense(1)], [2, 3, 3], 4, 3),
    ("conv1d_layernorm_all", [_conv(filt=(3,), stride=(1,)), _act("erf", a=1.0, b=1.0, c=0.0),
                              _conv(filt=(2,), stride=(1,), padding="valid"), _norm(0.01, "all"), RELU,
                              {"op": "flatten"}, _dense(1)], [2, 7], 4, 3),
    # after an activation the input is not centred (neural-tangents refuses it): the means are subtracted
    ("conv_relu_layernorm_all", [_conv(b_std=0.1), RELU, _norm(axes="all"), _conv(), RELU, {"op": "gap"},
                                 _dense(1)], [2, 4, 4], 4, 3),
]

CASES = DENSE_CASES + CONV_CASES + UPSAMPLING_CASES


def make_inputs(name: str, input_shape: list[int], n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic float64 inputs of a case: ``x1`` (n1, *shape), ``x2`` (n2, *shape) with duplicates.

    ``x2[0] == x1[1]`` and ``x2[-1] == x1[0]``; ``x1[-1] == x1[0]``.
    """
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(name)) % (2**31)
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((n1, *input_shape))
    x2 = rng.standard_normal((n2, *input_shape))
    x1[-1] = x1[0]
    x2[0] = x1[1]
    x2[-1] = x1[0]
    return x1, x2


def case_by_name(name: str) -> tuple[str, Spec, list[int], int, int]:
    """The case tuple called ``name``."""
    for case in CASES:
        if case[0] == name:
            return case
    raise KeyError(name)
