"""Where masking removes tokens: on objects or on background.

Cluster masking's claim is that it removes whole visual *structures* (objects), so that the text
must be matched from context; if its anchors land mostly on background, it may "win" only by
removing background instead. This module measures that on a fixed probe set of val scenes whose
metadata carries object boxes (the synthetic source), during training, with the run's own masking:
- `object_patches`: which patches of each image belong to an object (pure function of the boxes);
- `split_stats`: cluster coverage and removal on object vs background patches for one mask;
- `ObjectProbe`: the probe images and their object patches, measured every logging interval.
A patch counts as an object patch when at least half its area lies inside an object's bounding box
(a box, not the shape's outline: circles, triangles and diamonds overfill it slightly).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch

from maskvlp.masking import MaskResult

STATS = ("coverage_objects", "coverage_background", "removed_objects", "removed_background")


def object_patches(metas: list[dict[str, Any]], stored_size: float, grid: int) -> torch.Tensor:
    """(N, grid*grid) bool: patches at least half inside an object's box. Boxes ([x0, y0, side] in the
    stored image's pixels, stored_size wide) are scaled to the patch grid."""
    scale = grid / stored_size
    lo = torch.arange(grid, dtype=torch.float64)
    out = torch.zeros(len(metas), grid, grid, dtype=torch.bool)
    for i, meta in enumerate(metas):
        covered = torch.zeros(grid, grid, dtype=torch.float64)
        for obj in meta.get("objects", []):
            x0, y0, side = (float(v) * scale for v in obj["box"])
            ox = ((lo + 1).clamp(max=x0 + side) - lo.clamp(min=x0)).clamp(min=0)  # overlap per column
            oy = ((lo + 1).clamp(max=y0 + side) - lo.clamp(min=y0)).clamp(min=0)  # per row
            covered = torch.maximum(covered, oy[:, None] * ox[None, :])
        out[i] = covered >= 0.5
    return out.flatten(1)


def split_stats(mask: MaskResult, objects: torch.Tensor) -> dict[str, float]:
    """Fractions of object / background patches that are clustered and that are removed."""
    objects = objects.to(mask.keep_idx.device)
    if mask.images is None:
        kept = torch.zeros_like(objects).scatter_(1, mask.keep_idx, True)
    else:  # resize removes no region: every patch stays in view, at less detail
        kept = torch.ones_like(objects)
    clustered = mask.clustered if mask.clustered is not None else torch.zeros_like(objects)

    def frac(values: torch.Tensor, where: torch.Tensor) -> float:
        return float(values[where].float().mean()) if where.any() else float("nan")

    return {
        "coverage_objects": frac(clustered, objects),
        "coverage_background": frac(clustered, ~objects),
        "removed_objects": frac(~kept, objects),
        "removed_background": frac(~kept, ~objects),
    }


class ObjectProbe:
    """Up to `count` val scenes with object boxes, normalised on the device, and their object patches."""

    def __init__(self, images: torch.Tensor, objects: torch.Tensor):
        self.images, self.objects = images, objects

    @classmethod
    def from_shards(cls, cfg, device: torch.device, count: int = 64) -> ObjectProbe | None:
        """None when the val split's samples carry no object boxes (sources other than synthetic)."""
        from maskvlp.data.loader import EvalStream
        from maskvlp.data.trainset import training_data
        from maskvlp.data.transforms import normalize

        data = training_data(cfg)
        if data.in_place:  # existing shards: no generated scenes, so no object boxes (nor a val split to scan)
            return None
        urls = list(data.val)
        items = list(islice((it for it in EvalStream(urls, cfg.model.image_size) if it["meta"].get("objects")), count))
        if not items:
            return None
        images = torch.stack([it["image"] for it in items]).to(device)
        norm = normalize(images, cfg.data.augment.mean, cfg.data.augment.std)
        grid = cfg.model.image_size // cfg.model.patch_size
        return cls(norm, object_patches([it["meta"] for it in items], cfg.data.image_size, grid))
