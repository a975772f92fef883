"""Cluster masking (Wei, Pan, Owens, CVPR 2024): drop whole groups of similar patches around anchors.

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

This module registers the strategy `cluster` with its own keys (anchor_ratio, threshold, features,
fusion_samples, mode, min_mask_ratio, calibrate_coverage, calibrate_mask_ratio), FLOPs, calibrations
and pictures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from maskvlp.masking.base import (
    MaskContext,
    MaskResult,
    _keep_lowest,
    _rand,
    count_patches,
    num_keep,
    patchify,
    register_strategy,
)

ROUNDING_EDGE = 1.0 - 1e-6  # similarities above this are 1 up to float32 rounding (its epsilon: 1.2e-7)
FLAT_STD = 1e-4  # patches varying less than this (normalised units; one 8-bit level is ~0.015) are flat


@dataclass
class ClusterParams:
    """The `masking.*` keys of cluster masking (params.yaml)."""

    anchor_ratio: float = 0.03  # fraction of patches drawn as anchors (official: 6 of 196)
    threshold: float = 0.5  # similarity (Pearson) above which a patch joins an anchor
    features: str = "rgb"  # rgb | rgb+embed
    fusion_samples: int | None = (
        None  # rgb+embed: samples over which the mix moves from RGB to embed; null = train.samples
    )
    mode: str = "exact"  # exact (fixed ratio) | official (batch-minimum token count)
    min_mask_ratio: float = 0.3  # official mode only
    calibrate_coverage: float = 0.0  # >0: pick the threshold so mean cluster coverage hits this
    # official mode, >0: pick the threshold so the mean final mask ratio hits this (the official bisection)
    calibrate_mask_ratio: float = 0.0


def num_anchors(num_patches: int, anchor_ratio: float) -> int:
    """Anchors per image: L - int(L * (1 - anchor_ratio)); 0.03 of 196 gives 6 (docs/algorithms.md)."""
    return max(1, num_patches - int(num_patches * (1.0 - anchor_ratio)))


def mask_flops_per_image(num_patches: int, patch_size: int, anchor_ratio: float, embed_width: int = 0) -> float:
    """FLOPs of choosing one image's cluster mask (docs/records.md): standardising the L patches of
    D = 3 P^2 values (~4 L D: mean, centre, square, scale) and the A x L similarity matmul (2 A L D);
    with the embedding fused (embed_width > 0) the patch embedding run once more without gradient
    (2 L D E) and its A x L cosine (2 A L E + 3 L E)."""
    n, d, a = num_patches, 3 * patch_size * patch_size, num_anchors(num_patches, anchor_ratio)
    total = 4.0 * n * d + 2.0 * a * n * d
    if embed_width:
        total += 2.0 * n * d * embed_width + 2.0 * a * n * embed_width + 3.0 * n * embed_width
    return total


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


def fusion_weight(samples_seen: int, fusion_samples: int) -> float:
    """rgb+embed schedule: the weight of the embedding similarity grows linearly from 0 to 1 over
    `fusion_samples` samples (the paper uses epoch / 32, over its 32 epochs: the whole run)."""
    if fusion_samples <= 0:
        raise ValueError(f"fusion_samples must be >= 1, got {fusion_samples}")
    return min(1.0, samples_seen / fusion_samples)


Images = torch.Tensor | Iterable[torch.Tensor]  # one tensor of images, or training batches one by one


def best_similarities(
    images: Images, patch_size: int, anchor_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(N, L): each patch's best anchor similarity (anchors 2), batch by batch when `images` is an
    iterable of batches (only these are kept, not the images: a calibration may look at many)."""
    batches = [images] if isinstance(images, torch.Tensor) else images
    return torch.cat([anchor_rows(b, patch_size, anchor_ratio, generator)[0].max(dim=1).values for b in batches])


def calibrate_threshold(
    images: Images,
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
    best = best_similarities(images, patch_size, anchor_ratio, generator).flatten()
    threshold = float(torch.quantile(best.double(), 1.0 - target_coverage).clamp(-1.0, 1.0))
    achieved = float((best > threshold).double().mean())
    return threshold, achieved


def official_batch_ratios(best: torch.Tensor, threshold: float, min_mask_ratio: float, batch_size: int) -> list[float]:
    """Official mode's final mask ratio at `threshold` per batch: `best` (N, L) holds each patch's best
    anchor similarity (anchors 2); the images are cut into batches of `batch_size` (the last, partial
    one dropped unless it is the only one), each batch masks 1 - n_keep / L of every image."""
    num_patches = best.shape[1]
    cap = int(num_patches * (1 - min_mask_ratio))
    full = best.shape[0] // batch_size * batch_size
    batches = best[:full].split(batch_size) if full else (best,)
    return [1.0 - max(1, min(cap, int((b <= threshold).sum(1).min()))) / num_patches for b in batches]


def official_mask_ratio(best: torch.Tensor, threshold: float, min_mask_ratio: float, batch_size: int) -> float:
    """The mean over batches of official mode's final mask ratio at `threshold` (official_batch_ratios)."""
    ratios = official_batch_ratios(best, threshold, min_mask_ratio, batch_size)
    return sum(ratios) / len(ratios)


def calibrate_official_threshold(
    images: Images,
    patch_size: int,
    anchor_ratio: float,
    min_mask_ratio: float,
    target: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    tolerance: float = 0.01,
    steps: int = 40,
) -> tuple[float, float]:
    """The threshold at which official mode's mean final mask ratio over `images`, cut into training
    batches, is within `tolerance` of `target`: the official repository's bisection (its search.py:
    halve the interval toward the target until the ratio is within 0.01). The final ratio falls as the
    threshold rises (fewer patches clustered, a larger batch minimum of unclustered ones), so bisection
    finds it; the interval is [-1, 1] (the official search starts from [0, 1], whose midpoint is the
    paper's 0.5) and stops after `steps` halvings where counts are too coarse to come within the
    tolerance (the official loop would not end). Returns (threshold, achieved mean final ratio): the
    first within tolerance, else the closest seen."""
    best = best_similarities(images, patch_size, anchor_ratio, generator)
    return bisect_official_threshold(best, min_mask_ratio, target, batch_size, tolerance, steps)


def bisect_official_threshold(
    best: torch.Tensor, min_mask_ratio: float, target: float, batch_size: int, tolerance: float = 0.01, steps: int = 40
) -> tuple[float, float]:
    """calibrate_official_threshold's bisection on the best similarities `best` (N, L) it computed."""
    if not min_mask_ratio <= target < 1.0:
        raise ValueError(f"target final mask ratio must be in [min_mask_ratio={min_mask_ratio}, 1), got {target}")
    lo, hi = -1.0, 1.0
    found = (0.0, official_mask_ratio(best, 0.0, min_mask_ratio, batch_size))
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        ratio = official_mask_ratio(best, mid, min_mask_ratio, batch_size)
        if abs(ratio - target) < abs(found[1] - target):
            found = (mid, ratio)
        if abs(ratio - target) < tolerance:
            return mid, ratio
        lo, hi = (mid, hi) if ratio > target else (lo, mid)
    return found


# ------------------------------------------------------------------------ the registration
def _cluster(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    clusters = (images, ctx.patch_size)
    extras = (ctx.generator, ctx.embed_tokens, ctx.fusion_weight)
    if k.mode == "official":
        return official_cluster_mask(*clusters, k.anchor_ratio, k.threshold, k.min_mask_ratio, *extras)
    return cluster_mask(*clusters, k.ratio, k.anchor_ratio, k.threshold, *extras)


CLUSTER_FEATURES = ("rgb", "rgb+embed")

CLUSTER_MODES = ("exact", "official")


def _check_cluster(k: Any, num_patches: int) -> None:
    if not 0.0 < k.anchor_ratio <= 1.0:
        raise ValueError(f"masking.anchor_ratio must be in (0, 1], got {k.anchor_ratio!r}")
    if not -1.0 <= k.threshold <= 1.0:
        raise ValueError(f"masking.threshold must be a similarity in [-1, 1], got {k.threshold!r}")
    if k.features not in CLUSTER_FEATURES:
        raise ValueError(f"masking.features must be one of {', '.join(CLUSTER_FEATURES)}, got {k.features!r}")
    if k.mode not in CLUSTER_MODES:
        raise ValueError(f"masking.mode must be one of {', '.join(CLUSTER_MODES)}, got {k.mode!r}")
    if not 0.0 <= k.min_mask_ratio < 1.0:
        raise ValueError(f"masking.min_mask_ratio must be in [0, 1), got {k.min_mask_ratio!r}")
    if k.fusion_samples is not None and k.fusion_samples < (1 if k.features == "rgb+embed" else 0):
        raise ValueError(
            "masking.fusion_samples must be >= 1 with features rgb+embed: the embedding's weight grows from 0 "
            "(RGB only, while the embedding is untrained) over this many samples, as the paper's epoch/32; "
            f"null = the training budget, got {k.fusion_samples!r}"
        )
    if not 0 <= k.calibrate_coverage < 1:
        raise ValueError(f"masking.calibrate_coverage must be in [0, 1) (0 = off), got {k.calibrate_coverage!r}")
    if k.calibrate_mask_ratio:
        if k.mode != "official":
            raise ValueError(
                "masking.calibrate_mask_ratio calibrates official mode's batch-dependent ratio; with masking.mode "
                f"exact the ratio is masking.ratio (use masking.calibrate_coverage there), got {k.calibrate_mask_ratio!r}"
            )
        if not k.min_mask_ratio <= k.calibrate_mask_ratio < 1:
            raise ValueError(
                f"masking.calibrate_mask_ratio must be in [masking.min_mask_ratio={k.min_mask_ratio}, 1) (0 = off): "
                f"official mode never masks less than min_mask_ratio, got {k.calibrate_mask_ratio!r}"
            )
        if k.calibrate_coverage:
            raise ValueError(
                "masking.calibrate_mask_ratio and masking.calibrate_coverage both set masking.threshold; "
                f"set one of them to 0, got {k.calibrate_mask_ratio!r} and {k.calibrate_coverage!r}"
            )


def _describe_cluster(k: Any) -> str:
    label = f"cluster a={k.anchor_ratio} t={k.threshold:.6g}"  # a calibrated threshold: 6 digits
    label += f" r={k.ratio}" if k.mode != "official" else " official"
    label += f" final={k.calibrate_mask_ratio}" if k.mode == "official" and k.calibrate_mask_ratio else ""
    return label + (" +embed" if k.features == "rgb+embed" else "")


def _mask_flops(k: Any, num_patches: int, patch_size: int, embed_width: int, samples_seen: int | None) -> float:
    """The embedding pass counts where rgb+embed fuses it (at `samples_seen`: once its weight is > 0)."""
    fused = k.features == "rgb+embed" and (samples_seen is None or _embed_weight(k, samples_seen) > 0)
    return mask_flops_per_image(num_patches, patch_size, k.anchor_ratio, embed_width if fused else 0)


def _embed_weight(k: Any, samples_seen: int) -> float:
    return fusion_weight(samples_seen, k.fusion_samples) if k.features == "rgb+embed" else 0.0


def _calibrate(
    k: Any, images: Callable[[], Images], patch_size: int, generator: torch.Generator | None, batch_size: int
):
    if k.mode == "official" and k.calibrate_mask_ratio > 0:
        best = best_similarities(images(), patch_size, k.anchor_ratio, generator)
        threshold, achieved = bisect_official_threshold(best, k.min_mask_ratio, k.calibrate_mask_ratio, batch_size)
        ratios = official_batch_ratios(best, threshold, k.min_mask_ratio, batch_size)
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        missed = "" if abs(achieved - k.calibrate_mask_ratio) < 0.01 else ", the closest reachable on these images"
        if threshold > ROUNDING_EDGE:
            missed += (
                "; the threshold is within float rounding of 1: only exact repeats of a pattern cluster, and which"
                " do is decided by rounding (it may differ on another device), the rest of the count is official"
                " mode's index-order drop"
            )
        return {"threshold": threshold}, (
            f"calibrated threshold masking.threshold={threshold:.8g}: official mean final mask ratio "
            f"{achieved:.3f} ± {1.96 * sd / math.sqrt(len(ratios)):.3f} (95%, over {len(ratios)} batches of "
            f"{batch_size}; one batch's ratio varies by sd {sd:.3f}) (target {k.calibrate_mask_ratio}{missed})"
        )
    if k.calibrate_coverage <= 0:
        return None
    threshold, achieved = calibrate_threshold(images(), patch_size, k.anchor_ratio, k.calibrate_coverage, generator)
    return {"threshold": threshold}, (
        f"calibrated threshold masking.threshold={threshold:.8g}: coverage {achieved:.1%} "
        f"(target {k.calibrate_coverage:.1%})"
    )


def _derive(k: Any, samples: int) -> None:
    if k.fusion_samples is None:
        k.fusion_samples = samples


register_strategy(
    "cluster",
    _cluster,
    params=ClusterParams,
    check=_check_cluster,
    describe=_describe_cluster,
    kept_tokens=lambda k, n: None if k.mode == "official" else num_keep(n, k.ratio),
    # official mode calibrated to a mean final ratio plans its compute budget at that ratio (training
    # records the FLOPs it spent: train_flops)
    planned_tokens=lambda k, n: num_keep(n, k.calibrate_mask_ratio) if k.calibrate_mask_ratio else None,
    mask_flops=_mask_flops,
    embed_weight=_embed_weight,
    calibrate=_calibrate,
    derive=_derive,
    # both modes, drawn with the same seed: the same anchors (and the threshold as calibrated: exact
    # mode takes no final-ratio calibration)
    pictures=lambda k: [
        replace(k, mode=m, calibrate_mask_ratio=k.calibrate_mask_ratio if m == "official" else 0.0)
        for m in dict.fromkeys((k.mode, "exact", "official"))
    ],
    record=lambda k: {"threshold": k.threshold},
)
