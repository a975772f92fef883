"""Training FLOPs: the one formula (docs/records.md) behind training's `train_flops`, the compute-matched
budget (train.compute_samples), the MFU scalar and the throughput benchmark's rows.

A training sample costs its kept image tokens and its caption through both towers, forward and backward
(`CLIP.train_flops_per_sample`; the patch embedding over the patches it embeds: all L, resize fewer), times 4/3 when gradient accumulation's feature cache runs a second
forward pass, plus the mask's own cost (its strategy's `mask_flops`, once per image however often the
image is forwarded). MFU counts the towers alone: what the accelerator's peak is measured against.
"""

from __future__ import annotations

from typing import Any

import torch

from maskvlp import masking
from maskvlp.model import CLIP

GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16


def mask_flops(model: CLIP, k: Any, samples_seen: int | None = None) -> float:
    """FLOPs of choosing one image's mask under the masking config `k` at `samples_seen` (None: as over
    the whole run), for the model's patch grid and patch-embedding width."""
    vis = model.visual
    return masking.mask_flops(k, vis.num_patches, vis.patch_size, vis.patch_embed.weight.shape[0], samples_seen)


def sample_flops(
    model: CLIP,
    k: Any,
    kept: int,
    samples_seen: int | None = None,
    cached: bool = False,
    text_tokens: int | None = None,
) -> float:
    """Training FLOPs of one sample with `kept` image tokens under masking config `k` and `text_tokens`
    caption tokens (None: the model's context; text_masking shortens it); `cached`: the feature cache's
    second forward pass (accum_mode cache with accum_steps > 1; accumulate.py)."""
    embedded = masking.embedded_patches(k, model.visual.num_patches)
    towers = model.train_flops_per_sample(kept, embedded, text_tokens)
    return towers * (4 / 3 if cached else 1) + mask_flops(model, k, samples_seen)


def matched_samples(model: CLIP, k: Any, unmasked_samples: int, text_tokens: int | None = None) -> int:
    """The samples whose training FLOPs under masking config `k` (at its planned token count) and
    `text_tokens` caption tokens (None: the whole context) equal those of `unmasked_samples` trained
    unmasked on the same model: train.compute_samples' budget."""
    grid = model.visual.num_patches
    masked = sample_flops(model, k, masking.planned_tokens(k, grid), text_tokens=text_tokens)
    return max(1, round(unmasked_samples * model.train_flops_per_sample(grid) / masked))


def peak_flops(device: torch.device) -> float:
    """The device's dense bf16 peak, or 0 where it is not known (then no MFU is logged)."""
    name = torch.cuda.get_device_name() if device.type == "cuda" else ""
    return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), 0)


def mfu(flops_per_sample: float, images_per_s: float, world_size: int, peak: float) -> float:
    """Model FLOPs utilisation of one process: its share of the images per second at the model's FLOPs."""
    return flops_per_sample * images_per_s / world_size / peak
