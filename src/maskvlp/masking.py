"""Which patch tokens a masked CLIP step keeps: none, random (FLIP) or cluster (Wei et al. 2024).

Pure, batched functions: no module state, no Python loop over images, randomness from an explicit
`torch.Generator` on the images' device. Every strategy returns the indices of the kept patch tokens,
(B, n_keep) with the same n_keep for every image (the model gathers them after the patch embedding),
plus per-image statistics. See ../shared/reference/algorithms.md for the methods.

Cluster masking, per image, on the *normalised* input image:
1. patchify into L vectors of P*P*3 values; 2. standardise each vector (own mean, sqrt(var + 1e-6));
3. cosine similarity of the A anchor rows against all L patches (A x L, not L x L) - Pearson
correlation after step 2; 4. A = L - int(L * (1 - anchor_ratio)) random anchors; 5. a patch is
clustered if its similarity to any anchor is strictly above `threshold` (anchors always are).
Then (exact mode) anchors are removed first, other clustered patches next, and the rest of the
budget L - n_keep is drawn at random among unclustered patches; if clusters cover more than the
budget, which clustered patches stay is random.

Zero-variance patches (all P*P*3 normalised values equal, e.g. a flat grey patch) have no pattern:
their standardised vector is 0 and we define their similarity to every patch as 0 (the official
code computes 0/0 = NaN and never clusters them). So a flat-grey patch joins a cluster only when
`threshold < 0` or it is itself an anchor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

STRATEGIES = ("none", "random", "cluster")
FLAT_STD = 1e-4  # patches varying less than this (normalised units; one 8-bit level is ~0.015) are flat


@dataclass
class MaskResult:
    keep_idx: torch.Tensor  # (B, n_keep) long, indices into the L patches, ascending
    cluster_coverage: torch.Tensor  # (B,) float: fraction of patches in a cluster (0 unless cluster)
    num_anchors: int  # anchors per image (0 unless cluster)
    num_patches: int
    clustered: torch.Tensor | None = None  # (B, L) bool
    anchor_idx: torch.Tensor | None = None  # (B, A) long
    cluster_id: torch.Tensor | None = None  # (B, L) long: most similar anchor's slot, -1 if unclustered

    @property
    def mask_ratio(self) -> float:
        """The fraction of patch tokens removed."""
        return 1.0 - self.keep_idx.shape[1] / self.num_patches


# ----------------------------------------------------------------------------- parameters
def num_keep(num_patches: int, ratio: float) -> int:
    """Kept tokens at a mask ratio: int(L * (1 - ratio)), at least 1 (FLIP)."""
    return max(1, int(num_patches * (1.0 - ratio)))


def num_anchors(num_patches: int, anchor_ratio: float) -> int:
    """Anchors per image: L - int(L * (1 - anchor_ratio)); 0.03 of 196 gives 6 (algorithms.md)."""
    return max(1, num_patches - int(num_patches * (1.0 - anchor_ratio)))


def check_params(
    ratio: float, anchor_ratio: float = 0.05, threshold: float = 0.5, num_patches: int | None = None
) -> None:
    """Raise ValueError naming the parameter that is out of range."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"masking ratio must be in [0, 1), got {ratio}")
    if num_patches is not None and int(num_patches * (1.0 - ratio)) < 1:
        raise ValueError(f"masking ratio {ratio} keeps no token of {num_patches} patches; lower it")
    if not 0.0 < anchor_ratio <= 1.0:
        raise ValueError(f"anchor_ratio must be in (0, 1], got {anchor_ratio}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a similarity in [-1, 1], got {threshold}")


# ------------------------------------------------------------------------------- features
def count_patches(images: torch.Tensor, patch_size: int) -> int:
    """L for images (B, C, H, W); explains what to do when they do not divide into patches."""
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by patch_size {patch_size}: resize images to a multiple "
            f"of {patch_size} (model.image_size) or change model.patch_size"
        )
    return (h // patch_size) * (w // patch_size)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, L, P*P*C), patches in row-major order (as a stride-P conv sees them)."""
    b, c, h, w = images.shape
    count_patches(images, patch_size)
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def standardised_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, L, D) unit vectors of mean-centred patches; zero vectors for flat patches.

    Cosine similarity of these is the Pearson correlation of the patches, which is what step 2's
    per-patch standardisation followed by cosine similarity computes: the division by
    sqrt(var + 1e-6) cancels in the cosine, except that it keeps flat patches finite. A patch whose
    standard deviation is below FLAT_STD (far below one 8-bit level after CLIP normalisation) counts
    as flat; testing the variance, not exact equality, keeps float rounding of the mean from turning a
    flat patch into a random direction.
    """
    x = patchify(images.float(), patch_size)
    x = x - x.mean(-1, keepdim=True)
    sumsq = (x * x).sum(-1, keepdim=True)
    flat = sumsq <= x.shape[-1] * FLAT_STD**2
    return x * torch.where(flat, torch.zeros_like(sumsq), torch.rsqrt(sumsq))


def anchor_similarity(unit_feats: torch.Tensor, anchor_idx: torch.Tensor) -> torch.Tensor:
    """unit_feats: (B, L, D) unit vectors; anchor_idx: (B, A) -> cosine similarity (B, A, L)."""
    anchors = torch.gather(unit_feats, 1, anchor_idx[..., None].expand(-1, -1, unit_feats.shape[-1]))
    return torch.bmm(anchors, unit_feats.transpose(1, 2))


def fused_similarity(
    images: torch.Tensor,
    patch_size: int,
    anchor_idx: torch.Tensor,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> torch.Tensor:
    """(B, A, L) similarity: r * Sim_embed + (1 - r) * Sim_rgb, r = fusion_weight in [0, 1].

    embed_tokens: (B, L, E) layer-0 patch tokens (patch embedding + position); cosine, no centring.
    """
    sim = anchor_similarity(standardised_patches(images, patch_size), anchor_idx)
    if embed_tokens is not None and fusion_weight > 0:
        emb = F.normalize(embed_tokens.detach().float(), dim=-1)
        sim = fusion_weight * anchor_similarity(emb, anchor_idx) + (1.0 - fusion_weight) * sim
    return sim


# ------------------------------------------------------------------------------ strategies
def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _keep_lowest(score: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the n_keep lowest scores per row, sorted ascending (stable gather order)."""
    keep = torch.topk(score, n_keep, dim=1, largest=False, sorted=False).indices
    return keep.sort(dim=1).values


def keep_all(batch: int, num_patches: int, device: torch.device | str = "cpu") -> MaskResult:
    keep = torch.arange(num_patches, device=device).expand(batch, -1).contiguous()
    return MaskResult(keep, torch.zeros(batch, device=device), 0, num_patches)


def random_mask(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MaskResult:
    """FLIP: keep a uniformly random subset of num_keep(L, ratio) patches per image."""
    check_params(ratio, num_patches=num_patches)
    score = _rand((batch, num_patches), generator, torch.device(device))
    return MaskResult(
        _keep_lowest(score, num_keep(num_patches, ratio)), torch.zeros(batch, device=device), 0, num_patches
    )


def anchor_rows(
    images: torch.Tensor,
    patch_size: int,
    anchor_ratio: float,
    generator: torch.Generator | None = None,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random anchors (B, A) and their similarity rows (B, A, L); an anchor scores 2 with itself, so it
    always belongs to its own cluster."""
    num_patches = count_patches(images, patch_size)
    a = num_anchors(num_patches, anchor_ratio)
    anchor_idx = torch.topk(_rand((images.shape[0], num_patches), generator, images.device), a, dim=1).indices
    sim = fused_similarity(images, patch_size, anchor_idx, embed_tokens, fusion_weight)
    sim.scatter_(2, anchor_idx[:, :, None], 2.0)
    return sim, anchor_idx


def find_clusters(
    images: torch.Tensor,
    patch_size: int,
    anchor_ratio: float,
    threshold: float,
    generator: torch.Generator | None = None,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random anchors and their clusters.

    images: (B, 3, H, W) normalised. Returns clustered (B, L) bool, anchor_idx (B, A) long and
    cluster_id (B, L) long (the most similar anchor's slot for clustered patches, else -1).
    """
    sim, anchor_idx = anchor_rows(images, patch_size, anchor_ratio, generator, embed_tokens, fusion_weight)
    best, best_anchor = sim.max(dim=1)
    clustered = best > threshold
    cluster_id = torch.where(clustered, best_anchor, torch.full_like(best_anchor, -1))
    return clustered, anchor_idx, cluster_id


def cluster_mask(
    images: torch.Tensor,
    patch_size: int,
    ratio: float,
    anchor_ratio: float,
    threshold: float,
    generator: torch.Generator | None = None,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> MaskResult:
    """Cluster masking at a fixed ratio (exact mode): every image keeps num_keep(L, ratio) tokens.

    Removal order: anchors, then clustered patches, then unclustered ones, random within each group.
    """
    num_patches = count_patches(images, patch_size)
    check_params(ratio, anchor_ratio, threshold, num_patches)
    clustered, anchor_idx, cluster_id = find_clusters(
        images, patch_size, anchor_ratio, threshold, generator, embed_tokens, fusion_weight
    )
    # score: unclustered in [0, 1), clustered in [1, 2), anchors in [2, 3); keep the lowest.
    score = _rand(tuple(clustered.shape), generator, images.device) + clustered.float()
    score.scatter_add_(1, anchor_idx, torch.ones_like(anchor_idx, dtype=score.dtype))
    keep = _keep_lowest(score, num_keep(num_patches, ratio))
    return MaskResult(
        keep, clustered.float().mean(1), anchor_idx.shape[1], num_patches, clustered, anchor_idx, cluster_id
    )


def official_cluster_mask(
    images: torch.Tensor,
    patch_size: int,
    anchor_ratio: float,
    threshold: float,
    min_mask_ratio: float = 0.3,
    generator: torch.Generator | None = None,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> MaskResult:
    """The official code's token count, for comparison: n_keep = min(int(L * (1 - min_mask_ratio)),
    the smallest number of unclustered patches in the batch). Kept tokens are unclustered patches
    in index order (the official argsort's tie order: extra patches are dropped from the end, a bias
    toward later indices). n_keep varies from batch to batch (not torch.compile friendly) and one
    heavily clustered image shrinks the whole batch. One deviation: n_keep is at least 1, where the
    official code would pass zero tokens.
    """
    num_patches = count_patches(images, patch_size)
    check_params(min_mask_ratio, anchor_ratio, threshold, num_patches)
    clustered, anchor_idx, cluster_id = find_clusters(
        images, patch_size, anchor_ratio, threshold, generator, embed_tokens, fusion_weight
    )
    unclustered = (~clustered).sum(1)
    n_keep = max(1, min(int(num_patches * (1 - min_mask_ratio)), int(unclustered.min())))
    order = torch.argsort(clustered.to(torch.uint8), dim=1, stable=True)
    keep = order[:, :n_keep].sort(dim=1).values
    return MaskResult(
        keep, clustered.float().mean(1), anchor_idx.shape[1], num_patches, clustered, anchor_idx, cluster_id
    )


def compute_mask(
    strategy: str,
    images: torch.Tensor,
    patch_size: int,
    ratio: float,
    anchor_ratio: float = 0.05,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
    mode: str = "exact",
    min_mask_ratio: float = 0.3,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> MaskResult:
    """Dispatch on strategy (none | random | cluster) and, for cluster, mode (exact | official)."""
    b = images.shape[0]
    num_patches = count_patches(images, patch_size)
    if strategy == "none":
        return keep_all(b, num_patches, images.device)
    if strategy == "random":
        return random_mask(b, num_patches, ratio, generator, images.device)
    if strategy == "cluster":
        if mode == "official":
            return official_cluster_mask(
                images, patch_size, anchor_ratio, threshold, min_mask_ratio, generator, embed_tokens, fusion_weight
            )
        if mode != "exact":
            raise ValueError(f"masking mode must be exact or official, got {mode!r}")
        return cluster_mask(images, patch_size, ratio, anchor_ratio, threshold, generator, embed_tokens, fusion_weight)
    raise ValueError(f"masking strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def fusion_weight(samples_seen: int, fusion_samples: int) -> float:
    """rgb+embed schedule: the weight of the embedding similarity grows linearly from 0 to 1 over
    `fusion_samples` samples (the paper uses epoch / 32)."""
    return 1.0 if fusion_samples <= 0 else min(1.0, samples_seen / fusion_samples)


# ---------------------------------------------------------------------------- calibration
def calibrate_threshold(
    images: torch.Tensor,
    patch_size: int,
    anchor_ratio: float,
    target_coverage: float,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """The threshold at which mean cluster coverage over `images` is closest to `target_coverage`.

    Coverage falls as the threshold rises; with anchors fixed it is the fraction of patches whose best
    anchor similarity exceeds the threshold, so the answer is a quantile of those best similarities.
    Returns (threshold, achieved coverage on these images with these anchors).
    """
    if not 0.0 < target_coverage < 1.0:
        raise ValueError(f"target coverage must be in (0, 1), got {target_coverage}")
    sim, _ = anchor_rows(images, patch_size, anchor_ratio, generator)
    best = sim.max(dim=1).values.flatten()
    threshold = float(torch.quantile(best.double(), 1.0 - target_coverage).clamp(-1.0, 1.0))
    achieved = float((best > threshold).double().mean())
    return threshold, achieved
