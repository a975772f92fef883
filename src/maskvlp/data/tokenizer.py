"""CLIP's BPE tokenizer, from open_clip (its vocabulary ships inside the wheel: works offline)."""

from __future__ import annotations

import torch


class Tokenizer:
    """texts -> long (N, context_length): start token, BPE ids, end token, zero padding."""

    def __init__(self, context_length: int):
        from open_clip.tokenizer import SimpleTokenizer  # heavy import, deferred to first use

        self.context_length = context_length
        self._tok = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self._tok(list(texts), context_length=self.context_length)
