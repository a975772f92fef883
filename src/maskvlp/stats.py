"""Confidence intervals over replicates (seeds): pure functions, no I/O.

Used by the comparison report (maskvlp.sweep.compare): a metric's mean over seeds with a Student-t
interval, and the paired difference of two strategies trained on the same seeds (same data order,
initialisation and split), which removes the seed-to-seed variance the two share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # nan when n < 2 (no spread to estimate)
    high: float
    n: int
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student-t critical value: P(|T_df| <= q) = level."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci(values: list[float], level: float = LEVEL) -> Interval:
    """Mean and t-interval: mean +- t_{n-1} * s / sqrt(n), with s the sample standard deviation."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"mean_ci: values must be finite, got {xs}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


def paired_difference(a: dict[object, float], b: dict[object, float], level: float = LEVEL) -> Interval:
    """a - b over the replicates both have (keyed by seed): the t-interval of the per-seed differences."""
    common = sorted(set(a) & set(b), key=str)
    if not common:
        raise ValueError("paired_difference: the two groups share no replicate (seed)")
    return mean_ci([a[k] - b[k] for k in common], level)


def verdict(diff: Interval) -> str:
    """`holds` (the interval of a - b lies above 0), `reversed` (below 0), `overlap` (it contains 0),
    or `no interval` (a single replicate)."""
    if not diff.has_interval:
        return "no interval"
    if diff.low > 0:
        return "holds"
    if diff.high < 0:
        return "reversed"
    return "overlap"
