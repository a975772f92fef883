import pytest

from maskvlp.config import TrainConfig
from maskvlp.params import load_config
from maskvlp.recipes import scaled_lr
from maskvlp.schedule import lr_at, make_budget


def tc(**kw) -> TrainConfig:
    """A TrainConfig with the default recipe resolved, then `kw` set."""
    t = load_config(None).train
    for key, value in kw.items():
        setattr(t, key, value)
    return t


def test_budget_rounds_samples_up_to_whole_steps_and_scales_lr():
    t = tc(samples=1000, batch_size=64, accum_steps=2, warmup_samples=300, checkpoint_every_samples=500, lr=5e-4)
    b = make_budget(t, world_size=2)
    assert b.global_batch == 256 and b.total_steps == 4  # 4 x 256 >= 1000
    assert b.warmup_steps == 2 and b.checkpoint_every == 2
    assert b.peak_lr == pytest.approx(5e-4)  # per 256 samples
    assert make_budget(tc(samples=1000, batch_size=32), 1).peak_lr == pytest.approx(5e-4 * 32 / 256)


def test_lr_scaling_rules():
    assert scaled_lr(1e-3, 1024, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 1024, "sqrt") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 1024, "none") == pytest.approx(1e-3)
    # the cluster recipe: 6.25e-5 per 256, linear = the repository's absolute 5e-4 at batch 2,048
    assert scaled_lr(6.25e-5, 2048, "linear") == pytest.approx(5e-4)
    b = make_budget(tc(samples=1000, batch_size=1024, lr=1e-3, lr_scaling="sqrt"), 1)
    assert b.peak_lr == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(1e-3, 256, "cubic")


def test_warmup_then_cosine_to_zero():
    b = make_budget(tc(samples=10_000, batch_size=100, warmup_samples=1_000, lr=2.56e-3), 1)  # 100 steps, peak 1e-3
    lrs = [lr_at(s, b) for s in range(b.total_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < c for a, c in zip(lrs[:9], lrs[1:10]))  # rising during warmup
    assert all(a >= c for a, c in zip(lrs[10:], lrs[11:]))  # falling after
    assert lrs[-1] < 1e-6 + 1e-3 * 0.001
    assert lr_at(10 + 45, b) == pytest.approx(5e-4, rel=1e-6)  # half-way through the cosine


def test_unmasked_tuning_phase_warms_up_again_to_a_lower_peak_then_decays():
    t = tc(samples=10_000, batch_size=100, warmup_samples=1_000, lr=2.56e-3, unmasked_tuning_samples=2_000)
    b = make_budget(t, 1)
    assert b.masked_steps == 80 and b.tuning_steps == 20 and b.tuning_warmup_steps == 2
    assert lr_at(79, b) < 1e-5
    assert lr_at(80, b) == pytest.approx(0.5e-4)  # warmup step 1 of 2 toward 0.1 x peak
    assert lr_at(81, b) == pytest.approx(1e-4)  # the tuning peak, reached without a jump
    assert lr_at(99, b) < lr_at(90, b) < lr_at(82, b)
    assert b.samples_at(80) == 8_000 and b.samples_at(100) == 10_000


def test_tuning_phase_with_its_own_batch_size():
    t = tc(samples=10_000, batch_size=100, lr=2.56e-3, unmasked_tuning_samples=2_000, unmasked_tuning_batch_size=50)
    b = make_budget(t, 1)
    assert b.masked_steps == 80 and b.tuning_steps == 40 and b.tuning_global_batch == 50
    assert b.tuning_peak_lr == pytest.approx(0.1 * 2.56e-3 * 50 / 256)  # scaled to its own batch
    assert b.samples_at(b.total_steps) == 10_000 and b.samples_at(81) == 8_050
