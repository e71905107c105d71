"""Command-line options shared by the experiment commands: the bias scale ``--b-std`` and its old spelling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's ``dest`` and notes the rename on stderr.

    Parameters
    ----------
    option_strings, dest, **kwargs
        As for any :class:`argparse.Action` (``dest`` is the new option's).
    new : str
        The new spelling, for the note (``"--b-std"``).
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_b_std_argument(parser: argparse.ArgumentParser, default: float) -> None:
    """``--b-std`` (the bias scale, ``args.b_std``) and ``--beta``, its deprecated alias.

    Examples
    --------
    >>> import argparse, contextlib, io
    >>> parser = argparse.ArgumentParser(prog="ntkit converge")
    >>> add_b_std_argument(parser, 0.1)
    >>> parser.parse_args([]).b_std, parser.parse_args(["--b-std", "0.3"]).b_std
    (0.1, 0.3)
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     parser.parse_args(["--beta", "0.2"]).b_std
    0.2
    >>> err.getvalue()
    'ntkit converge: --beta is deprecated; use --b-std\\n'
    """
    parser.add_argument("--b-std", type=float, default=default, help=f"bias scale (default {default:g})")
    parser.add_argument("--beta", dest="b_std", type=float, action=DeprecatedAlias, new="--b-std",
                        default=argparse.SUPPRESS, help="deprecated alias of --b-std")
