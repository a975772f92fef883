"""Named training recipes: the papers' optimiser, augmentation and model settings under one key.

`train.recipe: default | flip | cluster` fills every recipe key that params.yaml (or `--set`) leaves
at `null`; a key given a value beside the recipe wins. The resolved values are what a run records in
its config.yaml, so a run folder reproduces without knowing the recipe table. Where each number
comes from (docs/recipes.md has the long form):

- `default`: maskvlp's own settings for tiny models on the embedded data (a few thousand samples,
  batch 64): a base learning rate of 5e-4 per 256 samples, which is far too high for the B/L presets.
- `flip`: the official FLIP configs (Li et al. 2023; configs/default.py, cfg_flip_base.py): AdamW
  (0.9, 0.95), weight decay 0.2 off biases, norms, class token and positions, base lr 4e-6 per 256
  scaled linearly (65,536 -> 1e-3), random resized crop area (0.5, 1) with horizontal flip, text
  length 32, temperature initialised at 0.01, fixed sin-cos image positions, kept tokens
  average-pooled (no class token). AdamW's eps is not given there: PyTorch's 1e-8.
- `cluster`: the cluster-masking repository's open_clip flags (Wei, Pan, Owens 2024): open_clip's
  ViT defaults (AdamW 0.9 / 0.98, eps 1e-6, weight decay 0.2 off 1-D parameters and the
  temperature) and an absolute lr of 5e-4 at a global batch of 2,048 (8 GPUs x 256), i.e. 6.25e-5
  per 256 scaled linearly; open_clip's crop area (0.9, 1), no flip, text length 77, learned
  positions, class-token pooling, temperature initialised at 0.07.
"""

from __future__ import annotations

from typing import Any

# dotted key -> value, per recipe. Every recipe sets every key, so no value depends on the order.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {
        "train.lr": 5e-4,
        "train.lr_scaling": "linear",
        "train.beta1": 0.9,
        "train.beta2": 0.98,
        "train.eps": 1e-6,
        "train.weight_decay": 0.2,
        "train.no_decay": ["embedding"],
        "data.augment.crop_scale_min": 0.9,
        "data.augment.crop_scale_max": 1.0,
        "data.augment.hflip": False,
        "model.context_length": 32,
        "model.pos_embed": "learned",
        "model.pool": "cls",
        "model.init_temperature": 0.07,
    },
    "flip": {
        "train.lr": 4e-6,
        "train.lr_scaling": "linear",
        "train.beta1": 0.9,
        "train.beta2": 0.95,
        "train.eps": 1e-8,
        "train.weight_decay": 0.2,
        "train.no_decay": ["positional_embedding", "class_embedding"],
        "data.augment.crop_scale_min": 0.5,
        "data.augment.crop_scale_max": 1.0,
        "data.augment.hflip": True,
        "model.context_length": 32,
        "model.pos_embed": "sincos",
        "model.pool": "avg",
        "model.init_temperature": 0.01,
    },
    "cluster": {
        "train.lr": 6.25e-5,
        "train.lr_scaling": "linear",
        "train.beta1": 0.9,
        "train.beta2": 0.98,
        "train.eps": 1e-6,
        "train.weight_decay": 0.2,
        "train.no_decay": [],
        "data.augment.crop_scale_min": 0.9,
        "data.augment.crop_scale_max": 1.0,
        "data.augment.hflip": False,
        "model.context_length": 77,
        "model.pos_embed": "learned",
        "model.pool": "cls",
        "model.init_temperature": 0.07,
    },
}
LR_SCALING = ("linear", "sqrt", "none")


def scaled_lr(base_lr: float, global_batch: int, rule: str) -> float:
    """The peak learning rate for `global_batch` from a base rate per 256 samples: linear (Goyal et
    al.; FLIP, open_clip users), sqrt (Krizhevsky; for Adam-type optimisers at large batch) or none
    (the base rate is absolute)."""
    if rule == "linear":
        return base_lr * global_batch / 256
    if rule == "sqrt":
        return base_lr * (global_batch / 256) ** 0.5
    if rule == "none":
        return base_lr
    raise ValueError(f"train.lr_scaling must be one of {', '.join(LR_SCALING)}, got {rule!r}")
