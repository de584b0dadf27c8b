"""Summary statistics shared by analytics, the run report and the benchmarks' readers."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, by the standard library's inclusive method.

    ``statistics.quantiles(method="inclusive")`` is Hyndman and Fan's type 7 (numpy's default):
    with the values sorted as ``x[0..n-1]``, the rank is ``h = (n - 1) * q / 100`` and the result
    interpolates linearly between ``x[floor h]`` and the next value. For ``[100, 200, 300, 400]``
    the p50 is 250 and the p95 385.

    Args:
        values: the sample (any order, any unit).
        q: the percentile, 0 to 100, with at most two decimals (99.9 is fine).

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
    if len(values) == 1 or hundredths in (0, 10_000):
        return float(min(values) if hundredths == 0 else max(values))
    cut_points = statistics.quantiles(values, n=10_000, method="inclusive")
    return float(cut_points[hundredths - 1])
