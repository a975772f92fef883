"""Learning-rate schedule and budget arithmetic, in samples seen (pure functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskvlp.recipes import scaled_lr


@dataclass(frozen=True)
class Budget:
    """Step arithmetic for a run. A masked step consumes `global_batch` samples (per-process batch x
    world x accumulation); the masked phase is followed by `tuning_steps` unmasked steps (FLIP) of
    `tuning_global_batch` samples each, with their own warmup to `tuning_peak_lr` and cosine decay."""

    total_steps: int
    tuning_steps: int
    global_batch: int
    warmup_steps: int
    checkpoint_every: int  # steps
    peak_lr: float
    tuning_global_batch: int = 0  # 0 = global_batch
    tuning_warmup_steps: int = 0
    tuning_peak_lr: float = 0.0

    @property
    def masked_steps(self) -> int:
        return self.total_steps - self.tuning_steps

    def samples_at(self, step: int) -> int:
        """Samples seen after `step` steps."""
        masked = min(step, self.masked_steps)
        return masked * self.global_batch + (step - masked) * (self.tuning_global_batch or self.global_batch)


def make_budget(train, world_size: int) -> Budget:
    """Samples -> steps (rounded up, so at least the budget is seen) for a TrainConfig (recipe resolved);
    learning rates from the base rate per 256 samples by `train.lr_scaling`, for each phase's batch."""
    t = train
    global_batch = t.batch_size * world_size * t.accum_steps
    tuning_batch = (t.unmasked_tuning_batch_size or t.batch_size) * world_size * t.accum_steps
    tuning = math.ceil(t.unmasked_tuning_samples / tuning_batch) if t.unmasked_tuning_samples else 0
    masked = max(1, math.ceil((t.samples - t.unmasked_tuning_samples) / global_batch))
    return Budget(
        total_steps=masked + tuning,
        tuning_steps=tuning,
        global_batch=global_batch,
        warmup_steps=min(masked, math.ceil(t.warmup_samples / global_batch)),
        checkpoint_every=max(1, math.ceil(t.checkpoint_every_samples / global_batch)),
        peak_lr=scaled_lr(t.lr, global_batch, t.lr_scaling),
        tuning_global_batch=tuning_batch,
        tuning_warmup_steps=math.ceil(tuning * t.unmasked_tuning_warmup_fraction),
        tuning_peak_lr=scaled_lr(t.lr, tuning_batch, t.lr_scaling) * t.unmasked_tuning_lr_scale,
    )


def _warmup_cosine(step: int, steps: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def lr_at(step: int, budget: Budget) -> float:
    """Linear warmup to peak, cosine to 0 over the masked phase. The unmasked tuning phase (FLIP: a
    short continuation at a lower rate) warms up again from 0 to its own peak, then decays by cosine to
    0, instead of jumping to a rate the optimiser's moments were not adapted to."""
    if step >= budget.masked_steps:
        return _warmup_cosine(
            step - budget.masked_steps, budget.tuning_steps, budget.tuning_warmup_steps, budget.tuning_peak_lr
        )
    return _warmup_cosine(step, budget.masked_steps, budget.warmup_steps, budget.peak_lr)
