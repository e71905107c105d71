"""The architecture description: NTK-parameterized torch modules, and ready-made models.

A model built from these layers (and the standard torch modules listed below) is an ordinary
``torch.nn.Module``: train it, take its empirical NTK with :func:`ntkit.empirical_ntk`, and get the
exact infinite-width NNGP / NTK of its architecture with :func:`ntkit.infinite_kernel` — from the
same object.

Layers: :class:`Linear`, :class:`Conv1d`, :class:`Conv2d`, :class:`ConvTranspose1d`, :class:`ConvTranspose2d`
(NTK or standard parameterization, Gaussian or orthogonal init; the transposed convolutions are
neural-tangents' ``ConvTranspose``), :class:`Activation`, :class:`Residual`, :class:`Parallel` (branches
merged by a sum, a concatenation along channels or a product), :class:`LayerNorm`,
:class:`GlobalAvgPool`, :class:`SumPool1d`, :class:`SumPool2d` (the sum over a window, neural-tangents'
``SumPool``), :class:`SelfAttention` (multi-head self-attention on tokens ``(N, L, C)``, neural-tangents'
``GlobalSelfAttention``). Standard torch modules understood by :func:`ntkit.infinite_kernel`: the
activation modules with a Gaussian dual map (``nn.ReLU``, ``nn.LeakyReLU``, ``nn.Tanh``,
``nn.Sigmoid``, ``nn.GELU``, ``nn.SiLU``, ``nn.Softplus``, ``nn.ELU``, ``nn.SELU``, ``nn.Mish``,
``nn.ReLU6``, ``nn.Hardtanh``, ...), ``nn.AvgPool1d/2d`` (also with ``padding`` and either
``count_include_pad``), ``nn.AdaptiveAvgPool1d/2d``,
``nn.Flatten``, ``nn.Identity``, ``nn.Dropout`` (in eval mode) and nested ``nn.Sequential``.

Builders: :func:`fc`, :func:`cntk` (Arora et al. 2019), :func:`myrtle` (Shankar et al. 2020).

>>> import torch, ntkit
>>> model = torch.nn.Sequential(ntkit.nn.Linear(3, 512), torch.nn.ReLU(), ntkit.nn.Linear(512, 1))
>>> x = torch.randn(5, 3)
>>> ntkit.empirical_ntk(model, x).shape, ntkit.infinite_kernel(model, x).ntk.shape
(torch.Size([5, 5, 1, 1]), torch.Size([5, 5]))
"""

from ntkit.nn._init import orthogonal_
from ntkit.nn.aggregate import Aggregate
from ntkit.nn.attention import SelfAttention
from ntkit.nn.branches import Parallel
from ntkit.nn.builders import cntk, fc, myrtle
from ntkit.nn.conv_transpose import ConvTranspose1d, ConvTranspose2d
from ntkit.nn.linear import Conv1d, Conv2d, Linear
from ntkit.nn.pooling import SumPool1d, SumPool2d
from ntkit.nn.structure import Activation, GlobalAvgPool, LayerNorm, Residual

__all__ = [
    "Activation",
    "Aggregate",
    "Conv1d",
    "Conv2d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "GlobalAvgPool",
    "LayerNorm",
    "Linear",
    "Parallel",
    "Residual",
    "SelfAttention",
    "SumPool1d",
    "SumPool2d",
    "cntk",
    "fc",
    "myrtle",
    "orthogonal_",
]
