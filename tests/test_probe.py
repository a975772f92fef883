"""The linear probe: C chosen on a held-out part of the train features over a wide grid, then refit;
deterministic at any thread count, silent about convergence except in its results, with progress."""

import warnings

import numpy as np
import pytest
import torch

from maskvlp.linearprobe import PROBE_GRID, PROBE_REFINE, fit_logistic, linear_probe


def blobs(n: int, noise: float, seed: int, dims: int = 16, classes: int = 4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dims))
    y = rng.integers(classes, size=n)
    x = centres[y] + noise * rng.normal(size=(n, dims))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def clip_like(n: int, seed: int, dims: int = 64, classes: int = 12):
    """Unit-norm features with a decaying spectrum and an offset, as a contrastive model's are."""
    rng, fixed = np.random.default_rng(seed), np.random.default_rng(7)
    centres = fixed.normal(size=(classes, dims))
    mix = fixed.normal(size=(dims, dims)) * np.logspace(0, -2, dims)[:, None]
    y = rng.integers(classes, size=n)
    x = (centres[y] + 1.5 * rng.normal(size=(n, dims))) @ mix + 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_probe_reports_its_chosen_c_and_scores_separable_features():
    tx, ty = blobs(400, 0.3, 0)
    vx, vy = blobs(200, 0.3, 1)
    res = linear_probe(tx, ty, vx, vy)
    assert res["top1"] > 0.95 and res["heldout_top1"] > 0.95
    assert PROBE_GRID[0] / 10 <= res["C"] <= PROBE_GRID[-1] * 10
    assert res["converged"] and res["unconverged"] == []


def test_noisy_features_with_many_dimensions_pick_strong_regularisation():
    """Few samples, many noise dimensions: the held-out split must steer C away from the weak end."""
    tx, ty = blobs(120, 3.0, 2, dims=200)
    vx, vy = blobs(400, 3.0, 3, dims=200)
    res = linear_probe(tx, ty, vx, vy)
    assert res["C"] < 1.0
    assert res["top1"] > 0.4  # well above chance (0.25)


def _probe(threads: int) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tx, ty = clip_like(600, 0)
        vx, vy = clip_like(300, 1)
        res = linear_probe(tx, ty, vx, vy, seed=3)
        assert torch.get_num_threads() == threads  # the caller's thread count is given back
        return res
    finally:
        torch.set_num_threads(before)


def test_probe_is_identical_on_a_rerun_and_at_any_thread_count():
    """Issue 28: a fresh clone's probe chose another C (5,623 -> 10,000) and scored another top-1. torch's
    CPU sums split between threads, so the last bits of a fit depend on the thread count; the probe fits
    on one thread in float64, so every number and every prediction repeats exactly."""
    one, two, again = _probe(1), _probe(2), _probe(2)
    for res in (two, again):
        assert torch.equal(res.pop("predictions"), one["predictions"])
        assert res == {k: v for k, v in one.items() if k != "predictions"}


def test_fit_matches_scikit_learns_logistic_regression():
    """The same objective as LogisticRegression(C) (the probe before issue 28): the same predictions."""
    from sklearn.linear_model import LogisticRegression

    tx, ty = clip_like(500, 4)
    vx, vy = clip_like(500, 5)
    mean, std = tx.mean(0), tx.std(0)
    x, v = ((tx - mean) / std).double(), ((vx - mean) / std).double()
    for c in (1e-3, 1.0):
        ours = fit_logistic(x, ty, 12, c).predict(v)
        ref = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x.numpy(), ty.numpy()).predict(v.numpy())
        assert (ours.numpy() == ref).mean() > 0.99, c


def test_strong_regularisation_converges_in_few_iterations():
    """The penalty's curvature at C = 1e-6 is ~10^4 times the data's: preconditioned, L-BFGS still
    converges at once (unpreconditioned it ran into the 1000-iteration limit)."""
    tx, ty = clip_like(400, 6)
    x = ((tx - tx.mean(0)) / tx.std(0)).double()
    fit = fit_logistic(x, ty, 12, 1e-6)
    assert fit.converged and fit.iterations < 50


def test_non_convergence_is_a_result_not_a_warning():
    """On the real preset the old probe printed six raw scikit-learn ConvergenceWarnings; now a fit that
    reaches the iteration limit is reported in the result (and in the stage's metrics and notes)."""
    tx, ty = clip_like(300, 8)
    vx, vy = clip_like(100, 9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = linear_probe(tx, ty, vx, vy, max_iter=2)
        ok = linear_probe(tx, ty, vx, vy)
    assert [str(w.message) for w in caught] == []
    assert not res["converged"] and res["unconverged"]  # 2 iterations converge nowhere near the weak end
    assert ok["converged"] and ok["unconverged"] == []


@pytest.mark.parametrize("enabled", [True, False])
def test_probe_shows_progress_per_fit_off_a_terminal(enabled, capsys, monkeypatch):
    monkeypatch.setenv("MASKVLP_PROGRESS_SECONDS", "0")
    tx, ty = blobs(100, 0.5, 0)
    vx, vy = blobs(50, 0.5, 1)
    linear_probe(tx, ty, vx, vy, desc="linear probe val", progress=enabled)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("linear probe val:")]
    if not enabled:
        assert lines == []
        return
    fits = len(PROBE_GRID) + len(PROBE_REFINE) + 1
    assert len(lines) == fits + 1  # one line per fit, then the closing line
    assert f"1/{fits} fit" in lines[0] and "C=1e-06" in lines[0] and "heldout=" in lines[0]
    assert "done in" in lines[-1]


def test_benchmark_runs_old_and_new_side_by_side(tmp_path):
    """benchmarks/bench_probe.py on one tiny row: both probes, their C / top-1 and the time ratio."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "benchmarks/bench_probe.py", "--rows", "200x8x4", "--test", "100", "--threads", "1"]
    done = subprocess.run([*cmd, "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())
    assert row["old"]["top1"] > 0.5 and row["new"]["top1"] > 0.5 and row["new"]["repeats"]
    assert "same C / top1 across threads and reruns: True" in done.stdout
