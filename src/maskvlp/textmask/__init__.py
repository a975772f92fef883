"""Which caption tokens a training step keeps: text-side token reduction (CLIPA's truncation, random and
block; CLIPF's word-frequency masking). Evaluation always encodes whole captions.

base.py holds the registry and the strategies that need nothing but the tokens (none, truncate, random,
block); every other module here is one strategy that registers itself when imported (frequency.py).
docs/algorithms.md describes them as implemented.
"""

from maskvlp.textmask.base import (  # noqa: F401 (the package's face)
    TEXT_STRATEGIES,
    TextContext,
    TextStrategy,
    check_section,
    describe,
    get_text_strategy,
    prepare,
    reduce_text,
    reduces,
    register_text_strategy,
    select_tokens,
    text_tokens,
)
from maskvlp.textmask.frequency import token_weights  # noqa: F401
