"""Word-frequency text masking (CLIPF, Liang & Larson, arXiv 2412.16148): frequent words are dropped
more often.

CLIPF masks a word w with probability P(w) = 1 - sqrt(t / f(w)) (word2vec's subsampling), f(w) its
relative frequency in the training captions. With a fixed token budget (`text_masking.length`, as every
strategy here), the caption's tokens are kept by weighted sampling without replacement with weight
1 - P(w) = min(1, sqrt(t / f(w))) (Gumbel top-k): rare words are kept first, frequent ones ("a", "of",
"the") are the first to go. The counts are of CLIP BPE tokens (most words of these captions are one
token), over the run's training captions (at most FREQUENCY_CAPTIONS of them, in shard order), counted
once when the run starts or resumes: the same captions give the same weights.

This module registers the text strategy `frequency`.
"""

from __future__ import annotations

from typing import Any

import torch

from maskvlp.textmask.base import TextContext, register_text_strategy

FREQUENCY_CAPTIONS = 50_000  # training captions counted (shard order): enough for the frequent tokens
VOCAB_SIZE = 49408  # CLIP BPE


def token_weights(counts: torch.Tensor, t: float) -> torch.Tensor:
    """Keep weights min(1, sqrt(t / f)) per token id from its counts (unseen tokens: 1)."""
    freq = counts.double() / max(1.0, float(counts.sum()))
    weights = torch.where(freq > 0, (t / freq.clamp(min=1e-300)).sqrt(), torch.ones_like(freq))
    return weights.clamp(max=1.0).float()


def caption_counts(cfg: Any, limit: int = FREQUENCY_CAPTIONS) -> torch.Tensor:
    """Token counts over the first `limit` usable training captions (the first train.unique_pairs of
    them where that is set), tokenized as training tokenizes them."""
    from maskvlp.data.clean import clean_caption
    from maskvlp.data.shardio import Skip, tar_samples
    from maskvlp.data.tokenizer import Tokenizer
    from maskvlp.data.trainset import training_data

    data = training_data(cfg)
    if cfg.train.unique_pairs > 0:
        limit = min(limit, cfg.train.unique_pairs)
    tokenizer, captions = Tokenizer(cfg.model.context_length), []
    for url in data.train:
        for sample in tar_samples(url, data.retries):
            if isinstance(sample, Skip):
                continue
            caption = clean_caption(sample.get("txt"))
            if not isinstance(caption, Skip):
                captions.append(caption)
            if len(captions) >= limit:
                break
        if len(captions) >= limit:
            break
    counts = torch.zeros(VOCAB_SIZE, dtype=torch.long)
    for start in range(0, len(captions), 1024):
        tokens = tokenizer(captions[start : start + 1024])
        end = tokens.argmax(dim=1)
        pos = torch.arange(tokens.shape[1])[None]
        content = (pos >= 1) & (pos < end[:, None])
        counts += torch.bincount(tokens[content], minlength=VOCAB_SIZE)
    return counts


def _prepare(t: Any, cfg: Any) -> torch.Tensor:
    return token_weights(caption_counts(cfg), t.frequency_t)


def _score(tokens: torch.Tensor, content: torch.Tensor, t: Any, ctx: TextContext) -> torch.Tensor:
    """Gumbel top-k: the lowest scores are a sample without replacement with probability ∝ weight."""
    weights = ctx.state.to(tokens.device)[tokens]  # (training keeps the weights on the device: no copy)
    u = torch.rand(tokens.shape, generator=ctx.generator, device=tokens.device).clamp(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    return -(weights.log() + gumbel)


register_text_strategy(
    "frequency",
    _score,
    describe=lambda t: f"frequency {t.length} t={t.frequency_t:g}",
    prepare=_prepare,
    source="CLIPF (Liang & Larson 2024): frequent tokens dropped first, P(drop) = 1 - sqrt(t / f)",
)
