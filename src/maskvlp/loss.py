"""Symmetric contrastive (InfoNCE) loss, local or across ranks with global-batch negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """image_features, text_features: (N, D) L2-normalised, row i of each a positive pair.
    Mean of image->text and text->image cross-entropy over the N x N logits."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's shard (all_reduce, so it
    works on gloo as well as nccl)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """(B, D) on each rank -> (world * B, D), rank-major, differentiable for every shard."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def distributed_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, local_loss: bool = False
) -> torch.Tensor:
    """Contrastive loss with negatives from the global batch.

    local_loss=False: every rank computes the full global loss. local_loss=True: each rank computes
    only its own rows (its images against all texts, its texts against all images), which is
    cheaper for large batches and equals the global loss on average over ranks. Either way, with
    DDP's gradient averaging the update equals a single process training on the global batch, since
    the gather's backward sums the gradient that every rank's loss sends to each shard.
    """
    all_images, all_texts = gather_features(image_features), gather_features(text_features)
    if not local_loss or all_images.shape[0] == image_features.shape[0]:
        return clip_loss(all_images, all_texts, logit_scale)
    n, offset = image_features.shape[0], dist.get_rank() * image_features.shape[0]
    labels = torch.arange(offset, offset + n, device=image_features.device)
    logits_i2t = logit_scale * image_features @ all_texts.T
    logits_t2i = logit_scale * text_features @ all_images.T
    return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
