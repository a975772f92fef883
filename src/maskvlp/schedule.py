"""Learning-rate schedule and budget arithmetic, in samples seen (pure functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """Step arithmetic for a run. A step consumes `global_batch` samples (per-process batch x world x
    accumulation); the masked phase is followed by `tuning_steps` unmasked steps (FLIP)."""

    total_steps: int
    tuning_steps: int
    global_batch: int
    warmup_steps: int
    checkpoint_every: int  # steps
    peak_lr: float

    @property
    def masked_steps(self) -> int:
        return self.total_steps - self.tuning_steps


def make_budget(
    samples: int,
    tuning_samples: int,
    batch_size: int,
    world_size: int,
    accum_steps: int,
    warmup_samples: int,
    checkpoint_every_samples: int,
    base_lr: float,
) -> Budget:
    """Samples -> steps (rounded up, so at least the budget is seen); lr scaled linearly per 256 samples."""
    global_batch = batch_size * world_size * accum_steps
    total = max(1, math.ceil(samples / global_batch))
    tuning = min(total - 1, math.ceil(tuning_samples / global_batch)) if tuning_samples else 0
    return Budget(
        total_steps=total,
        tuning_steps=tuning,
        global_batch=global_batch,
        warmup_steps=min(total - tuning, math.ceil(warmup_samples / global_batch)),
        checkpoint_every=max(1, math.ceil(checkpoint_every_samples / global_batch)),
        peak_lr=base_lr * global_batch / 256,
    )


def lr_at(step: int, budget: Budget, tuning_lr_scale: float = 0.1) -> float:
    """Linear warmup to peak, cosine to 0 over the masked phase; the unmasked tuning phase restarts
    at peak * tuning_lr_scale and decays by cosine to 0."""
    if step >= budget.masked_steps:  # unmasked tuning
        t = (step - budget.masked_steps) / max(1, budget.tuning_steps)
        return budget.peak_lr * tuning_lr_scale * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if step < budget.warmup_steps:
        return budget.peak_lr * (step + 1) / budget.warmup_steps
    t = (step - budget.warmup_steps) / max(1, budget.masked_steps - budget.warmup_steps)
    return budget.peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
