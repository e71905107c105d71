"""Series-parallel architecture cases: branches merged by a sum, a concatenation or a product.

The layer dicts of :mod:`tests.arch_cases` plus one more::

    {"op": "parallel", "merge": "sum" | "concat" | "prod", "branches": [[...], [...], ...]}

each branch a list of layer dicts run on the same input (``[]``: the identity). ntkit builds
:class:`ntkit.nn.Parallel` (``tests/test_branches_nt.py``), neural-tangents
``serial(FanOut(n), parallel(*branches), FanInSum() | FanInConcat(axis=-1) | FanInProd())`` (channels
last; ``benchmarks/nt_reference.py --branches`` writes ``tests/data/nt_reference_branches.npz``).
Inputs are :func:`tests.arch_cases.make_inputs` of the case's name.

This module imports nothing but the standard library (it is also loaded by file path in the
neural-tangents virtual environment); its layer helpers mirror those of :mod:`tests.arch_cases`.
"""

from __future__ import annotations

from typing import Any

Spec = list[dict[str, Any]]


def _dense(width: int = 64, w_std: float = 1.0, b_std: float | None = 0.0, parameterization: str = "ntk") -> dict:
    return {"op": "dense", "width": width, "w_std": w_std, "b_std": b_std, "parameterization": parameterization}


def _conv(width: int = 8, filt: tuple[int, ...] = (3, 3), stride: tuple[int, ...] = (1, 1), padding: str = "same",
          w_std: float = 1.0, b_std: float | None = 0.0, parameterization: str = "ntk") -> dict:
    return {"op": "conv", "width": width, "filter": list(filt), "stride": list(stride), "padding": padding,
            "w_std": w_std, "b_std": b_std, "parameterization": parameterization}


def _act(name: str, **kw: float) -> dict:
    return {"op": "act", "name": name, **kw}


def _parallel(merge: str, *branches: Spec) -> dict:
    return {"op": "parallel", "merge": merge, "branches": [list(b) for b in branches]}


RELU = _act("relu")
ERF = _act("erf", a=1.0, b=1.0, c=0.0)
GATE = _act("erf", a=0.5, b=1.0, c=0.5)  # a sigmoid-like gate, (1 + erf(x)) / 2
GAP = {"op": "gap"}
FLATTEN = {"op": "flatten"}
POOL_SAME = {"op": "avgpool", "window": [3, 3], "stride": [1, 1], "padding": "same", "normalize_edges": False}


def _resnet(parameterization: str) -> Spec:
    """A projection-shortcut ResNet block: a strided 3x3 pair beside a strided 1x1 convolution, summed."""
    p = parameterization
    main = [_conv(8, stride=(2, 2), b_std=0.1, parameterization=p), RELU, _conv(8, b_std=0.1, parameterization=p)]
    shortcut = [_conv(8, (1, 1), (2, 2), parameterization=p)]
    return [_conv(6, b_std=0.1, parameterization=p), RELU, _parallel("sum", main, shortcut), RELU, GAP,
            _dense(1, b_std=0.1, parameterization=p)]


def _inception(parameterization: str) -> Spec:
    """An Inception-like block: a 1x1 and a 3x3 branch of different widths, concatenated, then a convolution."""
    p = parameterization
    block = _parallel("concat", [_conv(4, (1, 1), parameterization=p), RELU],
                      [_conv(6, b_std=0.2, parameterization=p), RELU])
    return [_conv(5, b_std=0.1, parameterization=p), RELU, block, _conv(8, parameterization=p), RELU, GAP,
            _dense(1, parameterization=p)]


#: (name, spec, input_shape, n1, n2), as :data:`tests.arch_cases.CASES`.
CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("branch_resnet_projection", _resnet("ntk"), [3, 6, 6], 4, 3),
    ("branch_resnet_projection_standard", _resnet("standard"), [3, 6, 6], 4, 3),
    ("branch_inception_concat", _inception("ntk"), [2, 6, 6], 4, 3),
    ("branch_inception_concat_standard", _inception("standard"), [2, 6, 6], 4, 3),
    # a concatenation, then pooling and a flatten before the weight layer (the channel mean is carried)
    ("branch_concat_pool_flatten", [_conv(4), RELU,
                                    _parallel("concat", [_conv(3, (1, 1))], [_conv(5, b_std=0.1), ERF]),
                                    {"op": "avgpool", "window": [2, 2], "stride": [2, 2], "padding": "valid"},
                                    FLATTEN, _dense(1)], [2, 6, 6], 4, 3),
    # DenseNet-like: the identity beside a branch, concatenated
    ("branch_densenet_concat", [_conv(4, b_std=0.1), RELU, _parallel("concat", [], [_conv(6), RELU]),
                                _conv(8), RELU, GAP, _dense(1)], [2, 5, 5], 4, 3),
    ("branch_three_sum", [_conv(6), _parallel("sum", [_conv(6, (1, 1))], [RELU, _conv(6, b_std=0.3)],
                                              [ERF, _conv(6, (3, 3), w_std=1.3)]),
                          RELU, FLATTEN, _dense(1)], [2, 5, 5], 4, 3),
    # a pooling inside one branch: every pixel pair is carried into the merge, then dropped for the flatten
    ("branch_pool_in_branch", [_conv(5), RELU,
                               _parallel("sum", [POOL_SAME, _conv(5, b_std=0.1)], [_conv(5, (1, 1))]),
                               RELU, FLATTEN, _dense(1)], [2, 5, 5], 4, 3),
    ("branch_conv1d_sum", [_conv(6, (3,), (1,)), RELU,
                           _parallel("sum", [_conv(6, (3,), (1,), b_std=0.1)], [_conv(6, (1,), (1,))]),
                           ERF, GAP, _dense(1)], [3, 9], 4, 3),
    # vectors: a gated product (both factors activations of fresh weights), a product of two dense
    # branches, a product with the identity, a concatenation
    ("branch_gated_product", [_dense(64, b_std=0.1), RELU, _parallel("prod", [_dense(64, b_std=0.1), ERF],
                                                                     [_dense(64, w_std=1.2, b_std=0.2), GATE]),
                              _dense(1, b_std=0.1)], [10], 6, 5),
    ("branch_dense_product", [_dense(64), RELU, _parallel("prod", [_dense(64)], [_dense(64, b_std=0.3)]),
                              _dense(64, b_std=0.1), RELU, _dense(1)], [10], 6, 5),
    ("branch_identity_product", [_dense(32, b_std=0.2), _parallel("prod", [], [_dense(32, w_std=0.8, b_std=0.5)]),
                                 _dense(1)], [8], 6, 5),
    ("branch_gated_product_standard", [_dense(48, b_std=0.1, parameterization="standard"), RELU,
                                       _parallel("prod", [_dense(48, b_std=0.1, parameterization="standard"), ERF],
                                                 [_dense(48, b_std=0.2, parameterization="standard"), GATE]),
                                       _dense(1, parameterization="standard")], [10], 6, 5),
    ("branch_fc_concat", [_dense(64, b_std=0.1), RELU, _parallel("concat", [_dense(48)], [_dense(16, b_std=0.2), ERF]),
                          _dense(1, b_std=0.1)], [12], 6, 5),
    # nested: x + dense(concat(dense(relu x), dense(relu(dense(relu x))))), then an activation
    ("branch_nested", [_dense(32, b_std=0.1),
                       _parallel("sum", [], [RELU, _parallel("concat", [_dense(16)], [_dense(24), RELU, _dense(8)]),
                                             _dense(32, b_std=0.1)]),
                       RELU, _dense(1)], [9], 6, 5),
]


def case_by_name(name: str) -> tuple[str, Spec, list[int], int, int]:
    """The case tuple called ``name``."""
    for case in CASES:
        if case[0] == name:
            return case
    raise KeyError(name)
