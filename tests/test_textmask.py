"""Text-side token reduction (CLIPA's truncate / random / block, CLIPF's frequency): what a shortened
caption keeps, that the text tower still pools at its end token, the frequency weights, validation
naming the key, FLOPs and the compute budget, and a run that trains on short captions and evaluates on
whole ones."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp import flops, textmask
from maskvlp.cli import main
from maskvlp.config import ConfigError, TextMaskingConfig
from maskvlp.model import CLIP
from maskvlp.params import load_config
from maskvlp.textmask import TextContext, reduce_text, token_weights
from maskvlp.textmask.frequency import caption_counts
from maskvlp.train import pretrain

from .conftest import ROOT, as_set_args, make_tiny_shards, tiny_run

SOT, EOT = 49406, 49407
STRATEGIES = ["truncate", "random", "block", "frequency"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def captions(lengths: list[int], context: int, seed: int) -> torch.Tensor:
    """Tokenized rows as CLIP lays them out: start, distinct caption tokens, end, zeros."""
    g = gen(seed)
    rows = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        rows[i, 0] = SOT
        rows[i, 1 : 1 + n] = torch.randperm(40000, generator=g)[:n] + 1
        rows[i, 1 + n] = EOT
    return rows


def state_for(strategy: str):
    return token_weights(torch.randint(0, 50, (49408,), generator=gen(3)), 1e-4) if strategy == "frequency" else None


@settings(max_examples=80, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    lengths=st.lists(st.integers(1, 14), min_size=1, max_size=5),
    length=st.integers(3, 16),
    seed=st.integers(0, 2**31),
)
def test_a_short_caption_is_start_kept_tokens_in_order_end(strategy, lengths, length, seed):
    tokens = captions(lengths, 16, seed)
    t = TextMaskingConfig(strategy=strategy, length=length)
    out = reduce_text(tokens, t, TextContext(gen(seed), state_for(strategy)))
    assert out.shape == ((len(lengths), length) if length < 16 else tokens.shape)
    for row, n, original in zip(out, lengths, tokens):
        content = original[1 : 1 + n].tolist()
        keep = min(n, out.shape[1] - 2)
        assert row[0] == SOT and row[1 + keep] == EOT and int(row.argmax()) == 1 + keep  # the tower pools there
        assert (row[2 + keep :] == 0).all()
        kept = row[1 : 1 + keep].tolist()
        positions = [content.index(x) for x in kept]
        assert positions == sorted(set(positions))  # a subsequence: unique, in the caption's order
        if strategy == "truncate":
            assert kept == content[:keep]
        if strategy == "block":
            assert positions == list(range(positions[0], positions[0] + keep))  # contiguous


def test_same_seed_same_tokens_and_whole_captions_without_a_strategy():
    tokens = captions([12, 7, 3], 16, 1)
    for strategy in STRATEGIES:
        t = TextMaskingConfig(strategy=strategy, length=6)
        a, b = (reduce_text(tokens, t, TextContext(gen(5), state_for(strategy))) for _ in range(2))
        assert torch.equal(a, b)
    assert reduce_text(tokens, TextMaskingConfig(), TextContext(gen())) is tokens
    assert reduce_text(tokens, TextMaskingConfig("random", 16), TextContext(gen())) is tokens  # the context itself


def test_random_and_block_start_uniformly():
    tokens = captions([10] * 2000, 16, 2)
    for strategy, budget in [("random", 4), ("block", 4)]:
        out = reduce_text(tokens, TextMaskingConfig(strategy, budget + 2), TextContext(gen(7)))
        kept = torch.zeros(10)
        for row, original in zip(out, tokens):
            content = original[1:11].tolist()
            for x in row[1 : 1 + budget].tolist():
                kept[content.index(x)] += 1
        if strategy == "random":  # every token kept with probability 4/10
            assert (kept / 2000 - 0.4).abs().max() < 0.05
        else:  # 7 starts: the middle tokens are in more blocks than the ends
            assert kept[0] == pytest.approx(2000 / 7, rel=0.2) and kept[4] > 1.5 * kept[0]


def test_frequency_drops_frequent_tokens_first():
    counts = torch.zeros(49408, dtype=torch.long)
    counts[320] = 10_000  # "a": frequent
    counts[1000:1010] = 10  # rare
    weights = token_weights(counts, 1e-4)
    total = counts.sum().item()
    assert weights[320] == pytest.approx((1e-4 / (10_000 / total)) ** 0.5, rel=1e-5)
    assert weights[1000] == pytest.approx(min(1.0, (1e-4 / (10 / total)) ** 0.5), rel=1e-5)
    assert weights[5] == 1.0  # never seen: kept as the rarest
    row = torch.tensor([[SOT, 320, 1000, 320, 1001, 320, 1002, EOT]])
    out = reduce_text(row.expand(500, -1), TextMaskingConfig("frequency", 5), TextContext(gen(9), weights))
    kept = out[:, 1:4]
    assert (kept == 320).float().mean() < 0.2 < (kept == 1000).float().mean()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["text_masking.strategy=syntax", "text_masking.length=8"], "text_masking.strategy"),
        (["text_masking.strategy=random"], "text_masking.length"),  # a strategy needs its length
        (["text_masking.strategy=random", "text_masking.length=2"], "text_masking.length"),
        (["text_masking.strategy=random", "text_masking.length=99"], "text_masking.length"),
        (["text_masking.frequency_t=0"], "text_masking.frequency_t"),
    ],
)
def test_bad_values_are_refused_at_load_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ROOT / "params.yaml", overrides)


def test_flops_and_the_compute_budget_follow_the_text_tokens():
    cfg = load_config(ROOT / "params.yaml", ["masking.strategy=none"])
    model = CLIP.from_config(cfg.model)
    k, context = cfg.masking, cfg.model.context_length
    assert textmask.text_tokens(TextMaskingConfig("block", 8), context) == 8
    assert textmask.text_tokens(TextMaskingConfig("none", 8), context) == context
    assert flops.sample_flops(model, k, 64, text_tokens=8) < flops.sample_flops(model, k, 64)
    assert flops.sample_flops(model, k, 64, text_tokens=context) == flops.sample_flops(model, k, 64)
    base = ["masking.strategy=none", "train.compute_samples=6000"]
    full = load_config(ROOT / "params.yaml", base)
    short = load_config(ROOT / "params.yaml", [*base, "text_masking.strategy=truncate", "text_masking.length=8"])
    assert full.train.samples == 6000
    expected = round(6000 * model.train_flops_per_sample(64) / model.train_flops_per_sample(64, None, 8))
    assert short.train.samples == expected > 6000


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("text"), 200)


def test_frequency_counts_the_training_captions(shards, tmp_path):
    cfg = load_config(None, tiny_run(shards, 200, tmp_path))
    counts = caption_counts(cfg)
    assert counts[SOT] == counts[EOT] == 0 and counts.sum() > 0
    assert int(counts.argmax()) == 320  # "a" (every synthetic caption has one)
    limited = caption_counts(cfg, limit=10)
    assert 0 < limited.sum() < counts.sum()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["block", "frequency"])
def test_a_run_trains_on_short_captions_and_evaluates_on_whole_ones(shards, tmp_path, strategy):
    overrides = tiny_run(
        shards,
        200,
        tmp_path,
        "train.samples=64",
        "train.batch_size=16",
        "train.warmup_samples=16",
        "masking.strategy=random",
        f"text_masking.strategy={strategy}",
        "text_masking.length=6",
        "eval.objects_per_class=2",
        "eval.linear_probe=false",
        "eval.subset_samples=40",
        f"eval.metrics_file={tmp_path / 'eval.json'}",
    )
    cfg = load_config(None, overrides)
    record = pretrain(cfg, progress=False)
    assert record["status"] == "complete"
    assert record["text_masking"] == {
        "label": f"{strategy} 6" + (" t=0.0001" if strategy == "frequency" else ""),
        "tokens": 6,
        "context_length": 24,
    }
    model = CLIP.from_config(cfg.model)
    assert record["train_flops"] == pytest.approx(64 * flops.sample_flops(model, cfg.masking, 8, text_tokens=6))
    assert main(["evaluate", "--quiet", *as_set_args(overrides)]) == 0  # whole captions, the model's context
    assert (tmp_path / "eval.json").is_file()
