"""The text-strategy registry and the strategies that need only the tokens: none, truncate, random, block.

A caption arrives tokenized as CLIP does it, (B, C) long: the start token, the caption's BPE tokens, the
end token (the largest id, where the text tower pools), zeros after. A strategy scores each caption
token; `select_tokens` keeps the `length - 2` lowest-scoring ones in their original order, between the
start and end tokens, so the text tower runs on `length` tokens instead of C and still pools at the end
token. A caption with no more tokens than that is kept whole. Randomness comes from an explicit
`torch.Generator`, as image masking's. Positions are those of the shortened sequence (0 .. length-1),
as CLIPA feeds its shortened text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from maskvlp.config import ConfigError, TextMaskingConfig, check


@dataclass(frozen=True)
class TextContext:
    """What a text strategy may use besides the tokens and its config."""

    generator: torch.Generator | None = None
    state: Any = None  # what the strategy's `prepare` computed from the training data (frequency: weights)


# (tokens (B, C), content (B, C) bool: the caption's own tokens, config, context) -> scores (B, C), lower kept first
ScoreFn = Callable[[torch.Tensor, torch.Tensor, Any, TextContext], torch.Tensor]


@dataclass(frozen=True)
class TextStrategy:
    """Everything the rest of maskvlp may ask about one text strategy."""

    name: str
    score: ScoreFn | None  # None: no reduction (strategy none)
    describe: Callable[[Any], str] | None = None
    # (config, run config) -> state computed once from the training data before step 0, or None
    prepare: Callable[[Any, Any], Any] | None = None
    source: str = ""  # the paper it comes from, for docs and reports


TEXT_STRATEGIES: dict[str, TextStrategy] = {}


def register_text_strategy(name: str, score: ScoreFn | None, **knowledge: Any) -> TextStrategy:
    """Make `text_masking.strategy: <name>` valid everywhere (config, training, FLOPs, sweeps)."""
    strategy = TextStrategy(name, score, **knowledge)
    TEXT_STRATEGIES[name] = strategy
    return strategy


def get_text_strategy(name: str) -> TextStrategy:
    if name not in TEXT_STRATEGIES:
        raise ConfigError(f"text_masking.strategy must be one of {', '.join(TEXT_STRATEGIES)}, got {name!r}")
    return TEXT_STRATEGIES[name]


def reduces(t: TextMaskingConfig, context_length: int) -> bool:
    """Whether training shortens captions under `t` (strategy other than none, length below the context)."""
    return get_text_strategy(t.strategy).score is not None and 0 < t.length < context_length


def text_tokens(t: TextMaskingConfig, context_length: int) -> int:
    """Tokens the text tower sees per caption in training: `length` where it reduces, else the context."""
    return t.length if reduces(t, context_length) else context_length


def check_section(t: TextMaskingConfig, context_length: int) -> None:
    """Refuse an unknown strategy or a length the text tower cannot take, naming the key."""
    strategy = get_text_strategy(t.strategy)
    check(
        t.length == 0 or 3 <= t.length <= context_length,
        "text_masking.length",
        f"must be 0 (whole captions) or in [3, model.context_length={context_length}] (start, at least one "
        "caption token, end)",
        t.length,
    )
    check(
        strategy.score is None or t.length != 0,
        "text_masking.length",
        f"must be set (> 0) with text_masking.strategy {t.strategy}: the tokens each caption keeps",
        t.length,
    )
    check(t.frequency_t > 0, "text_masking.frequency_t", "must be > 0", t.frequency_t)


def describe(t: TextMaskingConfig) -> str:
    strategy = get_text_strategy(t.strategy)
    if strategy.score is None:
        return "none"
    return strategy.describe(t) if strategy.describe else f"{t.strategy} {t.length}"


def prepare(t: TextMaskingConfig, cfg: Any) -> Any:
    """The strategy's state from the training data (computed once when a run starts or resumes)."""
    strategy = get_text_strategy(t.strategy)
    return strategy.prepare(t, cfg) if strategy.prepare is not None and reduces(t, cfg.model.context_length) else None


def caption_positions(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(end-token position (B,), content (B, C) bool: the caption's own tokens between start and end)."""
    end = tokens.argmax(dim=1)  # the end token has the largest id (CLIP BPE)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return end, (pos[None] >= 1) & (pos[None] < end[:, None])


def select_tokens(tokens: torch.Tensor, score: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length): the start token, the `length - 2` caption tokens of lowest score in their original
    order (all of them where the caption is shorter), the end token, zeros after."""
    b, c = tokens.shape
    end, content = caption_positions(tokens)
    budget = length - 2
    score = torch.where(content, score.float(), torch.inf)
    chosen = score.argsort(dim=1, stable=True)[:, :budget]  # the caption's lowest scores first
    valid = content.gather(1, chosen)  # False past a short caption's tokens
    chosen = torch.where(valid, chosen, c).sort(dim=1).values  # original order; the unused slots last
    kept = torch.where(chosen < c, tokens.gather(1, chosen.clamp(max=c - 1)), 0)
    out = torch.zeros(b, length, dtype=tokens.dtype, device=tokens.device)
    out[:, 0] = tokens[:, 0]
    out[:, 1 : 1 + budget] = kept
    rows = torch.arange(b, device=tokens.device)
    out[rows, 1 + valid.sum(dim=1)] = tokens[rows, end]
    return out


def reduce_text(tokens: torch.Tensor, t: TextMaskingConfig, ctx: TextContext) -> torch.Tensor:
    """The tokens the text tower trains on under `t` (the input itself where nothing is reduced)."""
    strategy = get_text_strategy(t.strategy)
    if not reduces(t, tokens.shape[1]):
        return tokens
    _, content = caption_positions(tokens)
    return select_tokens(tokens, strategy.score(tokens, content, t, ctx), t.length)


def _uniform(tokens: torch.Tensor, ctx: TextContext) -> torch.Tensor:
    return torch.rand(tokens.shape, generator=ctx.generator, device=tokens.device)


def _block(tokens: torch.Tensor, content: torch.Tensor, t: Any, ctx: TextContext) -> torch.Tensor:
    """One contiguous span of `length - 2` caption tokens at a uniformly random start."""
    n = content.sum(dim=1)  # caption tokens per row
    span = t.length - 2
    room = (n - span).clamp(min=0) + 1  # possible starts
    start = (torch.rand(n.shape, generator=ctx.generator, device=tokens.device) * room).long() + 1
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    inside = (pos >= start[:, None]) & (pos < start[:, None] + span)
    return torch.where(inside, 0.0, 1.0) + pos * 1e-3  # the span first


register_text_strategy("none", None, describe=lambda t: "none")
register_text_strategy(
    "truncate",
    lambda tokens, content, t, ctx: torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1),
    describe=lambda t: f"truncate {t.length}",
    source="CLIPA (Li, Wang, Xie 2023): the first tokens",
)
register_text_strategy(
    "random",
    lambda tokens, content, t, ctx: _uniform(tokens, ctx),
    describe=lambda t: f"random {t.length}",
    source="CLIPA; FLIP's text masking: a uniformly random subset, in order",
)
register_text_strategy(
    "block",
    _block,
    describe=lambda t: f"block {t.length}",
    source="CLIPA: one contiguous span at a random start",
)
