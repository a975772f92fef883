"""Block masking (CLIPA, Li, Wang, Xie, NeurIPS 2023): keep one contiguous block of the patch grid.

The block holds exactly n_keep = int(L * (1 - ratio)) patches (FLIP's count, as random masking): a
near-square rectangle w = min(side, ceil(sqrt(n_keep))) patches wide and h = ceil(n_keep / w) high,
filled row by row, so its last row may be partly kept (left-aligned). Its top-left corner is drawn
uniformly per image among the positions where the rectangle fits. Everything outside the block is
removed: the model sees one region of the image at full detail. CLIPA's released code has no block
masking; this is our reading of the paper's description (docs/algorithms.md).

This module registers the strategy `block`; it has no keys of its own (masking.ratio sets the count).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from maskvlp.masking.base import MaskContext, MaskResult, count_patches, num_keep, register_strategy


def block_shape(n_keep: int, rows: int, cols: int) -> tuple[int, int]:
    """(h, w) of the rectangle holding n_keep patches in a rows x cols grid: near-square, w <= cols,
    h <= rows, filled row by row (h * w >= n_keep > (h - 1) * w)."""
    w = min(cols, math.isqrt(n_keep - 1) + 1)  # ceil(sqrt(n_keep))
    h = -(-n_keep // w)
    if h > rows:  # a wide grid of few rows: as many rows as there are, the width to hold n_keep
        h, w = rows, -(-n_keep // rows)
        h = -(-n_keep // w)
    return h, w


def block_mask(
    batch: int,
    rows: int,
    cols: int,
    n_keep: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MaskResult:
    """One block of n_keep patches per image at a uniformly random position; indices ascending."""
    h, w = block_shape(n_keep, rows, cols)
    top = torch.randint(0, rows - h + 1, (batch, 1), generator=generator, device=device)
    left = torch.randint(0, cols - w + 1, (batch, 1), generator=generator, device=device)
    i = torch.arange(n_keep, device=device)
    keep = (top + i // w) * cols + left + i % w  # row by row: ascending
    return MaskResult(keep, torch.zeros(batch, device=device), 0, rows * cols)


def _block(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    n = count_patches(images, ctx.patch_size)
    rows, cols = images.shape[-2] // ctx.patch_size, images.shape[-1] // ctx.patch_size
    return block_mask(images.shape[0], rows, cols, num_keep(n, k.ratio), ctx.generator, images.device)


register_strategy("block", _block, describe=lambda k: f"block r={k.ratio}")
