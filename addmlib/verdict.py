"""One rule for reading a difference of two scores against their spread: better, worse, or within the spread.

Used by the ablation's claims (spread over training seeds), the benchmark's quality comparison and the evaluation
notebook (spread over volumes), so that every "better" in the workbench means the same thing.
"""

from __future__ import annotations

import math


def verdict(diff: float, spread: float, n: int = 2, spread_name: str = "seed spread") -> str:
    """The reading of ``diff`` (a score minus the score it is compared with) against ``spread`` (e.g. the larger of
    the two standard deviations), each score from ``n`` samples at least.

    "better" (``diff > spread``), "worse" (``-diff > spread``), else "within the <spread_name>"; "undecided (...)"
    when there is no spread to compare with (``n < 2``, or ``spread`` not finite) or ``diff`` is not finite.
    """
    if not math.isfinite(diff):
        return "undecided (a score is missing)"
    if n < 2 or not math.isfinite(spread):
        return f"undecided (no {spread_name} to compare with)"
    if abs(diff) <= spread:
        return f"within the {spread_name}"
    return "better" if diff > 0 else "worse"
