"""The linear probe: C chosen on a held-out part of the train features over a wide grid, then refit."""

import numpy as np
import torch

from maskvlp.evaluate import PROBE_GRID, linear_probe


def blobs(n: int, noise: float, seed: int, dims: int = 16, classes: int = 4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dims))
    y = rng.integers(classes, size=n)
    x = centres[y] + noise * rng.normal(size=(n, dims))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_probe_reports_its_chosen_c_and_scores_separable_features():
    tx, ty = blobs(400, 0.3, 0)
    vx, vy = blobs(200, 0.3, 1)
    res = linear_probe(tx, ty, vx, vy)
    assert res["top1"] > 0.95 and res["heldout_top1"] > 0.95
    assert PROBE_GRID[0] / 10 <= res["C"] <= PROBE_GRID[-1] * 10


def test_noisy_features_with_many_dimensions_pick_strong_regularisation():
    """Few samples, many noise dimensions: the held-out split must steer C away from the weak end."""
    tx, ty = blobs(120, 3.0, 2, dims=200)
    vx, vy = blobs(400, 3.0, 3, dims=200)
    res = linear_probe(tx, ty, vx, vy)
    assert res["C"] < 1.0
    assert res["top1"] > 0.4  # well above chance (0.25)
