"""Fast path for smooth activations: the Mehler (Hermite) expansion of the Gaussian dual maps.

Maths
-----
Let ``h_k = He_k / sqrt(k!)`` be the normalised probabilists' Hermite polynomials
(``E[h_j(Z) h_k(Z)] = delta_jk`` for ``Z ~ N(0, 1)``) and, for a variance ``q >= 0``,

    a_k(q) = E[s(sqrt(q) Z) h_k(Z)],        sum_k a_k(q)^2 = ||s||_q^2 = E[s(sqrt(q) Z)^2]   (Parseval).

For ``(u, v) ~ N(0, [[q1, c], [c, q2]])`` write ``u = sqrt(q1) z1``, ``v = sqrt(q2) z2`` with standard
normals of correlation ``rho = c / sqrt(q1 q2)``. Mehler's formula ``E[h_j(z1) h_k(z2)] = delta_jk rho^k``
gives

    E[s(u) s(v)] = sum_k a_k(q1) a_k(q2) rho^k                                              (1)

(O'Donnell 2014, ch. 11; Daniely, Frostig & Singer 2016). Only the *diagonal* variances enter the
coefficients, so a kernel layer with ``N`` distinct variances needs ``N`` one-dimensional expansions,
after which (1) is a polynomial in ``rho`` evaluated entrywise (Horner). The derivative map
``E[s'(u) s'(v)]`` is (1) with the coefficients of ``s'``.

Truncation bound
----------------
With the Parseval tails ``T_K(q) = ||s||_q^2 - sum_{k<=K} a_k(q)^2``, Cauchy-Schwarz gives

    |sum_{k>K} a_k(q1) a_k(q2) rho^k| <= |rho|^(K+1) sqrt(T_K(q1) T_K(q2)).                 (2)

Each entry takes the smallest ``K <= max_terms - 1`` for which (2) plus the estimated error of the
coefficients stays below ``tol * ||s||_q1 ||s||_q2`` (``tol`` = 1e-13 in float64, 1e-8 otherwise).
Where no such ``K`` exists (``|rho| -> 1`` with a slowly converging expansion: steep or kinked
functions, very large variances) the entry is computed by ``fallback`` (the quadrature path) instead:
an inaccurate number is never returned silently. Exact duplicates ``c = q1 = q2`` take ``||s||_q^2``.

Coefficients
------------
``a_k(q)`` is ``int phi(z) s(sqrt(q) z) h_k(z) dz`` on ``[-13, 13]`` by composite Gauss-Legendre
(20 nodes per panel) on a fixed grid: panels of width 1/2 for ``|z| >= 1``, graded geometrically
towards 0 (``+-2^-j``, ``j <= J``) so that ``s(sqrt(q) z)``, which varies on the scale ``1/sqrt(q)``
around 0 (and may kink there), is resolved; the depth ``J(q)`` grows with ``log q`` in steps of 4, so
the rule of a variance never depends on the other variances of a call (up to ``J = 48``, ``q ~ 4.9e27``:
larger variances are not resolved, never certified, and go to the quadrature path, see
:func:`unresolved`). A plain Gauss-Hermite rule is
not used: it converges slowly for steep functions (``tanh`` of a large-variance input). Beyond
``|z| = 13`` Cramer's inequality ``|h_k(z)| <= 1.09 exp(z^2 / 4)`` bounds the neglected part of every
``a_k`` by ``0.44 int_{|z|>13} exp(-z^2/4) |s(sqrt(q) z)| dz`` (below 1e-18 for activations of
polynomial growth). The nodes are shared by all variances of a level, so the coefficients of all
variances are one matrix product with a cached table of ``w_j phi(z_j) h_k(z_j)``. The same
integrals with 16 nodes per panel give an error estimate, which enters the bound (and the tails).

Everything runs in float64 whatever the input dtype (the results are cast back); kinks are allowed
only at 0 (a grid point); activations with other breakpoints use the quadrature path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

Tensor = torch.Tensor
Evaluate = Callable[[Tensor], tuple[Tensor, ...]]
Fallback = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, ...]]

#: Largest number of Hermite terms (degree + 1) of the expansion of one entry.
MAX_TERMS = 256
#: Relative truncation target (w.r.t. ``||s||_q1 ||s||_q2``) by result dtype; others use 1e-8.
TOLERANCE = {torch.float64: 1e-13}
LIMIT = 13.0
STEP = 0.5
NODES = 20
CHECK_NODES = 16
MIN_LEVEL, LEVEL_STEP, MAX_LEVEL = 4, 4, 48
_U = 2.0**-53  # unit roundoff of float64
_ROWS = 2048  # variances per evaluation chunk
_ENTRIES = 2**20  # kernel entries per chunk
_F64 = torch.float64


def tolerance(dtype: torch.dtype) -> float:
    """The default relative target of the expansion for results of ``dtype``."""
    return TOLERANCE.get(dtype, 1e-8)


def grid_edges(level: int) -> np.ndarray:
    """Panel edges on ``[-13, 13]``: step 1/2 for ``|z| >= 1``, ``+-2^-j`` for ``j = 0..level``, and 0."""
    inner = [0.0] + [2.0**-j for j in range(level, -1, -1)]
    outer = np.arange(1.0 + STEP, LIMIT + STEP / 2, STEP)
    pos = np.concatenate([np.asarray(inner), outer])
    return np.concatenate([-pos[:0:-1], pos])


@lru_cache(maxsize=64)
def _rule(level: int, nodes: int, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes ``z`` (M,), weights ``w phi(z)`` (M,) and the table ``w phi(z) h_k(z)`` (M, terms)."""
    t, wt = np.polynomial.legendre.leggauss(nodes)
    edges = grid_edges(level)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    z = (edges[:-1, None] + half * (t + 1)).ravel()
    w = (half * wt).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    table = np.empty((z.size, terms))
    table[:, 0] = 1.0
    if terms > 1:
        table[:, 1] = z
    for k in range(1, terms - 1):  # h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1)
        table[:, k + 1] = (z * table[:, k] - math.sqrt(k) * table[:, k - 1]) / math.sqrt(k + 1)
    return z, w, table * w[:, None]


@lru_cache(maxsize=64)
def _torch_rule(level: int, nodes: int, terms: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.as_tensor(a, dtype=_F64, device=device) for a in _rule(level, nodes, terms))  # type: ignore[return-value]


def levels(var: Tensor) -> Tensor:
    """Grid depth ``J(q)``: the smallest multiple of 4 (>= 4) with ``2^-J <= 1 / (4 sqrt(q))`` (<= MAX_LEVEL)."""
    need = 2 + 0.5 * torch.log2(var.clamp_min(1e-300))
    lvl = torch.ceil(need / LEVEL_STEP) * LEVEL_STEP
    return lvl.clamp(MIN_LEVEL, MAX_LEVEL).to(torch.int64)


def unresolved(var: Tensor) -> Tensor:
    """``True`` where the deepest grid does not resolve ``s(sqrt(q) z)``: ``2^-MAX_LEVEL > 1 / (4 sqrt(q))``.

    From ``q ~ 4.9e27`` on the innermost panel ``[0, 2^-48]`` spans more than the scale ``1 / sqrt(q)`` on
    which the activation varies, and from ``q ~ 1e37`` a steep function (``tanh'``) vanishes on every node
    of it: both rules (20 and 16 nodes) then agree on a wrong value (0 for ``E[tanh'(u)^2]``, exact
    ``(4/3) / sqrt(2 pi q)``) and their difference cannot flag it. Such variances are never certified:
    their coefficients get an infinite error, so their entries (and norms) come from the quadrature path.
    """
    return 2 + 0.5 * torch.log2(var.clamp_min(1e-300)) > MAX_LEVEL


@dataclass(frozen=True)
class HermiteExpansion:
    """Normalised Hermite coefficients of ``s(sqrt(q) z)`` for ``Q`` variances ``q``.

    Attributes
    ----------
    coeffs : Tensor of shape (Q, terms)
        ``a_k(q) = E[s(sqrt(q) Z) h_k(Z)]`` (float64).
    norm2 : Tensor of shape (Q,)
        ``||s||_q^2 = E[s(sqrt(q) Z)^2]``.
    error : Tensor of shape (Q,)
        Estimated error of the coefficient vector relative to ``||s||_q`` (difference of the 20- and
        16-node rules, a pessimistic estimate); ``inf`` where ``s`` returned NaN/inf.
    log_tail : Tensor of shape (Q, terms)
        ``log sqrt(t_K)``, ``t_K`` a bound on ``T_K(q) / ||s||_q^2`` (tail after degree ``K``)
        including the estimated errors of the norm, the coefficients and rounding.
    """

    coeffs: Tensor
    norm2: Tensor
    error: Tensor
    log_tail: Tensor


def _evaluate_rows(evaluate: Evaluate, count: int, q: Tensor, z: Tensor) -> tuple[Tensor, ...]:
    x = q.sqrt()[:, None] * z[None, :]
    out = evaluate(x)
    if len(out) != count:  # pragma: no cover - internal contract
        raise AssertionError(f"expected {count} functions, got {len(out)}")
    return tuple(v.to(_F64) for v in out)


def _norms(values: Tensor, w: Tensor) -> Tensor:
    return (values * values * w).sum(-1)


def gaussian_norms(evaluate: Evaluate, var: Tensor, count: int = 1) -> list[tuple[Tensor, Tensor]]:
    """``(||s||_q^2, relative error estimate)`` per variance (any shape) for each of ``count`` functions.

    The same 1-D rule as :func:`hermite_expansions` (bitwise the same ``norm2`` for the same ``q``).
    """
    q = var.detach().to(_F64).clamp_min(0).reshape(-1)
    res = [(torch.empty_like(q), torch.empty_like(q)) for _ in range(count)]
    lvl = levels(q)
    for level in torch.unique(lvl).tolist():
        rows = torch.nonzero(lvl == level).flatten()
        zf, wf, _ = _torch_rule(level, NODES, 1, q.device)
        zc, wc, _ = _torch_rule(level, CHECK_NODES, 1, q.device)
        for start in range(0, rows.numel(), _ROWS):
            r = rows[start : start + _ROWS]
            vals = _evaluate_rows(evaluate, count, q[r], torch.cat([zf, zc]))
            deep = unresolved(q[r])
            for (n2, err), v in zip(res, vals, strict=True):
                fine = _norms(v[:, : zf.numel()], wf)
                coarse = _norms(v[:, zf.numel() :], wc)
                n2[r] = fine
                err[r] = torch.where(deep, math.inf, _relative(fine - coarse, fine))
    return [(n2.reshape(var.shape), err.reshape(var.shape)) for n2, err in res]


def _relative(diff: Tensor, norm2: Tensor) -> Tensor:
    """``|diff| / norm2`` (0 where both vanish, inf where not finite)."""
    out = torch.where(norm2 > 0, diff.abs() / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), diff.abs())
    return torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))


def hermite_expansions(
    evaluate: Evaluate, var: Tensor, count: int = 1, *, terms: int = MAX_TERMS
) -> list[HermiteExpansion]:
    """The first ``terms`` normalised Hermite coefficients of each of ``count`` functions at variances ``var`` (Q,).

    ``evaluate(x)`` returns the tuple ``(s_1(x), ..., s_count(x))`` elementwise.

    Examples
    --------
    >>> import torch
    >>> q = torch.tensor([1.0, 4.0], dtype=torch.float64)
    >>> (exp,) = hermite_expansions(lambda x: (x**3,), q, terms=6)  # x^3 = q^(3/2) (sqrt(6) h_3 + 3 h_1)
    >>> [round(v, 10) + 0.0 for v in exp.coeffs[1].tolist()]
    [0.0, 24.0, 0.0, 19.5959179423, 0.0, 0.0]
    """
    if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
        raise ValueError(f"terms: expected an integer >= 1, got {terms!r}")
    q = var.detach().to(_F64).clamp_min(0).reshape(-1)
    nq = q.numel()
    coeffs = [torch.empty(nq, terms, dtype=_F64, device=q.device) for _ in range(count)]
    norm2 = [torch.empty(nq, dtype=_F64, device=q.device) for _ in range(count)]
    e_coef = [torch.empty(nq, dtype=_F64, device=q.device) for _ in range(count)]
    e_norm = [torch.empty(nq, dtype=_F64, device=q.device) for _ in range(count)]
    lvl = levels(q)
    for level in torch.unique(lvl).tolist():
        rows = torch.nonzero(lvl == level).flatten()
        zf, wf, tf = _torch_rule(level, NODES, terms, q.device)
        zc, wc, tc = _torch_rule(level, CHECK_NODES, terms, q.device)
        mf = zf.numel()
        for start in range(0, rows.numel(), _ROWS):
            r = rows[start : start + _ROWS]
            vals = _evaluate_rows(evaluate, count, q[r], torch.cat([zf, zc]))
            deep = unresolved(q[r])
            for i, v in enumerate(vals):
                fine, coarse = v[:, :mf], v[:, mf:]
                n2 = _norms(fine, wf)
                a = fine @ tf
                diff = torch.linalg.vector_norm(a - coarse @ tc, dim=-1)
                coeffs[i][r] = a
                norm2[i][r] = n2
                e_norm[i][r] = _relative(n2 - _norms(coarse, wc), n2)
                e_coef[i][r] = torch.where(deep, math.inf, _relative(diff, n2.sqrt()))
    out = []
    k = torch.arange(terms, dtype=_F64, device=q.device)
    for a, n2, ec, en in zip(coeffs, norm2, e_coef, e_norm, strict=True):
        bad = ~torch.isfinite(a).all(-1) | ~torch.isfinite(n2) | ~torch.isfinite(ec + en)
        ec = torch.where(bad, torch.full_like(ec, math.inf), ec)
        # T_K = (||s||^2 - sum_{k<=K_max} a_k^2) + sum_{K<k<=K_max} a_k^2: one subtraction, then small positive terms
        sq = a * a
        beyond = n2 - sq.sum(-1)
        rev = sq.flip(-1).cumsum(-1).flip(-1)  # rev[K] = sum_{k >= K} a_k^2
        after = torch.cat([rev[:, 1:], torch.zeros_like(rev[:, :1])], dim=-1)
        safe = torch.where(n2 > 0, n2, torch.ones_like(n2))[:, None]
        rel = ((beyond[:, None] + after) / safe).clamp_min(0) * (1 + (k + 2) * _U)
        floor = (en + 2 * ec + ec * ec + 4 * _U)[:, None]
        tail = rel + floor
        log_tail = (0.5 * torch.log(tail)).cummin(dim=-1).values  # T_K is non-increasing: still a bound
        zero = (n2 == 0) & ~bad  # s vanishes on every node: all coefficients are exactly 0
        log_tail = torch.where(zero[:, None], torch.full_like(log_tail, -math.inf), log_tail)
        log_tail = torch.where(bad[:, None], torch.zeros_like(log_tail), log_tail)
        ec = torch.where(zero, torch.zeros_like(ec), ec)
        out.append(HermiteExpansion(coeffs=a, norm2=n2, error=ec, log_tail=log_tail))
    return out


@dataclass(frozen=True)
class MehlerInfo:
    """What one call of :func:`mehler_expectations` did.

    Attributes
    ----------
    entries : int
        Kernel entries (broadcast size).
    terms : int
        Largest number of Hermite terms any entry used (``K + 1``; 0 if none).
    fallback : int
        Entries computed by the fallback (quadrature) because the bound could not be met with
        ``max_terms`` terms (counted once per entry, for any of the maps).
    duplicates : int
        Entries with ``c = q1 = q2`` (value ``||s||_q^2``).
    """

    entries: int
    terms: int
    fallback: int
    duplicates: int


#: Lookup of degrees by ``s = -log|rho|``: column 0 is ``s = 0``, columns ``1..`` are ``s_j`` geometric in
#: ``[_S_MIN, _S_MAX]`` (4 % apart); an entry uses the column of the largest ``s_j <= s`` (conservative).
_S_MIN, _S_MAX, _S_BINS = 1e-17, 64.0, 1024
_S_LOG_STEP = math.log(_S_MAX / _S_MIN) / (_S_BINS - 1)


def _degree_table(exp: HermiteExpansion, tol: float) -> Tensor:
    """``D[q, j]``: the first degree ``K`` with ``|rho|^(K+1) t_K(q) <= b`` for ``-log|rho| = s_j`` (``W`` if none).

    ``b = tol - 2 e - e^2`` with ``e`` the largest coefficient error among the resolved variances
    (``e <= tol / 8``), so ``b`` is below every resolved entry's budget. With ``s = -log|rho|`` the
    condition reads ``s >= S_q[K] = (2 log sqrt(t_K(q)) - log b) / (K + 1)``, non-increasing in ``K``
    (the tails are), so ``D`` is a row-wise ``searchsorted``. Shape (Q, bins + 1).
    """
    lt = exp.log_tail
    nq, width = lt.shape
    good = exp.error[exp.error <= tol / 8]
    e_max = float(good.max()) if good.numel() else tol / 8
    log_b = math.log(tol - 2 * e_max - e_max * e_max)
    k = torch.arange(1, width + 1, dtype=_F64, device=lt.device)
    need = ((2 * lt - log_b) / k).cummin(dim=1).values  # S_q[K], non-increasing in K
    grid = torch.cat(
        [torch.zeros(1, dtype=_F64, device=lt.device), _S_MIN * torch.exp(_S_LOG_STEP * k.new_tensor(range(_S_BINS)))]
    )
    # first K with S_q[K] <= s  <=>  first K with -S_q[K] >= -s (ascending rows)
    return torch.searchsorted((-need).contiguous(), (-grid).expand(nq, -1).contiguous())


def _terms_needed(
    rho_abs: Tensor, budget: Tensor, exp: HermiteExpansion, table: Tensor, a: Tensor, b: Tensor, ok: Tensor
) -> tuple[Tensor, Tensor]:
    """Per entry a degree ``K`` with ``|rho|^(K+1) sqrt(t_K(q_a) t_K(q_b)) <= budget``, and whether one exists.

    Since ``sqrt(t_a t_b) <= max(t_a, t_b)``, ``K = max(K_a, K_b)`` works, ``K_q`` read from the
    :func:`_degree_table` at the grid point below the entry's ``s = -log|rho|`` (more terms, never
    fewer). Entries this misses are checked exactly (``sqrt(t_a t_b)``, own budget) at the largest degree.
    """
    width = exp.log_tail.shape[1]
    s = -torch.log(rho_abs)
    col = torch.floor(torch.log(s / _S_MIN) / _S_LOG_STEP).clamp(-1, _S_BINS - 1)
    col = torch.where(torch.isnan(col), torch.zeros_like(col), col).to(torch.int64) + 1  # s = 0 -> column 0
    cols = table.shape[1]
    flat = table.reshape(-1)
    k_e = torch.maximum(flat[a * cols + col], flat[b * cols + col])
    fits = ok & (k_e < width)
    rest = torch.nonzero(ok & ~fits).flatten()
    k_e = k_e.clamp_max(width - 1)
    if rest.numel():
        top = width - 1
        lt = exp.log_tail.reshape(-1)
        val = (top + 1) * torch.log(rho_abs[rest]) + lt[a[rest] * width + top] + lt[b[rest] * width + top]
        fits[rest] = val <= torch.log(budget[rest].clamp_min(1e-300))
    return k_e, fits


def _horner(coeffs_t: Tensor, rho: Tensor, a: Tensor, b: Tensor, k_e: Tensor) -> Tensor:
    """``sum_{k <= K_e} C[k, a] C[k, b] rho^k`` per entry, each with its own degree ``K_e``.

    Entries are sorted by decreasing degree, so that step ``k`` of Horner's rule updates a prefix.
    """
    out = torch.zeros_like(rho)
    if rho.numel() == 0:
        return out
    small = torch.int16 if int(k_e.max()) < 2**15 else torch.int64
    order = torch.sort((-k_e).to(small), stable=True).indices  # decreasing degree (radix sort)
    index = torch.int32 if coeffs_t.shape[1] < 2**31 else torch.int64
    r, ia, ib, ks = rho[order], a[order].to(index), b[order].to(index), k_e[order]
    top = int(ks[0])
    active = torch.bincount(ks, minlength=top + 1).flip(0).cumsum(0).flip(0).tolist()  # entries with K_e >= k
    acc = torch.zeros_like(r)
    for k in range(top, -1, -1):
        n = active[k]
        row = coeffs_t[k]
        part = acc[:n]
        part.mul_(r[:n]).addcmul_(row.index_select(0, ia[:n]), row.index_select(0, ib[:n]))
    out[order] = acc
    return out


def _distinct(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted distinct values of two 1-D tensors and the index of every element into them.

    Cheap for the layouts of the kernel recursion: runs of equal values and a second tensor whose
    values all occur in the first (no sort of the full tensors).
    """
    r1, inv1 = torch.unique_consecutive(x1, return_inverse=True)
    r2, inv2 = torch.unique_consecutive(x2, return_inverse=True)
    small, big = (r1, r2) if r1.numel() <= r2.numel() else (r2, r1)
    qs = torch.unique(small)
    pos = torch.searchsorted(qs, big).clamp_max(max(qs.numel() - 1, 0))
    if qs.numel() == 0 or not torch.equal(qs[pos], big):
        qs = torch.unique(torch.cat([r1, r2]))
    return qs, torch.searchsorted(qs, r1)[inv1], torch.searchsorted(qs, r2)[inv2]


def mehler_expectations(
    evaluate: Evaluate,
    count: int,
    var1: Tensor,
    cov: Tensor,
    var2: Tensor,
    *,
    fallback: Fallback,
    tol: float | None = None,
    max_terms: int = MAX_TERMS,
) -> tuple[list[Tensor], MehlerInfo]:
    """``[E[s_i(u) s_i(v)]]_i`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])`` by the Mehler expansion (1).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(x) -> (s_1(x), ..., s_count(x))`` elementwise (e.g. the activation and its derivative).
    count : int
        Number of functions returned by ``evaluate``.
    var1, cov, var2 : Tensor
        Broadcastable to a common shape ``S``.
    fallback : callable
        ``fallback(var1, cov, var2) -> tuple of count tensors``: the expectations of the entries (1-D
        tensors in the input dtype) where the truncation bound (2) cannot be met with ``max_terms``
        terms, or where the coefficients are not resolved; typically the quadrature path.
    tol : float, optional
        Relative target w.r.t. ``||s||_q1 ||s||_q2`` (default :func:`tolerance` of the result dtype).
    max_terms : int
        Largest number of Hermite terms per entry (``>= 1``).

    Returns
    -------
    list of ``count`` tensors of shape ``S`` (the inputs' dtype), and a :class:`MehlerInfo`.

    Examples
    --------
    >>> import torch
    >>> one = torch.ones((), dtype=torch.float64)
    >>> quad = lambda v1, c, v2: (torch.zeros_like(c),)  # never called here
    >>> (e,), info = mehler_expectations(lambda x: (x**2,), 1, one, 0.5 * one, one, fallback=quad)
    >>> round(float(e), 12), info.fallback  # E[u^2 v^2] = 1 + 2 c^2
    (1.5, 0)
    """
    if isinstance(max_terms, bool) or not isinstance(max_terms, int) or max_terms < 1:
        raise ValueError(f"max_terms: expected an integer >= 1, got {max_terms!r}")
    shape = torch.broadcast_shapes(var1.shape, cov.shape, var2.shape)
    dtype = torch.promote_types(torch.promote_types(var1.dtype, cov.dtype), var2.dtype)
    tol = tolerance(dtype) if tol is None else float(tol)
    if not 0 < tol < 1:
        raise ValueError(f"tol: expected a float in (0, 1), got {tol!r}")
    device = cov.device
    q1o = var1.detach().to(_F64).clamp_min(0)
    q2o = var2.detach().to(_F64).clamp_min(0)
    qs, j1, j2 = _distinct(q1o.reshape(-1), q2o.reshape(-1))
    i1_all = j1.reshape(q1o.shape).expand(shape).reshape(-1)
    i2_all = j2.reshape(q2o.shape).expand(shape).reshape(-1)
    c_all = cov.detach().to(_F64).expand(shape).reshape(-1)
    exps = hermite_expansions(evaluate, qs, count, terms=max_terms)
    tables = [e.coeffs.T.contiguous() for e in exps]  # (terms, Q): one row per degree
    degrees = [_degree_table(e, tol) for e in exps]
    total = c_all.numel()
    results = [torch.empty(total, dtype=_F64, device=device) for _ in range(count)]
    fb_maps = [torch.zeros(total, dtype=torch.bool, device=device) for _ in range(count)]
    used, dups = 0, 0
    for start in range(0, total, _ENTRIES):
        sl = slice(start, start + _ENTRIES)
        i1, i2, c = i1_all[sl], i2_all[sl], c_all[sl]
        q1, q2 = qs[i1], qs[i2]
        dup = (c == q1) & (q1 == q2)
        den = q1.sqrt() * q2.sqrt()
        rho_abs = (c.abs() / torch.where(den > 0, den, torch.ones_like(den))).clamp_max(1.0)
        rho_abs = torch.where(den > 0, rho_abs, torch.zeros_like(rho_abs))
        rho = torch.copysign(rho_abs, c)
        dups += int(dup.sum())
        for m, (exp, table, degree) in enumerate(zip(exps, tables, degrees, strict=True)):
            e1, e2 = exp.error[i1], exp.error[i2]
            budget = tol - (e1 + e2 + e1 * e2)  # truncation allowance after the coefficient errors
            resolved = (e1 <= tol / 8) & (e2 <= tol / 8)  # else: the 1-D rule is not trusted
            k_e, fits = _terms_needed(rho_abs, budget, exp, degree, i1, i2, resolved & ~dup)
            dup_ok = dup & resolved
            res = results[m][sl]
            res[dup_ok] = exp.norm2[i1[dup_ok]]
            idx = torch.nonzero(fits).flatten()
            if idx.numel():
                res[idx] = _horner(table, rho[idx], i1[idx], i2[idx], k_e[idx])
                used = max(used, int(k_e[idx].max()) + 1)
            fb_maps[m][sl] = ~(fits | dup_ok)
    need_fb = fb_maps[0].clone()
    for mask in fb_maps[1:]:
        need_fb |= mask
    fb_idx = torch.nonzero(need_fb).flatten()
    if fb_idx.numel():
        v1 = var1.expand(shape).reshape(-1)[fb_idx]
        cc = cov.expand(shape).reshape(-1)[fb_idx]
        v2 = var2.expand(shape).reshape(-1)[fb_idx]
        values = fallback(v1, cc, v2)
        for res, val, mask in zip(results, values, fb_maps, strict=True):
            take = mask[fb_idx]
            res[fb_idx[take]] = val.to(_F64)[take]
    info = MehlerInfo(entries=total, terms=used, fallback=int(fb_idx.numel()), duplicates=dups)
    return [r.reshape(shape).to(dtype) for r in results], info
