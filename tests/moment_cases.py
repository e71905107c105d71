"""The registry of per-op moment cases (:mod:`tests.moments`): every finite module with a kernel op.

Tokens, sums over axes, graph aggregation and self-attention are in :mod:`tests.moment_cases_tokens`
(:data:`~tests.moment_cases_tokens.TOKEN_GRAPH_CASES`, appended). A new op plugs in with one line
appended to :data:`CASES`::

    MomentCase("conv2d_same_s2", conv(Conv2d, 2, 3, stride=2, padding="same"), IMAGES),

Inputs (seeded, float64; :func:`tests.moment_inputs.deterministic`, :func:`~tests.moment_inputs.gaussian_field`):

* :data:`VECTORS`, :data:`SIGNALS`, :data:`IMAGES`: deterministic inputs of the weight layers
  (vectors of 5 features, 1-D signals of 3 channels x 6, images of 2 channels x 3 x 4;
  :data:`SMALL_IMAGES` of 2 x 2 x 3 for the transposed convolutions, which upsample them); each holds a
  near-collinear pair and a zero input, the vectors an anti-collinear pair and a duplicated row
  too, with tangent directions of the same shape;
* :data:`GAUSS_VECTORS`, :data:`GAUSS_SIGNALS`, :data:`GAUSS_IMAGES`: Gaussian fields with i.i.d.
  channels for the parameter-free modules (variances 0.5-2, correlations up to ~0.95 in magnitude,
  a duplicated input and an exactly-zero input), independent Gaussian tangents;
  :data:`GAUSS_SHORT_SIGNALS` has 3 pixels (a layer norm over whole examples, 1M channels);
  :data:`GAUSS_VECTORS_MEAN` / :data:`GAUSS_IMAGES_MEAN` add a channel mean (a layer norm after an
  activation sees one); :data:`GAUSS_VECTORS_LOW` has a quarter of the variances (``exp``: the
  variance of ``exp(u)^2`` grows like ``e^{4 var}``).

Layer norm is one draw of 1M channels: its outputs' moments are the sample correlation / variance
ratios over the channels, whose bias is O(1/C) (``rho (1 - rho^2) / (2 C)`` for a correlation, and
``T / (v C)`` from the centring term of its Jacobian): ~1e-6 relative at C = 1e6, under 1e-3 of the
standard error (1.4e-3 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ntkit.activations import CallableActivation, available_activations, get_activation
from ntkit.nn import Activation as ActivationModule
from ntkit.nn import (
    Conv1d,
    Conv2d,
    ConvTranspose1d,
    ConvTranspose2d,
    GlobalAvgPool,
    LayerNorm,
    Linear,
    Parallel,
    Residual,
    SumPool1d,
    SumPool2d,
)
from tests.moment_cases_tokens import TOKEN_GRAPH_CASES
from tests.moment_inputs import deterministic as _deterministic
from tests.moment_inputs import gaussian_field as _field
from tests.moments import FLOOR, Maker, MomentCase

F64 = torch.float64


VECTORS = _deterministic((5,), 10)
SIGNALS = _deterministic((3, 6), 11)
IMAGES = _deterministic((2, 3, 4), 12)
SMALL_IMAGES = _deterministic((2, 2, 3), 14)  # upsampled by transposed convolutions
GAUSS_VECTORS = _field((), 20)
GAUSS_VECTORS_MEAN = _field((), 23, mean=True)
GAUSS_VECTORS_LOW = _field((), 27, scale=0.25)
GAUSS_SIGNALS = _field((6,), 21)
GAUSS_IMAGES = _field((3, 4), 22)
GAUSS_IMAGES_MEAN = _field((2, 2), 24, mean=True)
GAUSS_SHORT_SIGNALS = _field((3,), 28)


def dense(**kw: Any) -> Maker:
    """``Linear(5, width, **kw)`` on :data:`VECTORS`."""
    return lambda w, g: Linear(5, w, generator=g, dtype=F64, **kw)


def conv(cls: type[nn.Module], cin: int, k: int | tuple[int, ...], **kw: Any) -> Maker:
    """``cls(cin, width, k, **kw)`` (Conv1d / Conv2d / ConvTranspose1d / ConvTranspose2d)."""
    return lambda w, g: cls(cin, w, k, generator=g, dtype=F64, **kw)


def fixed(factory: Callable[[], nn.Module]) -> Maker:
    """A parameter-free module (width and generator unused)."""
    return lambda w, g: factory()


#: Activations: chunks of 500k draws (the first gives the variance), more where the SE needs them.
_ACT = {"draws": 500_000, "width": 500_000, "max_draws": 3_000_000}


#: Modules whose own float64 autograd is less exact than rounding: torch's CELU backward computes
#: 1 / alpha in float32 (its derivative errs up to 1.7e-8, 1 - 1.7e-8 at x = 0 where the exact kernel
#: is deterministic), while ntkit's op uses the exact derivative exp(min(x, 0) / alpha).
_FLOORS = {"celu": 1e-7}


def _act(name: str, module: nn.Module) -> MomentCase:
    return MomentCase(f"torch_{name}", fixed(lambda: module), GAUSS_VECTORS, **_ACT,
                      floor=_FLOORS.get(name, FLOOR))


#: Torch activation modules with a kernel (every type of ntkit.infinite.ops.activation_modules.ACTIVATION_MODULES).
TORCH_ACTIVATIONS: dict[str, nn.Module] = {
    "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
    "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(), "softplus": nn.Softplus(),
    "softplus_beta2": nn.Softplus(beta=2.0), "elu": nn.ELU(), "elu_alpha05": nn.ELU(alpha=0.5),
    "celu": nn.CELU(alpha=0.7), "selu": nn.SELU(), "mish": nn.Mish(), "relu6": nn.ReLU6(),
    "hardtanh": nn.Hardtanh(-0.8, 1.2), "hardsigmoid": nn.Hardsigmoid(), "hardswish": nn.Hardswish(),
    "softsign": nn.Softsign(), "tanhshrink": nn.Tanhshrink(), "logsigmoid": nn.LogSigmoid(),
    "softshrink": nn.Softshrink(0.4),
}

#: Heavy-tailed named activations: their own field or more draws (polynomials of degree 3: the SE of
#: E[u^6] needs ~2e7 draws to reach 0.2% of it; ``tests/test_moments.py`` marks them slow).
HEAVY = {"exp": {"inputs": GAUSS_VECTORS_LOW, "max_draws": 5_000_000}, "rectified_quadratic": {"max_draws": 5_000_000},
         "cube": {"max_draws": 25_000_000},
         "rectified_cubic": {"max_draws": 25_000_000}, "hermite3": {"max_draws": 25_000_000}}


def _distinct_names() -> list[str]:
    """The registered names, one per distinct activation (aliases such as ``linear`` / ``identity`` once)."""
    seen, names = set(), []
    for name in available_activations():
        act = get_activation(name)
        key = ("fn", act.fn) if isinstance(act, CallableActivation) else ("repr", repr(act))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _named(name: str) -> MomentCase:
    kw: dict[str, Any] = {"inputs": GAUSS_VECTORS, **_ACT, **HEAVY.get(name, {})}
    return MomentCase(f"act_{name}", fixed(lambda: ActivationModule(name)), **kw)


#: Layer norm: one draw of 1M channels (its limit is over the channels; the finite-C bias is O(1/C)).
_ONE_DRAW = {"draws": 1_000_000, "width": 1_000_000, "max_draws": 1_000_000}

CASES: list[MomentCase] = [
    # weight layers: the draws are the output channels
    MomentCase("linear_ntk", dense(w_std=1.3, b_std=0.4), VECTORS),
    MomentCase("linear_ntk_nobias", dense(w_std=0.8, bias=False), VECTORS),
    MomentCase("linear_standard", dense(w_std=1.3, b_std=0.4, parameterization="standard"), VECTORS),
    MomentCase("linear_standard_nobias", dense(w_std=0.9, bias=False, parameterization="standard"), VECTORS),
    MomentCase("linear_orthogonal", dense(w_std=1.1, b_std=0.2, init="orthogonal"), VECTORS),
    MomentCase("conv1d_same", conv(Conv1d, 3, 3, padding="same", w_std=1.2, b_std=0.3), SIGNALS),
    MomentCase("conv1d_valid_s2", conv(Conv1d, 3, 3, stride=2, padding="valid"), SIGNALS),
    MomentCase("conv1d_circular_even_s2", conv(Conv1d, 3, 4, stride=2, padding="circular", b_std=0.5), SIGNALS),
    MomentCase("conv1d_standard", conv(Conv1d, 3, 3, padding="same", b_std=0.3, parameterization="standard"),
               SIGNALS),
    MomentCase("conv2d_same", conv(Conv2d, 2, 3, padding="same", w_std=1.2, b_std=0.3), IMAGES),
    MomentCase("conv2d_same_s2", conv(Conv2d, 2, 3, stride=2, padding="same"), IMAGES),
    MomentCase("conv2d_same_even", conv(Conv2d, 2, 2, padding="same", b_std=0.2), IMAGES),
    MomentCase("conv2d_valid", conv(Conv2d, 2, 2, padding="valid", b_std=0.2), IMAGES),
    MomentCase("conv2d_valid_rect_s21", conv(Conv2d, 2, (2, 3), stride=(2, 1), padding="valid"), IMAGES),
    MomentCase("conv2d_circular", conv(Conv2d, 2, 3, padding="circular", b_std=0.4), IMAGES),
    MomentCase("conv2d_circular_s2", conv(Conv2d, 2, 3, stride=2, padding="circular"), IMAGES),
    MomentCase("conv2d_standard", conv(Conv2d, 2, 3, padding="same", b_std=0.3, parameterization="standard"),
               IMAGES),
    MomentCase("conv2d_standard_nobias_s2", conv(Conv2d, 2, 3, stride=2, padding="valid", bias=False,
                                                 parameterization="standard"), IMAGES),
    MomentCase("conv2d_orthogonal", conv(Conv2d, 2, 3, padding="same", b_std=0.1, init="orthogonal"), IMAGES),
    # transposed convolutions: every output pixel reads the upsampled input (zeros between the pixels)
    MomentCase("conv_transpose1d_same_s2", conv(ConvTranspose1d, 3, 3, stride=2, padding="same", w_std=1.2,
                                                b_std=0.3), SIGNALS),
    MomentCase("conv_transpose1d_valid_s3_standard", conv(ConvTranspose1d, 3, 2, stride=3, padding="valid",
                                                          b_std=0.2, parameterization="standard"), SIGNALS),
    MomentCase("conv_transpose2d_same_s21", conv(ConvTranspose2d, 2, 3, stride=(2, 1), padding="same"),
               SMALL_IMAGES),
    MomentCase("conv_transpose2d_valid_rect_nobias_standard", conv(
        ConvTranspose2d, 2, (2, 3), padding="valid", bias=False, parameterization="standard"), SMALL_IMAGES),
    MomentCase("flatten_linear", lambda w, g: nn.Sequential(nn.Flatten(), Linear(24, w, b_std=0.2, generator=g,
                                                                                 dtype=F64)), IMAGES),
    # pooling of deterministic images, then flatten (the walk drops the cross-pixel terms: a Diagonal op)
    MomentCase("avgpool_flatten_linear", lambda w, g: nn.Sequential(
        nn.AvgPool2d(2, stride=1), nn.Flatten(), Linear(12, w, w_std=1.5, generator=g, dtype=F64)), IMAGES),
    # parallel branches summed (independent weight layers: the channels stay i.i.d. draws). Products and
    # concatenations are checked against neural-tangents (tests/test_branches_nt.py): a product's own-parameter
    # NTK is random per channel, and a concatenation needs the next weight layer (whole instances as draws)
    MomentCase("parallel_sum_linear", lambda w, g: Parallel(Linear(5, w, b_std=0.2, generator=g, dtype=F64),
                                                            Linear(5, w, w_std=1.3, generator=g, dtype=F64)), VECTORS),
    MomentCase("parallel_sum_conv2d", lambda w, g: Parallel(
        Conv2d(2, w, 3, padding="same", generator=g, dtype=F64), Conv2d(2, w, 1, b_std=0.3, generator=g, dtype=F64)),
        IMAGES),
    # residual x + s f(x): the block mixes the channels, so whole blocks are the draws
    MomentCase("residual_linear", lambda w, g: Residual(Linear(w, w, b_std=0.3, generator=g, dtype=F64), scale=0.7),
               _deterministic((128,), 13), draws=3000, max_draws=3000, width=128, instances=True),
    # pooling and layer norm on Gaussian fields: the draws are the channels
    MomentCase("avgpool2d_2", fixed(lambda: nn.AvgPool2d(2)), _field((4, 4), 25)),
    MomentCase("avgpool2d_3_s1", fixed(lambda: nn.AvgPool2d(3, stride=1)), GAUSS_IMAGES),
    MomentCase("avgpool2d_rect_s", fixed(lambda: nn.AvgPool2d((2, 2), stride=(1, 2))), GAUSS_IMAGES),
    MomentCase("adaptive_avgpool2d", fixed(lambda: nn.AdaptiveAvgPool2d((1, 2))), GAUSS_IMAGES),
    MomentCase("avgpool1d_2", fixed(lambda: nn.AvgPool1d(2)), GAUSS_SIGNALS),
    MomentCase("avgpool1d_3_s2", fixed(lambda: nn.AvgPool1d(3, stride=2)), GAUSS_SIGNALS),
    MomentCase("adaptive_avgpool1d", fixed(lambda: nn.AdaptiveAvgPool1d(3)), GAUSS_SIGNALS),
    MomentCase("avgpool2d_3_s1_pad1", fixed(lambda: nn.AvgPool2d(3, stride=1, padding=1)), GAUSS_IMAGES),
    MomentCase("avgpool2d_3_pad1_exclude", fixed(lambda: nn.AvgPool2d(3, stride=(1, 2), padding=1,
                                                                       count_include_pad=False)), GAUSS_IMAGES),
    MomentCase("avgpool1d_3_s2_pad1_exclude", fixed(lambda: nn.AvgPool1d(3, stride=2, padding=1,
                                                                          count_include_pad=False)), GAUSS_SIGNALS),
    MomentCase("sumpool2d_2_s1", fixed(lambda: SumPool2d(2, stride=1)), GAUSS_IMAGES),
    MomentCase("sumpool2d_3_pad1", fixed(lambda: SumPool2d(3, stride=(1, 2), padding=1)), GAUSS_IMAGES),
    MomentCase("sumpool1d_3_s2_pad1", fixed(lambda: SumPool1d(3, stride=2, padding=1)), GAUSS_SIGNALS),
    MomentCase("global_avgpool2d", fixed(GlobalAvgPool), GAUSS_IMAGES),
    MomentCase("global_avgpool1d", fixed(GlobalAvgPool), GAUSS_SIGNALS),
    # layer norm: one draw of a huge number of channels (the limit is over the channels)
    MomentCase("layernorm", fixed(LayerNorm), GAUSS_VECTORS, **_ONE_DRAW),
    MomentCase("layernorm_eps", fixed(lambda: LayerNorm(eps=0.5)), GAUSS_VECTORS, **_ONE_DRAW),
    MomentCase("layernorm_mean", fixed(LayerNorm), GAUSS_VECTORS_MEAN, **_ONE_DRAW),
    MomentCase("layernorm_images_mean", fixed(lambda: LayerNorm(eps=0.1)), GAUSS_IMAGES_MEAN, **_ONE_DRAW),
    # over the channels and pixels of each example (normalized_shape = the whole example: it names the width)
    MomentCase("layernorm_all_signals", lambda w, g: LayerNorm((w, 3)), GAUSS_SHORT_SIGNALS, **_ONE_DRAW),
    MomentCase("layernorm_all_images_mean", lambda w, g: LayerNorm((w, 2, 2), eps=0.1), GAUSS_IMAGES_MEAN,
               **_ONE_DRAW),
    # activations on spatial fields (the full-layout broadcasting of the dual maps)
    MomentCase("act_relu_images", fixed(nn.ReLU), _field((2, 3), 26), draws=1_000_000, width=250_000),
    MomentCase("act_erf_signals", fixed(lambda: ActivationModule("erf")), GAUSS_SIGNALS, draws=400_000,
               width=200_000),
    # activations: every torch module type with a kernel, every registered name
    *[_act(name, m) for name, m in TORCH_ACTIVATIONS.items()],
    *[_named(name) for name in _distinct_names()],
    # tokens (N, L, C), sums over the spatial / token axes, graph aggregation, self-attention
    *TOKEN_GRAPH_CASES,
]
