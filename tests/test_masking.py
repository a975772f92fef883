"""The masking library: exact token counts, FLIP statistics, whole structures removed, invariances."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp import masking
from maskvlp.masking import (
    calibrate_threshold,
    cluster_mask,
    compute_mask,
    find_clusters,
    num_anchors,
    num_keep,
    official_cluster_mask,
    random_mask,
    standardised_patches,
)


def mc(strategy: str = "cluster", ratio: float = 0.5, anchor_ratio: float = 0.05, threshold: float = 0.5, **kw):
    """A masking config (the keys of params.yaml's `masking` section)."""
    return masking.strategy_config(strategy=strategy, ratio=ratio, anchor_ratio=anchor_ratio, threshold=threshold, **kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Six colours whose mean-centred channel triplets point 60 degrees apart in the plane orthogonal to
# (1, 1, 1): flat patches of colour i and j correlate cos(60 * (i - j)), i.e. 1 within a colour and
# at most 0.5 across colours.
_U1 = torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2)
_U2 = torch.tensor([1.0, 1.0, -2.0]) / math.sqrt(6)
COLOURS = [math.cos(math.radians(60 * k)) * _U1 + math.sin(math.radians(60 * k)) * _U2 for k in range(6)]


def region_image(regions: torch.Tensor, patch: int, offset: torch.Tensor | None = None) -> torch.Tensor:
    """(gh, gw) colour ids -> a normalised (3, gh*P, gw*P) image of flat-colour patches."""
    colours = torch.stack(COLOURS)[regions]  # (gh, gw, 3)
    img = colours.permute(2, 0, 1).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return img + (offset if offset is not None else 0.3)


@st.composite
def region_layouts(draw):
    gh = draw(st.integers(2, 6))
    gw = draw(st.integers(2, 6))
    ids = draw(st.lists(st.integers(0, 5), min_size=gh * gw, max_size=gh * gw))
    return torch.tensor(ids).reshape(gh, gw)


# ---------------------------------------------------------------------------- token counts
@settings(max_examples=80, deadline=None)
@given(
    strategy=st.sampled_from(["none", "random", "cluster"]),
    ratio=st.floats(0.0, 0.95),
    grid=st.integers(2, 8),
    patch=st.sampled_from([2, 4, 8]),
    batch=st.integers(1, 5),
    anchor_ratio=st.floats(0.01, 1.0),
    threshold=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_kept_indices_are_unique_in_range_and_exactly_n_keep(
    strategy, ratio, grid, patch, batch, anchor_ratio, threshold, seed
):
    num_patches = grid * grid
    if int(num_patches * (1 - ratio)) < 1:
        with pytest.raises(ValueError, match="keeps no token"):
            compute_mask(
                torch.randn(batch, 3, grid * patch, grid * patch),
                mc(strategy if strategy != "none" else "random", ratio),
                patch,
            )
        return
    images = torch.randn(batch, 3, grid * patch, grid * patch, generator=gen(seed))
    res = compute_mask(images, mc(strategy, ratio, anchor_ratio, threshold), patch, gen(seed))
    expected = num_patches if strategy == "none" else num_keep(num_patches, ratio)
    assert res.keep_idx.shape == (batch, expected)
    assert res.keep_idx.dtype == torch.long
    assert int(res.keep_idx.min()) >= 0 and int(res.keep_idx.max()) < num_patches
    for row in res.keep_idx:
        assert len(set(row.tolist())) == expected
        assert torch.equal(row, row.sort().values)  # ascending: gather keeps spatial order
    assert res.mask_ratio == pytest.approx(1 - expected / num_patches)


def test_counts_follow_the_papers_rounding():
    assert num_keep(196, 0.5) == 98 and num_keep(196, 0.75) == 49 and num_keep(196, 0.0) == 196
    assert num_anchors(196, 0.03) == 6  # algorithms.md: 0.03 gives 6 anchors of 196
    assert num_anchors(196, 0.05) == 10


# ---------------------------------------------------------------------------------- random
def test_random_keeps_each_patch_with_probability_one_minus_ratio():
    ratio, num_patches, draws = 0.75, 49, 4000
    g = gen(1)
    counts = torch.zeros(num_patches)
    for _ in range(draws // 100):
        keep = random_mask(100, num_patches, ratio, g).keep_idx
        counts += torch.bincount(keep.flatten(), minlength=num_patches)
    p = counts / draws
    expected = num_keep(num_patches, ratio) / num_patches  # 12/49
    sigma = math.sqrt(expected * (1 - expected) / draws)
    assert (p - expected).abs().max() < 5 * sigma


# --------------------------------------------------------------------------------- cluster
@settings(max_examples=60, deadline=None)
@given(
    layout=region_layouts(), ratio=st.floats(0.1, 0.9), anchor_ratio=st.floats(0.02, 0.3), seed=st.integers(0, 10**6)
)
def test_whole_regions_vanish_when_they_fit_the_budget(layout, ratio, anchor_ratio, seed):
    patch = 4
    images = region_image(layout, patch)[None]
    num_patches = layout.numel()
    if int(num_patches * (1 - ratio)) < 1:
        return
    res = cluster_mask(images, patch, ratio, anchor_ratio, 0.9, gen(seed))
    flat_ids = layout.flatten()
    anchors = res.anchor_idx[0]
    anchor_colours = set(flat_ids[anchors].tolist())
    # the clusters are exactly the anchors' regions (same colour: correlation 1; others <= 0.5)
    expected_clustered = torch.isin(flat_ids, torch.tensor(sorted(anchor_colours)))
    assert torch.equal(res.clustered[0], expected_clustered)
    assert res.cluster_coverage[0].item() == pytest.approx(expected_clustered.float().mean().item())
    kept = set(res.keep_idx[0].tolist())
    budget = num_patches - res.keep_idx.shape[1]
    if int(expected_clustered.sum()) <= budget:
        # whole structures vanish: no patch of an anchor's region survives
        assert not kept & set(torch.nonzero(expected_clustered).flatten().tolist())
    if len(anchors) <= budget:
        assert not kept & set(anchors.tolist())  # anchors are removed first


def test_when_clusters_exceed_the_budget_the_survivors_are_clustered_at_random():
    layout = torch.zeros(6, 6, dtype=torch.long)  # one colour: every patch joins the anchor's cluster
    images = region_image(layout, 4)[None].expand(64, -1, -1, -1)
    res = cluster_mask(images, 4, 0.5, 0.05, 0.9, gen(3))
    assert res.clustered.all()
    survivors = torch.bincount(res.keep_idx.flatten(), minlength=36).float()
    assert survivors.min() > 0  # not a fixed index-order pick


def test_top_up_beyond_clusters_is_random_not_index_order():
    layout = torch.arange(36).remainder(6).reshape(6, 6)  # six colours, every colour in every row
    images = region_image(layout, 4)[None].expand(200, -1, -1, -1)
    res = cluster_mask(images, 4, 0.5, 0.03, 0.9, gen(5))  # 2 anchors -> ~12 clustered, 18 removed
    removed_unclustered = torch.zeros(36)
    for b in range(200):
        mask = torch.ones(36, dtype=torch.bool)
        mask[res.keep_idx[b]] = False
        removed_unclustered += (mask & ~res.clustered[b]).float()
    early, late = removed_unclustered[:18].sum(), removed_unclustered[18:].sum()
    assert abs(early - late) / (early + late) < 0.1  # the official tie order would favour late indices


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.2, 5.0), shift=st.floats(-2.0, 2.0), seed=st.integers(0, 10**6))
def test_cluster_mask_is_invariant_to_per_patch_brightness_and_contrast(scale, shift, seed):
    patch, grid = 4, 6
    images = torch.randn(3, 3, grid * patch, grid * patch, generator=gen(seed))
    factors = torch.rand(3, 1, grid, grid, generator=gen(seed + 1)) * scale + 0.1
    shifts = torch.rand(3, 1, grid, grid, generator=gen(seed + 2)) * shift
    up = lambda t: t.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # noqa: E731
    changed = images * up(factors) + up(shifts)
    a = cluster_mask(images, patch, 0.5, 0.1, 0.3, gen(seed))
    b = cluster_mask(changed, patch, 0.5, 0.1, 0.3, gen(seed))
    assert torch.equal(a.clustered, b.clustered)
    assert torch.equal(a.keep_idx, b.keep_idx)


def test_flat_grey_patches_have_zero_similarity_and_no_nan():
    grey = torch.full((1, 3, 8, 8), 0.37)  # equal normalised channels: zero variance
    u = standardised_patches(grey, 4)
    assert torch.equal(u, torch.zeros_like(u))
    clustered, anchors, _ = find_clusters(grey, 4, 0.25, 0.0, gen())
    assert clustered.sum() == 1 and clustered[0, anchors[0, 0]]  # only the anchor itself (sim 0, not > 0)
    clustered, _, _ = find_clusters(grey, 4, 0.25, -0.1, gen())
    assert clustered.all()  # below a negative threshold everything joins
    res = cluster_mask(grey, 4, 0.5, 0.25, 0.5, gen())
    assert not torch.isnan(res.cluster_coverage).any()


def test_flat_colours_keep_only_their_channel_pattern():
    # algorithms.md item 9: flat red and flat dark red correlate 1.0 after per-patch standardisation
    red = torch.tensor([2.0, -1.0, -1.2])[:, None, None].expand(3, 4, 4)
    dark = (red - 0.7) * 0.4
    u = standardised_patches(torch.cat([red, dark], 2)[None], 4)
    assert (u[0, 0] @ u[0, 1]).item() == pytest.approx(1.0, abs=1e-5)


def test_rgb_embed_fusion_moves_similarity_to_the_embedding():
    layout = torch.tensor([[0, 0], [1, 1]])
    images = region_image(layout, 4)[None]
    # embeddings that say the opposite: patches 0 and 2 alike, 0 and 1 unrelated
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    g = torch.Generator().manual_seed(0)
    anchor = find_clusters(images, 4, 0.25, 0.9, g)[1]
    for weight, expected_partner in ((0.0, "rgb"), (1.0, "embed")):
        clustered, a, _ = find_clusters(images, 4, 0.25, 0.9, torch.Generator().manual_seed(0), emb, weight)
        assert torch.equal(a, anchor)
        k = int(a[0, 0])
        rgb_partner = {0: 1, 1: 0, 2: 3, 3: 2}[k]
        embed_partner = {0: 2, 2: 0, 1: 3, 3: 1}[k]
        partner = rgb_partner if expected_partner == "rgb" else embed_partner
        assert clustered[0].nonzero().flatten().tolist() == sorted([k, partner])
    assert masking.fusion_weight(0, 100) == 0 and masking.fusion_weight(50, 100) == 0.5
    assert masking.fusion_weight(500, 100) == 1.0
    with pytest.raises(ValueError, match="fusion_samples"):
        masking.fusion_weight(10, 0)


def test_fusion_samples_default_to_the_budget_and_zero_is_refused_with_the_embedding():
    from maskvlp.config import ConfigError
    from maskvlp.params import load_config

    cfg = load_config(None, ["masking.features=rgb+embed", "train.samples=5000"])
    assert cfg.masking.fusion_samples == 5000  # the weight starts at 0 and reaches 1 at the end of the run
    assert cfg.masking.anchor_ratio == 0.03  # the official 6 anchors of 196
    with pytest.raises(ConfigError, match="fusion_samples must be >= 1 with features rgb\\+embed"):
        load_config(None, ["masking.features=rgb+embed", "masking.fusion_samples=0"])


@pytest.mark.parametrize("features", ["rgb", "rgb+embed"])
def test_mask_is_the_same_under_bf16_autocast(features):
    """Clusters are computed in fp32 whatever autocast is active (GPU training runs under bf16)."""
    from maskvlp.model import CLIP
    from maskvlp.params import load_config
    from maskvlp.train import choose_mask

    cfg = load_config(None, [f"masking.features={features}", "masking.threshold=0.3", "train.samples=100"])
    torch.manual_seed(0)
    model = CLIP.from_config(cfg.model)
    images = torch.randn(8, 3, 64, 64) + torch.linspace(-1, 1, 64)  # structure for clusters to find
    plain = choose_mask(cfg, model, images, 3, 0, 0, cfg.masking, samples_seen=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = choose_mask(cfg, model, images, 3, 0, 0, cfg.masking, samples_seen=50)
    assert torch.equal(plain.keep_idx, under.keep_idx)
    assert torch.equal(plain.clustered, under.clustered)


# -------------------------------------------------------------------------------- official
def test_official_mode_keeps_the_batch_minimum_of_unclustered_patches_in_index_order():
    # image 0: one colour everywhere but the last row -> heavily clustered whatever the anchor
    a = torch.zeros(4, 4, dtype=torch.long)
    a[3] = torch.tensor([1, 2, 3, 4])
    b = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5], [0, 1, 2, 3]])
    images = torch.stack([region_image(a, 4), region_image(b, 4)])
    g = torch.Generator().manual_seed(0)
    res = official_cluster_mask(images, 4, 0.05, 0.9, min_mask_ratio=0.3, generator=g)
    unclustered = (~res.clustered).sum(1)
    expected = max(1, min(int(16 * 0.7), int(unclustered.min())))
    assert res.keep_idx.shape == (2, expected)
    for i in range(2):
        free = torch.nonzero(~res.clustered[i]).flatten()
        assert torch.equal(res.keep_idx[i], free[:expected])  # first unclustered patches by index
    # the exact mode at the same nominal ratio keeps a fixed count instead
    exact = cluster_mask(images, 4, 0.3, 0.05, 0.9, torch.Generator().manual_seed(0))
    assert exact.keep_idx.shape == (2, num_keep(16, 0.3))


def test_official_mode_is_capped_by_min_mask_ratio():
    images = torch.randn(4, 3, 16, 16, generator=gen(2))  # noise: almost nothing clusters at 0.99
    res = official_cluster_mask(images, 4, 0.1, 0.99, min_mask_ratio=0.3, generator=gen(2))
    assert res.keep_idx.shape[1] == int(16 * 0.7)


# ------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("strategy", ["random", "cluster"])
def test_same_seed_same_mask_other_seed_other_mask(strategy):
    images = torch.randn(8, 3, 32, 32, generator=gen(9))
    a = compute_mask(images, mc(strategy, 0.5, 0.1, 0.3), 4, gen(1)).keep_idx
    b = compute_mask(images, mc(strategy, 0.5, 0.1, 0.3), 4, gen(1)).keep_idx
    c = compute_mask(images, mc(strategy, 0.5, 0.1, 0.3), 4, gen(2)).keep_idx
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(ratio=1.0), "ratio"),
        (dict(ratio=-0.2), "ratio"),
        (dict(anchor_ratio=0.0), "anchor_ratio"),
        (dict(anchor_ratio=1.5), "anchor_ratio"),
        (dict(threshold=1.01), "threshold"),
        (dict(strategy="blocks"), "strategy"),
        (dict(mode="fast"), "mode"),
    ],
)
def test_invalid_parameters_are_named(kwargs, name):
    args = dict(strategy="cluster", ratio=0.5, anchor_ratio=0.1, threshold=0.5, mode="exact")
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        compute_mask(torch.randn(1, 3, 16, 16), mc(**args), 4, gen())


def test_image_not_divisible_into_patches_says_what_to_do():
    with pytest.raises(ValueError, match=r"not divisible by patch_size 16.*model.image_size"):
        compute_mask(torch.randn(1, 3, 40, 48), mc("random", 0.5), 16)


def test_any_patch_and_image_size_that_divides_works():
    for patch, h, w in [(14, 224, 224), (16, 224, 160), (7, 28, 21)]:
        res = compute_mask(torch.randn(2, 3, h, w), mc("cluster", 0.5, 0.05, 0.5), patch, gen())
        assert res.num_patches == (h // patch) * (w // patch)


# -------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("target", [0.1, 0.3, 0.6])
def test_calibrated_threshold_hits_the_target_coverage(target):
    images = torch.randn(32, 3, 32, 32, generator=gen(4)).cumsum(-1) / 4  # smooth-ish structure
    threshold, achieved = calibrate_threshold(images, 4, 0.05, target, gen(5))
    assert -1 <= threshold <= 1
    assert abs(achieved - target) < 0.02
    res = cluster_mask(images, 4, 0.5, 0.05, threshold, gen(5))  # same anchors: same coverage
    assert res.cluster_coverage.mean().item() == pytest.approx(achieved, abs=1e-6)


# ----------------------------------------------------------- official mode calibrated to a final ratio
def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Low-frequency noise, upsampled: neighbouring 4x4 patches correlate, how much varies by image."""
    coarse = torch.randn(n, 3, 4, 4, generator=gen(seed))
    fine = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return fine + 0.3 * torch.randn(n, 3, 32, 32, generator=gen(seed + 1))


@pytest.mark.parametrize("target", [0.4, 0.5, 0.6])
def test_official_calibration_hits_the_target_final_mask_ratio_when_training_masks_the_same_batch(target):
    images = smooth_images(32, 3)
    threshold, achieved = masking.calibrate_official_threshold(images, 4, 0.05, 0.3, target, 32, gen(7))
    assert abs(achieved - target) < 0.01  # the official tolerance
    # training's official mask on this batch, with the same anchors (same seed): that very ratio
    res = official_cluster_mask(images, 4, 0.05, threshold, min_mask_ratio=0.3, generator=gen(7))
    assert res.mask_ratio == pytest.approx(achieved)


def test_official_calibration_averages_over_training_sized_batches():
    images = smooth_images(64, 5)
    sim, _ = masking.cluster.anchor_rows(images, 4, 0.05, gen(1))
    best = sim.max(dim=1).values
    whole = masking.cluster.official_mask_ratio(best, 0.5, 0.3, 64)
    batches = masking.cluster.official_mask_ratio(best, 0.5, 0.3, 16)
    # the minimum over 16 images is at least the minimum over 64: smaller batches mask less
    assert batches <= whole
    per_batch = [masking.cluster.official_mask_ratio(b, 0.5, 0.3, 16) for b in best.split(16)]
    assert batches == pytest.approx(sum(per_batch) / 4)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(-1, 1), st.floats(-1, 1))
def test_official_final_ratio_never_rises_with_the_threshold(seed, t1, t2):
    best = torch.rand(8, 16, generator=gen(seed)) * 2 - 1
    lo, hi = sorted((t1, t2))
    ratio = masking.cluster.official_mask_ratio
    assert ratio(best, lo, 0.3, 4) >= ratio(best, hi, 0.3, 4) >= 0.3 - 1e-9


def test_official_calibration_that_cannot_reach_its_target_returns_the_closest_ratio():
    images = torch.randn(4, 3, 16, 16, generator=gen(2))  # 16 patches: ratios move in steps of 1/16
    _, achieved = masking.calibrate_official_threshold(images, 4, 0.1, 0.3, 0.47, 4, gen(3), tolerance=1e-6)
    sim, _ = masking.cluster.anchor_rows(images, 4, 0.1, gen(3))  # the anchors the calibration drew
    best = sim.max(dim=1).values
    cuts = sorted({-1.0, *best.flatten().tolist()})  # the ratio only changes at these thresholds
    reachable = {masking.cluster.official_mask_ratio(best, t, 0.3, 4) for t in cuts}
    assert achieved == min(reachable, key=lambda r: abs(r - 0.47))


def test_official_calibration_through_the_registry_and_its_refusals():
    k = mc("cluster", mode="official", calibrate_mask_ratio=0.5, min_mask_ratio=0.3)
    calibrated, line = masking.calibrate(k, lambda: smooth_images(32, 3), 4, gen(7), 16)
    assert calibrated.threshold != k.threshold and "official mean final mask ratio" in line and "batches of 16" in line
    assert masking.describe(calibrated).endswith("official final=0.5")
    for bad, key in [
        ({"mode": "exact"}, "use masking.calibrate_coverage there"),
        ({"calibrate_mask_ratio": 0.2}, r"in \[masking.min_mask_ratio=0.3, 1\)"),
        ({"calibrate_coverage": 0.3}, "both set masking.threshold"),
    ]:
        with pytest.raises(ValueError, match=key):
            masking.check_config(mc("cluster", **{"mode": "official", "calibrate_mask_ratio": 0.5, **bad}), 64)


def test_the_pictures_of_an_official_arm_calibrated_to_a_final_ratio_are_valid_configs():
    """`maskvlp masks` and the comparison's picture of the paper's arm failed: its exact-mode companion
    picture kept calibrate_mask_ratio, which exact mode refuses."""
    k = mc("cluster", mode="official", calibrate_mask_ratio=0.5, threshold=0.97)
    shown = masking.get_strategy("cluster").pictures(k)
    assert [p.mode for p in shown] == ["official", "exact"] and all(p.threshold == 0.97 for p in shown)
    for p in shown:
        masking.check_config(p, 64)


def test_official_calibration_over_training_batches_states_the_interval_of_its_mean():
    # one batch's minimum varies (sd 0.16 on the testbed): 16 batches calibrated to 0.508 where training
    # masked 0.606, so the calibration looks at many batches, one by one, and says how precise it is
    import math
    import re
    import statistics

    batches = [smooth_images(16, seed) for seed in range(0, 24, 3)]
    k = mc("cluster", mode="official", calibrate_mask_ratio=0.5, min_mask_ratio=0.3, anchor_ratio=0.05)
    calibrated, line = masking.calibrate(k, lambda: iter(batches), 4, gen(7), 16)
    best = masking.cluster.best_similarities(iter(batches), 4, 0.05, gen(7))  # the same anchors, batch by batch
    assert best.shape == (8 * 16, 64)
    ratios = masking.cluster.official_batch_ratios(best, calibrated.threshold, 0.3, 16)
    sd = statistics.stdev(ratios)
    said = re.search(
        r"ratio ([\d.]+) ± ([\d.]+) \(95%, over 8 batches of 16; one batch's ratio varies by sd ([\d.]+)\)", line
    )
    assert said, line
    assert float(said[1]) == pytest.approx(statistics.mean(ratios), abs=5e-4)
    assert float(said[2]) == pytest.approx(1.96 * sd / math.sqrt(8), abs=5e-4)
    assert float(said[3]) == pytest.approx(sd, abs=5e-4)


def test_an_official_calibration_at_the_edge_of_float_rounding_says_so():
    # the testbed's and clip art's 50% final ratio lies at threshold 1 - 2^-24 / 1 - 2^-23: the clusters
    # shrink to exact repeats whose similarity rounds to 1, and the index-order drop fills the count
    stripes = torch.zeros(2, 3, 16, 16)
    stripes[..., ::2] = 1.0  # every 4x4 patch the same pattern: similarity 1 to any anchor
    smooth = smooth_images(2, 9)
    k = mc("cluster", mode="official", calibrate_mask_ratio=0.3, min_mask_ratio=0.3, anchor_ratio=0.1)
    calibrated, line = masking.calibrate(k, lambda: iter([torch.cat([stripes, smooth[:, :, :16, :16]])]), 4, gen(1), 4)
    assert calibrated.threshold > masking.cluster.ROUNDING_EDGE
    assert "within float rounding of 1" in line
    _, plain = masking.calibrate(k, lambda: smooth_images(32, 3), 4, gen(7), 16)
    assert "rounding" not in plain
