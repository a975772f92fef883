"""The streaming loaders: deterministic, resumable, split across workers and ranks without duplicates."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from maskvlp.data.loader import EvalStream, StreamSpec, eval_collate, slot_samples, train_loader
from maskvlp.data.shards import shard, shard_paths
from maskvlp.data.transforms import normalize

from .conftest import make_cfg


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("loader")
    cfg = make_cfg(tmp, "data.synthetic.num_samples=240", "data.max_samples_per_shard=40", "data.val_fraction=0.25")
    shard(cfg, progress=False)
    return Path(cfg.data.out_dir)


def _spec(shards: Path, **kw) -> StreamSpec:
    base = dict(
        urls=tuple(shard_paths(shards, "train")),
        batch_size=8,
        image_size=32,
        context_length=16,
        seed=0,
        shuffle_buffer=20,
    )
    return StreamSpec(**{**base, **kw})


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batches_have_the_documented_shapes_and_types(shards):
    batch = _take(train_loader(_spec(shards), 0), 1)[0]
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert batch["tokens"].shape == (8, 16) and batch["tokens"].dtype == torch.long
    assert (batch["tokens"][:, 0] == 49406).all()  # CLIP start-of-text
    x = normalize(batch["images"], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert x.dtype == torch.float32 and -2.1 <= x.min() and x.max() <= 2.1


@pytest.mark.parametrize("streams,workers", [(1, 0), (2, 2)])
def test_resume_at_any_step_sees_exactly_the_same_batches(shards, streams, workers):
    spec = _spec(shards, streams=streams)
    full = _take(train_loader(spec, workers), 9)
    for start in (1, 4, 7):
        resumed = _take(train_loader(spec, workers, start_step=start), 9 - start)
        for a, b in zip(full[start:], resumed):
            assert a["keys"] == b["keys"]
            assert torch.equal(a["images"], b["images"])  # augmentation too
            assert torch.equal(a["tokens"], b["tokens"])


def test_batches_do_not_depend_on_how_many_workers_decode_them(shards):
    """The CPU share decides the worker count (cpushare.py); the logical streams decide the data,
    so a trial run with 0 workers under a 1-CPU Slurm job and with 2 on a laptop trains on the same."""
    spec = _spec(shards, streams=2)
    reference = _take(train_loader(spec, 0), 7)
    for workers, start in ((1, 0), (2, 0), (1, 3), (0, 4)):
        got = _take(train_loader(spec, workers, start_step=start), 7 - start)
        for a, b in zip(reference[start:], got):
            assert a["keys"] == b["keys"] and torch.equal(a["images"], b["images"])
    one_stream = _take(train_loader(_spec(shards, streams=1), 0), 7)
    assert [b["keys"] for b in reference] != [b["keys"] for b in one_stream]  # the streams param does matter
    with pytest.raises(ValueError, match="cannot share 2 logical streams"):
        train_loader(_spec(shards, streams=2), 3)


def test_stream_is_infinite_and_covers_each_sample_once_per_epoch(shards):
    n_train = sum(1 for _ in slot_samples(shard_paths(shards, "train"), 0, 1, None))
    spec = _spec(shards, shuffle_buffer=1, batch_size=n_train)  # buffer 1 = no cross-epoch mixing
    epochs = _take(train_loader(spec, 0), 3)
    for batch in epochs:
        assert len(set(batch["keys"])) == n_train
    assert epochs[0]["keys"] != epochs[1]["keys"]  # reshuffled each epoch


def test_different_seeds_give_different_streams(shards):
    a = _take(train_loader(_spec(shards, seed=0), 0), 1)[0]["keys"]
    b = _take(train_loader(_spec(shards, seed=1), 0), 1)[0]["keys"]
    assert a != b


@pytest.mark.parametrize("world,workers", [(2, 0), (2, 2), (3, 1)])
def test_ranks_and_workers_share_an_epoch_without_duplicates(shards, world, workers):
    urls = shard_paths(shards, "train")
    total = sum(1 for _ in slot_samples(urls, 0, 1, None))
    slots = world * max(workers, 1)
    seen = Counter()
    for slot in range(slots):
        seen.update(s["__key__"] for s in slot_samples(urls, slot, slots, epoch_seed=7))
    assert len(seen) == total and set(seen.values()) == {1}


def test_eval_stream_yields_each_sample_exactly_once_with_full_images(shards):
    urls = shard_paths(shards, "val")
    keys = Counter()
    loader = torch.utils.data.DataLoader(EvalStream(urls, 32), batch_size=7, num_workers=2, collate_fn=eval_collate)
    for batch in loader:
        assert batch["images"].shape[1:] == (3, 32, 32)
        assert all("labels" in m for m in batch["metas"])
        keys.update(batch["keys"])
    manifest_count = sum(1 for _ in slot_samples(urls, 0, 1, None))
    assert len(keys) == manifest_count and set(keys.values()) == {1}


def test_no_training_shards_is_a_clear_error():
    with pytest.raises(ValueError, match="run the shard stage"):
        train_loader(StreamSpec(urls=(), batch_size=2, image_size=32, context_length=8), 0)


@pytest.mark.parametrize("n", [30, 55])
def test_unique_pairs_limits_training_to_the_first_n_pairs_of_the_shards(shards, n):
    """train.unique_pairs: every epoch draws exactly the first n pairs (shard-then-member order), the same
    batches with 0 or 2 loader workers."""
    from maskvlp.data.shards import ShardError, first_pairs

    limits = first_pairs(shards, "train", n)
    assert sum(limits) == n and limits[0] == min(40, n)
    first = [s["__key__"] for s in slot_samples(list(shard_paths(shards, "train")), 0, 1, None)][:n]
    spec = _spec(shards, limits=limits, streams=2)
    batches = _take(train_loader(spec, 0), 2 * -(-n // 8) + 2)  # more than two epochs' worth
    keys = [k for b in batches for k in b["keys"]]
    assert set(keys) == set(first)  # nothing beyond the first n pairs, and every one of them drawn
    assert [b["keys"] for b in _take(train_loader(spec, 2), 4)] == [b["keys"] for b in batches[:4]]
    with pytest.raises(ShardError, match="exceeds the"):
        first_pairs(shards, "train", 10_000)
    assert first_pairs(shards, "train", 0) == ()


def test_normalize_builds_its_mean_and_std_once_per_device():
    """A per-batch torch.tensor(..., device=cuda) is a blocking copy: the constants are built once."""
    from maskvlp.config import CLIP_MEAN, CLIP_STD
    from maskvlp.data.transforms import _mean_std, normalize

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    want = (images.float() - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255) / (
        torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    )
    first = normalize(images, CLIP_MEAN, CLIP_STD)
    misses = _mean_std.cache_info().misses
    again = normalize(images, list(CLIP_MEAN), list(CLIP_STD))  # equal values from another list: the same entry
    assert _mean_std.cache_info().misses == misses
    assert torch.equal(first, want) and torch.equal(again, want)
