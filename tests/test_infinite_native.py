"""Building and loading the native ABReLU kernel (ntkit.infinite.native): cache, fallback, status."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ntkit.infinite import native
from ntkit.infinite.fused import FCSpec, fc_tile
from tests.conftest import reference_fc, rel_err
from tests.prerequisites import needs_c_compiler


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A not-yet-loaded native module state with its own cache directory."""
    monkeypatch.setitem(native._states, "fc", {"loaded": False, "lib": None, "reason": "not loaded yet"})
    monkeypatch.setenv("NTKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NTKIT_NATIVE", raising=False)
    return tmp_path / "cache"


def test_builds_into_the_cache_once(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_c_compiler()
    assert native.library() is not None, native.status()
    built = sorted(fresh.glob("fc_native_*.so"))
    assert len(built) == 1 and not list(fresh.glob("*.c"))  # no leftovers of the build
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setitem(native._states, "fc", {"loaded": False, "lib": None, "reason": "not loaded yet"})
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
    assert native.status() == "native C kernel"


def test_a_failing_compiler_falls_back_to_the_torch_path(fresh: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: simulated' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native.library() is None
    status = native.status()
    assert status.startswith("torch path (") and "simulated" in status
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spec = FCSpec.make(3, "relu")
    nngp, ntk = fc_tile(x, x, spec)  # still works, on the torch code
    ref_nngp, ref_ntk = reference_fc(x, depth=3)
    assert ntk is not None and ref_ntk is not None
    assert rel_err(ntk, ref_ntk) < 1e-13 and rel_err(nngp, ref_nngp) < 1e-13
    with pytest.raises(RuntimeError, match="simulated"):
        fc_tile(x, x, spec, native=True)


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTKIT_NATIVE", "off")
    assert native.library() is None and native.status() == "torch path (NTKIT_NATIVE=0)"


def test_enabled_again_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    needs_c_compiler()
    monkeypatch.setenv("NTKIT_NATIVE", "off")
    assert native.library() is None
    monkeypatch.setenv("NTKIT_NATIVE", "1")
    assert native.library() is not None, native.status()
    assert native.status() == "native C kernel"
