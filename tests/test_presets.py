"""Data presets (`data.preset`) and the compute-matched budget (`train.compute_samples`) resolve into
typed configs; bad names and impossible combinations are refused, naming the key."""

from __future__ import annotations

import pytest
import torch

from maskvlp.config import ConfigError, to_yaml
from maskvlp.params import load_config


def test_the_default_preset_is_the_embedded_synthetic_data():
    cfg = load_config("params.yaml")
    assert cfg.data.preset == "synthetic" and cfg.data.source == "synthetic"
    assert cfg.eval.datasets == ["val", "objects"]


def test_the_real_preset_trains_on_clip_art_and_emoji_and_evaluates_on_three_sets():
    cfg = load_config("params.yaml", ["data.preset=real"])
    assert cfg.data.source == "mix"
    assert cfg.data.mix.sources == ["openclipart", "emoji"] and cfg.data.mix.val_sources == ["openclipart"]
    assert cfg.eval.datasets == ["val", "emoji", "fashion-mnist"]
    # a key given beside the preset wins, as with train.recipe
    mine = load_config("params.yaml", ["data.preset=real", "eval.datasets=[val]", "data.source=openclipart"])
    assert mine.eval.datasets == ["val"] and mine.data.source == "openclipart"


def test_a_preset_that_does_not_exist_and_a_bad_mix_are_named():
    with pytest.raises(ConfigError, match="data.preset must be one of synthetic, real, got 'rael'"):
        load_config("params.yaml", ["data.preset=rael"])
    with pytest.raises(ConfigError, match="data.mix.sources"):
        load_config("params.yaml", ["data.preset=real", "data.mix.sources=[openclipart,mix]"])
    with pytest.raises(ConfigError, match="data.mix.val_sources"):
        load_config("params.yaml", ["data.preset=real", "data.mix.val_sources=[synthetic]"])
    with pytest.raises(ConfigError, match="data.folder.table"):  # a mixed-in folder source still needs its table
        load_config("params.yaml", ["data.preset=real", "data.mix.sources=[openclipart,folder]"])


def _flops(cfg, kept: int) -> float:
    from maskvlp.model import CLIP

    return CLIP.from_config(cfg.model).train_flops_per_sample(kept)  # a real model on the CPU


@pytest.mark.parametrize(("strategy", "ratio"), [("random", 0.5), ("random", 0.75), ("cluster", 0.5)])
def test_compute_matched_samples_equal_the_unmasked_flops(strategy, ratio):
    from maskvlp.masking import mask_flops, num_keep

    over = ["train.compute_samples=4000", f"masking.strategy={strategy}", f"masking.ratio={ratio}"]
    cfg = load_config("params.yaml", over)
    grid = (cfg.model.image_size // cfg.model.patch_size) ** 2
    per_sample = _flops(cfg, num_keep(grid, ratio)) + mask_flops(cfg.masking, grid, cfg.model.patch_size, 0)
    budget = 4000 * _flops(cfg, grid)
    assert cfg.train.samples > 4000  # masked runs see more samples
    assert abs(cfg.train.samples * per_sample - budget) <= per_sample  # equal compute, to one sample
    assert cfg.masking.fusion_samples == cfg.train.samples  # derived from the derived budget
    none = load_config("params.yaml", ["train.compute_samples=4000", "masking.strategy=none"])
    assert none.train.samples == 4000


def test_compute_matched_samples_survive_a_reload_of_the_run_config(tmp_path):
    cfg = load_config("params.yaml", ["train.compute_samples=4000", "masking.strategy=random", "masking.ratio=0.75"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))  # what a run folder records
    again = load_config(saved)
    assert again.train.samples == cfg.train.samples  # derived from compute_samples, not applied twice


def test_compute_budget_refuses_a_varying_token_count():
    with pytest.raises(ConfigError, match="train.compute_samples needs a token count to plan with"):
        load_config("params.yaml", ["train.compute_samples=4000", "masking.mode=official"])
    with pytest.raises(ConfigError, match="train.unmasked_tuning_samples is paid from the compute budget"):
        load_config("params.yaml", ["train.compute_samples=4000", "train.unmasked_tuning_samples=4000"])
    with pytest.raises(ConfigError, match="train.compute_samples"):
        load_config("params.yaml", ["train.compute_samples=-5"])


def test_compute_budget_pays_for_flip_s_unmasked_tuning_at_the_unmasked_cost():
    base = ["train.compute_samples=4000", "masking.strategy=random", "masking.ratio=0.5"]
    untuned = load_config("params.yaml", base).train.samples
    tuned = load_config("params.yaml", [*base, "train.unmasked_tuning_samples=1000"])
    # the masked phase gets the FLOPs of 3,000 unmasked samples, the tuning 1,000 samples at full cost
    masked_3000 = load_config("params.yaml", ["train.compute_samples=3000", *base[1:]]).train.samples
    assert tuned.train.samples == masked_3000 + 1000
    assert 1000 + 3000 < tuned.train.samples < untuned  # more than unmasked, fewer than without tuning
    none = load_config(
        "params.yaml", ["train.compute_samples=4000", "train.unmasked_tuning_samples=1000", "masking.strategy=none"]
    )
    assert none.train.samples == 4000  # unmasked throughout: the budget is the samples


def test_official_mode_calibrated_to_a_mean_ratio_plans_its_compute_budget_at_that_ratio():
    official = ["masking.strategy=cluster", "masking.mode=official", "masking.calibrate_mask_ratio=0.5"]
    planned = load_config("params.yaml", ["train.compute_samples=4000", *official]).train.samples
    exact = load_config("params.yaml", ["train.compute_samples=4000", "masking.strategy=cluster", "masking.ratio=0.5"])
    assert planned == exact.train.samples  # the same kept tokens and mask cost as exact mode at 0.5


def test_meta_device_flops_equal_a_real_model_s():
    from maskvlp.model import CLIP

    cfg = load_config("params.yaml", ["model.vision=w96", "model.text=w64"])
    with torch.device("meta"):
        meta = CLIP.from_config(cfg.model)
    assert meta.train_flops_per_sample(32) == CLIP.from_config(cfg.model).train_flops_per_sample(32)


def test_time_matched_budget_scales_samples_by_the_measured_speedup_and_pays_tuning_at_unmasked_speed():
    time = ["train.compute_samples=4000", "train.compute_basis=time", "masking.strategy=random"]
    assert load_config("params.yaml", [*time, "train.compute_speedup=1.36"]).train.samples == 5440
    tuned = load_config("params.yaml", [*time, "train.compute_speedup=1.36", "train.unmasked_tuning_samples=1000"])
    assert tuned.train.samples == round(3000 * 1.36) + 1000
    with pytest.raises(ConfigError, match="train.compute_speedup must be > 0 with train.compute_basis time"):
        load_config("params.yaml", time)
    with pytest.raises(ConfigError, match="train.compute_basis"):
        load_config("params.yaml", ["train.compute_basis=wall"])
    # official mode has no fixed token count, but a measured speed: time matching needs no plan
    official = ["masking.strategy=cluster", "masking.mode=official", "train.compute_speedup=1.2"]
    assert load_config("params.yaml", [*time[:2], *official]).train.samples == 4800
