"""A study's `compare:` section as parsed (sweep.compare parses and validates it): the one type the
comparison's numbers, words and per-trial table share, in a module of its own so they import it
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompareSpec:
    group: str
    seeds: str
    budget: str | None = None
    claims: tuple[tuple[str, str], ...] = ()
    claim_metrics: tuple[str, ...] = ()
    metrics: tuple[str, ...] | None = None
    group_values: tuple[str, ...] = field(default=(), compare=False)  # in the sweep file's order
    target_effect: float | None = None  # the effect to detect, as a fraction of the worse arm's mean
    # the claims' difference is expected to "rise" or "fall" from the budget's first value to its last
    # (sweep.comparetrend; e.g. CLIPA's inverse scaling: the loss from fewer tokens falls as width grows)
    trend: str | None = None
    budget_values: tuple[str, ...] = field(default=(), compare=False)  # in the sweep file's order
