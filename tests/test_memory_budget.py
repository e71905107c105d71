"""One memory-budget parser for every memory keyword (``"512M"`` means the same everywhere)."""

from __future__ import annotations

import pytest
import torch

import ntkit
from ntkit._validation import parse_memory_budget
from ntkit.compute.tiling import parse_budget
from ntkit.empirical._common import parse_memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512M", 512 << 20), ("512MB", 512 << 20), ("512 MiB", 512 << 20), ("2GiB", 2 << 30), ("2 gb", 2 << 30),
     ("1.5G", 3 << 29), ("4096", 4096), ("64k", 64 << 10), ("1T", 1 << 40), ("1e3", 1000)],
)
def test_every_parser_reads_the_same_strings(text: str, expected: int) -> None:
    assert parse_memory_budget(text) == expected
    assert parse_memory(text) == expected
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["", "M", "-1M", "0", "0.1", "12 parsecs", "1e400", float("nan"), float("inf"), -5, 0])
def test_bad_budgets_are_refused_with_what_was_expected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"memory_budget: expected a positive number of bytes .* got"):
        parse_memory_budget(bad)


@pytest.mark.parametrize("bad", [True, None, [1024], b"1M"])
def test_non_numbers_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match="memory_budget: expected"):
        parse_memory_budget(bad)


def test_empirical_ntk_takes_the_spellings_features_take(gen: torch.Generator) -> None:
    # "512M" raised KeyError: 'm' in empirical_ntk while features() accepted it
    model = torch.nn.Sequential(ntkit.nn.Linear(3, 16), torch.nn.ReLU(), ntkit.nn.Linear(16, 2)).double()
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ref = ntkit.empirical_ntk(model, x, mode="trace")
    for budget in ("512M", "1.5G", "2GiB", 1 << 20):
        torch.testing.assert_close(ntkit.empirical_ntk(model, x, mode="trace", memory_budget=budget), ref,
                                   rtol=1e-12, atol=1e-12)
