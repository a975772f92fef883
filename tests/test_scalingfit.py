"""Scaling-law fits: known parameters recovered within their intervals, bad extrapolation flagged,
non-convergence reported instead of numbers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp.sweep import fitforms as sf


def _points(E, A, alpha, n=12, noise=0.004, seed=0):
    rng = np.random.default_rng(seed)
    c = np.geomspace(1e11, 1e14, n)
    c0 = float(np.exp(np.mean(np.log(c))))
    y = E + A * (c / c0) ** -alpha + rng.normal(0, noise, n)
    return c, y


def test_compute_fit_recovers_known_parameters_within_their_intervals():
    c, y = _points(0.25, 0.2, 0.45)
    f = sf.fit("compute", y, c, bootstrap=300)
    assert f.converged, f.message
    for name, true in (("E", 0.25), ("A", 0.2), ("alpha", 0.45)):
        lo, hi = f.intervals[name]
        assert lo <= true <= hi, (name, true, f.intervals[name])
        assert lo <= f.params[name] <= hi
    assert f.rmse < 0.01 and f.bootstrap_failed < 0.2
    lo, hi = sf.band(f, 1e15)  # a prediction band beyond the data is wider than within it
    lo_in, hi_in = sf.band(f, 1e12)
    assert (hi - lo) > (hi_in - lo_in)


def test_joint_fit_recovers_model_and_data_exponents():
    rng = np.random.default_rng(1)
    n = np.repeat(np.geomspace(1e5, 3e6, 5), 4)
    d = np.tile(np.geomspace(500, 8000, 4), 5)
    n0, d0 = np.exp(np.mean(np.log(n))), np.exp(np.mean(np.log(d)))
    y = 0.2 + 0.1 * (n / n0) ** -0.5 + 0.15 * (d / d0) ** -0.3 + rng.normal(0, 0.002, len(n))
    f = sf.fit("joint", y, n, d, bootstrap=200)
    assert f.converged, f.message
    for name, true in (("E", 0.2), ("a", 0.5), ("b", 0.3)):
        lo, hi = f.intervals[name]
        assert lo <= true <= hi, (name, true, f.intervals[name])


def test_held_out_check_passes_a_power_law_and_flags_a_bad_extrapolation():
    c, y = _points(0.25, 0.2, 0.45, n=14)
    assert not sf.held_out(c, y).flagged
    bent = y.copy()
    bent[c > 2e13] -= 0.08  # the dearest points break away from the curve the cheap ones follow
    result = sf.held_out(c, bent)
    assert result.flagged and result.outside_band >= 1 and "outside its 95% band" in result.message


def test_too_few_points_and_flat_data_are_reported_not_fitted():
    f = sf.fit("compute", [0.5, 0.4, 0.3], [1e10, 1e11, 1e12])
    assert not f.converged and "cannot determine 3 parameters" in f.message
    with pytest.raises(ValueError, match="did not converge"):
        f.predict(1e12)
    assert "params" not in f.to_dict()  # no numbers for a fit that did not converge
    flat = sf.fit("compute", [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], np.geomspace(1e10, 1e13, 6), bootstrap=0)
    assert not flat.converged


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(1e9, 1e14), st.floats(0.01, 0.99)), min_size=1, max_size=30))
def test_frontier_is_the_lower_envelope(points):
    c = np.array([p[0] for p in points])
    e = np.array([p[1] for p in points])
    keep = sf.frontier(c, e)
    pairs = set(zip(c.tolist(), e.tolist()))
    undominated = {
        (ci, ei) for ci, ei in pairs if not any((cj <= ci and ej < ei) or (cj < ci and ej <= ei) for cj, ej in pairs)
    }
    kept = [(float(c[i]), float(e[i])) for i in keep]
    assert sorted(kept) == sorted(undominated)  # exactly the non-dominated points, each once
    assert list(np.sort(c[keep])) == list(c[keep])  # ordered by compute
    assert all(np.diff(e[keep]) < 0)  # and strictly improving


def test_compare_says_which_curve_is_below_and_whether_intervals_separate():
    c, good = _points(0.20, 0.2, 0.45, seed=2)
    _, bad = _points(0.30, 0.2, 0.45, seed=3)
    fa, fb = sf.fit("compute", good, c, bootstrap=200), sf.fit("compute", bad, c, bootstrap=200)
    text = sf.compare("cluster", fa, "random", fb, (c.min(), c.max()), 1e14)
    assert "cluster lies below random over the whole measured compute range" in text and "separate" in text
    same = sf.compare("cluster", fa, "again", sf.fit("compute", good + 0.001, c, bootstrap=200), (1e11, 1e14), 1e14)
    assert "cannot be told apart" in same


def test_four_points_fit_but_get_no_interval_and_no_claimed_separation():
    """4 points, 3 parameters: only resamples holding all 4 points can be refitted, and they all agree,
    which would make a zero-width 'interval'. None is reported, and no comparison claims separation."""
    c = np.geomspace(1e11, 1e13, 4)
    good = 0.3 + 0.4 * (c / 1e12) ** -0.3 + np.array([0.003, -0.002, 0.002, -0.003])
    bad = good + 0.05
    fa, fb = (sf.fit("compute", y, c, bootstrap=200) for y in (good, bad))
    assert fa.converged and not fa.has_intervals and fa.bootstrap_failed > 0.5
    assert "no intervals" in fa.interval_note and "intervals" not in fa.to_dict()
    with pytest.raises(ValueError, match="no prediction band"):
        sf.band(fa, 1e12)
    sentence = sf.compare("a", fa, "b", fb, (1e11, 1e13), 1e13)
    assert sentence.startswith("a lies below b") and "cannot be told apart" in sentence
    assert sf.held_out(c, good).flagged


def test_a_prediction_past_the_measured_runs_says_it_is_an_extrapolation():
    c, good = _points(0.20, 0.2, 0.45, seed=2)
    _, bad = _points(0.30, 0.2, 0.45, seed=3)
    fa, fb = sf.fit("compute", good, c, bootstrap=200), sf.fit("compute", bad, c, bootstrap=200)
    inside = sf.compare("cluster", fa, "random", fb, (c.min(), c.max()), c.max())
    beyond = sf.compare("cluster", fa, "random", fb, (c.min(), c.max()), 1.5 * c.max())
    assert "extrapolated" not in inside
    assert "at compute 1.5e+14 (extrapolated 1.5x past the compared range) the predicted errors" in beyond


def test_the_scaling_summary_labels_a_target_past_a_group_s_dearest_run():
    from maskvlp.sweep.fit import FitSpec, Point, fit_study, summary_markdown

    c, y = _points(0.20, 0.2, 0.45, n=8, noise=0.0, seed=2)
    pts = [
        Point(f"r{i}", "random", {}, float(ci), 0, 0, int(ci), 1 - float(yi), float(yi), 1.0, 100.0)
        for i, (ci, yi) in enumerate(zip(c, y))
    ]
    for target, label in ((None, False), (float(c.max()) * 1.5, True)):
        fs = FitSpec("m", "one_minus", "strategy", ("compute",), target, bootstrap=50)
        text = summary_markdown("s", fit_study(pts, fs), pts, {}, fs)
        assert ("(extrapolated 1.5x past the group's dearest run)" in text) is label, text
    assert "frontier is picked from single-seed values" in text  # one run per configuration
    assert text.count("| - |") == len(pts)  # no cluster arm: no coverage
    clustered = [Point(**{**q.to_dict(), "group": "cluster", "coverage": 0.25}) for q in pts]
    twice = pts + [Point(**{**pts[0].to_dict(), "run": "again"})]
    text = summary_markdown("s", fit_study(clustered + twice, fs), clustered + twice, {}, fs)
    assert "| 0.250 |" in text and "1 of 16 configurations ran more than once" in text
