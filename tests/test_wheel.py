"""The package installs like one: ``python -m build`` makes an sdist and a wheel that carry everything,
and the wheel works in a fresh virtual environment.

Builds the sdist and, from it, the wheel (``python -m build``, an isolated build environment from
PyPI), checks their contents (the C sources of the native loops, ``py.typed``, the console script,
the dependencies), installs the wheel into a new virtual environment and runs ``ntkit --version``,
``python -m ntkit``, one kernel (compiling the native loop from the wheel's own C source into an
empty cache) and ``ntkit converge --quick`` there.

To stay fast the new environment does not download torch again: after the wheel is installed
(``--no-deps``), a ``.pth`` file makes the project environment's packages importable behind it,
and the test checks that every dependency the wheel declares is satisfied there. ntkit itself is
imported from the new environment (checked).

Slow (a build, a venv): runs only with ``NTKIT_WHEEL_TEST=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE_SOURCES = ("ntkit/infinite/_fc_native.c", "ntkit/infinite/_cntk_native.c", "ntkit/infinite/_diag_native.c",
                  "ntkit/infinite/_tokens_native.c", "ntkit/infinite/_atan2p.h")

pytestmark = pytest.mark.skipif(
    os.environ.get("NTKIT_WHEEL_TEST") != "1", reason="slow: set NTKIT_WHEEL_TEST=1 (.ci/run does)"
)


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    sdists, wheels = sorted(out.glob("ntkit-*.tar.gz")), sorted(out.glob("ntkit-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


def test_sdist_carries_everything(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "README.md", "CHANGELOG.md", "src/ntkit/py.typed", "src/ntkit/__main__.py",
                   *(f"src/{s}" for s in NATIVE_SOURCES)):
        assert needed in names, f"the sdist lacks {needed}"


def test_wheel_carries_everything(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        meta_dir = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(f"{meta_dir}/METADATA").decode()
        entry_points = whl.read(f"{meta_dir}/entry_points.txt").decode()
    for needed in ("ntkit/py.typed", "ntkit/__main__.py", "ntkit/cli.py", *NATIVE_SOURCES):
        assert needed in names, f"the wheel lacks {needed}"
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    assert "ntkit = ntkit.cli:main" in entry_points
    for dep in ("torch", "numpy", "scipy", "tqdm"):
        assert f"Requires-Dist: {dep}" in metadata


def test_wheel_installs_and_runs(dist: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
          "--disable-pip-version-check", str(dist["wheel"])])
    # the project environment's packages (torch, numpy, ...) behind the new environment's own
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "_ntkit_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "NTKIT_CACHE_DIR": str(tmp_path / "cache"), "NTKIT_PROGRESS": "0"}
    env.pop("PYTHONPATH", None)

    import ntkit

    version = _run([str(venv / "bin" / "ntkit"), "--version"], env=env).stdout.strip()
    assert version == f"ntkit {ntkit.__version__}"
    assert _run([str(py), "-m", "ntkit", "--version"], env=env).stdout.strip() == version

    check = """
import importlib.metadata as md, json, sys, torch, ntkit
from packaging.requirements import Requirement
unmet = []
for text in md.requires("ntkit"):
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        if md.version(req.name) not in req.specifier:
            unmet.append(text)
    except md.PackageNotFoundError:
        unmet.append(text)
x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
k = ntkit.fc_kernel(x, depth=3, activation="relu", b_std=0.1)
cnn = ntkit.nn.cntk(1, depth=2, device="meta")
img = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
kc = ntkit.infinite_kernel(cnn, img, which="ntk")
from ntkit.infinite import native
print(json.dumps({"file": ntkit.__file__, "unmet": unmet, "ntk": list(k.ntk.shape), "cntk": list(kc.shape),
                  "symmetric": bool((k.ntk - k.ntk.T).abs().max() == 0), "native": native.status()}, default=str))
"""
    report = json.loads(_run([str(py), "-c", check], env=env).stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve().is_relative_to(venv.resolve()), report["file"]
    assert report["unmet"] == []
    assert report["ntk"] == [40, 40] and report["cntk"] == [3, 3] and report["symmetric"]
    compiled = [p.name for p in (tmp_path / "cache").rglob("*.so")] if (tmp_path / "cache").exists() else []
    if _run([str(py), "-c", "import shutil; print(bool(shutil.which('cc') or shutil.which('gcc')))"],
            env=env).stdout.strip() == "True":
        assert compiled, f"no native library was compiled from the wheel's C source: {report['native']}"

    out = tmp_path / "converge"
    done = _run([str(venv / "bin" / "ntkit"), "converge", "--quick", "--out", str(out), "--quiet"], env=env)
    assert "log-log slope" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["widths"] == [64, 256, 1024] and summary["slope"] < -0.3
