"""Resize (CLIPA, Li, Wang, Xie, NeurIPS 2023): train on the whole image at a lower resolution.

Instead of removing patches, the image is downsampled so that it holds fewer patches of the same size:
a side of s = floor(sqrt(n_keep)) patches, n_keep = int(L * (1 - ratio)) (random masking's count;
ratio 0.75 halves the side: 64 px -> 32 px for the tiny model, 224 -> 112 for B/16). Every region of
the image stays in view, at less detail; CLIPA found it the best of its image-side strategies. The
image tower evaluates at the full resolution it was built for: at training its positions are taken at
the centres of the low-resolution patches (learned ones interpolated bicubically, sin-cos ones computed
there; model.VisionTower.positions), so training and evaluation agree on where a patch is.

The images are resized on the training device (bilinear with antialiasing, on the normalised images:
the two are linear, so the order does not matter), after loading at full resolution: CLIPA loads at the
low resolution, which also saves decoding time; here only the towers' cost falls. The FLOPs count the
patch embedding of the s^2 patches the tower embeds (Strategy.embedded_patches) and the resize itself
(mask_flops).

This module registers the strategy `resize`; it has no keys of its own (masking.ratio sets the count).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from maskvlp.masking.base import MaskContext, MaskResult, num_keep, register_strategy


def resized_side(num_patches: int, ratio: float) -> int:
    """Patches per side of the resized image: the largest square within random masking's count."""
    return max(1, math.isqrt(num_keep(num_patches, ratio)))


def resize_images(images: torch.Tensor, side_px: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, side_px, side_px), bilinear with antialiasing (as PIL's resize)."""
    if images.shape[-1] == side_px and images.shape[-2] == side_px:
        return images
    return F.interpolate(images, size=(side_px, side_px), mode="bilinear", antialias=True, align_corners=False)


def _resize(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    h, w = images.shape[-2:]
    if h != w or h % ctx.patch_size:
        raise ValueError(f"resize needs square images divisible by patch_size {ctx.patch_size}, got {h}x{w}")
    grid = h // ctx.patch_size
    side = resized_side(grid * grid, k.ratio)
    small = resize_images(images, side * ctx.patch_size)
    keep = torch.arange(side * side, device=images.device).expand(images.shape[0], -1)
    return MaskResult(keep, torch.zeros(images.shape[0], device=images.device), 0, grid * grid, images=small)


def _check_resize(k: Any, num_patches: int) -> None:
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"masking.strategy resize needs a square patch grid, got {num_patches} patches")


def _mask_flops(k: Any, num_patches: int, patch_size: int, embed_width: int, samples_seen: int | None) -> float:
    """The antialiased bilinear resize: two separable passes, each output value a multiply-add over
    the filter's 2f taps (f = the downscale factor), 3 channels."""
    grid = math.isqrt(num_patches)
    side = resized_side(num_patches, k.ratio)
    if side >= grid:
        return 0.0
    f, full_px, small_px = grid / side, grid * patch_size, side * patch_size
    return 2.0 * 3 * 2 * f * (full_px * small_px + small_px * small_px)  # pass 1: H x s values; pass 2: s x s


register_strategy(
    "resize",
    _resize,
    check=_check_resize,
    describe=lambda k: f"resize r={k.ratio}",
    kept_tokens=lambda k, n: resized_side(n, k.ratio) ** 2,
    embedded_patches=lambda k, n: resized_side(n, k.ratio) ** 2,
    mask_flops=_mask_flops,
)
