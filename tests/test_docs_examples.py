"""The code on the documentation site runs as written (the pages cannot drift from the code).

Every ``.. code-block:: python`` of the hand-written pages under ``docs/`` is executed, the blocks
of one page in order in one namespace (a page is read top to bottom), in a temporary directory.
The gallery's scripts run when the site is built (``./docs.sh``); the API pages' examples are the
docstrings' doctests.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
SKIP_DIRS = {"_build", "_generated", "auto_examples", "api", "examples"}
PAGES = sorted(p for p in DOCS.rglob("*.rst") if not SKIP_DIRS & set(p.relative_to(DOCS).parts))
_BLOCK = re.compile(r"^( *)\.\. code-block:: python *\n((?:\1 +:.*\n)*)\n((?:\1 {3,}.*\n|[ \t]*\n)+)", re.M)


def python_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(m.group(3)) for m in _BLOCK.finditer(page.read_text())]


def test_pages_have_code() -> None:
    pages_with_code = [p.name for p in PAGES if python_blocks(p)]
    assert len(pages_with_code) >= 8, pages_with_code


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NTKIT_PROGRESS", "0")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # a third-party deprecation is not the docs' fault
            for i, block in enumerate(python_blocks(page)):
                exec(compile(block, f"{page.relative_to(DOCS)} python block {i}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
