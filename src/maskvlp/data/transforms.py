"""Decoding and augmentation for the loader, kept cheap: images stay uint8 until the device.

The training path decodes a JPEG at reduced size when the crop allows it (`Image.draft`), and
crops and resizes in one Pillow call (`resize(box=...)`); normalisation happens on the device with
:func:`normalize`, so workers ship 4x fewer bytes than float tensors.
"""

from __future__ import annotations

import functools
import io
import math
import random

import numpy as np
import torch
from PIL import Image

from maskvlp.data.clean import to_rgb

Range = tuple[float, float]  # (low, high): a crop's area fraction or aspect ratio


def random_resized_crop_box(
    width: int, height: int, scale: Range, ratio: Range, rng: random.Random
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a crop covering `scale` of the area with aspect in `ratio`
    (torchvision's RandomResizedCrop sampling: 10 tries, then a centre crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], height
    else:
        w, h = width, height
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def train_image(
    data: bytes, out_size: int, scale: Range, ratio: Range, rng: random.Random, hflip: bool = False
) -> torch.Tensor:
    """Decode + RandomResizedCrop(out_size) [+ horizontal flip with probability 1/2] + uint8 tensor
    (3, out_size, out_size). The flip draws from `rng` only when enabled, so streams without it are
    unchanged by its existence."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    left, top, right, bottom = random_resized_crop_box(width, height, scale, ratio, rng)
    if img.format == "JPEG":
        # Decode at 1/2, 1/4 or 1/8 size when the crop will be shrunk at least that much anyway.
        shrink = min((right - left) / out_size, (bottom - top) / out_size)
        if shrink >= 2:
            img.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
            fx, fy = img.size[0] / width, img.size[1] / height
            # clamped: a rescaled edge may round a hair past the image, which Pillow refuses
            left, top = max(0.0, left * fx), max(0.0, top * fy)
            right, bottom = min(float(img.size[0]), right * fx), min(float(img.size[1]), bottom * fy)
    return _crop(to_rgb(img), (left, top, right, bottom), out_size, rng, hflip)


def augment(img: Image.Image, out_size: int, scale: Range, ratio: Range, rng: random.Random, hflip: bool = False):
    """`train_image` for an image already decoded (RGB): RandomResizedCrop(out_size) [+ flip] as uint8
    (3, out_size, out_size), drawing from `rng` in the same order."""
    box = random_resized_crop_box(img.width, img.height, scale, ratio, rng)
    return _crop(img, box, out_size, rng, hflip)


def _crop(img: Image.Image, box: tuple[float, float, float, float], out_size: int, rng: random.Random, hflip: bool):
    img = img.resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_uint8_tensor(img)


@functools.lru_cache(maxsize=16)
def _mean_std(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std in 0..255 units on `device`, built once: a fresh `torch.tensor(...,
    device=cuda)` per batch is a blocking host-to-device copy."""
    m = (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0).to(device)
    s = (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0).to(device)
    return m, s


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) normalised with per-channel mean/std (in [0, 1] units)."""
    m, s = _mean_std(tuple(mean), tuple(std), images.device)
    return (images.float() - m) / s
