"""One vocabulary for activations: ``ntkit.DualActivation`` (the dual maps) and ``ntkit.nn.Activation`` (the torch
module). The old top-level spelling ``ntkit.Activation`` warns (``DeprecationWarning``, pointing at the caller)
and is the same class; ``ntkit.activations.Activation`` is a silent alias; ``import ntkit`` does not warn."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import ntkit
import ntkit.activations
import ntkit.activations.base

F64 = torch.float64
RENAMED = r"ntkit\.Activation is the dual-map base class, renamed ntkit\.DualActivation; ntkit\.nn\.Activation"


def _one_warning_here(record: list[warnings.WarningMessage]) -> None:
    hits = [w for w in record if issubclass(w.category, DeprecationWarning)]
    assert len(hits) == 1, [str(w.message) for w in hits]
    assert hits[0].filename == __file__, hits[0].filename


def test_dual_activation_is_one_class_under_its_names() -> None:
    assert ntkit.DualActivation is ntkit.activations.DualActivation is ntkit.activations.base.DualActivation
    assert ntkit.DualActivation.__name__ == "DualActivation"
    assert "DualActivation" in ntkit.__all__ and "Activation" not in ntkit.__all__
    assert "DualActivation" in ntkit.activations.__all__ and "Activation" not in ntkit.activations.__all__
    assert isinstance(ntkit.get_activation("relu"), ntkit.DualActivation)


def test_top_level_activation_warns_and_is_the_dual_map() -> None:
    with pytest.warns(DeprecationWarning, match=RENAMED) as record:
        old = ntkit.Activation
    _one_warning_here(record.list)
    assert old is ntkit.DualActivation
    with pytest.warns(DeprecationWarning, match=RENAMED) as record:
        from ntkit import Activation  # the import system's own lookup does not warn a second time
    _one_warning_here(record.list)
    assert Activation is ntkit.DualActivation


def test_old_name_still_works_as_a_base_class() -> None:
    class Square(ntkit.DualActivation):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    with pytest.warns(DeprecationWarning, match=RENAMED):

        class OldSquare(ntkit.Activation):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * x

    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    new, old = ntkit.fc_kernel(x, depth=2, activation=Square()), ntkit.fc_kernel(x, depth=2, activation=OldSquare())
    torch.testing.assert_close(old.ntk, new.ntk, rtol=0, atol=0)
    torch.testing.assert_close(old.nngp, new.nngp, rtol=0, atol=0)


def test_subpackage_alias_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from ntkit.activations import Activation
        from ntkit.activations.base import Activation as BaseActivation
    assert Activation is BaseActivation is ntkit.DualActivation


def test_nn_activation_is_the_module_and_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = ntkit.nn.Activation("erf")
    assert isinstance(module, nn.Module) and not issubclass(ntkit.nn.Activation, ntkit.DualActivation)
    assert isinstance(module.activation, ntkit.DualActivation) and module.activation.name == "erf"
    assert module(torch.zeros(2)).tolist() == [0.0, 0.0]


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'ntkit' has no attribute 'Activations'"):
        _ = ntkit.Activations  # type: ignore[attr-defined]
    assert not hasattr(ntkit, "no_such_name")


def test_import_and_star_import_do_not_warn() -> None:
    code = "import ntkit, ntkit.nn; from ntkit import *; from ntkit.activations import *; print('ok')"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
