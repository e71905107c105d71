"""The CNNs of :mod:`tests.models_forward` (plain forwards) as layer dicts, for neural-tangents.

The layer dicts of :mod:`tests.arch_cases_branches` (``{"op": "parallel", ...}`` and those of
:mod:`tests.arch_cases`); ``benchmarks/nt_reference.py --forward`` writes their neural-tangents float64
NNGP / NTK to ``tests/data/nt_reference_forward.npz`` and ``tests/test_models_forward.py`` checks the kernels of
the captured forwards (width 8: the channel counts fix a concatenation's weights) against them. A dict here must
mirror its module in :mod:`tests.models_forward` (filters, strides, ``w_std``, ``b_std``, channels): a mismatch
fails that test.

This module imports nothing but the standard library (it is also loaded by file path in the neural-tangents
virtual environment).
"""

from __future__ import annotations

from typing import Any

Spec = list[dict[str, Any]]


def _conv(width: int, filt: int, stride: int = 1, w_std: float = 1.0, b_std: float = 0.0) -> dict:
    return {"op": "conv", "width": width, "filter": [filt, filt], "stride": [stride, stride], "padding": "same",
            "w_std": w_std, "b_std": b_std, "parameterization": "ntk"}


def _dense(width: int, b_std: float = 0.0) -> dict:
    return {"op": "dense", "width": width, "w_std": 1.0, "b_std": b_std, "parameterization": "ntk"}


def _parallel(merge: str, *branches: Spec) -> dict:
    return {"op": "parallel", "merge": merge, "branches": [list(b) for b in branches]}


RELU = {"op": "act", "name": "relu"}
GAP = {"op": "gap"}
N = 8  # the models' width


def _resnet() -> Spec:
    block1 = _parallel("sum", [_conv(N, 3, 2), RELU, _conv(N, 3, b_std=0.1)], [_conv(N, 1, 2)])
    block2 = _parallel("sum", [_conv(N, 3, 2, b_std=0.1), RELU, _conv(N, 3)], [_conv(N, 1, 2, w_std=1.2)])
    return [_conv(N, 3, b_std=0.1), RELU, block1, RELU, block2, RELU, GAP, _dense(1, b_std=0.1)]


def _densenet() -> Spec:
    grows = [_parallel("concat", [], [_conv(N // 2, 3, b_std=0.1 * i), RELU]) for i in range(3)]
    return [_conv(N, 3), RELU, *grows, _conv(N, 1), RELU, GAP, _dense(1)]


def _unet() -> Spec:
    up = {**_conv(N, 2, 2, b_std=0.1), "op": "convtranspose"}
    down_up = [{"op": "avgpool", "window": [2, 2], "stride": [2, 2], "padding": "valid"}, _conv(2 * N, 3), RELU, up]
    return [_conv(N, 3, b_std=0.1), RELU, _parallel("concat", [], down_up), _conv(N, 3), RELU, GAP, _dense(1)]


#: (name, spec, input_shape, n1, n2), as :data:`tests.arch_cases.CASES`; the name after ``forward_`` is the
#: key of :data:`tests.models_forward.MODELS`.
CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("forward_resnet", _resnet(), [2, 8, 8], 4, 3),
    ("forward_densenet", _densenet(), [2, 8, 8], 4, 3),
    ("forward_unet", _unet(), [2, 8, 8], 4, 3),
]


def case_by_name(name: str) -> tuple[str, Spec, list[int], int, int]:
    """The case tuple called ``name``."""
    for case in CASES:
        if case[0] == name:
            return case
    raise KeyError(name)
