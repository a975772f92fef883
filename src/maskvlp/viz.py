"""Pictures of masks, like the cluster-masking paper's Figure 3: image, clusters, kept patches."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch

from maskvlp.masking import MaskResult, compute_mask


def _palette(n: int) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0) for i in range(n)]) * 255


def _patch_grid(values: torch.Tensor, grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """(L,) per-patch values -> (H, W) pixel map."""
    gh, gw = grid
    return values.reshape(gh, gw).repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1).cpu().numpy()


def clusters_picture(image: np.ndarray, result: MaskResult, index: int, patch_size: int) -> np.ndarray:
    """Clustered patches tinted by their anchor's colour, anchors outlined in white, others dimmed."""
    h, w = image.shape[:2]
    grid = (h // patch_size, w // patch_size)
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
    """The image with removed patches greyed out."""
    h, w = image.shape[:2]
    grid = (h // patch_size, w // patch_size)
    kept = torch.zeros(result.num_patches, dtype=torch.bool)
    kept[result.keep_idx[index].cpu()] = True
    keep_map = _patch_grid(kept, grid, patch_size)
    out = image.copy()
    out[~keep_map] = 128
    return out


def mask_figure(
    images_uint8: torch.Tensor,
    images_norm: torch.Tensor,
    patch_size: int,
    ratio: float,
    anchor_ratio: float,
    threshold: float,
    seed: int = 0,
    min_mask_ratio: float = 0.3,
):
    """A matplotlib figure: one row per image; columns image, clusters, and the kept patches of random,
    cluster (exact) and cluster (official) masking. images_uint8: (B, 3, H, W); images_norm: normalised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def gen():
        return torch.Generator(device=images_norm.device).manual_seed(seed)

    results = {
        "random (FLIP)": compute_mask("random", images_norm, patch_size, ratio, generator=gen()),
        "cluster": compute_mask("cluster", images_norm, patch_size, ratio, anchor_ratio, threshold, gen()),
        "cluster, official": compute_mask(
            "cluster", images_norm, patch_size, ratio, anchor_ratio, threshold, gen(), "official", min_mask_ratio
        ),
    }
    # the same generator state gives the same anchors to both cluster variants
    clusters = results["cluster"]
    n = images_uint8.shape[0]
    cols = 2 + len(results)
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.2 * n + 0.4), squeeze=False)
    for i in range(n):
        img = images_uint8[i].permute(1, 2, 0).cpu().numpy()
        panels = [("image", img), (f"clusters ({clusters.cluster_coverage[i]:.0%})", None)]
        panels[1] = (panels[1][0], clusters_picture(img, clusters, i, patch_size))
        for name, res in results.items():
            panels.append((f"{name}: keep {res.keep_idx.shape[1]}", kept_picture(img, res, i, patch_size)))
        for ax, (title, pic) in zip(axes[i], panels):
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 or title.startswith("clusters"):
                ax.set_title(title, fontsize=8)
    fig.suptitle(
        f"mask ratio {ratio}, anchor ratio {anchor_ratio}, threshold {threshold}, patch {patch_size}px", fontsize=9
    )
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
