"""An independent high-precision (mpmath) reference for the infinite-width FC kernels.

Written from the textbook formulas with the correlation ``rho = c / sqrt(v1 v2)`` and ``arccos``,
not from ntkit's code: the ReLU arc-cosine kernel (Cho & Saul 2009), the erf kernel (Williams 1997)
and the identity. Every operation runs at 40 significant digits.
"""

from __future__ import annotations

from collections.abc import Callable

import mpmath as mp
import numpy as np

mp.mp.dps = 40

Maps = Callable[[mp.mpf, mp.mpf, mp.mpf], tuple[mp.mpf, mp.mpf]]


def _relu(v1: mp.mpf, c: mp.mpf, v2: mp.mpf) -> tuple[mp.mpf, mp.mpf]:
    if v1 == 0 or v2 == 0:
        return mp.mpf(0), mp.mpf(0)
    s = mp.sqrt(v1 * v2)
    rho = max(min(c / s, mp.mpf(1)), mp.mpf(-1))
    theta = mp.acos(rho)
    nngp = s / (2 * mp.pi) * (mp.sin(theta) + (mp.pi - theta) * mp.cos(theta))
    dot = (mp.pi - theta) / (2 * mp.pi)
    return nngp, dot


def _erf(v1: mp.mpf, c: mp.mpf, v2: mp.mpf) -> tuple[mp.mpf, mp.mpf]:
    nngp = 2 / mp.pi * mp.asin(2 * c / mp.sqrt((1 + 2 * v1) * (1 + 2 * v2)))
    dot = 4 / mp.pi / mp.sqrt((1 + 2 * v1) * (1 + 2 * v2) - 4 * c * c)
    return nngp, dot


def _identity(v1: mp.mpf, c: mp.mpf, v2: mp.mpf) -> tuple[mp.mpf, mp.mpf]:
    return c, mp.mpf(1)


MAPS: dict[str, Maps] = {"relu": _relu, "erf": _erf, "identity": _identity}


def reference_fc_kernels(
    x1: np.ndarray, x2: np.ndarray, *, depth: int, activation: str, beta: float, w_std: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """NNGP and NTK at every depth 0..depth, as float64 arrays of shape (N1, N2) (computed in mpmath)."""
    f = MAPS[activation]
    w2, b2 = mp.mpf(w_std) ** 2, mp.mpf(beta) ** 2
    n0 = x1.shape[1]
    a = [[mp.mpf(float(v)) for v in row] for row in x1]
    b = [[mp.mpf(float(v)) for v in row] for row in x2]

    def dot(u: list[mp.mpf], v: list[mp.mpf]) -> mp.mpf:
        return mp.fsum(p * q for p, q in zip(u, v, strict=True))

    v1 = [w2 * dot(u, u) / n0 + b2 for u in a]
    v2 = [w2 * dot(v, v) / n0 + b2 for v in b]
    cov = [[w2 * dot(u, v) / n0 + b2 for v in b] for u in a]
    ntk = [row[:] for row in cov]
    nngps = [np.array(cov, dtype=float)]
    ntks = [np.array(ntk, dtype=float)]
    for _ in range(depth):
        new_cov = []
        new_ntk = []
        for i in range(len(a)):
            row_c, row_t = [], []
            for j in range(len(b)):
                e, ed = f(v1[i], cov[i][j], v2[j])
                c_new = w2 * e + b2
                row_c.append(c_new)
                row_t.append(ntk[i][j] * w2 * ed + c_new)
            new_cov.append(row_c)
            new_ntk.append(row_t)
        v1 = [w2 * f(v, v, v)[0] + b2 for v in v1]
        v2 = [w2 * f(v, v, v)[0] + b2 for v in v2]
        cov, ntk = new_cov, new_ntk
        nngps.append(np.array(cov, dtype=float))
        ntks.append(np.array(ntk, dtype=float))
    return nngps, ntks
