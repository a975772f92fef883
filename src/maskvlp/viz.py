"""Pictures of masks, like the cluster-masking paper's Figure 3: image, clusters, kept patches."""

from __future__ import annotations

import colorsys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from maskvlp.masking import STRATEGIES, MaskResult, compute_mask, describe
from maskvlp.runs import atomic_path


def _palette(n: int) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0) for i in range(n)]) * 255


def _patch_grid(values: torch.Tensor, grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """(L,) per-patch values -> (H, W) pixel map."""
    gh, gw = grid
    return values.reshape(gh, gw).repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1).cpu().numpy()


def clusters_picture(image: np.ndarray, result: MaskResult, index: int, patch_size: int) -> np.ndarray:
    """Clustered patches tinted by their anchor's colour, anchors outlined in white, others dimmed."""
    grid = (image.shape[0] // patch_size, image.shape[1] // patch_size)
    out = image.astype(np.float32) * 0.35
    if result.cluster_id is None:
        return out.astype(np.uint8)
    cid = _patch_grid(result.cluster_id[index], grid, patch_size)
    colours = _palette(result.num_anchors)
    for k in range(result.num_anchors):
        sel = cid == k
        out[sel] = 0.45 * image[sel] + 0.55 * colours[k]
    for a in result.anchor_idx[index].tolist():
        y, x = (a // grid[1]) * patch_size, (a % grid[1]) * patch_size
        out[y : y + patch_size, [x, x + patch_size - 1]] = 255
        out[[y, y + patch_size - 1], x : x + patch_size] = 255
    return out.clip(0, 255).astype(np.uint8)


def kept_picture(image: np.ndarray, result: MaskResult, index: int, patch_size: int) -> np.ndarray:
    """The image with removed patches greyed out; for a strategy that shrinks the image (resize), the
    image at the resolution the tower sees, shown at full size."""
    if result.images is not None:
        small = result.images.shape[-1]
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        shrunk = torch.nn.functional.interpolate(pixels, size=(small, small), mode="bilinear", antialias=True)
        back = torch.nn.functional.interpolate(shrunk, size=image.shape[:2], mode="nearest")
        return back[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    grid = (image.shape[0] // patch_size, image.shape[1] // patch_size)
    kept = torch.zeros(result.num_patches, dtype=torch.bool)
    kept[result.keep_idx[index].cpu()] = True
    keep_map = _patch_grid(kept, grid, patch_size)
    out = image.copy()
    out[~keep_map] = 128
    return out


def mask_figure(images_uint8: torch.Tensor, images_norm: torch.Tensor, patch_size: int, k, seed: int = 0):
    """A matplotlib figure: one row per image; columns image, clusters, and the kept patches of every
    registered masking strategy with the params of `k` (a MaskingConfig), plus cluster masking's
    official mode. images_uint8: (B, 3, H, W); images_norm: normalised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = []  # each strategy's own variants (cluster: both modes), else the strategy at k's params
    for name, strategy in STRATEGIES.items():
        if name != "none":
            own = replace(k, strategy=name)
            variants += strategy.pictures(own) if strategy.pictures else [own]
    # the same generator state gives the same anchors to every cluster variant
    results = {}
    for v in variants:
        try:
            results[describe(v)] = compute_mask(
                images_norm, v, patch_size, torch.Generator(images_norm.device).manual_seed(seed)
            )
        except ValueError:  # another strategy that this grid refuses at its defaults (grid's window): left out
            if v.strategy == k.strategy:
                raise
    clusters = next((r for r in results.values() if r.clustered is not None), None)
    n = images_uint8.shape[0]
    cols = 1 + (clusters is not None) + len(results)
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.2 * n + 0.4), squeeze=False)
    for i in range(n):
        img = images_uint8[i].permute(1, 2, 0).cpu().numpy()
        panels = [("image", img)]
        if clusters is not None:
            pic = clusters_picture(img, clusters, i, patch_size)
            panels.append((f"clusters ({clusters.cluster_coverage[i]:.0%})", pic))
        for name, res in results.items():
            panels.append((f"{name}: keep {res.keep_idx.shape[1]}", kept_picture(img, res, i, patch_size)))
        for ax, (title, pic) in zip(axes[i], panels):
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 or title.startswith("clusters"):
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"masking {describe(k)}, patch {patch_size}px", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
