"""A masking strategy added by one module, with a parameter of its own, runs through everything.

`stripes` below is the whole strategy: its mask function, its own key `masking.stripe_width`, its
check, token count, mask FLOPs, label, pictures and recorded keys, registered with one
`register_strategy` call (README, "Adding a masking strategy"). No other module is touched, and
config, pretrain, train.compute_samples, a sweep space, `maskvlp masks` and `maskvlp report` take it.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from maskvlp import masking
from maskvlp.cli import main
from maskvlp.config import ConfigError
from maskvlp.model import CLIP
from maskvlp.params import load_config
from maskvlp.runs import run_paths
from maskvlp.train import pretrain

from .conftest import as_set_args, make_tiny_shards, tiny_run

pytestmark = pytest.mark.slow

STRIPE_FLOPS = 1000.0  # per image and patch column: a made-up cost, to see it counted


# ------------------------------------------------------------------------- the strategy module
@dataclass
class StripeParams:
    stripe_width: int = 1  # patch columns per stripe; stripes alternate kept / removed


def stripes(images: torch.Tensor, k, ctx: masking.MaskContext) -> masking.MaskResult:
    """Keep alternate vertical stripes of `stripe_width` patch columns, at a random phase per image."""
    b, grid = images.shape[0], images.shape[-1] // ctx.patch_size
    phase = torch.randint(0, 2, (b, 1), generator=ctx.generator, device=images.device)
    cols = torch.arange(grid * grid, device=images.device) % grid
    kept = ((cols[None] // k.stripe_width + phase) % 2 == 0).nonzero()[:, 1].reshape(b, -1)
    return masking.MaskResult(kept, torch.zeros(b, device=images.device), 0, grid * grid)


def check_stripes(k, num_patches: int) -> None:
    grid = int(num_patches**0.5)
    if k.stripe_width < 1 or grid % (2 * k.stripe_width):
        raise ValueError(f"masking.stripe_width must be >= 1 and divide {grid} columns in pairs, got {k.stripe_width}")


def register() -> None:
    masking.register_strategy(
        "stripes",
        stripes,
        params=StripeParams,
        check=check_stripes,
        describe=lambda k: f"stripes w={k.stripe_width}",
        kept_tokens=lambda k, n: n // 2,
        mask_flops=lambda k, n, patch, width, seen: STRIPE_FLOPS * n**0.5,
        pictures=lambda k: [replace(k, stripe_width=w) for w in (1, 2)],
        record=lambda k: {"stripe_width": k.stripe_width},
    )


# ------------------------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def registered():
    register()
    yield
    del masking.STRATEGIES["stripes"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("stripes"), 300)


def run_overrides(shards: Path, runs: Path, *extra: str) -> list[str]:
    return tiny_run(
        shards,
        300,
        runs,
        "train.samples=64",
        "train.batch_size=16",
        "train.warmup_samples=16",
        "train.log_every_steps=2",
        "masking.strategy=stripes",
        "masking.stripe_width=2",
        "eval.objects_per_class=2",
        "eval.linear_probe=false",
        "eval.subset_samples=40",
        f"eval.metrics_file={runs / 'eval.json'}",
        *extra,
    )


def test_its_parameter_is_a_key_of_params_checked_by_the_strategy(registered, shards, tmp_path):
    cfg = load_config(None, run_overrides(shards, tmp_path))
    assert cfg.masking.stripe_width == 2 and masking.describe(cfg.masking) == "stripes w=2"
    with pytest.raises(ConfigError, match="masking.stripe_width must be >= 1"):
        load_config(None, run_overrides(shards, tmp_path, "masking.stripe_width=3"))
    with pytest.raises(ConfigError, match="masking.stripe_widht"):
        load_config(None, run_overrides(shards, tmp_path, "masking.stripe_widht=1"))


def test_compute_samples_counts_its_tokens_and_its_mask_flops(registered, shards, tmp_path):
    cfg = load_config(None, run_overrides(shards, tmp_path, "train.compute_samples=1000"))
    model = CLIP.from_config(cfg.model)
    grid = model.visual.num_patches  # 16 patches, 8 kept
    per_sample = model.train_flops_per_sample(grid // 2) + STRIPE_FLOPS * 4
    assert cfg.train.samples == round(1000 * model.train_flops_per_sample(grid) / per_sample)


def test_pretrain_masks_report_and_a_sweep_space_take_it(registered, shards, tmp_path, capsys):
    overrides = run_overrides(shards, tmp_path)
    record = pretrain(load_config(None, overrides), progress=False)
    assert record["status"] == "complete" and record["masking"]["mean_mask_ratio"] == pytest.approx(0.5)
    assert record["masking"]["label"] == "stripes w=2" and record["masking"]["stripe_width"] == 2
    model = CLIP.from_config(load_config(None, overrides).model)
    assert record["train_flops"] == pytest.approx(64 * (model.train_flops_per_sample(8) + STRIPE_FLOPS * 4))
    saved = yaml.safe_load(run_paths(load_config(None, overrides)).config.read_text())
    assert saved["masking"]["stripe_width"] == 2  # the run folder records the strategy's key

    assert main(["evaluate", "--quiet", *as_set_args(overrides)]) == 0
    report = tmp_path / "report.png"
    assert main(["report", str(tmp_path), "--out", str(report)]) == 0
    assert "stripes w=2" in capsys.readouterr().out and report.is_file()

    out = tmp_path / "masks.png"
    assert main(["masks", "--images", str(shards), "--out", str(out), "--count", "2", *as_set_args(overrides)]) == 0
    # image, clusters, and the kept patches of random, cluster (two modes) and stripes (two widths)
    assert Image.open(out).width > 1200

    from maskvlp.sweep.space import grid_points
    from maskvlp.sweep.spec import parse, validate

    spec = parse(
        {
            "name": "stripes",
            "base": {"masking.strategy": "stripes"},
            "space": {"masking.stripe_width": {"type": "categorical", "choices": [1, 2]}},
            "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
            "sampler": {"name": "grid"},
            "pruner": {"name": "none"},
        }
    )
    validate(spec, None, overrides)
    assert [p["masking.stripe_width"] for p in grid_points(spec)] == [1, 2]
