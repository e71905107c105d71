"""tests/prerequisites.py: a missing prerequisite skips locally and fails under CI=true / CI=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntkit.infinite import native
from tests import prerequisites
from tests.prerequisites import needs_c_compiler, needs_shared_data


@pytest.mark.parametrize(("ci", "outcome"), [(None, pytest.skip.Exception), ("", pytest.skip.Exception),
                                             ("false", pytest.skip.Exception), ("0", pytest.skip.Exception),
                                             ("true", pytest.fail.Exception), ("TRUE", pytest.fail.Exception),
                                             ("1", pytest.fail.Exception)])
def test_missing_prerequisite_skips_or_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str | None,
                                             outcome: type[BaseException]) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert prerequisites.in_ci() == (outcome is pytest.fail.Exception)
    with pytest.raises(outcome, match=r"not found at .*absent.*\.\./shared/data"):
        needs_shared_data(tmp_path / "absent", what="the test data")
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.raises(outcome, match=r"no C compiler.*install one"):
        needs_c_compiler()


def test_present_prerequisite_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Even under CI=true a present prerequisite neither skips nor fails (either would raise here)."""
    monkeypatch.setenv("CI", "true")
    assert prerequisites.in_ci()
    needs_shared_data(tmp_path)  # neither skips nor fails
    monkeypatch.setattr(native, "_compiler", lambda: "cc")
    needs_c_compiler()
