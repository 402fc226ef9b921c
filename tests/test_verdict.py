"""The one rule for "better / worse / within the spread"."""

import math

import pytest

from addmlib.verdict import verdict


@pytest.mark.parametrize("diff, spread, expected", [
    (0.3, 0.1, "better"),
    (-0.3, 0.1, "worse"),
    (0.05, 0.1, "within the seed spread"),
    (-0.1, 0.1, "within the seed spread"),  # a difference equal to the spread is not beyond it
    (0.0, 0.0, "within the seed spread"),
    (1e-9, 0.0, "better"),
])
def test_a_difference_counts_only_beyond_the_spread(diff, spread, expected):
    assert verdict(diff, spread) == expected


def test_without_a_spread_or_a_score_it_is_undecided():
    assert verdict(0.5, 0.1, n=1) == "undecided (no seed spread to compare with)"
    assert verdict(0.5, math.nan) == "undecided (no seed spread to compare with)"
    assert verdict(math.nan, 0.1) == "undecided (a score is missing)"


def test_the_spread_is_named():
    assert verdict(0.01, 0.1, spread_name="per-volume spread") == "within the per-volume spread"
    assert verdict(0.5, math.inf, spread_name="per-volume spread") == "undecided (no per-volume spread to compare with)"
