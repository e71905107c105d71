"""The `ntkit dynamics` experiment at small scale: trained networks approach the kernel prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntkit.cli import main as cli_main
from ntkit.experiments.dynamics import DynamicsResult, run_dynamics

# one torch thread per xdist worker: the training loops here oversubscribe 2 cores otherwise (conftest)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def small() -> DynamicsResult:
    return run_dynamics(widths=[64, 256, 1024], n_inits=3, steps=30, n_test=16, depth=2, progress=False)


def test_trained_networks_approach_kernel_prediction(small: DynamicsResult) -> None:
    assert small.complete and small.finished_widths() == [64, 256, 1024]
    d = small.to_dict()
    kern = [v["mean"] for v in d["summary"]["dist_kernel"].values()]
    lin = [v["mean"] for v in d["summary"]["dist_linearized"].values()]
    move = [v["mean"] for v in d["summary"]["movement"].values()]
    # the distance to the infinite-width kernel prediction is dominated by Theta_0 - Theta_inf = O(n^-1/2)
    assert kern[0] > kern[1] > kern[2]
    assert -0.7 <= d["slopes"]["dist_kernel"] <= -0.3
    assert lin[0] > lin[1] > lin[2]
    # the kernel moves less and less; measured here at least as fast as the n^-1/2 bound of Jacot et al.
    # (Theorem 2) / Lee et al. (Theorem 2.1) -- in fact close to 1/n (Dyer & Gur-Ari 2019)
    assert move[0] > move[1] > move[2]
    assert d["slopes"]["movement"] <= -0.3
    assert all(loss < 1.0 for v in small.final_loss.values() for loss in v)


def test_interrupt_keeps_finished_networks() -> None:
    calls = []

    def stop_after_two(result: DynamicsResult) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    res = run_dynamics(widths=[16, 32], n_inits=2, steps=3, n_test=8, depth=1, progress=False, on_init=stop_after_two)
    assert not res.complete
    assert len(res.movement["16"]) == 2 and not res.movement.get("32")
    assert res.finished_widths() == [16]


def test_cli_writes_summary_and_png(tmp_path: Path) -> None:
    out = tmp_path / "dyn"
    rc = cli_main(
        ["dynamics", "--widths", "16", "32", "--inits", "2", "--steps", "3", "--test-points", "8", "--depth", "1",
         "--out", str(out), "--quiet"]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and set(summary["summary"]["movement"]) == {"16", "32"}
    assert (out / "dynamics.png").stat().st_size > 10_000


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["dynamics", "--lr", "-1", "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    assert "learning_rate: expected a number > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="widths"):
        run_dynamics(widths=[], progress=False)
