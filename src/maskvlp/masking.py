"""Which patch tokens a masked CLIP step keeps: none, random (FLIP) or cluster (Wei et al. 2024).

Pure, batched functions: no module state, no Python loop over images, randomness from an explicit
`torch.Generator` on the images' device. Every strategy returns the indices of the kept patch tokens,
(B, n_keep) with the same n_keep for every image (the model gathers them after the patch embedding),
plus per-image statistics. docs/algorithms.md describes the methods as implemented here.
A strategy is one function plus one `register_strategy` line (see the registry below).

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

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
    """Anchors per image: L - int(L * (1 - anchor_ratio)); 0.03 of 196 gives 6 (docs/algorithms.md)."""
    return max(1, num_patches - int(num_patches * (1.0 - anchor_ratio)))


def mask_flops_per_image(
    strategy: str, num_patches: int, patch_size: int, anchor_ratio: float, embed_width: int = 0
) -> float:
    """FLOPs of choosing one image's mask (docs/records.md): nothing for none/random; for cluster,
    standardising the L patches of D = 3 P^2 values (~4 L D: mean, centre, square, scale) and the
    A x L similarity matmul (2 A L D); with the embedding fused (embed_width > 0) the patch
    embedding run once more without gradient (2 L D E) and its A x L cosine (2 A L E + 3 L E)."""
    if strategy != "cluster":
        return 0.0
    n, d, a = num_patches, 3 * patch_size * patch_size, num_anchors(num_patches, anchor_ratio)
    total = 4.0 * n * d + 2.0 * a * n * d
    if embed_width:
        total += 2.0 * n * d * embed_width + 2.0 * a * n * embed_width + 3.0 * n * embed_width
    return total


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


# ------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MaskContext:
    """What a strategy may use besides the images and the masking params."""

    patch_size: int
    generator: torch.Generator | None = None
    embed_tokens: torch.Tensor | None = None  # (B, L, E) layer-0 tokens, when the strategy asked for them
    fusion_weight: float = 0.0


# (images (B, 3, H, W) normalised, the masking config (config.MaskingConfig), context) -> MaskResult
MaskFn = Callable[[torch.Tensor, Any, MaskContext], MaskResult]


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: MaskFn
    check: Callable[[Any, int], None] | None = None  # (masking config, L): raise ValueError("masking.<key> ...")
    wants_embed_tokens: Callable[[Any], bool] = lambda k: False  # does this config need layer-0 tokens?
    draws_clusters: bool = False  # its results carry clusters worth drawing (mask pictures)
    describe: Callable[[Any], str] | None = None  # a short label of the config for reports


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(
    name: str,
    fn: MaskFn,
    check: Callable[[Any, int], None] | None = None,
    wants_embed_tokens: Callable[[Any], bool] | None = None,
    draws_clusters: bool = False,
    describe: Callable[[Any], str] | None = None,
) -> Strategy:
    """Make `masking.strategy: <name>` valid everywhere: config validation, training, pictures, reports."""
    strategy = Strategy(name, fn, check, wants_embed_tokens or (lambda k: False), draws_clusters, describe)
    STRATEGIES[name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"masking.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


def check_config(k: Any, num_patches: int) -> None:
    """Validate a masking config for L patches: the keys every strategy shares, then the strategy's own.
    Raises ValueError naming the key (params.validate turns it into a ConfigError)."""
    strategy = get_strategy(k.strategy)
    if not (0.0 <= k.ratio < 1.0):
        raise ValueError(f"masking.ratio must be in [0, 1), got {k.ratio!r}")
    if int(num_patches * (1.0 - k.ratio)) < 1:
        raise ValueError(f"masking.ratio keeps no token of the {num_patches} patches; lower it, got {k.ratio!r}")
    if strategy.check is not None:
        strategy.check(k, num_patches)


def describe(k: Any) -> str:
    """A short label such as `random r=0.5` or `cluster a=0.03 t=0.5 r=0.5`."""
    strategy = get_strategy(k.strategy)
    return strategy.describe(k) if strategy.describe else f"{k.strategy} r={k.ratio}"


def compute_mask(
    images: torch.Tensor,
    k: Any,
    patch_size: int,
    generator: torch.Generator | None = None,
    embed_tokens: torch.Tensor | None = None,
    fusion_weight: float = 0.0,
) -> MaskResult:
    """The kept tokens for `images` (B, 3, H, W) normalised under masking config `k` (strategy, ratio,
    and the strategy's own keys), computed in fp32 whatever autocast is active."""
    check_config(k, count_patches(images, patch_size))
    ctx = MaskContext(patch_size, generator, embed_tokens, fusion_weight)
    with torch.autocast(images.device.type, enabled=False):
        return get_strategy(k.strategy).fn(images.float(), k, ctx)


def _none(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    return keep_all(images.shape[0], count_patches(images, ctx.patch_size), images.device)


def _random(images: torch.Tensor, k: Any, ctx: MaskContext) -> MaskResult:
    return random_mask(images.shape[0], count_patches(images, ctx.patch_size), k.ratio, ctx.generator, images.device)


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


def _describe_cluster(k: Any) -> str:
    label = f"cluster a={k.anchor_ratio} t={k.threshold}"
    label += " official" if k.mode == "official" else f" r={k.ratio}"
    return label + (" +embed" if k.features == "rgb+embed" else "")


register_strategy("none", _none, describe=lambda k: "none")
register_strategy("random", _random)
register_strategy(
    "cluster",
    _cluster,
    check=_check_cluster,
    wants_embed_tokens=lambda k: k.features == "rgb+embed",
    draws_clusters=True,
    describe=_describe_cluster,
)


def fusion_weight(samples_seen: int, fusion_samples: int) -> float:
    """rgb+embed schedule: the weight of the embedding similarity grows linearly from 0 to 1 over
    `fusion_samples` samples (the paper uses epoch / 32, over its 32 epochs: the whole run)."""
    if fusion_samples <= 0:
        raise ValueError(f"fusion_samples must be >= 1, got {fusion_samples}")
    return min(1.0, samples_seen / fusion_samples)


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
