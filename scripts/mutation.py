#!/usr/bin/env python
"""Mutation testing of the kernel maths (issue 24, item 4): a small AST mutation runner, not part of CI.

Each target module is mutated one change at a time and its fast test subset is run against the
mutant; a mutant is *killed* when a test fails (or the module no longer imports), *survives* when
the subset passes, and *times out* when the subset runs past its limit (a hang caught: counted as
detected, listed separately). Mutants on lines that the subset never executes are not run: they
survive ("not covered"), measured once by tracing the unmutated run.

Nothing is written under ``src/``: every run first copies ``src/``, ``tests/`` and ``pyproject.toml``
to a temporary snapshot, and a mutant is loaded from the mutated syntax tree by an import hook in a
forked child (the parent imports torch, numpy, scipy, mpmath and pytest once; the child imports
ntkit and the tests afresh, with the target module compiled from the mutant). Line numbers are
those of the original file.

Speed: one traced run of the unmutated subset records which lines each test executes; a mutant then
runs only the tests that execute its statement (all of them for lines run at import), in the
subset's order, stopping at the first failure (``-x``). Existing tests come first in every subset,
so a mutant whose first failing test is a new one survived all the existing tests of its subset.
Existing tests that already fail on the unmutated code (work in progress in a shared tree) are left
out with a warning and recorded in the results.

A mutant's key is ``target:function:+line-offset-in-function:column:operator``; a stored result stays
valid while its function's syntax tree is unchanged (edits elsewhere in the file keep it).

Operators: ``+ - * / // % ** @ & |`` swapped (``+ <-> -``, ``* <-> /``, ``** -> *``, ...), comparisons
moved across their boundary or negated (``< <-> <=``, ``== <-> !=``, ``is <-> is not``, ``in <-> not in``),
``and <-> or``, unary ``-`` / ``not`` removed, numbers perturbed (``n -> n + 1``, ``c -> c + 1.0``),
``True <-> False``, strings changed (``"s" -> "XXsXX"``), ``return x -> return None``, and simple
statements (assignments, calls) deleted. Not mutated: docstrings, type annotations, f-strings,
``raise`` and ``assert`` statements, ``__repr__``, ``__all__``.

Usage (from the repository root; one worker process, as the machine is shared)::

    nice -n 10 .venv/bin/python scripts/mutation.py --list                 # targets and mutant counts
    nice -n 10 .venv/bin/python scripts/mutation.py --module ops           # run one target (or "all")
    nice -n 10 .venv/bin/python scripts/mutation.py --module all --resume  # skip mutants already in the results
    nice -n 10 .venv/bin/python scripts/mutation.py --module all --resume --rerun survived,timeout
    nice -n 10 .venv/bin/python scripts/mutation.py --module ops --sample 0.2        # a nested, deterministic sample
    nice -n 10 .venv/bin/python scripts/mutation.py --report               # rewrite benchmarks/results/mutation.md

The runner is self-contained (standard library, plus the project's test dependencies in the venv);
no mutation package is needed. Results: ``benchmarks/results/mutation.jsonl`` (one JSON object per
mutant run, the latest per mutant wins; rows of an older version of the source are ignored) and the
summary ``benchmarks/results/mutation.md``. Mutants judged equivalent are listed in
:data:`EQUIVALENT` with the reason.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.abc
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation.jsonl"
REPORT = ROOT / "benchmarks" / "results" / "mutation.md"


@dataclass(frozen=True)
class Target:
    """One mutated module and the tests run against its mutants (existing tests first, the new ones last)."""

    name: str
    group: str
    path: str
    module: str
    tests: tuple[str, ...]
    #: Only these functions / methods (``"name"`` or ``"Class.method"``); None: the whole module.
    functions: tuple[str, ...] | None = None
    #: Extra pytest arguments (e.g. ``-k`` selections).
    extra: tuple[str, ...] = ()


INF_EXISTING = (
    "tests/test_infinite_exact.py::test_architectures_match_mpmath[fc_relu_d1]",
    "tests/test_infinite_exact.py::test_architectures_match_mpmath[conv1d_same]",
    "tests/test_infinite_exact.py::test_architectures_match_mpmath[conv_same_stride2]",
)
NEW_INF = "tests/test_ops_exact.py"
NEW_ACT = "tests/test_closed_form_exact.py"
NEW_SOLVE = "tests/test_solve_exact.py"

TARGETS = {
    t.name: t
    for t in (
        Target("base", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/base.py",
               "ntkit.infinite.ops.base", (*INF_EXISTING, NEW_INF)),
        Target("dense", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/dense.py",
               "ntkit.infinite.ops.dense", (*INF_EXISTING, NEW_INF)),
        Target("conv", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/conv.py",
               "ntkit.infinite.ops.conv", (*INF_EXISTING, NEW_INF)),
        Target("pointwise", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/pointwise.py",
               "ntkit.infinite.ops.pointwise", (*INF_EXISTING, NEW_INF)),
        Target("layer_norm", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/layer_norm.py",
               "ntkit.infinite.ops.layer_norm", (*INF_EXISTING, NEW_INF)),
        Target("flatten", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/flatten.py",
               "ntkit.infinite.ops.flatten", (*INF_EXISTING, NEW_INF)),
        Target("global_pool", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/global_pool.py",
               "ntkit.infinite.ops.global_pool", (*INF_EXISTING, NEW_INF)),
        Target("avg_pool", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/avg_pool.py",
               "ntkit.infinite.ops.avg_pool", (*INF_EXISTING, NEW_INF)),
        Target("diagonal", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/diagonal.py",
               "ntkit.infinite.ops.diagonal", (*INF_EXISTING, NEW_INF)),
        Target("residual", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/residual.py",
               "ntkit.infinite.ops.residual", (*INF_EXISTING, NEW_INF)),
        Target("stencil", "infinite-width ops + reference evaluator", "src/ntkit/infinite/ops/stencil.py",
               "ntkit.infinite.ops.stencil", (*INF_EXISTING, NEW_INF)),
        Target("reference", "infinite-width ops + reference evaluator", "src/ntkit/infinite/reference.py",
               "ntkit.infinite.reference", (*INF_EXISTING, NEW_INF)),
        Target("closed_form", "closed-form activations", "src/ntkit/activations/closed_form.py",
               "ntkit.activations.closed_form",
               ("tests/test_activations_reference.py::test_closed_form_recursion_matches_mpmath[relu]",
                "tests/test_activations_reference.py::test_closed_form_recursion_matches_mpmath[erf]", NEW_ACT)),
        Target("cg", "CG / Cholesky solvers", "src/ntkit/solve/cg.py", "ntkit.solve.cg",
               ("tests/test_solve_cg.py", NEW_SOLVE)),
        Target("linalg", "CG / Cholesky solvers", "src/ntkit/_linalg.py", "ntkit._linalg",
               ("tests/test_solve_cg.py", NEW_SOLVE), functions=("warn_jitter", "robust_cholesky", "cho_solve")),
        Target("dense_cholesky", "CG / Cholesky solvers", "src/ntkit/solve/kernel_solvers.py",
               "ntkit.solve.kernel_solvers", ("tests/test_solve_cg.py", NEW_SOLVE),
               functions=("dense_cho_factor", "exact_solve")),
    )
}

#: Mutants that cannot change any result, by key (see :func:`Point.key`), with the reason.
_RESIDUAL_MEAN = (
    "unreachable: walk builds a Residual only from a block that ends in a weight layer (possibly followed by "
    "pooling / flatten / diagonal), whose output carries no mean (None), so fx.mean is never set and the "
    "statement guarded by `if fx.mean is not None` never runs")
_NTK_PAIR = (
    "x.ntk and fx.ntk are both None exactly when ntk is False (input_pairs gives no NTK then and every op keeps "
    "it None), so `ntk and A and B` and `ntk or A or B` are equal on every reachable state")
EQUIVALENT: dict[str, str] = {
    "cg:conjugate_gradient:+76:62:1.0->2.0": (
        "Progress(..., interval=1.0 -> 2.0): the progress bar's minimum time between two redraws; no returned "
        "value, warning or final bar text depends on it (the bar is redrawn on close)"),
    "cg:conjugate_gradient:+103:31:Gt->GtE#0": (
        "beta = where(rz >= 0, rz_new / where(rz > 0, rz, 1), 0) differs from the original only where rz == 0, "
        "and there it gives rz_new / 1 = rz_new, which is 0 too: rz = r . P^-1 r == 0 means r == 0 (or r . z "
        "underflowed) for the positive-definite preconditioner CG requires, the column is frozen (alpha = 0), so "
        "r, z and rz_new = r . z are unchanged"),
    "cg:conjugate_gradient:+103:60:Gt->GtE#0": (
        "beta = where(rz > 0, rz_new / where(rz >= 0, rz, 1), 0): where rz == 0 the quotient becomes 0 / 0 = NaN, "
        "but the outer where discards it and gives 0, as before (torch.where does not propagate the unselected "
        "branch)"),
    "dense_cholesky:dense_cho_factor:+25:25:0.0->1.0": (
        "`jitter, scale = 0.0, 0.0 -> 0.0, 1.0`: scale is overwritten at attempt 0, which always runs, before "
        "any use"),
    "dense_cholesky:dense_cho_factor:+28:33:1->2": (
        "range(tries + 1) -> range(tries + 2): every pass through the loop returns, continues or (at attempt == "
        "tries) breaks, so the extra last value is never reached"),
    "linalg:robust_cholesky:+46:16:0->1": (
        "n = k.shape[0] -> k.shape[1]: two lines above, k is checked to be square (else ValueError)"),
    "dense:Dense.apply:+1:74:string": (
        "the layout of a vector state (spatial shape ()) is read only through Layout.pair_shape, pixel_diagonal, "
        "left and right, which treat every mode but 'full' alike when there are no spatial axes (pair shape (), "
        "no reshape); no op compares a dense layer's output mode with 'none' (Flatten, pooling and convolutions "
        "never follow a dense layer)"),
    "residual:Residual.combine:+5:11:And->Or": _NTK_PAIR,
    "conv:Conv:+6:19:string": (
        "the default padding 'same' -> 'XXsameXX': conv_output_size treats every padding but 'valid' as 'same' "
        "and stencil wraps around only for 'circular', so 'XXsameXX' is zero padding of the 'same' size"),
    "layer_norm:LayerNormOp.apply:+12:11:And->Or": (
        "p.ntk is None exactly when ntk is False (input_pairs gives no NTK then and every op keeps it None), so "
        "`ntk and p.ntk is not None` and `ntk or p.ntk is not None` are equal on every reachable state"),
    "global_pool:GlobalPool.output_mode:+1:15:string": (
        "a GlobalPool's output mode is read by walk._place_diagonals (compared with 'full' only, and passed "
        "through the dense layers after it), and by _pair_entries / output_layout, which use 'none' for every "
        "vector output whatever output_mode says"),
    "closed_form:rectified_moment.moment:+18:8:delete statement": (
        "memoisation only: moment(m, k) is a pure function of (m, k) and the same tensors; without the memo it "
        "is recomputed by the same operations in the same order, giving identical values"),
    "reference:input_pairs:+6:22:string": (
        "vector inputs then take the image branch with C = d channels and one pixel: sum_c x_c x'_c / C is "
        "x.x'/d, and the reshape to the pair shape () gives the same (Na,) / (Na, Nb) tensors"),
    "base:KernelOp.output_layout:+2:73:Gt->GtE#0": (
        "for an op with vector output (out_shape (n,)) the mutant returns Layout((), output_mode(mode)) instead of "
        "Layout((), 'none'): the same, since such an op is a Dense (its input, a vector state, has mode 'none', "
        "which it passes through), a Flatten or a GlobalPool (output_mode 'none')"),
    "avg_pool:AvgPool.apply:+11:63:And->Or": (
        "p.ntk is None exactly when ntk is False (input_pairs gives no NTK then and every op keeps it None), so "
        "`ntk and p.ntk is not None` and `ntk or p.ntk is not None` are equal on every reachable state"),
    "closed_form:ABReLU.expect:+1:8:delete statement": (
        "without the explicit broadcast_tensors every later operation (frexp, products, where, atan2, the sums) "
        "broadcasts its operands implicitly to the same common shape, elementwise, so the values and the shape "
        "are unchanged"),
    "pointwise:Pointwise:+6:23:False->True": (
        "track_mean defaults to True: every activation also computes its channel mean E[sigma(u)] on the self "
        "batch. walk already sets track_mean=True on exactly the activations whose mean reaches a layer norm "
        "(_track_means); any other mean is dropped by the next weight layer (affine sets mean=None) before a "
        "layer norm could read it, so no kernel changes (only extra work; caveat: an activation whose mean "
        "could not be computed while its dual map can would now raise -- none is known)"),
    "residual:Residual.input_mode:+3:12:delete statement": (
        "Residual.input_mode then ignores what the block needs. Only pooling needs more than its output mode "
        "('full'), and a block must keep its input's shape, so a pooling inside one has a 1-tap window (an "
        "identity), whose result is the same on the 'diag' and the 'full' layout; every other op passes the "
        "mode through"),
    **{f"residual:Residual.combine:+9:{col}:{op}": _RESIDUAL_MEAN
       for col, op in [(19, "Mult->Div"), (43, "Is->IsNot#0"), (61, "Add->Sub"), (68, "Mult->Div"),
                       (12, "delete statement")]},
    "diagonal:Diagonal.apply:+4:73:string": (
        "after a Diagonal the layout mode is only compared with 'full' (Layout.pixel_diagonal / left / right, "
        "spatial._groups) or 'none' (Flatten.apply); 'XXdiagXX' fails both comparisons exactly as 'diag' does, and "
        "pair_shape (the one 'diag' test) is read only for the input covariances"),
    "closed_form:rectified_moment.moment:+1:11:Lt->LtE#0": (
        "`if m <= k: m, k = k, m` also swaps when m == k, which leaves (m, k) unchanged"),
    "pointwise:Pointwise.apply_dual:+14:12:delete statement": (
        "the dual maps return the derivative kernel in the broadcast shape of (var_l, cov, var_r), which is the "
        "pairs' shape already (even for a constant derivative: tests/test_ops_exact.py::"
        "test_layer_kernels_of_a_constant_derivative_have_the_pairs_shape passes on the mutant), and p.ntk * dot "
        "broadcasts the same way"),
    "layer_norm:LayerNormOp.apply:+9:27:Gt->GtE#0": (
        "safe = where(scale >= 0, scale, 1) is 0 where scale == 0, so nngp / safe is inf or NaN there, but both "
        "uses of safe sit inside where(scale > 0, ..., 0), which discards that branch (torch.where does not "
        "propagate the unselected values)"),
    "layer_norm:LayerNormOp.apply:+13:34:Gt->GtE#0": (
        "where scale == 0 (eps = 0, a channel of zero variance after the mean is removed) the channel is "
        "deterministic, so its pre-activation had zero variance and its NTK row T(x, .) is exactly 0 "
        "(|T(x, x')| <= sqrt(T(x, x) T(x', x')) and T(x, x) = 0 for a zero-variance input of a weight layer): "
        "0 / 1 = 0 as before (checked exactly by test_layer_norm_without_eps_maps_a_zero_variance_channel_to_"
        "exactly_zero on the mutant)"),
    "flatten:Flatten.output_mode:+1:15:string": (
        "a vector layout (spatial shape ()) reads its mode only through pair_shape (() for every mode when there "
        "are no spatial axes) and Flatten.apply's `mode == 'none'` shortcut, which the reduction reproduces "
        "exactly on a vector state (no axes to average: the same tensors)"),
    "base:reduce_space:+10:39:string": (
        "as for Flatten.output_mode: the state after a read-out is a vector (spatial ()), whose mode string is "
        "read only by pair_shape (() whatever the mode) and by a later Flatten, whose reduction of a vector "
        "state has no axes and returns the same tensors"),
    "base:reduce_space.reduce:+1:8:delete statement": (
        "select is Flatten's pixel_diagonal or GlobalPool's identity; Flatten's input mode is always 'diag' "
        "(Flatten.input_mode), where pixel_diagonal returns the tensor itself, so skipping select changes "
        "nothing"),
    "diagonal:Diagonal.apply:+3:61:And->Or": _NTK_PAIR,
    "reference:snap_duplicates:+7:7:And->Or": _NTK_PAIR,
    "stencil:pad_axis:+1:7:Eq->NotEq#0": (
        "`before != 0 and after == 0` returns early only for padding (before > 0, after == 0), which no padding "
        "rule produces ('same' puts the larger half after: after >= before; 'valid' pads nothing), and where "
        "both are 0 the mutant pads by 0 on both sides: a copy of the same tensor"),
    "stencil:window_average:+3:53:0->1": (
        "padding (0, 1) adds one zero after each axis, but the windows are sliced up to the given output size "
        "(stencil: delta + stride (out - 1) + 1), which the unpadded input already covers: the extra entry is "
        "never read"),
    "pointwise:Pointwise.apply_dual:+3:15:And->Or": _NTK_PAIR,
    "base:reduce_space:+9:63:And->Or": _NTK_PAIR,
    "pointwise:Pointwise.apply_dual:+10:8:delete statement": (
        "the dual maps return the kernel in the broadcast shape of (var_l, cov, var_r), which is the pairs' "
        "shape already (cov has it), so the explicit broadcast_to changes nothing"),
    "flatten:Flatten.output_mode:+1:8:return None": (
        "the mode of a vector state (spatial ()) is read only by pair_shape (() for any mode without spatial "
        "axes), by Flatten.apply's 'none' shortcut (the reduction of a vector state has no axes: the same "
        "tensors) and by walk._place_diagonals, which compares it with 'full' only"),
    "global_pool:GlobalPool.output_mode:+1:8:return None": (
        "as Flatten.output_mode returning None: a vector state's mode is never needed beyond 'not full'"),
    "flatten:Flatten.apply:+2:23:string": (
        "without the 'none' shortcut a vector state goes through _reduce_space, whose mean over no axes returns "
        "the same tensors (and the same layout, ((), 'none'))"),
    "residual:Residual.combine:+3:46:1.0->2.0": (
        "`fx * s2 if s2 != 2.0 else fx`: differs only where s2 = scale * scale == 2.0 exactly, which no float "
        "scale gives (1.4142135623730951^2 = 2.0000000000000004, 1.414213562373095^2 = 1.9999999999999996); "
        "at s2 == 1 both branches give x + fx"),
    "residual:Residual.combine:+6:51:1.0->2.0": (
        "as the NNGP line: no float scale has scale * scale == 2.0 exactly"),
    "stencil:pad_axis:+1:17:0->1": (
        "`before == 1 and after == 0` returns early only for padding (1, 0), which no rule produces ('same' "
        "puts the larger half after); (0, 0) then pads by nothing: a copy of the same tensor"),
    "stencil:window_average:+3:86:False->True": (
        "pooling pads nothing ((0, 0) on every axis), and stencil wraps indices around only inside the padding, "
        "so circular=True reads the same entries"),
    "conv:Conv._geometry:+2:77:True->False": (
        "zip(..., strict=False): spatial_in, filter and stride always have one entry per spatial axis (the walk "
        "builds them from the module and checks the input's rank), so strictness never triggers"),
    "conv:Conv.apply:+9:58:And->Or": _NTK_PAIR,
    "avg_pool:AvgPool:+4:21:1->2": (
        "the dataclass default of AvgPool.window; walk always passes the window explicitly"),
    "reference:input_pairs:+10:33:drop USub": (
        "(a2 * a2).sum(1) instead of sum(-1): a2 is 2-D (na, d), so axis 1 is the last axis"),
    **{key: (
        "not shown to matter: the input covariances are snapped once at the start (_start), after which every op "
        "applies the same elementwise arithmetic and the same reductions to a duplicated pair and to its self "
        "pair, so the per-layer snap and the NTK snap find the values already equal. Measured: removing the "
        "per-layer snap, or even every snap, leaves duplicated pairs bit-identical to the self values for FC "
        "ReLU and CNTK-GAP inputs of magnitudes 1e-3..1e3 (tests/test_ops_exact.py::test_duplicated_rows_are_"
        "exact_where_the_direct_angle_is_not). Kept as a defence for ops whose reductions could round "
        "differently by batch shape; counted as equivalent, not proven so")
       for key in ("reference:snap_duplicates:+7:7:IsNot->Is#0", "reference:snap_duplicates:+7:27:IsNot->Is#0",
                   "reference:snap_duplicates:+8:8:delete statement", "reference:_walk:+18:8:delete statement")},
    "reference:evaluate_diagonal:+2:45:0->1": (
        "distinct_rows(a, a[:1], ids, ids[:0]): the extra row a[0] has no id, and the distinct rows are picked by "
        "id positions (first occurrence among ids_a), so the rows and `left` are the same"),
    "reference:evaluate_diagonal:+2:59:0->1": (
        "distinct_rows(a, a[:0], ids, ids[:1]): the extra id is ids[0], already present; unique ids, their first "
        "positions (in a) and `left` (the first Na inverse indices) are unchanged"),
    "avg_pool:AvgPool:+5:21:1->2": (
        "the dataclass default of AvgPool.stride; walk always builds AvgPool with an explicit window and stride "
        "(walk.py: AvgPool(label, shape, out_shape, window, stride)), so the default is never used"),
}


# --------------------------------------------------------------------------------------------------------------
# Mutation points

BINOPS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.MatMult: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
}
CMPOPS: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
#: Expression fields that are type annotations (never mutated).
ANNOTATION_FIELDS = {"annotation", "returns"}


@dataclass
class Point:
    """One mutation: where, what, and how to apply it to a node of a fresh parse."""

    index: int
    func: str
    line: int
    col: int
    op: str
    before: str
    after: str = ""
    #: First line of the enclosing function / class and a hash of its syntax tree (no line numbers): the key
    #: counts lines from there, and a result stays valid while that function is unchanged (edits elsewhere
    #: in the file do not invalidate it).
    scope_line: int = 0
    scope_sha: str = ""

    def key(self, target: str) -> str:
        return f"{target}:{self.func}:+{self.line - self.scope_line}:{self.col}:{self.op}"


@dataclass
class _Walk:
    functions: tuple[str, ...] | None
    points: list[Point] = field(default_factory=list)
    #: index of the point to apply (None: enumerate only)
    apply: int | None = None
    applied: bool = False
    after: str = ""


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _call_name(node: ast.AST) -> str:
    if not isinstance(node, ast.Call):
        return ""
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _is_warn_call(node: ast.AST) -> bool:
    return _call_name(node) in {"warn", "warn_jitter"}


def _is_label_call(node: ast.AST) -> bool:
    """Argument checks whose string arguments only name the argument in error messages."""
    name = _call_name(node)
    return name.startswith("check_") or name == "as_tensor"


def _snippet(node: ast.AST) -> str:
    text = ast.unparse(node) if not isinstance(node, ast.stmt) else ast.unparse(node).splitlines()[0]
    return text if len(text) <= 90 else text[:87] + "..."


def _walk(tree: ast.Module, state: _Walk) -> None:
    """Enumerate (and optionally apply) the mutation points of ``tree`` in a fixed order."""

    def selected(func: str) -> bool:
        if state.functions is None:
            return True
        return any(func == f or func.startswith(f + ".") for f in state.functions)

    def offer(node: ast.AST, func: str, op: str, mutate) -> None:
        """``mutate()`` applies the mutation and returns the node to show (None: the statement is gone)."""
        if not selected(func):
            return
        point = Point(len(state.points), func, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), op,
                      _snippet(node))
        state.points.append(point)
        if state.apply == point.index:
            shown = mutate()
            state.after = "pass" if shown is None else _snippet(shown)
            state.applied = True

    def replace_in(parent: ast.AST, fld: str, idx: int | None, new: ast.AST) -> ast.AST:
        if idx is None:
            setattr(parent, fld, new)
        else:
            getattr(parent, fld)[idx] = new
        return new

    def put(node: ast.AST, attr: str, value: object) -> ast.AST:
        setattr(node, attr, value)
        return node

    def visit(node: ast.AST, func: str, parent: ast.AST | None, fld: str, idx: int | None) -> None:
        # --- skipped subtrees
        if isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr, ast.Import, ast.ImportFrom)):
            return
        if _is_warn_call(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name == "__repr__":
                return
            inner = f"{func}.{node.name}" if func else node.name
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                visit_field(node.args, "defaults", d, inner)
            visit_body(node, "body", inner)
            return
        if isinstance(node, ast.ClassDef):
            inner = f"{func}.{node.name}" if func else node.name
            visit_body(node, "body", inner)
            return
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        # --- statements: deletion, return value
        if isinstance(node, ast.stmt) and parent is not None and idx is not None and func:
            body = getattr(parent, fld)
            deletable = isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))
            in_function = not isinstance(parent, (ast.ClassDef, ast.Module))
            if deletable and in_function and len(body) > 0:
                offer(node, func, "delete statement", lambda: replace_in(parent, fld, idx, ast.Pass()) and None)
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            offer(node, func, "return None", lambda: put(node, "value", ast.Constant(None)))
        # --- expressions
        if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
            new = BINOPS[type(node.op)]
            offer(node, func, f"{type(node.op).__name__}->{new.__name__}", lambda: put(node, "op", new()))
        if isinstance(node, ast.AugAssign) and type(node.op) in BINOPS:
            new = BINOPS[type(node.op)]
            offer(node, func, f"aug {type(node.op).__name__}->{new.__name__}", lambda: put(node, "op", new()))
        if isinstance(node, ast.Compare):
            for i, cop in enumerate(node.ops):
                if type(cop) in CMPOPS:
                    new = CMPOPS[type(cop)]

                    def flip(i: int = i, new: type = new) -> ast.AST:
                        node.ops[i] = new()
                        return node

                    offer(node, func, f"{type(cop).__name__}->{new.__name__}#{i}", flip)
        if isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            offer(node, func, f"{type(node.op).__name__}->{new.__name__}", lambda: put(node, "op", new()))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)) and parent is not None:
            offer(node, func, f"drop {type(node.op).__name__}", lambda: replace_in(parent, fld, idx, node.operand))
        if isinstance(node, ast.Constant) and parent is not None and not (
                isinstance(node.value, str) and _is_label_call(parent)):
            v = node.value
            if isinstance(v, bool):
                offer(node, func, f"{v}->{not v}", lambda: put(node, "value", not v))
            elif isinstance(v, int):
                offer(node, func, f"{v}->{v + 1}", lambda: put(node, "value", v + 1))
            elif isinstance(v, float):
                offer(node, func, f"{v!r}->{v + 1.0!r}", lambda: put(node, "value", v + 1.0))
            elif isinstance(v, str) and func:
                offer(node, func, "string", lambda: put(node, "value", "XX" + v + "XX"))
        # --- children
        for name, value in ast.iter_fields(node):
            if name in ANNOTATION_FIELDS:
                continue
            if isinstance(value, list):
                for i, item in enumerate(list(value)):
                    if isinstance(item, ast.AST):
                        if isinstance(item, ast.stmt) and i == 0 and _is_docstring(item):
                            continue
                        visit(item, func, node, name, i)
            elif isinstance(value, ast.AST):
                visit(value, func, node, name, None)

    def visit_field(parent: ast.AST, fld: str, node: ast.AST, func: str) -> None:
        lst = getattr(parent, fld)
        idx = next((i for i, x in enumerate(lst) if x is node), None)
        if idx is None:  # a kw default
            lst = parent.kw_defaults
            idx = next(i for i, x in enumerate(lst) if x is node)
            visit(node, func, parent, "kw_defaults", idx)
        else:
            visit(node, func, parent, fld, idx)

    def visit_body(node: ast.AST, fld: str, func: str) -> None:
        for i, stmt in enumerate(list(getattr(node, fld))):
            if i == 0 and _is_docstring(stmt):
                continue
            visit(stmt, func, node, fld, i)

    for i, stmt in enumerate(list(tree.body)):
        if i == 0 and _is_docstring(stmt):
            continue
        visit(stmt, "", tree, "body", i)


def mutation_points(source: str, functions: tuple[str, ...] | None) -> list[Point]:
    """Every mutation point of ``source``, with the mutated snippet and a unique key suffix filled in."""
    state = _Walk(functions)
    _walk(ast.parse(source), state)
    seen: dict[tuple, int] = {}
    for p in state.points:
        where = (p.func, p.line, p.col, p.op)
        seen[where] = seen.get(where, 0) + 1
        if seen[where] > 1:
            p.op = f"{p.op}~{seen[where]}"
        applied = _Walk(functions, apply=p.index)
        _walk(ast.parse(source), applied)
        p.after = applied.after
    scopes = _scopes(ast.parse(source))
    for p in state.points:
        p.scope_line, p.scope_sha = scopes.get(p.func, scopes[""])
    return state.points


def _scopes(tree: ast.Module) -> dict[str, tuple[int, str]]:
    """Qualified name (as :func:`_walk` names them) -> (first line, hash of the syntax tree without locations)."""
    out = {"": (0, _sha(ast.dump(tree)))}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}" if prefix else child.name
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.setdefault(name, (first, _sha(ast.dump(child))))
                visit(child, name)

    visit(tree, "")
    return out


def mutant_tree(source: str, functions: tuple[str, ...] | None, index: int) -> ast.Module:
    """``source`` parsed with mutation ``index`` applied (line numbers of the original kept)."""
    tree = ast.parse(source)
    state = _Walk(functions, apply=index)
    _walk(tree, state)
    assert state.applied, index
    for node in ast.walk(tree):  # nodes created by a mutation take the location of their parent
        for child in ast.iter_child_nodes(node):
            if not hasattr(child, "lineno") and hasattr(node, "lineno"):
                ast.copy_location(child, node)
    return ast.fix_missing_locations(tree)


# --------------------------------------------------------------------------------------------------------------
# Running


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module from a compiled (mutated) code object."""

    def __init__(self, name: str, code, filename: str) -> None:
        self.name, self.code, self.filename = name, code, filename

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.filename)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = self.filename
        exec(self.code, module.__dict__)


class _Recorder:
    """pytest plugin: the first failing test's node id, the test order, the running test (for the tracer)."""

    def __init__(self, current: list[str] | None = None) -> None:
        self.failed: str | None = None
        self.all_failed: list[str] = []
        self.order: list[str] = []
        self.current = current if current is not None else [""]

    def pytest_runtest_setup(self, item) -> None:
        self.current[0] = item.nodeid
        self.order.append(item.nodeid)

    def pytest_runtest_teardown(self, item, nextitem) -> None:
        self.current[0] = item.nodeid

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.all_failed.append(report.nodeid)
            if self.failed is None:
                self.failed = report.nodeid

    def pytest_collectreport(self, report) -> None:
        if report.failed and self.failed is None:
            self.failed = f"collection of {report.nodeid}"


#: Set by :func:`run_target` before forking (the children inherit them): existing tests that already fail on
#: the unmutated code (another engineer's work in progress), left out of every run; and whether to stop at
#: the first failure (not for the baseline, which lists every failing test).
_DESELECT: list[str] = []
_STOP = [True]


def _pytest_args(target: Target, selection: list[str] | None = None) -> list[str]:
    tests = selection if selection else [*target.tests, *target.extra]
    deselect = [arg for node in _DESELECT for arg in ("--deselect", node)]
    return [*tests, *deselect, *(["-x"] if _STOP[0] else []), "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            "-p", "no:randomly", "--no-header", "-o", "addopts=", "-W", "error"]


def _child(target: Target, snapshot: Path, code, out: Path, trace: Path | None,
           selection: list[str] | None) -> None:
    """Runs in the forked child: install the mutant, run the subset, report through ``out``; never returns."""
    rc = 99
    try:
        os.setpgid(0, 0)
        fd = os.open(str(out) + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        filename = str(snapshot / target.path)
        if code is not None:
            sys.meta_path.insert(0, _MutantFinder(target.module, code, filename))
        lines: set[int] = set()
        per_test: dict[str, set[int]] = {}
        current: list[str] = [""]
        if trace is not None:
            def local(frame, event, arg):
                if event == "line":
                    lines.add(frame.f_lineno)
                    per_test.setdefault(current[0], set()).add(frame.f_lineno)
                return local

            def tracer(frame, event, arg):
                if frame.f_code.co_filename == filename:
                    lines.add(frame.f_lineno)
                    per_test.setdefault(current[0], set()).add(frame.f_lineno)
                    return local
                return None

            import threading

            threading.settrace(tracer)
            sys.settrace(tracer)
        import pytest

        rec = _Recorder(current)
        rc = int(pytest.main(_pytest_args(target, selection), plugins=[rec]))
        sys.settrace(None)
        out.write_text(json.dumps({"rc": rc, "failed": rec.failed, "all_failed": rec.all_failed,
                                   "lines": sorted(lines), "order": rec.order,
                                   "per_test": {k: sorted(v) for k, v in per_test.items()}}))
    except BaseException as err:
        try:
            out.write_text(json.dumps({"rc": 98, "failed": f"runner: {type(err).__name__}: {err}"}))
        except BaseException:
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc if 0 <= rc < 256 else 99)


def run_once(target: Target, snapshot: Path, code, timeout: float, *, trace: bool = False,
             selection: list[str] | None = None) -> dict:
    """Fork, run the subset (or the node ids ``selection``) against ``code`` (None: the unmutated module)."""
    out = Path(tempfile.mkstemp(prefix="mut-", suffix=".json", dir=snapshot)[1])
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(target, snapshot, code, out, out.with_suffix(".trace") if trace else None, selection)
    status = None
    while time.perf_counter() - start < timeout:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if status is None:
        try:
            os.killpg(pid, signal.SIGKILL)  # the child's own process group (it called setpgid)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        return {"status": "timeout", "seconds": round(seconds, 2), "failed": None, "lines": []}
    try:
        info = json.loads(out.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    log = Path(str(out) + ".log")
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    for f in (out, log):
        f.unlink(missing_ok=True)
    rc = info.get("rc", os.waitstatus_to_exitcode(status))
    state = "survived" if rc == 0 else "error" if rc in (3, 4, 5, 98, 99) else "killed"
    if state == "error" and info.get("failed") and not str(info["failed"]).startswith("runner"):
        state = "killed"  # a test or a test module's collection failed (e.g. the mutant breaks an import)
    return {"status": state, "rc": rc, "seconds": round(seconds, 2), "failed": info.get("failed"),
            "lines": info.get("lines", []), "order": info.get("order", []), "per_test": info.get("per_test", {}),
            "all_failed": info.get("all_failed", []),
            "log": tail if state != "killed" else ""}


def make_snapshot() -> Path:
    """Copy ``src/``, ``tests/`` and ``pyproject.toml`` to a fresh temporary folder (no bytecode caches)."""
    snap = Path(tempfile.mkdtemp(prefix="ntkit-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    shutil.copytree(ROOT / "src", snap / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", snap / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", snap / "pyproject.toml")
    return snap


def _preimport() -> None:
    """The heavy third-party imports, done once in the parent (the forked children inherit them)."""
    import mpmath  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import scipy.integrate
    import scipy.linalg
    import scipy.special  # noqa: F401
    import torch
    import torch._meta_registrations

    for mod in ("sklearn", "numpy.f2py"):
        try:
            __import__(mod)
        except ImportError:
            pass
    del torch


def load_results() -> dict[str, dict]:
    """Latest result row per mutant key."""
    rows: dict[str, dict] = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row["status"] == "error" and row.get("failed") and not str(row["failed"]).startswith("runner"):
                    row["status"] = "killed"  # as run_once now classifies it
                rows[row["key"]] = row
    return rows


def sampled(key: str, fraction: float) -> bool:
    """Whether mutant ``key`` is in the deterministic sample of this ``fraction`` (samples are nested)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) < fraction * 16**8


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _statement_lines(source: str) -> dict[tuple[int, int], tuple[int, int]]:
    """For each (line, col) of a node, the line range of its innermost enclosing simple statement or header."""
    tree = ast.parse(source)
    spans: dict[tuple[int, int], tuple[int, int]] = {}

    def visit(node: ast.AST, span: tuple[int, int] | None) -> None:
        if isinstance(node, ast.stmt):
            if isinstance(node, (ast.If, ast.While, ast.For, ast.With)):
                first = node.body[0].lineno if node.body else node.end_lineno
                span = (node.lineno, max(node.lineno, first - 1))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                span = (node.lineno, node.lineno)
            else:
                span = (node.lineno, node.end_lineno or node.lineno)
        if hasattr(node, "lineno") and span is not None:
            spans.setdefault((node.lineno, node.col_offset), span)
        for child in ast.iter_child_nodes(node):
            visit(child, span)

    visit(tree, None)
    return spans


def run_target(target: Target, snapshot: Path, args: argparse.Namespace) -> None:
    source = (snapshot / target.path).read_text()
    sha = _sha(source)
    points = mutation_points(source, target.functions)
    done = load_results() if args.resume else {}
    rerun = set(args.rerun.split(",")) if args.rerun else set()
    if args.rerun_survivors:
        rerun.add("survived")
    todo = []
    for p in points:
        row = done.get(p.key(target.name))
        if row is not None and row.get("scope_sha") == p.scope_sha:
            if row["status"] in rerun:
                todo.append(p)  # a stored result asked to be run again: whatever the sample
        elif args.sample >= 1.0 or sampled(p.key(target.name), args.sample):
            todo.append(p)
    if args.limit:
        todo = todo[: args.limit]
    print(f"[{target.name}] {len(points)} mutants, {len(todo)} to run", flush=True)
    if not todo:
        return
    _DESELECT.clear()
    _STOP[0] = False
    base = run_once(target, snapshot, None, 600.0)
    _STOP[0] = True
    failing = [n for n in base.get("all_failed", []) if "::" in n and not n.startswith("collection")]
    if base["status"] == "killed" and failing and all(any(n.startswith(t.split("::")[0]) for t in target.tests
                                                          if not t.endswith(("_exact.py",))) for n in failing):
        _DESELECT.extend(sorted(set(failing)))
        print(f"[{target.name}] WARNING: existing tests failing on the unmutated code, left out: {_DESELECT}",
              flush=True)
        base = run_once(target, snapshot, None, 600.0)
    if base["status"] != "survived":
        print(f"[{target.name}] SKIPPED: the unmutated subset does not pass ({base}); fix that first", flush=True)
        return
    traced = run_once(target, snapshot, None, 1200.0, trace=True)
    if traced["status"] != "survived":
        print(f"[{target.name}] SKIPPED: the traced unmutated subset does not pass ({traced})", flush=True)
        return
    covered = set(traced["lines"])
    spans = _statement_lines(source)
    order = traced["order"]
    per_test = {k: set(v) for k, v in traced["per_test"].items()}
    at_import = per_test.get("", set())  # lines run at import / collection: every test depends on them
    timeout = max(60.0, 4.0 * base["seconds"])  # generous: the machine is shared, a slow run is not a hang
    print(f"[{target.name}] baseline {base['seconds']:.1f} s, timeout {timeout:.0f} s, "
          f"{len(covered)} lines executed", flush=True)
    counts: dict[str, int] = {}
    with RESULTS.open("a") as sink:
        for n, p in enumerate(todo, 1):
            lo, hi = spans.get((p.line, p.col), (p.line, p.line))
            row = {"key": p.key(target.name), "target": target.name, "func": p.func, "line": p.line,
                   "op": p.op, "before": p.before, "after": p.after, "source_sha": sha, "scope_sha": p.scope_sha}
            if _DESELECT:
                row["deselected"] = list(_DESELECT)
            if not any(line in covered for line in range(lo, hi + 1)):
                row.update(status="survived", not_covered=True, seconds=0.0, failed=None)
            else:
                tree = mutant_tree(source, target.functions, p.index)
                try:
                    code = compile(tree, str(snapshot / target.path), "exec")
                except (SyntaxError, ValueError, TypeError) as err:
                    row.update(status="killed", seconds=0.0, failed=f"compile: {err}")
                else:
                    span = set(range(lo, hi + 1))
                    selection = None if span & at_import else [t for t in order if per_test.get(t, set()) & span]
                    res = run_once(target, snapshot, code, timeout, selection=selection or None)
                    if res["status"] == "error":  # e.g. the mutant removed a parametrized test id: whole files
                        files = list(dict.fromkeys(t.split("::")[0] for t in target.tests))
                        res = run_once(target, snapshot, code, max(timeout, 120.0), selection=files)
                        row["tests_run"] = "files"
                    row["tests_run"] = "all" if not selection else len(selection)
                    row.update(status=res["status"], seconds=res["seconds"], failed=res.get("failed"))
                    if res["status"] == "error":
                        row["log"] = res.get("log", "")[-1500:]
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            if n % 10 == 0 or n == len(todo):
                print(f"[{target.name}] {n}/{len(todo)} {counts}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# Report


def _current_rows() -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Rows of the current source version per target, in mutation order, and the mutant totals."""
    rows = load_results()
    by_target: dict[str, list[dict]] = {}
    totals: dict[str, int] = {}
    for t in TARGETS.values():
        source = (ROOT / t.path).read_text()
        points = mutation_points(source, t.functions)
        totals[t.name] = len(points)
        by_target[t.name] = [rows[p.key(t.name)] for p in points
                             if p.key(t.name) in rows and rows[p.key(t.name)].get("scope_sha") == p.scope_sha]
    return by_target, totals


def _md(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def write_report() -> None:
    by_target, totals = _current_rows()
    out = [
        "# Mutation testing of the kernel maths (issue 24, item 4)",
        "",
        "Produced by `scripts/mutation.py` (its own AST mutation runner; see the script's docstring for the operators",
        "and how to run it). Each mutant of a target module is run against that module's fast test subset in a",
        "forked child on a snapshot copy of `src/`; `killed`: a test failed (or the mutant no longer imports),",
        "`timeout`: the subset ran past its limit (a hang: detected, counted apart), `survived`: the subset passed",
        "(including mutants on lines the subset never runs), `equivalent`: a survivor that cannot change any",
        "result (reason below). Score = (killed + timeout) / (run - equivalent), over the mutants run.",
        "",
        "Why not mutmut: mutmut 3.8.1 (pip-installed into the venv, run on a copy of the tree with a temporary",
        "`setup.cfg`) generated the mutants of `closed_form.py` but stopped with \"could not find any test case for",
        "any mutant\": the tests import `ntkit` from the editable install (`src/` layout), not from mutmut's",
        "`mutants/` copy, so its trampolines never ran. This runner needs nothing beyond the venv.",
        "",
        "Where `run` is below `mutants`, the mutants run are a deterministic sample (`--sample`: a hash of the",
        "mutant's key, so a larger fraction extends the same sample): the machine is shared (2 cores, load 6-8",
        "during these runs, ~10 s per mutant under `nice -n 10`), which did not allow every mutant in the time box.",
        "",
        "| module | group | mutants | run | killed | timeout | survived | equivalent | score |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[str, list[int]] = {}
    survivors: list[tuple[str, dict]] = []
    equivalents: list[tuple[str, dict]] = []
    killers: dict[str, list[str]] = {}
    for t in TARGETS.values():
        rows = by_target[t.name]
        k = sum(r["status"] == "killed" for r in rows)
        to = sum(r["status"] == "timeout" for r in rows)
        eq = [r for r in rows if r["status"] == "survived" and r["key"] in EQUIVALENT]
        sv = [r for r in rows if r["status"] in ("survived", "error") and r["key"] not in EQUIVALENT]
        denom = len(rows) - len(eq)
        score = f"{100 * (k + to) / denom:.1f}%" if denom else "-"
        out.append(f"| `{t.path}` | {t.group} | {totals[t.name]} | {len(rows)} | {k} | {to} | {len(sv)} | "
                   f"{len(eq)} | {score} |")
        g = groups.setdefault(t.group, [0, 0, 0, 0, 0])
        g[0] += len(rows)
        g[1] += k
        g[2] += to
        g[3] += len(sv)
        g[4] += len(eq)
        survivors += [(t.name, r) for r in sv]
        equivalents += [(t.name, r) for r in eq]
        for r in rows:
            if r["status"] == "killed" and r.get("failed") and any(
                    n.split("/")[-1] in r["failed"] for n in (NEW_INF, NEW_ACT, NEW_SOLVE)):
                killers.setdefault(r["failed"].split("[")[0], []).append(r["key"])
    out += ["", "Per group:", "", "| group | run | killed | timeout | survived | equivalent | score |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (n, k, to, sv, eq) in groups.items():
        denom = n - eq
        score = f"{100 * (k + to) / denom:.1f}%" if denom else "-"
        out.append(f"| {name} | {n} | {k} | {to} | {sv} | {eq} | {score} |")
    out += ["", "## Test subsets", ""]
    for t in TARGETS.values():
        sel = f" (functions: {', '.join(t.functions)})" if t.functions else ""
        out.append(f"* `{t.name}`{sel}: " + ", ".join(f"`{x}`" for x in t.tests))
        left_out = sorted({n for r in by_target[t.name] for n in r.get("deselected", [])})
        if left_out:
            out.append("  (left out of some runs because they failed on the unmutated code at the time, another "
                       "engineer's work in progress: " + ", ".join(f"`{n}`" for n in left_out) + ")")
    out += ["", "## Mutants killed only by the new tests", "",
            "The subset runs the existing tests first and stops at the first failure, so a mutant attributed to a",
            "new test survived every existing test of the subset.", ""]
    for test, keys in sorted(killers.items()):
        out.append(f"* `{test}` ({len(keys)}): " + ", ".join(f"`{k}`" for k in keys))
    out += ["", "## Equivalent mutants", ""]
    if not equivalents:
        out.append("None.")
    for _name, r in equivalents:
        out.append(f"* `{r['key']}` {_md(r['before'])} -> {_md(r['after'])}: {EQUIVALENT[r['key']]}")
    out += ["", "## Surviving mutants", ""]
    if not survivors:
        out.append("None.")
    for _name, r in survivors:
        note = " (line not executed by the subset)" if r.get("not_covered") else ""
        if r["status"] == "error":
            note += " (the subset errored: see the JSON lines)"
        out.append(f"* `{r['key']}` {_md(r['before'])} -> {_md(r['after'])}{note}")
    REPORT.write_text("\n".join(out) + "\n")
    print(f"wrote {REPORT.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", default=None, help="target name (see --list) or 'all'; comma-separated list")
    parser.add_argument("--list", action="store_true", help="list the targets and their mutant counts")
    parser.add_argument("--show", action="store_true", help="with --list: print every mutant")
    parser.add_argument("--resume", action="store_true", help="skip mutants already in the results file")
    parser.add_argument("--rerun-survivors", action="store_true", help="with --resume: run the survivors again")
    parser.add_argument("--rerun", default="", help="with --resume: statuses to run again, e.g. 'timeout,error'")
    parser.add_argument("--sample", type=float, default=1.0,
                        help="run only a deterministic fraction of the mutants (nested: a larger fraction extends it)")
    parser.add_argument("--limit", type=int, default=0, help="run at most this many mutants per target")
    parser.add_argument("--report", action="store_true", help="write benchmarks/results/mutation.md")
    args = parser.parse_args(argv)
    if args.list:
        for t in TARGETS.values():
            points = mutation_points((ROOT / t.path).read_text(), t.functions)
            print(f"{t.name:16s} {len(points):5d}  {t.path}  tests: {' '.join(t.tests)}")
            if args.show:
                for p in points:
                    print(f"    {p.key(t.name)}: {p.before} -> {p.after}")
        return
    if args.module:
        names = list(TARGETS) if args.module == "all" else args.module.split(",")
        unknown = [n for n in names if n not in TARGETS]
        if unknown:
            parser.error(f"unknown target(s) {unknown}; expected some of {list(TARGETS)} or 'all'")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean the snapshot up on kill
        snapshot = make_snapshot()
        print(f"snapshot {snapshot}", flush=True)
        try:
            os.chdir(snapshot)
            sys.path[:0] = [str(snapshot / "src"), str(snapshot)]
            _preimport()
            for name in names:
                run_target(TARGETS[name], snapshot, args)
        finally:
            os.chdir(ROOT)
            shutil.rmtree(snapshot, ignore_errors=True)
    if args.report or args.module:
        write_report()


if __name__ == "__main__":
    main()
