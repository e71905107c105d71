"""Where a node of a captured forward is written, for the messages of :mod:`ntkit.infinite.capture`.

:func:`target` names the call as the forward writes it (``torch.cat``, ``Tensor.view``, ``operator.mul``, a
submodule's name); :func:`where` the innermost source line of the user's code that made the node
(``model.py:42 in forward: y = torch.cat([a, b], 1)``), from the stack trace torch.fx records.
"""

from __future__ import annotations

import os
import re

import torch
import torch.fx as fx

_TORCH_DIR = os.path.dirname(torch.__file__)
#: The capture's own files: their frames are never the user's line.
_OURS = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), f) for f in ("capture.py",
                                                                                     "capture_messages.py"))


def frame(frames: list[tuple[str, str, str, str]]) -> str:
    """``file.py:42 in forward: y = torch.cat([a, b], 1)`` for the innermost frame of the user's code."""
    for file, line, func, code in reversed(frames):
        path = os.path.abspath(file)
        if not path.startswith(_TORCH_DIR) and path not in _OURS:
            return f"{os.path.basename(file)}:{line} in {func}: {code.strip()}"
    return "an unknown line"


def where(node: fx.Node) -> str:
    """The source line of ``node`` (see :func:`frame`)."""
    return frame(re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', node.stack_trace or ""))


def target(node: fx.Node) -> str:
    """The call as written: ``torch.cat``, ``Tensor.view``, ``operator.mul``, ``pool (MaxPool2d)``."""
    if node.op in ("call_method", "call_module"):
        return f"Tensor.{node.target}" if node.op == "call_method" else str(node.target)
    if node.op == "call_function":
        try:
            name = fx.node._get_qualified_name(node.target)  # type: ignore[arg-type]
        except (RuntimeError, AttributeError):
            name = getattr(node.target, "__name__", repr(node.target))
        return name.replace("_operator.", "operator.").replace("torch._C._nn.", "torch.nn.functional.")
    return f"{node.op} {node.target}"


__all__ = ["frame", "target", "where"]
