import pytest

from maskvlp.schedule import lr_at, make_budget


def test_budget_rounds_samples_up_to_whole_steps_and_scales_lr():
    b = make_budget(
        samples=1000,
        tuning_samples=0,
        batch_size=64,
        world_size=2,
        accum_steps=2,
        warmup_samples=300,
        checkpoint_every_samples=500,
        base_lr=5e-4,
    )
    assert b.global_batch == 256 and b.total_steps == 4  # 4 x 256 >= 1000
    assert b.warmup_steps == 2 and b.checkpoint_every == 2
    assert b.peak_lr == pytest.approx(5e-4)  # per 256 samples
    assert make_budget(1000, 0, 32, 1, 1, 0, 100, 5e-4).peak_lr == pytest.approx(5e-4 * 32 / 256)


def test_warmup_then_cosine_to_zero():
    b = make_budget(10_000, 0, 100, 1, 1, 1_000, 1_000, 2.56e-3)  # 100 steps, 10 warmup, peak 1e-3
    lrs = [lr_at(s, b) for s in range(b.total_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < c for a, c in zip(lrs[:9], lrs[1:10]))  # rising during warmup
    assert all(a >= c for a, c in zip(lrs[10:], lrs[11:]))  # falling after
    assert lrs[-1] < 1e-6 + 1e-3 * 0.001
    assert lr_at(10 + 45, b) == pytest.approx(5e-4, rel=1e-6)  # half-way through the cosine


def test_unmasked_tuning_phase_restarts_at_a_lower_rate():
    b = make_budget(10_000, 2_000, 100, 1, 1, 1_000, 1_000, 2.56e-3)
    assert b.masked_steps == 80 and b.tuning_steps == 20
    assert lr_at(79, b) < 1e-5
    assert lr_at(80, b, tuning_lr_scale=0.1) == pytest.approx(1e-4)
    assert lr_at(99, b, 0.1) < lr_at(90, b, 0.1) < lr_at(80, b, 0.1)
