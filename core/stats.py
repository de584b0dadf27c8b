"""Summary statistics shared by analytics, the run report and the benchmarks' readers.

The one percentile implementation of the project: :func:`percentile`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

PercentileMethod = Literal["inclusive", "nearest-rank"]
"""How :func:`percentile` picks its value: interpolated (type 7) or one of the sample's values."""


def percentile(
    values: Sequence[float], q: float, *, method: PercentileMethod = "inclusive"
) -> float | None:
    """The ``q``-th percentile, by the standard library's inclusive method or by nearest rank.

    ``statistics.quantiles(method="inclusive")`` is Hyndman and Fan's type 7 (numpy's default):
    with the values sorted as ``x[0..n-1]``, the rank is ``h = (n - 1) * q / 100`` and the result
    interpolates linearly between ``x[floor h]`` and the next value. For ``[100, 200, 300, 400]``
    the p50 is 250 and the p95 385. ``nearest-rank`` (the benchmarks' tables) is the value at
    rank ``max(1, ceil(n * q / 100))`` counted from 1: for 1..100 the p95 is 95.

    Args:
        values: the sample (any order, any unit).
        q: the percentile, 0 to 100, with at most two decimals (99.9 is fine).
        method: ``inclusive`` (default) or ``nearest-rank``.

    Returns:
        The percentile in the unit of ``values``, or ``None`` for an empty sample.

    Raises:
        ValueError: ``q`` is outside 0..100 or has more than two decimals.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    hundredths = round(q * 100)
    if abs(q * 100 - hundredths) > 1e-9:
        raise ValueError(f"percentile {q} has more than two decimals")
    if not values:
        return None
    if method == "nearest-rank":
        ordered = sorted(values)
        return float(ordered[max(0, math.ceil(len(ordered) * hundredths / 10_000) - 1)])
    if len(values) == 1 or hundredths in (0, 10_000):
        return float(min(values) if hundredths == 0 else max(values))
    cut_points = statistics.quantiles(values, n=10_000, method="inclusive")
    return float(cut_points[hundredths - 1])
