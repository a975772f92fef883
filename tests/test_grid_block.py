"""Grid and block masking (CLIPA's image-side strategies): exact token counts, the shape each keeps,
uniform placement, validation naming the key, and the config path (params, compute budget, pictures)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp import masking
from maskvlp.config import ConfigError
from maskvlp.masking import block_mask, block_shape, compute_mask, grid_mask, num_keep
from maskvlp.params import load_config

from .conftest import ROOT


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_valid_indices(keep: torch.Tensor, num_patches: int, n: int) -> None:
    assert keep.dtype == torch.long and keep.shape[1] == n
    assert int(keep.min()) >= 0 and int(keep.max()) < num_patches
    for row in keep:
        assert len(set(row.tolist())) == n  # unique
        assert torch.equal(row, row.sort().values)  # ascending: gather keeps spatial order


# ------------------------------------------------------------------------------------- grid
@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 4), per_side=st.integers(1, 6), batch=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_grid_keeps_one_patch_per_window_at_the_same_offset(window, per_side, batch, seed):
    side = window * per_side
    res = grid_mask(batch, side, window, gen(seed))
    assert_valid_indices(res.keep_idx, side * side, per_side * per_side)
    assert res.mask_ratio == pytest.approx(1 - 1 / window**2)
    for row in res.keep_idx:
        r, c = row // side, row % side
        windows = (r // window) * per_side + c // window
        assert sorted(windows.tolist()) == list(range(per_side * per_side))  # every window exactly once
        assert len(set((r % window).tolist())) == 1 and len(set((c % window).tolist())) == 1  # one offset


def test_grid_offsets_are_uniform():
    window, draws = 2, 4000
    keep = grid_mask(draws, 8, window, gen(1)).keep_idx[:, 0]  # the first window's kept patch
    counts = torch.bincount(keep, minlength=10)[[0, 1, 8, 9]].float()  # its 4 possible places
    sigma = math.sqrt(draws * 0.25 * 0.75)
    assert (counts - draws / 4).abs().max() < 5 * sigma


def test_grid_token_count_is_the_windows_and_ignores_the_ratio():
    k = masking.strategy_config(strategy="grid", ratio=0.1, grid_window=2)
    res = compute_mask(torch.randn(3, 3, 64, 64), k, 8, gen())
    assert res.keep_idx.shape == (3, 16) and masking.kept_tokens(k, 64) == 16
    assert masking.describe(k) == "grid 2x2"


@pytest.mark.parametrize("window", [0, 3, 16])
def test_grid_window_that_does_not_divide_the_grid_is_named(window):
    k = masking.strategy_config(strategy="grid", grid_window=window)
    with pytest.raises(ValueError, match=r"masking.grid_window .*divides the 8 patches"):
        compute_mask(torch.randn(1, 3, 64, 64), k, 8, gen())


def test_grid_window_is_refused_at_config_load_naming_the_key():
    with pytest.raises(ConfigError, match="masking.grid_window"):
        load_config(ROOT / "params.yaml", ["masking.strategy=grid", "masking.grid_window=3"])


# ------------------------------------------------------------------------------------ block
@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    frac=st.floats(0.0, 1.0),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_block_keeps_exactly_n_keep_patches_in_one_rectangle_filled_row_by_row(rows, cols, frac, batch, seed):
    n = max(1, round(frac * rows * cols))
    h, w = block_shape(n, rows, cols)
    assert h <= rows and w <= cols and h * w >= n > (h - 1) * w
    res = block_mask(batch, rows, cols, n, gen(seed))
    assert_valid_indices(res.keep_idx, rows * cols, n)
    for row in res.keep_idx:
        r, c = row // cols, row % cols
        top, left = int(r.min()), int(c.min())
        assert int(r.max()) - top < h and int(c.max()) - left < w  # inside one h x w rectangle
        for i in range(h - 1):  # every row but the last is full
            assert ((r == top + i).sum()) == w
        last = c[r == top + h - 1]  # the last row: left-aligned
        assert last.tolist() == list(range(left, left + len(last)))


def test_block_is_near_square():
    assert block_shape(16, 8, 8) == (4, 4)
    assert block_shape(32, 8, 8) == (6, 6)  # 36 places, the last row holds 2
    assert block_shape(98, 14, 14) == (10, 10)  # B/16 at 224 px, ratio 0.5
    assert block_shape(7, 2, 10) == (2, 4)  # a wide grid of two rows


def test_block_positions_are_uniform():
    draws = 3000
    res = block_mask(draws, 8, 8, 16, gen(2))  # a 4x4 block: 5 x 5 corners
    corners = torch.bincount(res.keep_idx[:, 0], minlength=64)
    places = [r * 8 + c for r in range(5) for c in range(5)]
    assert corners.sum() == corners[places].sum() == draws
    p = 1 / 25
    sigma = math.sqrt(draws * p * (1 - p))
    assert (corners[places].float() - draws * p).abs().max() < 5 * sigma


def test_block_follows_the_ratio_as_random_masking_does():
    k = masking.strategy_config(strategy="block", ratio=0.75)
    res = compute_mask(torch.randn(2, 3, 56, 64), k, 8, gen())  # 7 x 8 patches
    assert res.keep_idx.shape == (2, num_keep(56, 0.75)) and masking.kept_tokens(k, 56) == num_keep(56, 0.75)


@pytest.mark.parametrize("strategy", ["grid", "block"])
def test_same_seed_same_mask(strategy):
    k = masking.strategy_config(strategy=strategy, ratio=0.75)
    x = torch.randn(4, 3, 64, 64)
    a, b = (compute_mask(x, k, 8, gen(7)).keep_idx for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, compute_mask(x, k, 8, gen(8)).keep_idx)


# ------------------------------------------------------------------------- through the config
@pytest.mark.parametrize("strategy, extra", [("grid", "masking.grid_window=2"), ("block", "masking.ratio=0.75")])
def test_compute_budget_plans_with_the_kept_tokens(strategy, extra):
    """At ratio 0.75 both keep 16 of 64 tokens: the compute budget gives them random 0.75's samples."""
    base = ["train.compute_samples=6000"]
    random = load_config(ROOT / "params.yaml", [*base, "masking.strategy=random", "masking.ratio=0.75"])
    cfg = load_config(ROOT / "params.yaml", [*base, f"masking.strategy={strategy}", extra])
    assert cfg.train.samples == random.train.samples > 6000
