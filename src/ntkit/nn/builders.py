"""Ready-made architectures as ordinary ``nn.Sequential`` models.

* :func:`fc`: the fully connected network of Jacot et al. (2018): ``depth`` hidden (weight,
  activation) layers and a weight read-out, all with the same ``w_std`` / ``b_std``.
* :func:`cntk`: the convolutional networks of Arora et al. (2019), "On exact computation with an
  infinitely wide neural net": ``depth`` 3x3 convolutions (stride 1, ``same`` padding) with ReLU,
  then a flattening read-out (CNTK-V) or global average pooling (CNTK-GAP) and a linear layer.
* :func:`myrtle`: the Myrtle networks of Shankar et al. (2020), "Neural kernels without
  tangents" (depth 5, 7 or 10): 3x3 convolutions with ReLU and 2x2 average pooling, as in
  neural-tangents' ``MyrtleNetwork``.

Every builder returns a trainable model; build it on ``device="meta"`` to describe the architecture
only (the infinite-width kernels of NTK-parameterized models do not depend on the widths).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_choice, check_int, describe
from ntkit.nn.linear import Conv2d, Linear
from ntkit.nn.structure import Activation, GlobalAvgPool


def fc(
    in_features: int,
    width: int = 512,
    out_features: int = 1,
    *,
    depth: int,
    activation: Any = "relu",
    w_std: float = 1.0,
    b_std: float = 0.0,
    parameterization: str = "ntk",
    init: str = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """A fully connected network: ``[Linear, Activation] * depth + [Linear]``.

    Parameters
    ----------
    in_features : int
    width : int
        Hidden width of every hidden layer.
    out_features : int
    depth : int
        Hidden layers (``>= 0``; 0 gives a linear model).
    activation : str, ntkit.DualActivation or callable
    w_std, b_std, parameterization, init, generator, device, dtype
        As in :class:`ntkit.nn.Linear` (every layer alike).

    Raises
    ------
    ValueError
        ``depth < 0``; ``in_features``, ``width`` or ``out_features`` below 1; an unknown activation
        name; bad layer options (as in :class:`ntkit.nn.Linear`).
    TypeError
        Sizes that are not integers; an activation that is neither a name nor callable; layer
        options of the wrong type (as in :class:`ntkit.nn.Linear`).

    Examples
    --------
    >>> import torch, ntkit
    >>> model = ntkit.nn.fc(2, depth=3, activation="relu", b_std=0.1, device="meta")
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> ntkit.infinite_kernel(model, x).ntk.shape
    torch.Size([4, 4])
    """
    depth = check_int(depth, "depth", minimum=0)
    widths = [check_int(in_features, "in_features", minimum=1), *([check_int(width, "width", minimum=1)] * depth),
              check_int(out_features, "out_features", minimum=1)]
    opts: dict[str, Any] = {"w_std": w_std, "b_std": b_std, "parameterization": parameterization, "init": init,
                            "generator": generator, "device": device, "dtype": dtype}
    layers: list[nn.Module] = []
    fn = Activation(activation).activation
    for i in range(len(widths) - 1):
        layers.append(Linear(widths[i], widths[i + 1], **opts))
        if i < len(widths) - 2:
            layers.append(Activation(fn))
    return nn.Sequential(*layers)


def _options(w_std: float, b_std: float, parameterization: str, init: str, generator: torch.Generator | None,
             device: torch.device | str | None, dtype: torch.dtype | None) -> dict[str, Any]:
    return {"w_std": w_std, "b_std": b_std, "parameterization": parameterization, "init": init,
            "generator": generator, "device": device, "dtype": dtype}


def cntk(
    in_channels: int,
    depth: int,
    *,
    readout: str = "gap",
    image_shape: tuple[int, int] | None = None,
    width: int = 128,
    out_features: int = 10,
    activation: Any = "relu",
    w_std: float = math.sqrt(2.0),
    b_std: float = 0.0,
    parameterization: str = "ntk",
    init: str = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """The convolutional network of Arora et al. (2019): ``depth`` x [3x3 conv, ReLU] + read-out.

    Parameters
    ----------
    in_channels : int
    depth : int
        Convolutional layers (``>= 1``).
    readout : {"gap", "flatten"}
        ``"gap"``: global average pooling then a linear layer (CNTK-GAP); ``"flatten"``: a linear layer
        on the flattened feature maps (CNTK-V, "vanilla"), which needs ``image_shape``.
    image_shape : (int, int), optional
        ``(H, W)`` of the inputs (only for ``readout="flatten"``: the read-out's input size).
    width : int
        Channels of every convolution (irrelevant to the NTK-parameterized limit).
    out_features : int
    activation, w_std, b_std, parameterization, init, generator, device, dtype
        As in :func:`fc`; ``w_std = sqrt(2)`` keeps ReLU activations at unit scale (He et al. 2015;
        Arora et al.'s ``c_sigma = 2``).

    Raises
    ------
    ValueError
        ``depth < 1``; ``in_channels``, ``width`` or ``out_features`` below 1; ``readout`` not
        ``"gap"`` / ``"flatten"``; ``readout="flatten"`` without an ``image_shape`` ``(H, W)`` of
        positive sizes; an unknown activation name; bad layer options (as in :class:`ntkit.nn.Linear`).
    TypeError
        Sizes that are not integers; an activation that is neither a name nor callable; layer options
        of the wrong type (as in :class:`ntkit.nn.Linear`).

    Examples
    --------
    >>> import torch, ntkit
    >>> model = ntkit.nn.cntk(1, depth=3, device="meta")
    >>> x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    >>> ntkit.infinite_kernel(model, x, which="ntk").shape
    torch.Size([3, 3])
    """
    in_channels = check_int(in_channels, "in_channels", minimum=1)
    depth = check_int(depth, "depth", minimum=1)
    width = check_int(width, "width", minimum=1)
    readout = check_choice(readout, "readout", ("gap", "flatten"))
    opts = _options(w_std, b_std, parameterization, init, generator, device, dtype)
    fn = Activation(activation).activation
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(depth):
        layers += [Conv2d(channels, width, 3, padding="same", **opts), Activation(fn)]
        channels = width
    if readout == "gap":
        layers += [GlobalAvgPool(), Linear(width, out_features, **opts)]
    else:
        if image_shape is None or len(image_shape) != 2:
            raise ValueError(f"image_shape: expected (H, W) for readout='flatten', got {describe(image_shape)}")
        h, w = (check_int(n, "image_shape", minimum=1) for n in image_shape)
        layers += [nn.Flatten(), Linear(width * h * w, out_features, **opts)]
    return nn.Sequential(*layers)


#: Convolutions per stage of the Myrtle networks (Shankar et al. 2020).
MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def myrtle(
    depth: int = 5,
    in_channels: int = 3,
    *,
    width: int = 128,
    out_features: int = 10,
    w_std: float = math.sqrt(2.0),
    b_std: float = 0.0,
    parameterization: str = "ntk",
    init: str = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """The Myrtle network of Shankar et al. (2020) of ``depth`` 5, 7 or 10.

    Three stages of [3x3 conv, ReLU] (2, 1, 1 / 2, 2, 2 / 3, 3, 3 convolutions), each followed by a
    2x2 average pooling with stride 2, then global average pooling and a linear read-out
    (neural-tangents' ``MyrtleNetwork`` pools 2x2 three more times and flattens, which is the same
    on 32x32 images; global pooling also serves 8x8 ones). Inputs need height and width divisible
    by 8.

    Parameters
    ----------
    depth : {5, 7, 10}
        Weight layers, the read-out included: stages of 2, 1, 1 / 2, 2, 2 / 3, 3, 3 convolutions.
    in_channels : int
    width : int
        Channels of every convolution (irrelevant to the NTK-parameterized limit).
    out_features : int
    w_std, b_std, parameterization, init, generator, device, dtype
        As in :func:`cntk` (``w_std = sqrt(2)`` keeps ReLU activations at unit scale).

    Raises
    ------
    ValueError
        ``depth`` not 5, 7 or 10; ``in_channels``, ``width`` or ``out_features`` below 1; bad layer
        options (as in :class:`ntkit.nn.Linear`).
    TypeError
        Sizes that are not integers; layer options of the wrong type (as in :class:`ntkit.nn.Linear`).

    Examples
    --------
    >>> import torch, ntkit
    >>> model = ntkit.nn.myrtle(5, in_channels=1, device="meta")
    >>> x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    >>> ntkit.infinite_kernel(model, x, which="nngp").shape
    torch.Size([2, 2])
    """
    if depth not in MYRTLE_STAGES:
        raise ValueError(f"depth: expected one of {sorted(MYRTLE_STAGES)}, got {depth!r}")
    in_channels = check_int(in_channels, "in_channels", minimum=1)
    width = check_int(width, "width", minimum=1)
    opts = _options(w_std, b_std, parameterization, init, generator, device, dtype)
    layers: list[nn.Module] = []
    channels = in_channels
    for convs in MYRTLE_STAGES[depth]:
        for _ in range(convs):
            layers += [Conv2d(channels, width, 3, padding="same", **opts), Activation("relu")]
            channels = width
        layers.append(nn.AvgPool2d(2, 2))
    layers += [GlobalAvgPool(), Linear(width, out_features, **opts)]
    return nn.Sequential(*layers)


__all__ = ["MYRTLE_STAGES", "cntk", "fc", "myrtle"]
