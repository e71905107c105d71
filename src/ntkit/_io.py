"""Small file-system helpers shared by the experiments and the on-disk kernel outputs."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a killed run) never sees a half-written file.

    The text goes to ``<path>.tmp`` beside the target first and is then renamed over it; a rename
    within one directory is atomic on POSIX and Windows file systems.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
