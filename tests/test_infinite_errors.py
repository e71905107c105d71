"""Bad models and bad inputs of ``infinite_kernel``: clear errors naming the module, never NaN; huge norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError
from tests.conftest import rel_err

F64 = torch.float64


def _fc(d: int = 4, **kw: object) -> nn.Sequential:
    return nn.Sequential(ntkit.nn.Linear(d, 16, **kw), nn.ReLU(), ntkit.nn.Linear(16, 1, **kw))  # type: ignore[arg-type]


def _conv(*middle: nn.Module) -> nn.Sequential:
    return nn.Sequential(ntkit.nn.Conv2d(1, 4, 3), nn.ReLU(), *middle, ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1))


IMAGES = torch.randn(3, 1, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(11))
VECTORS = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(12))


@pytest.mark.parametrize(
    ("model", "x", "match"),
    [
        (_conv(nn.MaxPool2d(2)), IMAGES, r"module 2 \(MaxPool2d\) has no infinite-width kernel transform: max pooling"),
        (_conv(nn.BatchNorm2d(4)), IMAGES, r"2 \(BatchNorm2d\).*batch norm couples the examples"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), nn.Dropout(0.5), ntkit.nn.Linear(8, 1)), VECTORS,
         r"1 \(Dropout\).*call model.eval\(\)"),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), VECTORS,
         r"0 \(Linear\).*use ntkit.nn.Linear"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), nn.LayerNorm(8), ntkit.nn.Linear(8, 1)), VECTORS,
         r"use ntkit.nn.LayerNorm"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), nn.PReLU(), ntkit.nn.Linear(8, 1)), VECTORS, r"trained parameter"),
        (_fc(5), VECTORS, r"0 \(Linear\) expected \(5,\) features.*got an input of shape \(4,\)"),
        (_fc(4), IMAGES, r"0 \(Linear\) expected \(4,\) features \(add nn.Flatten"),
        (_conv(), VECTORS, r"0 \(Conv2d\) expected \(C=1, 2 spatial axes\)"),
        (nn.Sequential(ntkit.nn.Conv2d(1, 4, 7, padding="valid"), nn.Flatten(), ntkit.nn.Linear(4, 1)), IMAGES,
         r"expected a spatial size >= 7"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), ntkit.nn.Residual(nn.Identity()), ntkit.nn.Linear(8, 1)),
         VECTORS, r"1 \(Residual\).*expected a block with a weight layer.*identity"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), ntkit.nn.Residual(ntkit.nn.Linear(8, 6)), ntkit.nn.Linear(6, 1)),
         VECTORS, r"1 \(Residual\).*keep the input's shape \(8,\), got \(6,\)"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), ntkit.nn.Residual(ntkit.nn.Linear(8, 8), nn.ReLU()),
                       ntkit.nn.Linear(8, 1)), VECTORS, r"block that ends with a weight layer"),
        (nn.Sequential(ntkit.nn.Linear(4, 8), nn.ReLU(), ntkit.nn.Residual(ntkit.nn.Linear(8, 8)), nn.ReLU(),
                       ntkit.nn.Linear(8, 1)), VECTORS, r"3 \(ReLU\) receives a non-Gaussian input"),
        (nn.Sequential(ntkit.nn.Conv2d(1, 4, 3), nn.ReLU()), IMAGES, r"expected the model to output vectors"),
        (nn.Sequential(nn.ReLU(), nn.Tanh()), VECTORS, r"at least one weight layer"),
        (nn.Sequential(ntkit.nn.Conv2d(1, 4, 3), nn.Flatten(start_dim=2), ntkit.nn.Linear(36, 1)), IMAGES,
         r"expected start_dim=1"),
        (_conv(nn.AvgPool2d(2, ceil_mode=True)), IMAGES, r"expected ceil_mode=False and no divisor_override"),
        (nn.Sequential(nn.MaxPool2d(2), ntkit.nn.Conv2d(1, 4, 3), ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1)),
         IMAGES, r"0 \(MaxPool2d\) has no infinite-width kernel transform"),
    ],
)
def test_unsupported_or_misfit_models_name_the_module(model: nn.Module, x: torch.Tensor, match: str) -> None:
    model.train()
    with pytest.raises(ArchitectureError, match=match) as info:
        ntkit.infinite_kernel(model, x)
    assert isinstance(info.value, ValueError)
    if "no infinite-width kernel transform" in str(info.value):
        assert ("Supported: ntkit.nn.Conv1d, ntkit.nn.Conv2d, ntkit.nn.ConvTranspose1d, ntkit.nn.ConvTranspose2d, "
                "ntkit.nn.Linear") in str(info.value)


def test_model_on_meta_device_and_eval_mode_dropout() -> None:
    model = nn.Sequential(ntkit.nn.Linear(4, 10**6, device="meta"), nn.Dropout(0.5), nn.ReLU(),
                          ntkit.nn.Linear(10**6, 1, device="meta")).eval()
    k = ntkit.infinite_kernel(model, VECTORS)
    ref = ntkit.fc_kernel(VECTORS, depth=1)
    assert rel_err(k.ntk, ref.ntk) < 1e-14


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        ntkit.infinite_kernel("relu", VECTORS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="which: expected one of"):
        ntkit.infinite_kernel(_fc(), VECTORS, which="gram")
    with pytest.raises(ValueError, match="expected finite values"):
        ntkit.infinite_kernel(_fc(), torch.tensor([[0.0, float("nan"), 1.0, 2.0]]))
    with pytest.raises(ValueError, match="expected finite values"):
        ntkit.infinite_kernel(_fc(), VECTORS, torch.full((2, 4), float("inf")))
    with pytest.raises(ValueError, match="same feature shape"):
        ntkit.infinite_kernel(_fc(), VECTORS, torch.zeros(2, 5))
    step = nn.Sequential(ntkit.nn.Linear(4, 8), ntkit.nn.Activation("step"), ntkit.nn.Linear(8, 1))
    assert ntkit.infinite_kernel(step, VECTORS).ntk is None  # NNGP only
    with pytest.raises(ValueError, match="NTK of this model is undefined"):
        ntkit.infinite_kernel(step, VECTORS, which="ntk")


@pytest.mark.parametrize(("dtype", "scale", "d"), [(F64, 1e150, 20), (F64, 1e100, 20), (F64, 1e-150, 20),
                                                   (torch.float32, 1e15, 20), (torch.float32, 1e-15, 20)])
def test_huge_and_tiny_norms_are_exact_for_homogeneous_models(dtype: torch.dtype, scale: float, d: int) -> None:
    """K(s x, s x') = s^2 K(x, x') for a bias-free ReLU network: evaluated by exact power-of-two rescaling."""
    x = torch.randn(5, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(ntkit.nn.Linear(d, 8), nn.ReLU(), ntkit.nn.Linear(8, 8), nn.LeakyReLU(0.1),
                          ntkit.nn.Linear(8, 1))
    k = ntkit.infinite_kernel(model, (x * scale).to(dtype), dtype=dtype)
    ref = ntkit.infinite_kernel(model, x)
    for which in ("nngp", "ntk"):
        got = k.get(which).double() / scale**2
        assert bool(torch.isfinite(got).all())
        assert rel_err(got, ref.get(which)) < (1e-13 if dtype == F64 else 1e-5), which


def test_overflowing_norms_give_clear_errors_never_nan() -> None:
    x = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    homogeneous = nn.Sequential(ntkit.nn.Linear(6, 8), nn.ReLU(), ntkit.nn.Linear(8, 1))
    with pytest.raises(ValueError, match="exceed its range"):  # the exact kernel, 1e400, is not a float64
        ntkit.infinite_kernel(homogeneous, x * 1e200)
    with pytest.raises(ValueError, match=r"not positively homogeneous \(at 0 \(Linear\)\)"):
        ntkit.infinite_kernel(_fc(6, b_std=0.1), x * 1e200)
    with pytest.raises(ValueError, match=r"not positively homogeneous \(at 1 \(Tanh\)\)"):
        ntkit.infinite_kernel(nn.Sequential(ntkit.nn.Linear(6, 8), nn.Tanh(), ntkit.nn.Linear(8, 1)), x * 1e200)
    # standard parameterization: a bias adds 1 to the NTK even at b_std = 0, so the stack is not homogeneous
    std = nn.Sequential(ntkit.nn.Linear(6, 8, b_std=0.0, parameterization="standard"), nn.ReLU(),
                        ntkit.nn.Linear(8, 1, bias=False, parameterization="standard"))
    with pytest.raises(ValueError, match=r"not positively homogeneous \(at 0 \(Linear\)\)"):
        ntkit.infinite_kernel(std, x * 1e200)
    with pytest.raises(ValueError, match="float32"):
        ntkit.infinite_kernel(_fc(6, b_std=0.1), (x * 1e20).float(), dtype=torch.float32)
    # a layer norm (eps = 0) makes any bias-free stack scale-invariant: exact at any norm
    ln = nn.Sequential(ntkit.nn.Linear(6, 8), ntkit.nn.LayerNorm(eps=0.0), nn.Tanh(), ntkit.nn.Linear(8, 1, b_std=0.3))
    big, ref = ntkit.infinite_kernel(ln, x * 1e200), ntkit.infinite_kernel(ln, x)
    assert rel_err(big.ntk, ref.ntk) < 1e-13 and rel_err(big.nngp, ref.nngp) < 1e-13
