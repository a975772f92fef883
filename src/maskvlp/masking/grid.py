"""Grid masking (CLIPA, Li, Wang, Xie, NeurIPS 2023): keep one patch in each k x k window of the grid.

Per image, one offset (dy, dx) in [0, k)^2 is drawn; the kept patches are (i*k + dy, j*k + dx) for
every window (i, j), so the kept tokens are a regular subsample of the grid at a random phase: k = 2
keeps a quarter (mask ratio 0.75), k = 3 a ninth. The token count is fixed by the window
(L / k^2), not by `masking.ratio`, which grid masking ignores. CLIPA's paper compares it with resize,
random and block masking at the same token count; its released code has no grid masking, so this is
our reading of the paper's one-line description (docs/algorithms.md).

This module registers the strategy `grid` with its own key `masking.grid_window`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from maskvlp.masking.base import MaskContext, MaskResult, register_strategy


@dataclass
class GridParams:
    """The `masking.*` key of grid masking (params.yaml)."""

    grid_window: int = 2  # k: one patch kept per k x k window (2: mask ratio 0.75)


def grid_side(num_patches: int) -> int:
    """The side of the square patch grid of L patches (models here are square)."""
    return math.isqrt(num_patches)


def grid_mask(
    batch: int, side: int, window: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> MaskResult:
    """One patch per `window` x `window` window of a `side` x `side` grid, at a random offset per image;
    kept indices ascending (row-major)."""
    per_side = side // window
    offset = torch.randint(0, window, (batch, 2), generator=generator, device=device)
    rows = torch.arange(per_side, device=device) * window
    cells = (rows[:, None] * side + rows[None, :]).reshape(-1)  # window corners, row-major
    keep = cells[None] + offset[:, :1] * side + offset[:, 1:]
    return MaskResult(keep, torch.zeros(batch, device=device), 0, side * side)


def _grid(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    h, w = images.shape[-2:]
    if h != w or h % ctx.patch_size:
        raise ValueError(f"grid masking needs square images divisible by patch_size {ctx.patch_size}, got {h}x{w}")
    return grid_mask(images.shape[0], h // ctx.patch_size, k.grid_window, ctx.generator, images.device)


def _check_grid(k: Any, num_patches: int) -> None:
    side = grid_side(num_patches)
    if side * side != num_patches:
        raise ValueError(f"masking.strategy grid needs a square patch grid, got {num_patches} patches")
    if not isinstance(k.grid_window, int) or k.grid_window < 1 or side % k.grid_window:
        raise ValueError(
            f"masking.grid_window must be a whole number >= 1 that divides the {side} patches of a grid side "
            f"(e.g. 2 keeps a quarter), got {k.grid_window!r}"
        )


register_strategy(
    "grid",
    _grid,
    params=GridParams,
    check=_check_grid,
    describe=lambda k: f"grid {k.grid_window}x{k.grid_window}",
    kept_tokens=lambda k, n: n // (k.grid_window * k.grid_window),
    record=lambda k: {"grid_window": k.grid_window},
)
