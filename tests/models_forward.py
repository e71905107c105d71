"""Three CNNs written as plain ``nn.Module`` forwards (ResNet, DenseNet, U-Net blocks), and the same architectures
written with :class:`ntkit.nn.Parallel` / ``nn.Sequential``, sharing the modules.

``ntkit.infinite_kernel`` captures a forward with torch.fx (:mod:`ntkit.infinite.capture`); the ``*_as_parallel``
functions spell the same graph out by hand, for the kernels to be compared bit for bit
(``tests/test_models_forward.py``). :mod:`tests.arch_cases_forward` writes the same architectures as layer dicts
for neural-tangents (``benchmarks/nt_reference.py --forward``), whose kernels the captured forwards must match.

Every model takes ``width`` (the hidden channels ``n``: the limit is ``n -> infinity``), a ``generator`` for its
initialisation, ``dtype`` and ``device`` (``"meta"``: a description only). Input: ``(N, 2, 8, 8)`` images
(:data:`INPUT_SHAPE`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import ntkit

Tensor = torch.Tensor
C2, CT2, L, P = ntkit.nn.Conv2d, ntkit.nn.ConvTranspose2d, ntkit.nn.Linear, ntkit.nn.Parallel

#: One example's shape ``(C, H, W)``.
INPUT_SHAPE = (2, 8, 8)


def _kw(generator: torch.Generator | None, dtype: torch.dtype | None, device: Any) -> dict[str, Any]:
    return {"generator": generator, "dtype": dtype, "device": device}


class ResNet(nn.Module):
    """A stem, then two basic blocks with 1x1 projection shortcuts (each halves the image), GAP, a read-out.

    Block: ``relu(conv3x3(relu(conv3x3_s2(h))) + conv1x1_s2(h))`` (He et al. 2016, option B shortcuts). In the
    limit both summands end with fresh weights, so they are independent: ``K = K_main + K_short``.
    """

    def __init__(self, width: int = 8, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:
        super().__init__()
        kw, n = _kw(generator, dtype, device), width
        self.stem = C2(INPUT_SHAPE[0], n, 3, b_std=0.1, **kw)
        self.a1, self.b1 = C2(n, n, 3, stride=2, **kw), C2(n, n, 3, b_std=0.1, **kw)
        self.s1 = C2(n, n, 1, stride=2, **kw)
        self.a2, self.b2 = C2(n, n, 3, stride=2, b_std=0.1, **kw), C2(n, n, 3, **kw)
        self.s2 = C2(n, n, 1, stride=2, w_std=1.2, **kw)
        self.out = L(n, 1, b_std=0.1, **kw)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(self.b1(F.relu(self.a1(h))) + self.s1(h))
        h = F.relu(self.b2(F.relu(self.a2(h))) + self.s2(h))
        return self.out(h.mean((2, 3)))


def resnet_as_parallel(m: ResNet) -> nn.Module:
    """:class:`ResNet` spelled with ``Parallel(main, shortcut)`` (the same modules)."""
    blocks = [P(nn.Sequential(a, nn.ReLU(), b), s) for a, b, s in ((m.a1, m.b1, m.s1), (m.a2, m.b2, m.s2))]
    return nn.Sequential(m.stem, nn.ReLU(), blocks[0], nn.ReLU(), blocks[1], nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                         m.out)


class DenseNet(nn.Module):
    """A stem, then a dense block of three layers ``h <- cat([h, relu(conv3x3(h))], 1)`` (Huang et al. 2017), a 1x1
    transition convolution, GAP and a read-out.

    The growing ``h`` holds channel groups of different laws; each layer's convolution (and the transition) averages
    over them, so its kernel is the channel-weighted mean of the groups' kernels.
    """

    def __init__(self, width: int = 8, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:
        super().__init__()
        kw, n = _kw(generator, dtype, device), width
        growth = n // 2
        self.stem = C2(INPUT_SHAPE[0], n, 3, **kw)
        self.layers = nn.ModuleList(C2(n + i * growth, growth, 3, b_std=0.1 * i, **kw) for i in range(3))
        self.transition = C2(n + 3 * growth, n, 1, **kw)
        self.out = L(n, 1, **kw)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        for conv in self.layers:
            h = torch.cat([h, F.relu(conv(h))], dim=1)
        h = F.relu(self.transition(h))
        return self.out(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def densenet_as_parallel(m: DenseNet) -> nn.Module:
    """:class:`DenseNet` spelled with ``Parallel(nn.Identity(), layer, merge="concat")``."""
    grows = [P(nn.Identity(), nn.Sequential(conv, nn.ReLU()), merge="concat") for conv in m.layers]
    return nn.Sequential(m.stem, nn.ReLU(), *grows, m.transition, nn.ReLU(), ntkit.nn.GlobalAvgPool(), m.out)


class UNet(nn.Module):
    """One U-Net level (Ronneberger et al. 2015): ``s = relu(conv(x))``; down ``d = relu(conv(avg_pool2(s)))``; up
    ``u = conv_transpose_s2(d)``; ``relu(conv(cat([s, u], 1)))``, then GAP and a read-out.

    The skip ``s`` and the up path ``u`` depend on each other; a concatenation needs no independence (the next
    convolution averages over the two channel groups).
    """

    def __init__(self, width: int = 8, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:
        super().__init__()
        kw, n = _kw(generator, dtype, device), width
        self.enc = C2(INPUT_SHAPE[0], n, 3, b_std=0.1, **kw)
        self.down = C2(n, 2 * n, 3, **kw)
        self.up = CT2(2 * n, n, 2, 2, b_std=0.1, **kw)
        self.dec = C2(2 * n, n, 3, **kw)
        self.out = L(n, 1, **kw)

    def forward(self, x: Tensor) -> Tensor:
        s = F.relu(self.enc(x))
        d = F.relu(self.down(F.avg_pool2d(s, 2)))
        h = F.relu(self.dec(torch.cat([s, self.up(d)], dim=1)))
        return self.out(h.mean((2, 3)))


def unet_as_parallel(m: UNet) -> nn.Module:
    """:class:`UNet` spelled with ``Parallel(nn.Identity(), down_up, merge="concat")``."""
    down_up = nn.Sequential(nn.AvgPool2d(2), m.down, nn.ReLU(), m.up)
    return nn.Sequential(m.enc, nn.ReLU(), P(nn.Identity(), down_up, merge="concat"), m.dec, nn.ReLU(),
                         ntkit.nn.GlobalAvgPool(), m.out)


#: name -> (model class, its Parallel spelling).
MODELS: dict[str, tuple[type[nn.Module], Any]] = {
    "resnet": (ResNet, resnet_as_parallel),
    "densenet": (DenseNet, densenet_as_parallel),
    "unet": (UNet, unet_as_parallel),
}
