"""Confidence intervals over seeds (maskvlp.stats) against values computed by hand and by scipy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskvlp.stats import holm, mean_ci, paired_difference, paired_p_value, t_quantile, verdict


def test_t_interval_matches_known_values():
    # 1..5: mean 3, s = sqrt(2.5) = 1.5811; t_{0.975, 4} = 2.776445; half = 2.776445 * 1.5811 / sqrt(5) = 1.963243
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3 and ci.n == 5
    assert ci.low == pytest.approx(3 - 1.963243, abs=1e-6) and ci.high == pytest.approx(3 + 1.963243, abs=1e-6)
    assert t_quantile(4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)  # three seeds: the study's case
    # three seeds 0.40, 0.42, 0.47: s = 0.036056, half = 4.302653 * 0.036056 / sqrt(3) = 0.089567
    three = mean_ci([0.40, 0.42, 0.47])
    assert three.mean == pytest.approx(0.43) and three.half_width == pytest.approx(0.089567, abs=1e-6)
    # a 90% interval is narrower: t_{0.95, 2} = 2.919986
    assert mean_ci([0.40, 0.42, 0.47], level=0.9).half_width == pytest.approx(2.919986 * 0.036056 / 3**0.5, abs=1e-5)


def test_one_seed_has_no_interval_and_bad_input_is_refused():
    one = mean_ci([0.5])
    assert one.mean == 0.5 and not one.has_interval and math.isnan(one.low)
    assert verdict(one) == "no interval"
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="share no replicate"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_paired_difference_removes_the_shared_seed_variance():
    # seeds differ a lot, the strategies differ by a steady +0.02: unpaired intervals overlap, paired do not
    a = {0: 0.30, 1: 0.50, 2: 0.70}
    b = {0: 0.28, 1: 0.481, 2: 0.679}
    unpaired_overlap = mean_ci(list(a.values())).low < mean_ci(list(b.values())).high
    assert unpaired_overlap
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(0.02, abs=1e-3) and diff.low > 0 and verdict(diff) == "holds"
    assert verdict(paired_difference(b, a)) == "reversed"
    assert verdict(paired_difference({0: 0.5, 1: 0.6, 2: 0.4}, {0: 0.55, 1: 0.5, 2: 0.45})) == "overlap"
    # only shared seeds are paired
    assert paired_difference({0: 1.0, 1: 2.0, 5: 9.0}, {0: 0.5, 1: 1.5}).n == 2


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=20), st.floats(-100, 100))
def test_interval_contains_the_mean_and_shifts_with_the_data(xs, shift):
    ci = mean_ci(xs)
    assert ci.low <= ci.mean + 1e-9 and ci.mean <= ci.high + 1e-9
    moved = mean_ci([x + shift for x in xs])
    assert moved.mean == pytest.approx(ci.mean + shift, abs=1e-6)
    assert moved.half_width == pytest.approx(ci.half_width, rel=1e-6, abs=1e-6)


def test_the_detectable_difference_is_found_with_80_percent_power_by_simulation():
    import numpy as np
    from scipy.stats import ttest_1samp

    from maskvlp.stats import detectable_difference, power

    sd, n = 0.03, 6
    mde = detectable_difference(sd, n)
    assert power(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(0)
    draws = rng.normal(mde, sd, (20000, n))
    found = (ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean()
    assert found == pytest.approx(0.8, abs=0.012)
    assert detectable_difference(sd, 2 * n) < mde  # more seeds see smaller effects


def test_seeds_needed_matches_the_textbook_paired_t_sample_size():
    from maskvlp.stats import seeds_needed

    # Cohen's d = 0.5, two-sided 5%, 80% power: 34 pairs (G*Power's paired t-test answer); d = 0.8: 15
    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(0.8, 1.0) == 15
    assert seeds_needed(1e-6, 1.0) is None  # beyond MAX_SEEDS


def test_a_zero_width_interval_has_its_own_verdict():
    assert verdict(paired_difference({0: 0.5, 1: 0.6}, {0: 0.25, 1: 0.35})) == "no spread"


def test_paired_p_value_is_scipys_one_sample_t_test_and_agrees_with_the_interval():
    from scipy.stats import ttest_1samp

    diffs = [0.02, 0.11, 0.04]
    ci = mean_ci(diffs)
    sd = (sum((d - ci.mean) ** 2 for d in diffs) / 2) ** 0.5
    assert paired_p_value(ci.mean, sd, 3) == pytest.approx(ttest_1samp(diffs, 0).pvalue)
    assert (paired_p_value(ci.mean, sd, 3) < 0.05) == (verdict(ci) == "holds")
    assert math.isnan(paired_p_value(0.1, 0.0, 3)) and math.isnan(paired_p_value(0.1, 0.2, 1))


def test_holm_steps_down_from_the_smallest_p_and_stops_at_the_first_that_fails():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop (0.04 is not tried)
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.01, math.nan, 0.02]) == [True, False, True]  # nan: not in the family of 2
    assert holm([0.049]) == [True] and holm([0.051]) == [False] and holm([]) == []


@given(st.lists(st.floats(0, 1), max_size=30))
def test_holm_lies_between_bonferroni_and_the_uncorrected_tests(ps):
    rejects = holm(ps)
    m = len(ps)
    for p, r in zip(ps, rejects, strict=True):
        if p <= 0.05 / m:
            assert r  # Bonferroni's rejections are Holm's
        if r:
            assert p <= 0.05  # and Holm rejects nothing an uncorrected test keeps
