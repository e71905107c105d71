"""Per-op moment conformance (issue 24, item 1): every finite module against its kernel op.

For every case of :data:`tests.moment_cases.CASES` (weight layers with each padding, stride,
parameterization and bias; pooling, global pooling, flatten, layer norm, residual sums; every
activation; tokens, sums over axes, graph aggregation, self-attention) the harness
:func:`tests.moments.run_case` draws the module many times and compares
the empirical NNGP, NTK increment and (activations) derivative kernel with the op, entry by entry:

* ``test_moments``: every entry within 5 standard errors, every standard error at most 0.3% of the
  entry's natural scale ``sqrt(K(x, x) K(x', x'))`` (a 1% scale error is >= 6.7 SE), and the op on
  same-pixel covariances equal to the same entries of the op on every pixel pair;
* ``test_fault_fails``: the same check on the same draws with the module's scale off by 1% (weight
  layers: weights x 1.01 after init; other modules: output x 1.01) fails, with a max z-score of
  at least ``FAULT_Z = 7.5`` (1.5 times the pass threshold);
* the registry covers every kernel op type, every torch activation module the walk maps, every
  registered activation name, and every padding / stride / parameterization of the weight layers.

Both checks of a case come from one run (:func:`_reports`, cached): the nominal and the faulty
module see the same draws.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ntkit.activations import CallableActivation, available_activations, get_activation
from ntkit.infinite import ops as ops_module
from ntkit.infinite.ops import KernelOp, Pointwise
from ntkit.infinite.ops.activation_modules import ACTIVATION_MODULES
from ntkit.infinite.walk import iter_ops
from ntkit.nn.linear import PADDINGS, _ConvNd, _WeightLayer
from tests.moment_cases import CASES
from tests.moments import SE_MAX, Z_MAX, MomentCase, MomentReport, case_ops, run_case

pytestmark = pytest.mark.usefixtures("single_thread")

FAULT = 1.01
#: A faulty module must miss by at least this many standard errors somewhere.
FAULT_Z = 7.5
#: Cases taking more than ~3.3 s of CPU on one core (1e7-2e7 draws, 3000 instances, big fields): marked slow.
SLOW = {"act_cube", "act_rectified_cubic", "act_hermite3", "residual_linear", "layernorm_images_mean",
        "avgpool2d_2", "conv2d_orthogonal", "conv_transpose2d_same_s21", "layernorm_all_signals",
        "layernorm_all_images_mean"}


def _params(cases: list[MomentCase]) -> list[object]:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name in SLOW else []) for c in cases]


@functools.cache  # a few floats per case
def _reports(name: str) -> tuple[MomentReport, MomentReport]:
    case = next(c for c in CASES if c.name == name)
    nominal, fault = run_case(case, (1.0, FAULT))
    return nominal, fault


@pytest.mark.parametrize("case", _params(CASES))
def test_moments(case: MomentCase) -> None:
    report = _reports(case.name)[0]
    assert report.max_se_ratio <= SE_MAX, (report.se_ratio, report.draws)
    assert report.max_z <= Z_MAX, (report.z, report.worst)
    if report.layout_gap is not None:
        assert report.layout_gap <= 1e-12, report.layout_gap


@pytest.mark.parametrize("case", _params(CASES))
def test_fault_fails(case: MomentCase) -> None:
    nominal, fault = _reports(case.name)
    assert fault.max_z >= FAULT_Z, (fault.z, nominal.z)
    assert fault.max_se_ratio <= SE_MAX * FAULT**2 * 1.01, fault.se_ratio  # the same power as the nominal check


def _case_ops() -> list[KernelOp]:
    out: list[KernelOp] = []
    for case in CASES:
        module = case.make(case.width if case.instances else 2, torch.Generator().manual_seed(0))
        out += list(iter_ops(case_ops(case, module)))
    return out


def _subclasses(cls: type) -> set[type]:
    subs = set(cls.__subclasses__())
    return subs.union(*(_subclasses(s) for s in subs)) if subs else set()


def test_every_op_type_has_a_case() -> None:
    """A new op type (a subclass of KernelOp in ntkit.infinite) needs a moment case."""
    assert {ops_module.Dense, ops_module.Conv, ops_module.AvgPool} <= _subclasses(KernelOp)
    covered = {type(op) for op in _case_ops()}
    missing = {t.__name__ for t in _subclasses(KernelOp) if t.__module__.startswith("ntkit.")} - {
        t.__name__ for t in covered}
    assert not missing, missing


def _key(act: object) -> object:
    return ("fn", act.fn) if isinstance(act, CallableActivation) else ("repr", repr(act))


def test_every_activation_has_a_case() -> None:
    """Every torch activation module the walk maps, and every registered name (aliases once)."""
    modules = {type(case.make(2, torch.Generator())) for case in CASES if not case.instances}
    assert not set(ACTIVATION_MODULES) - modules, set(ACTIVATION_MODULES) - modules
    keys = {_key(op.fn) for op in _case_ops() if isinstance(op, Pointwise)}
    missing = [name for name in available_activations() if _key(get_activation(name)) not in keys]
    assert not missing, missing


def test_every_weight_layer_option_has_a_case() -> None:
    layers = [m for case in CASES for m in case.make(2, torch.Generator()).modules() if isinstance(m, _WeightLayer)]
    convs = [m for m in layers if isinstance(m, _ConvNd)]
    for ndim in (1, 2):
        assert {m.padding for m in convs if m.ndim == ndim} == set(PADDINGS), ndim
        assert any(max(m.stride) > 1 for m in convs if m.ndim == ndim), ndim
        assert {m.parameterization for m in convs if m.ndim == ndim} == {"ntk", "standard"}, ndim
    assert {(m.parameterization, m.bias is None) for m in layers} == {(p, b) for p in ("ntk", "standard")
                                                                      for b in (True, False)}
    assert {m.init for m in layers} == {"gaussian", "orthogonal"}
    assert any(max(m.kernel_size) % 2 == 0 for m in convs)  # even filters: SAME pads one pixel more at the end
