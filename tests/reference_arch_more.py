r"""More layers of the high-precision reference of ``tests/reference_arch.py``: transposed convolutions and
layer norm over whole examples, written from the textbook definitions (not from ntkit's code).

* Transposed convolution (``{"op": "convtranspose"}``; ``lax.conv_transpose`` as neural-tangents'
  ``ConvTranspose`` uses it): per spatial axis of size ``n``, filter ``k``, stride ``s``, the input is
  upsampled, ``u(pad_a + s i) = x(i)`` and zeros elsewhere, and a stride-1 convolution reads
  ``u(q + t)`` with tap ``t < k``. Output size and ``pad_a``: "same" ``n s`` and ``k - 1`` when
  ``s >= k``, else ``ceil((k + s - 2) / 2)``; "valid" ``n s + max(k - s, 0)`` and ``k - 1``. So output
  pixel ``q`` reads, through tap ``t``, input pixel ``i = (q + t - pad_a) / s`` when that is an integer
  in ``[0, n)``, and nothing (a zero) otherwise: the layer is a convolution with these taps, and its
  kernels are those of :mod:`tests.reference_arch`'s conv (``mean_t`` over all ``k`` taps per axis, the
  zero taps included; the same ``w²``, ``b²``, NTK / standard parameterization, ``fan_in = C_in |F|``).
* Layer norm over the channels and pixels of each example (``{"op": "layernorm", "axes": "all"}``):
  the empirical mean and variance over ``C`` channels and ``P`` pixels tend to ``μ = mean_p m(p)`` and
  ``V = mean_p var(x, p) - μ²`` (``m`` the channel mean, 0 for a centred input), so, per pixel pair::

      K'(p, p') = (K(p, p') - μ m'(p') - m(p) μ' + μ μ') / sqrt((ε + V)(ε + V')),
      Θ'(p, p') = Θ(p, p') / sqrt((ε + V)(ε + V')),

  the terms of ``(h(p) - μ)(h'(p') - μ')`` averaged over the channels.
"""

from __future__ import annotations

import itertools
from typing import Any

Mpf = Any


def _pad_before(k: int, s: int, padding: str) -> tuple[int, int]:
    """``(out_per_input, pad_a)``: lax.conv_transpose's padding of one axis (see the module notes)."""
    if padding == "same":
        return 0, (k - 1 if s >= k else (k + s - 1) // 2)  # ceil((k + s - 2) / 2)
    if padding == "valid":
        return max(k - s, 0), k - 1
    raise ValueError(f"transposed convolution: unknown padding {padding!r}")


def _axis_taps(n: int, k: int, s: int, padding: str) -> list[list[int]]:
    """Per output index, the input index each tap reads (-1: an inserted or padded zero)."""
    extra, pad_a = _pad_before(k, s, padding)
    rows = []
    for q in range(n * s + extra):
        row = []
        for t in range(k):
            j = q + t - pad_a
            row.append(j // s if j >= 0 and j % s == 0 and j // s < n else -1)
        rows.append(row)
    return rows


def transpose_taps(shape: tuple[int, ...], filt: tuple[int, ...], stride: tuple[int, ...],
                   padding: str) -> tuple[list[list[int]], tuple[int, ...]]:
    """Per output pixel (row-major), the input pixel each filter tap reads (-1: zero), and the output shape."""
    if not len(filt) == len(stride) == len(shape):
        raise ValueError(f"filter {filt} / stride {stride} do not match the spatial shape {shape}")
    axes = [_axis_taps(n, k, s, padding) for n, k, s in zip(shape, filt, stride, strict=True)]
    out_shape = tuple(len(a) for a in axes)
    taps = []
    for q in itertools.product(*(range(n) for n in out_shape)):
        row = []
        for t in itertools.product(*(range(k) for k in filt)):
            idx = [axes[a][q[a]][t[a]] for a in range(len(shape))]
            flat = 0
            for i, n in zip(idx, shape, strict=True):
                flat = flat * n + i
            row.append(-1 if min(idx, default=0) < 0 else flat)
        taps.append(row)
    return taps, out_shape


def normalises_examples(layer: dict[str, Any]) -> bool:
    """Whether a ``layernorm`` layer normalises whole examples (channels and pixels)."""
    return layer.get("axes") == "all"


def _example_moments(ctx: Any, var: dict[int, Mpf], mean: dict[int, Mpf] | None, n: int) -> tuple[Mpf, Mpf]:
    """``(V, μ)`` of one example from its per-pixel variances and channel means (every pixel recorded)."""
    second = ctx.fsum([var[p] for p in range(n)]) / n
    if mean is None:
        return second, ctx.mpf(0)
    mu = ctx.fsum([mean[p] for p in range(n)]) / n
    return second - mu * mu, mu


def layernorm_examples(ctx: Any, eps: Mpf, rec1: tuple[dict[int, Mpf], dict[int, Mpf] | None],
                       rec2: tuple[dict[int, Mpf], dict[int, Mpf] | None], n: int, targets: list[int] | set[int],
                       nn: dict[int, Mpf], nt: dict[int, Mpf]) -> tuple[dict[int, Mpf], dict[int, Mpf]]:
    """The layer norm over whole examples on the pixel pairs ``targets`` (``rec``: per-pixel variances and
    channel means of the two inputs; ``n`` pixels)."""
    (var1, mean1), (var2, mean2) = rec1, rec2
    v1, mu1 = _example_moments(ctx, var1, mean1, n)
    v2, mu2 = _example_moments(ctx, var2, mean2, n)
    scale = ctx.sqrt((eps + v1) * (eps + v2))
    new_nn, new_nt = {}, {}
    for pr in targets:
        p1, p2 = divmod(pr, n)
        k = nn[pr]
        if mean1 is not None and mean2 is not None:
            k = k - mu1 * mean2[p2] - mean1[p1] * mu2 + mu1 * mu2
        new_nn[pr] = k / scale
        new_nt[pr] = nt[pr] / scale
    return new_nn, new_nt


__all__ = ["layernorm_examples", "normalises_examples", "transpose_taps"]
