"""Confidence intervals over replicates (seeds): pure functions, no I/O.

Used by the comparison report (maskvlp.sweep.compare): a metric's mean over seeds with a Student-t
interval, and the paired difference of two strategies trained on the same seeds (same data order,
initialisation and split), which removes the seed-to-seed variance the two share; and the power of that
paired test: the smallest difference it detects with 80% power at the 5% level, given the observed
spread of the per-seed differences, and the seeds an effect of a given size would need; and, for a
family of such tests, each one's p-value and Holm's step-down correction (which tests survive when the
chance of any false "holds" over the whole family is held at 5%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
POWER = 0.8  # the detectable effect: what the paired t-test finds 80% of the time at the 5% level
MAX_SEEDS = 10_000  # seeds_needed gives up above this


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


REJECTS = ("holds", "reversed")  # the verdicts of a t-test that rejected "no difference"
TESTED = (*REJECTS, "overlap")  # the verdicts of a t-test that was made (the others: no test possible)


def verdict(diff: Interval) -> str:
    """`holds` (the interval of a - b lies above 0), `reversed` (below 0), `overlap` (it contains 0),
    `no interval` (a single replicate), or `no spread` (the same difference on every seed: a zero-width
    interval, which says nothing about how much the difference could vary; no t-test is possible)."""
    if not diff.has_interval:
        return "no interval"
    if diff.high == diff.low:
        return "no spread"
    if diff.low > 0:
        return "holds"
    if diff.high < 0:
        return "reversed"
    return "overlap"


def power(effect: float, sd: float, n: int, level: float = LEVEL) -> float:
    """The probability that a two-sided paired t-test at 1 - `level` over `n` seeds rejects "no
    difference" when the true mean difference is `effect` and the per-seed differences spread with
    standard deviation `sd` (the noncentral t distribution)."""
    from scipy.stats import nct

    if n < 2 or not sd > 0:
        raise ValueError(f"power needs n >= 2 and sd > 0, got n={n}, sd={sd}")
    q, nc = t_quantile(n - 1, level), abs(effect) * math.sqrt(n) / sd
    value = float(nct.sf(q, n - 1, nc) + nct.cdf(-q, n - 1, nc))
    if not math.isfinite(value):  # scipy's noncentral t gives up far in the tail: the test always rejects
        return 1.0 if nc > q else 0.0
    return value


def detectable_difference(sd: float, n: int, level: float = LEVEL, target_power: float = POWER) -> float:
    """The smallest |mean difference| the paired t-test over `n` seeds detects with `target_power`
    (two-sided, at 1 - `level`), for per-seed differences of standard deviation `sd`."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return math.nan
    high = sd
    while power(high, sd, n, level) < target_power:
        high *= 2
    return float(brentq(lambda e: power(e, sd, n, level) - target_power, 0.0, high, xtol=sd * 1e-9))


def seeds_needed(effect: float, sd: float, level: float = LEVEL, target_power: float = POWER) -> int | None:
    """The fewest seeds (>= 2) whose paired t-test detects a mean difference `effect` with `target_power`,
    if the per-seed differences spread as `sd`; None when more than MAX_SEEDS would be needed."""
    if not sd > 0:
        return None
    if not effect:
        return None
    n = 2
    while power(effect, sd, n, level) < target_power:
        n = n * 2 if n < 64 else n + 64
        if n > MAX_SEEDS:
            return None
    low = max(2, n // 2 if n <= 128 else n - 64)
    for m in range(low, n + 1):  # the first passing count (power grows with n)
        if power(effect, sd, m, level) >= target_power:
            return m
    return n


def paired_p_value(mean: float, sd: float, n: int) -> float:
    """The two-sided p-value of the paired t-test of "no difference" for per-seed differences with this
    mean and standard deviation over `n` seeds; nan when it cannot be made (n < 2, or zero spread)."""
    from scipy.stats import t

    if n < 2 or not sd > 0:
        return math.nan
    return float(2 * t.sf(abs(mean) * math.sqrt(n) / sd, n - 1))


def holm(p_values: list[float], level: float = LEVEL) -> list[bool]:
    """Holm's step-down correction: which tests of a family reject at a family-wise error of 1 - `level`.
    The k-th smallest of the m p-values is compared with (1 - level) / (m - k + 1), smallest first, and the
    first that fails stops the rest. Tests without a p-value (nan) are not in the family and never reject."""
    alpha = 1 - level
    tested = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    rejects = [False] * len(p_values)
    for k, (p, i) in enumerate(tested):
        if p > alpha / (len(tested) - k):
            break
        rejects[i] = True
    return rejects
