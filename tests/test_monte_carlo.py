"""Monte-Carlo kernels (:func:`ntkit.monte_carlo_kernel`): agreement with the closed forms within their
standard errors, the 1/sqrt(n) shrinkage of the error, running estimates, reproducibility, models
without a closed form (max pooling, batch norm, attention), memory flat in ``n_samples``, bad input.

Finite-width bias: the estimate converges to the expected kernel at the drawn width, which differs
from the infinite-width limit by O(1/width) (exactly 0 for one hidden layer). The widths below make
that bias small against the standard errors of 64 draws (relative SE of the NTK ~1.5-2 %, of the
NNGP ~10-25 %; bias ~1/512 resp. ~1/128 relative).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def _data(*shape: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _fc(g: torch.Generator | None, width: int = 512) -> nn.Module:
    return ntkit.nn.fc(4, width, 2, depth=2, b_std=0.2, generator=g, dtype=F64)


def _cntk_gap(g: torch.Generator | None, width: int = 128) -> nn.Module:
    return ntkit.nn.cntk(1, 2, width=width, out_features=2, generator=g, dtype=F64)


def _tiny(g: torch.Generator | None) -> nn.Module:
    return ntkit.nn.fc(3, 32, 1, depth=1, b_std=0.1, generator=g, dtype=F64)


def _maxpool_bn(g: torch.Generator, width: int = 48) -> nn.Module:
    """Conv - BatchNorm (eval) - ReLU - MaxPool - Conv - ReLU - GAP - Linear: no closed-form limit."""
    return nn.Sequential(
        ntkit.nn.Conv2d(1, width, 3, generator=g, dtype=F64), nn.BatchNorm2d(width, dtype=F64), nn.ReLU(),
        nn.MaxPool2d(2), ntkit.nn.Conv2d(width, width, 3, generator=g, dtype=F64), nn.ReLU(),
        ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(width, 2, generator=g, dtype=F64),
    ).eval()


@pytest.mark.parametrize(
    ("build", "x"),
    [(_fc, _data(6, 4)), (_cntk_gap, _data(4, 1, 5, 5))],
    ids=["fc-depth2-width512", "cntk-gap-depth2-width128"],
)
def test_agrees_with_infinite_kernel_within_4_standard_errors(build: object, x: torch.Tensor) -> None:
    assert callable(build)
    mc = ntkit.monte_carlo_kernel(build, x, n_samples=64, seed=0)
    limit = ntkit.infinite_kernel(build(None), x)
    assert isinstance(mc, ntkit.MonteCarloKernel) and mc.n_samples == 64
    for which in ("nngp", "ntk"):
        est, se = mc.get(which), mc.stderr(which)
        assert est.dtype == F64 and est.shape == limit.get(which).shape
        assert bool((se > 0).all()) and bool(torch.isfinite(se).all())
        z = mc.zscore(limit, which)
        assert float(z.abs().max()) < 4.0, (which, z)
        # the estimate is informative: its error bars are well below the kernel's own size
        assert float((se / limit.get(which).abs()).max()) < 0.35


def test_standard_error_shrinks_as_inverse_sqrt_n() -> None:
    x = _data(5, 3)
    runs = ntkit.monte_carlo_kernel(_tiny, x, n_samples=[64, 256, 1024], seed=3)
    assert [r.n_samples for r in runs] == [64, 256, 1024]
    for which in ("nngp", "ntk"):
        ratio = float((runs[1].stderr(which) / runs[2].stderr(which)).median())
        assert 1.7 < ratio < 2.35, (which, ratio)  # sqrt(1024 / 256) = 2
        log_se = torch.stack([r.stderr(which).mean().log() for r in runs])
        slope = float((log_se[2] - log_se[0]) / math.log(1024 / 64))
        assert -0.65 < slope < -0.35, (which, slope)  # -1/2; the SE of 64 draws is itself ~9 % noisy


def test_running_estimates_equal_separate_calls_and_seeds_reproduce() -> None:
    x, y = _data(4, 3), _data(3, 3, seed=6)
    runs = ntkit.monte_carlo_kernel(_tiny, x, y, n_samples=[2, 5], seed=11)
    assert isinstance(runs, list)
    for run in runs:
        alone = ntkit.monte_carlo_kernel(_tiny, x, y, n_samples=run.n_samples, seed=11)
        assert isinstance(alone, ntkit.MonteCarloKernel)
        for which in ("nngp", "ntk"):
            assert torch.equal(run.get(which), alone.get(which))
            assert torch.equal(run.stderr(which), alone.stderr(which))
    again = ntkit.monte_carlo_kernel(_tiny, x, y, n_samples=5, generator=torch.Generator().manual_seed(11))
    other = ntkit.monte_carlo_kernel(_tiny, x, y, n_samples=5, seed=12)
    assert isinstance(again, ntkit.MonteCarloKernel) and isinstance(other, ntkit.MonteCarloKernel)
    assert torch.equal(again.get("ntk"), runs[1].get("ntk"))
    assert not torch.allclose(other.get("ntk"), runs[1].get("ntk"))
    assert runs[1].get("ntk").shape == (4, 3)


def test_estimate_is_the_mean_of_the_draws_and_se_their_spread() -> None:
    """Brute force: the per-draw empirical kernels of the same draws, stacked."""
    x = _data(4, 3)
    n = 6
    mc = ntkit.monte_carlo_kernel(_tiny, x, n_samples=n, seed=2)
    assert isinstance(mc, ntkit.MonteCarloKernel)
    master = torch.Generator().manual_seed(2)
    ntks, nngps = [], []
    for _ in range(n):
        s = int(torch.randint(0, 2**62, (1,), generator=master))
        net = _tiny(torch.Generator().manual_seed(s))
        ntks.append(ntkit.empirical_ntk(net, x, mode="trace"))
        nngps.append(ntkit.empirical_nngp(net, x))
    for which, stack in (("ntk", torch.stack(ntks)), ("nngp", torch.stack(nngps))):
        torch.testing.assert_close(mc.get(which), stack.mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(mc.stderr(which), stack.std(0) / math.sqrt(n), rtol=1e-9, atol=1e-14)


def test_modes_match_empirical_shapes_and_trace() -> None:
    x = _data(3, 4)
    full = ntkit.monte_carlo_kernel(lambda g: _fc(g, 64), x, n_samples=3, mode="full")
    diag = ntkit.monte_carlo_kernel(lambda g: _fc(g, 64), x, n_samples=3, mode="diagonal")
    trace = ntkit.monte_carlo_kernel(lambda g: _fc(g, 64), x, n_samples=3)
    assert isinstance(full, ntkit.MonteCarloKernel) and isinstance(diag, ntkit.MonteCarloKernel)
    assert isinstance(trace, ntkit.MonteCarloKernel)
    assert full.get("ntk").shape == (3, 3, 2, 2) and diag.get("nngp").shape == (3, 3, 2)
    for which in ("nngp", "ntk"):
        torch.testing.assert_close(full.get(which).diagonal(dim1=2, dim2=3), diag.get(which))
        torch.testing.assert_close(diag.get(which).mean(-1), trace.get(which))
    only = ntkit.monte_carlo_kernel(lambda g: _fc(g, 64), x, n_samples=3, which="nngp")
    assert isinstance(only, ntkit.MonteCarloKernel) and only.ntk is None and only.ntk_stderr is None
    torch.testing.assert_close(only.get("nngp"), trace.get("nngp"))
    with pytest.raises(ValueError, match="not requested"):
        only.get("ntk")
    one = ntkit.monte_carlo_kernel(lambda g: _fc(g, 64), x, n_samples=1)
    assert isinstance(one, ntkit.MonteCarloKernel) and bool(one.stderr("ntk").isnan().all())


def test_maxpool_batchnorm_cnn_reports_standard_errors_and_is_stable_across_seeds() -> None:
    x = _data(4, 1, 8, 8)
    unsupported = r"BatchNorm2d\) has no infinite-width kernel transform.*ntkit\.monte_carlo_kernel"
    with pytest.raises(ArchitectureError, match=unsupported):
        ntkit.infinite_kernel(_maxpool_bn(torch.Generator()), x)
    a = ntkit.monte_carlo_kernel(_maxpool_bn, x, n_samples=24, seed=0)
    b = ntkit.monte_carlo_kernel(_maxpool_bn, x, n_samples=24, seed=1)
    assert isinstance(a, ntkit.MonteCarloKernel) and isinstance(b, ntkit.MonteCarloKernel)
    for which in ("nngp", "ntk"):
        for r in (a, b):
            assert bool(torch.isfinite(r.get(which)).all()) and bool((r.stderr(which) > 0).all())
        assert float(a.get(which).diagonal().min()) > 0
        combined = (a.stderr(which) ** 2 + b.stderr(which) ** 2).sqrt()
        z = (a.get(which) - b.get(which)) / combined
        assert float(z.abs().max()) < 5.0, (which, z)
        assert not torch.equal(a.get(which), b.get(which))  # independent draws


def test_train_mode_batchnorm_is_refused() -> None:
    x = _data(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"BatchNorm and Dropout layers in eval mode.*call model.eval\(\)"):
        ntkit.monte_carlo_kernel(lambda g: _maxpool_bn(g).train(), x, n_samples=2, which="nngp")


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch's vmap of attention
def test_attention_model_instance_with_default_reinit() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 16, dtype=F64)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True, dtype=F64)
            self.out = nn.Linear(16, 2, dtype=F64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.out(a.mean(1))

    model = Attention().eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    x = _data(3, 5, 4)
    r1 = ntkit.monte_carlo_kernel(model, x, n_samples=4, seed=7)
    r2 = ntkit.monte_carlo_kernel(model, x, n_samples=4, seed=7)
    assert isinstance(r1, ntkit.MonteCarloKernel) and isinstance(r2, ntkit.MonteCarloKernel)
    assert torch.equal(r1.get("ntk"), r2.get("ntk"))  # torch's global generator seeded per draw
    assert torch.equal(torch.random.get_rng_state(), rng)  # ... and restored
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # the model is not touched
    direct = ntkit.empirical_ntk(model, x, mode="trace")
    assert not torch.allclose(r1.get("ntk"), direct)  # the draws are fresh initialisations, not the model
    assert bool((r1.stderr("ntk") > 0).all())


def test_custom_reinit_is_used() -> None:
    calls = []

    def reinit(model: nn.Module, generator: torch.Generator) -> None:
        calls.append(generator)
        for p in model.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))

    model = nn.Sequential(nn.Linear(3, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 1, dtype=F64))
    res = ntkit.monte_carlo_kernel(model, _data(3, 3), n_samples=3, reinit=reinit, which="nngp")
    assert len(calls) == 3 and all(isinstance(g, torch.Generator) for g in calls)
    assert isinstance(res, ntkit.MonteCarloKernel) and bool((res.stderr("nngp") > 0).all())


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset Linux's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mib(fn: object) -> float:
    """Peak resident memory (MiB) while ``fn()`` runs: the high-water mark, reset first."""
    assert callable(fn)
    _reset_peak()
    fn()
    return _status_mib("VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc (Linux)")
def test_memory_does_not_grow_with_n_samples() -> None:
    big = torch.ones(64 * 2**20 // 8, dtype=F64)  # 64 MiB, touched
    del big
    if not _reset_peak() or _status_mib("VmHWM") > _status_mib("VmRSS") + 32:
        pytest.skip("the peak-RSS mark cannot be reset here (/proc/self/clear_refs)")
    x = _data(500, 3)  # one (500, 500) float64 kernel: 1.9 MiB
    kernel_mib = 500 * 500 * 8 / 2**20

    def run(n: int) -> None:
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=n, seed=0)

    run(2)  # warm up the allocator and the engines
    few = _peak_rss_mib(lambda: run(4))
    many = _peak_rss_mib(lambda: run(32))
    # Keeping the 28 extra per-draw kernels (NNGP and NTK) would add ~107 MiB.
    assert many - few < 8 * kernel_mib, (few, many)


def test_progress_bar(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NTKIT_PROGRESS", "1")
    ntkit.monte_carlo_kernel(_tiny, _data(2, 3), n_samples=3, which="nngp", progress=True)
    assert "Monte Carlo draws" in capsys.readouterr().err


def test_architecture_change_between_draws_is_refused() -> None:
    widths = iter([16, 16, 24])

    def changing(g: torch.Generator) -> nn.Module:
        return ntkit.nn.fc(3, next(widths), 1, depth=1, generator=g, dtype=F64)

    changed = r"architecture of the first.*draw 3.*shape \(24, 3\).*instead of shape \(16, 3\)"
    with pytest.raises(ValueError, match=changed):
        ntkit.monte_carlo_kernel(changing, _data(2, 3), n_samples=4)
    acts = iter([nn.ReLU(), nn.Tanh()])

    def other_activation(g: torch.Generator) -> nn.Module:
        return nn.Sequential(ntkit.nn.Linear(3, 8, generator=g), next(acts), ntkit.nn.Linear(8, 1, generator=g))

    with pytest.raises(ValueError, match=r"draw 2 with module '1': Tanh instead of ReLU"):
        ntkit.monte_carlo_kernel(other_activation, _data(2, 3), n_samples=2)


def test_bad_inputs() -> None:
    x = _data(2, 3)
    for bad in (0, -1, [], [3, 3], [4, 2]):
        with pytest.raises(ValueError, match="n_samples: expected"):
            ntkit.monte_carlo_kernel(_tiny, x, n_samples=bad)
    for bad_type in (2.0, True, "4", None):
        with pytest.raises(TypeError, match="n_samples: expected"):
            ntkit.monte_carlo_kernel(_tiny, x, n_samples=bad_type)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model_fn: expected a function .* or a model"):
        ntkit.monte_carlo_kernel("relu", x, n_samples=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model_fn: expected a function returning a torch.nn.Module.*draw 1"):
        ntkit.monte_carlo_kernel(lambda g: torch.zeros(3), x, n_samples=2)  # type: ignore[arg-type,return-value]
    fixed = _tiny(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"fresh random initialisation.*draw 2"):
        ntkit.monte_carlo_kernel(lambda g: fixed, x, n_samples=2)
    with pytest.raises(ValueError, match="reinit: expected None with a function model_fn"):
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=2, reinit=lambda m, g: None)
    with pytest.raises(TypeError, match="reinit: expected a callable"):
        ntkit.monte_carlo_kernel(fixed, x, n_samples=2, reinit=3)  # type: ignore[arg-type]

    class NoReset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3, 1, dtype=F64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    with pytest.raises(ValueError, match=r"model \(NoReset\) without one; pass reinit="):
        ntkit.monte_carlo_kernel(NoReset(), x, n_samples=2)
    with pytest.raises(ValueError, match="seed and generator: expected one of them"):
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=2, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"generator: expected a torch\.Generator"):
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=2, generator=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="which: expected one of"):
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=2, which="cov")
    with pytest.raises(ValueError, match="mode: expected one of"):
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=2, mode="blocks")
    with pytest.raises(ValueError, match=r"x1 and x2: expected the same feature shape"):
        ntkit.monte_carlo_kernel(_tiny, x, _data(2, 4), n_samples=2)
    with pytest.raises(ValueError, match=r"x1: the model failed on an input of shape \(1, 5\)"):
        ntkit.monte_carlo_kernel(_tiny, _data(2, 5), n_samples=2, which="nngp")
    with pytest.raises(TypeError, match="progress: expected a bool"):
        ntkit.monte_carlo_kernel(_tiny, x, n_samples=2, progress=1)  # type: ignore[arg-type]
    mc = ntkit.monte_carlo_kernel(_tiny, x, n_samples=2)
    assert isinstance(mc, ntkit.MonteCarloKernel)
    with pytest.raises(ValueError, match=r"reference: expected a kernel of shape \(2, 2\)"):
        mc.zscore(torch.zeros(3, 3))
