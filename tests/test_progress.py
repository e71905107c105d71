"""Progress: a tqdm bar in a terminal, silent elsewhere unless asked (NTKIT_PROGRESS), no-op when disabled."""

from __future__ import annotations

import io

import pytest

from ntkit._progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(bar: Progress) -> None:
    for i in range(4):
        bar.update(1, note=f"step {i}")
    bar.close()


def test_terminal_gets_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NTKIT_PROGRESS", raising=False)
    out = _Terminal()
    bar = Progress(4, "tiles", stream=out, interval=0.0)
    assert bar.shown
    _run(bar)
    text = out.getvalue()
    assert "tiles" in text and "4/4" in text and "100%" in text and "step 3" in text
    assert bar.done == 4 and not bar.shown


def test_not_a_terminal_is_silent_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NTKIT_PROGRESS", raising=False)
    out = io.StringIO()
    _run(Progress(4, "tiles", stream=out))
    assert out.getvalue() == ""
    monkeypatch.setenv("NTKIT_PROGRESS", "1")
    _run(Progress(4, "tiles", stream=out, interval=0.0))
    assert "tiles" in out.getvalue() and "4/4" in out.getvalue()


def test_disabled_and_never_are_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTKIT_PROGRESS", "1")
    out = _Terminal()
    bar = Progress(4, "tiles", stream=out, enabled=False)
    _run(bar)
    assert out.getvalue() == "" and bar.done == 4
    monkeypatch.setenv("NTKIT_PROGRESS", "never")
    _run(Progress(4, "tiles", stream=out))
    assert out.getvalue() == ""


def test_cost_units_without_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NTKIT_PROGRESS", raising=False)
    out = _Terminal()
    bar = Progress(2.5, "converge", stream=out, show_counts=False, interval=0.0)
    bar.note = "(resumed)"
    bar.update(1.25)
    bar.update(1.25, note="width 64")
    bar.close()
    text = out.getvalue()
    assert "converge" in text and "100.0%" in text and "width 64" in text and "2.5" not in text


class _FakeNotebookBar:
    """Stands in for tqdm.notebook's widget (whose module name ntkit looks for)."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs, self.n, self.closed = kwargs, 0.0, False

    def update(self, amount: float) -> None:
        self.n += amount

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        self.closed = True


_FakeNotebookBar.__module__ = "tqdm.notebook"


def test_jupyter_gets_the_widget(monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.auto

    monkeypatch.delenv("NTKIT_PROGRESS", raising=False)
    monkeypatch.setattr(tqdm.auto, "tqdm", _FakeNotebookBar)
    bar = Progress(4, "tiles")  # stderr is not a terminal here, but a notebook shows its widget
    assert isinstance(bar._bar, _FakeNotebookBar) and bar._bar.kwargs["total"] == 4
    widget = bar._bar
    _run(bar)
    assert widget.n == 4 and widget.closed and widget.postfix == "step 3"
