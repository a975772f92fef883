"""Gradient accumulation that is one big contrastive batch (feature cache, as GradCache and
open_clip's `accum_freq`), and the per-micro-batch mode that is not.

InfoNCE couples every sample with every other one in its batch, so summing the gradients of k
micro-batch losses is NOT the gradient of the loss over the k*B samples: each micro-batch sees B-1
negatives, not k*B-1. The feature cache makes it the same:
1. forward every micro-batch without gradient and keep the features (k*B x D, small);
2. for each micro-batch j: forward it again with gradient, put its live features in place of its
   cached ones, compute the loss over the whole accumulated batch (and, across ranks, the global
   one), backward. Only micro-batch j's activations are held at a time; the features of the others are
   constants, so the parameter gradients of the k backwards sum to the big batch's gradient.
   The temperature enters every one of the k losses directly; it keeps its gradient in one of them.
Cost: one extra forward pass (about +1/3 of a training step's FLOPs), counted in `train_flops`.
The inputs of all k micro-batches stay in memory until the step ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from maskvlp.loss import distributed_clip_loss

# (images normalised, tokens, kept-token indices or None for every patch)
Micro = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
Forward = Callable[..., Any]  # (images, tokens, keep) -> (image features, text features, logit scale)
NoSync = Callable[[], Any] | None  # DDP's no_sync (None: one process)


def _features(out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    img, txt, scale = out
    return img.float(), txt.float(), scale.float()


def cached_backward(
    forward: Forward, micros: Sequence[Micro], local_loss: bool = False, autocast: Any = None, no_sync: NoSync = None
) -> torch.Tensor:
    """Backward of the contrastive loss over all `micros` as one batch; returns the loss (detached).
    `no_sync`: DDP's no_sync, entered for all but the last backward (gradients all-reduce once)."""
    autocast = autocast or contextlib.nullcontext()
    k = len(micros)
    if k == 1:
        return per_micro_backward(forward, micros, local_loss, autocast, no_sync)
    with torch.no_grad():
        cache = []
        for images, tokens, keep in micros:
            with autocast:
                cache.append(_features(forward(images, tokens, keep))[:2])
    loss = torch.zeros(())
    for j, (images, tokens, keep) in enumerate(micros):
        last = j == k - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            with autocast:
                img, txt, scale = _features(forward(images, tokens, keep))
            all_img = torch.cat([c[0] for c in cache[:j]] + [img] + [c[0] for c in cache[j + 1 :]])
            all_txt = torch.cat([c[1] for c in cache[:j]] + [txt] + [c[1] for c in cache[j + 1 :]])
            loss = distributed_clip_loss(all_img, all_txt, scale if last else scale.detach(), local_loss)
            loss.backward()
    return loss.detach()


def per_micro_backward(
    forward: Forward, micros: Sequence[Micro], local_loss: bool = False, autocast: Any = None, no_sync: NoSync = None
) -> torch.Tensor:
    """The mean of k micro-batch losses, each over its own B samples (B-1 negatives each): cheaper
    (no second forward) but a smaller contrastive batch than k*B. Returns the mean loss (detached)."""
    autocast = autocast or contextlib.nullcontext()
    k, total = len(micros), None
    for j, (images, tokens, keep) in enumerate(micros):
        with no_sync() if no_sync is not None and j < k - 1 else contextlib.nullcontext():
            with autocast:
                img, txt, scale = _features(forward(images, tokens, keep))
            loss = distributed_clip_loss(img, txt, scale, local_loss)
            (loss / k).backward()
        total = loss.detach() / k if total is None else total + loss.detach() / k
    assert total is not None
    return total


ACCUMULATORS = {"cache": cached_backward, "micro": per_micro_backward}
