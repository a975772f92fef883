"""Resize (CLIPA): the whole image at a lower resolution. Token counts, the positions a smaller image
gets (so a model trained small evaluates at full resolution), FLOPs, and grid, block and resize
trained, recorded and evaluated through pretrain."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp import flops, masking
from maskvlp.cli import main
from maskvlp.masking import compute_mask, num_keep, resized_side
from maskvlp.model import CLIP, sincos_positions
from maskvlp.params import load_config
from maskvlp.train import pretrain

from .conftest import as_set_args, make_tiny_shards, tiny_run


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=40, deadline=None)
@given(grid=st.integers(1, 14), patch=st.sampled_from([2, 4, 8]), ratio=st.floats(0.0, 0.95), batch=st.integers(1, 3))
def test_resize_keeps_the_largest_square_within_random_maskings_count(grid, patch, ratio, batch):
    n = grid * grid
    if int(n * (1 - ratio)) < 1:
        return  # refused by the shared ratio check
    k = masking.strategy_config(strategy="resize", ratio=ratio)
    res = compute_mask(torch.randn(batch, 3, grid * patch, grid * patch), k, patch, gen())
    side = math.isqrt(num_keep(n, ratio))
    assert side == resized_side(n, ratio) and side * side <= num_keep(n, ratio) < (side + 1) ** 2
    assert res.images.shape == (batch, 3, side * patch, side * patch)
    assert res.keep_idx.shape == (batch, side * side) and masking.kept_tokens(k, n) == side * side
    assert res.mask_ratio == pytest.approx(1 - side * side / n)


def test_resize_is_antialiased():
    """A flat image stays flat; a one-pixel checkerboard halves to its mean (0) inside the border,
    where sampling without a low-pass filter would keep one colour of it."""
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(masking.resize_images(flat, 4), torch.full((1, 3, 4, 4), 0.7), atol=1e-6)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    small = masking.resize_images(checker.expand(1, 3, 8, 8), 4)
    assert small[..., 1:3, 1:3].abs().max() < 1e-5
    assert torch.equal(masking.resize_images(flat, 8), flat)  # the built size: untouched


def test_sincos_positions_of_a_resized_image_sit_at_its_patch_centres():
    full, small = sincos_positions(8, 16), sincos_positions(4, 16, extent=8)
    assert torch.equal(sincos_positions(8, 16, extent=8), full)
    freqs = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    for i, j in [(0, 0), (1, 2), (3, 3)]:  # small patch (i, j) covers full rows 2i, 2i+1: centre 2i + 0.5
        y, x = (2 * i + 0.5) * freqs, (2 * j + 0.5) * freqs
        expected = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()]).float()
        assert torch.allclose(small[i * 4 + j], expected, atol=1e-6)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_the_tower_takes_a_smaller_image_and_its_full_one(pos_embed):
    model = CLIP("tiny", "tiny", 64, 8, 32, pos_embed=pos_embed)
    vis = model.visual
    assert torch.equal(vis.positions(8), vis.positional_embedding[int(vis.has_cls) :])
    assert vis(torch.randn(2, 3, 32, 32)).shape == vis(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_learned_positions_are_interpolated_and_trained_through():
    """A learned table that is an affine function of the patch's coordinates gives, at half the grid,
    that function at the small patches' centres (away from the border, which the antialiased bicubic
    filter's 8-patch support reaches near the edge), and a loss on a small image reaches the table."""
    model = CLIP("tiny", "tiny", 128, 8, 32, pos_embed="learned", pool="avg")  # 16 x 16 patches
    vis = model.visual
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    affine = rows.flatten()[:, None] * 0.3 + cols.flatten()[:, None] * -0.2
    with torch.no_grad():
        vis.positional_embedding.copy_(affine.expand(-1, vis.positional_embedding.shape[1]))
    small = vis.positions(8).detach()[:, 0].reshape(8, 8)
    centre = torch.arange(8.0) * 2 + 0.5
    expected = centre[:, None] * 0.3 + centre[None, :] * -0.2
    assert torch.allclose(small[2:6, 2:6], expected[2:6, 2:6], atol=1e-4)
    vis(torch.randn(2, 3, 64, 64)).sum().backward()
    assert vis.positional_embedding.grad is not None and vis.positional_embedding.grad.abs().sum() > 0


def test_flops_count_the_smaller_patch_embedding_and_the_resize():
    model = CLIP("tiny", "tiny", 64, 8, 32)
    resize = masking.strategy_config(strategy="resize", ratio=0.75)
    random = masking.strategy_config(strategy="random", ratio=0.75)
    embed = 2 * model.visual.patch_embed.weight.numel() * 3  # one patch's embedding, forward + backward
    assert model.train_flops_per_sample(16, 16) == pytest.approx(model.train_flops_per_sample(16) - 48 * embed)
    cost = masking.mask_flops(resize, 64, 8, 64)
    assert 0 < cost < model.train_flops_per_sample(16) / 100
    assert flops.sample_flops(model, resize, 16) == pytest.approx(model.train_flops_per_sample(16, 16) + cost)
    assert flops.sample_flops(model, resize, 16) < flops.sample_flops(model, random, 16)


# ------------------------------------------------------------------------------- through pretrain
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("clipa"), 200)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, extra, kept",
    [("grid", "masking.grid_window=2", 4), ("block", "masking.ratio=0.75", 4), ("resize", "masking.ratio=0.75", 4)],
)
def test_pretrain_trains_records_and_evaluates_each(shards, tmp_path, strategy, extra, kept):
    """32 px, 8 px patches (16 tokens): each keeps 4; the record says so, its FLOPs are the formula's,
    and the model evaluates on full 32 px images."""
    overrides = tiny_run(
        shards,
        200,
        tmp_path,
        "train.samples=64",
        "train.batch_size=16",
        "train.warmup_samples=16",
        f"masking.strategy={strategy}",
        extra,
        "eval.objects_per_class=2",
        "eval.linear_probe=false",
        "eval.subset_samples=40",
        f"eval.metrics_file={tmp_path / 'eval.json'}",
    )
    cfg = load_config(None, overrides)
    record = pretrain(cfg, progress=False)
    assert record["status"] == "complete"
    assert record["masking"]["mean_mask_ratio"] == pytest.approx(1 - kept / 16)
    model = CLIP.from_config(cfg.model)
    assert record["train_flops"] == pytest.approx(64 * flops.sample_flops(model, cfg.masking, kept))
    assert main(["evaluate", "--quiet", *as_set_args(overrides)]) == 0
    assert (tmp_path / "eval.json").is_file()
