"""Streaming loaders over webdataset shards.

Training stream: infinite and resampled, epoch by epoch, and a pure function of (seed, slot), where
a slot is one DataLoader worker of one rank (slot = rank * workers + worker). Within an epoch every
sample goes to exactly one slot: whole shards when there are at least as many shards as slots,
otherwise every slot reads all shards and keeps every `num_slots`-th sample. A seeded buffer
shuffles each slot's stream; augmentation draws from a generator seeded by the sample's position.
The DataLoader hands out batches round-robin over its workers, so global step s is worker
s % W's (s // W)-th batch: to resume at step s each worker skips the raw (undecoded) samples of
the batches it already produced, and the resumed run sees exactly the batches an uninterrupted
run would have seen.

Evaluation stream: every sample exactly once, in shard order within each slot, full images.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskvlp.data.tokenizer import Tokenizer
from maskvlp.data.transforms import eval_image, train_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class StreamSpec:
    urls: tuple[str, ...]
    batch_size: int
    image_size: int
    context_length: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 1000
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)


def _raw_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Grouped tar members {"__key__", "jpg", "txt", ...} as bytes, shard by shard, in order."""
    return wds.tarfile_samples({"url": u} for u in urls)


def slot_samples(urls: list[str], slot: int, num_slots: int, epoch_seed: int | None) -> Iterator[dict[str, Any]]:
    """One pass over the samples of this slot. epoch_seed=None keeps shard order (evaluation)."""
    order = list(range(len(urls)))
    if epoch_seed is not None:
        order = np.random.default_rng(epoch_seed).permutation(len(urls)).tolist()
    shards = [urls[i] for i in order]
    if len(shards) >= num_slots:
        yield from _raw_samples(shards[slot::num_slots])
    else:
        yield from itertools.islice(_raw_samples(shards), slot, None, num_slots)


def buffer_shuffle(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Seeded buffer shuffle: deterministic for a given rng state and input order."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for key in IMAGE_KEYS:
        if key in sample:
            return sample[key]
    raise KeyError(f"sample {sample.get('__key__')} of {sample.get('__url__')} holds no image")


def _slot(spec: StreamSpec, start_step: int = 0) -> tuple[int, int, int, int]:
    """(slot, num_slots, logical worker, workers). A resumed DataLoader starts its round-robin at
    worker 0 again, so its worker p plays the part of the original run's worker (start_step + p) % W."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    logical = (start_step + worker) % workers
    return spec.rank * workers + logical, spec.world_size * workers, logical, workers


class TrainStream(IterableDataset):
    """Infinite batches {"images": uint8 (B,3,S,S), "tokens": long (B,C), "keys": list[str]}."""

    def __init__(self, spec: StreamSpec, start_step: int = 0):
        if not spec.urls:
            raise ValueError("no training shards: run the shard stage first (`maskvlp shard`)")
        self.spec, self.start_step = spec, start_step

    def raw_stream(self, slot: int, num_slots: int) -> Iterator[dict[str, Any]]:
        def epochs():
            for epoch in itertools.count():
                yield from slot_samples(
                    list(self.spec.urls), slot, num_slots, epoch_seed=self.spec.seed * 100003 + epoch
                )

        return buffer_shuffle(epochs(), self.spec.shuffle_buffer, random.Random(f"{self.spec.seed}/shuffle/{slot}"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.spec
        slot, num_slots, worker, workers = _slot(s, self.start_step)
        produced = max(0, -(-(self.start_step - worker) // workers))  # batches this worker already gave
        skip = produced * s.batch_size
        tokenizer = Tokenizer(s.context_length)
        stream = itertools.islice(self.raw_stream(slot, num_slots), skip, None)
        position = skip
        while True:
            raw = list(itertools.islice(stream, s.batch_size))
            images = []
            for sample in raw:
                rng = random.Random(f"{s.seed}/aug/{slot}/{position}")
                images.append(train_image(_image_bytes(sample), s.image_size, s.crop_scale, s.crop_ratio, rng))
                position += 1
            yield {
                # stack the contiguous HWC storage (10x cheaper than stacking CHW views), view as CHW
                "images": torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2),
                "tokens": tokenizer([sample["txt"].decode("utf-8") for sample in raw]),
                "keys": [sample["__key__"] for sample in raw],
            }


class EvalStream(IterableDataset):
    """Each sample once: {"image": uint8 (3,S,S), "caption": str, "key": str, "meta": dict}."""

    def __init__(self, urls: list[str], image_size: int, rank: int = 0, world_size: int = 1):
        self.urls, self.image_size, self.rank, self.world_size = list(urls), image_size, rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spec = StreamSpec(tuple(self.urls), 1, self.image_size, 3, rank=self.rank, world_size=self.world_size)
        slot, num_slots, _, _ = _slot(spec)
        for sample in slot_samples(self.urls, slot, num_slots, epoch_seed=None):
            yield {
                "image": eval_image(_image_bytes(sample), self.image_size),
                "caption": sample["txt"].decode("utf-8"),
                "key": sample["__key__"],
                "meta": json.loads(sample["json"]) if "json" in sample else {},
            }


def _eval_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "images": torch.stack([it["image"] for it in items]),
        "captions": [it["caption"] for it in items],
        "keys": [it["key"] for it in items],
        "metas": [it["meta"] for it in items],
    }


def train_loader(spec: StreamSpec, num_workers: int, start_step: int = 0) -> DataLoader:
    """Batches in a fixed order for a fixed (spec, num_workers): resuming needs the same worker count."""
    return DataLoader(
        TrainStream(spec, start_step),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


def eval_loader(
    urls: list[str], image_size: int, batch_size: int, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    return DataLoader(
        EvalStream(urls, image_size, rank, world_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_eval_collate,
    )


def read_images(path: str, limit: int, image_size: int) -> torch.Tensor:
    """Up to `limit` full images as uint8 (N, 3, S, S) from a folder of images, one .tar shard, or a
    shard folder with a manifest (its val split, else train)."""
    from pathlib import Path

    from maskvlp.data.shards import MANIFEST, shard_paths

    p = Path(path)
    if p.is_dir() and (p / MANIFEST).is_file():
        urls = shard_paths(p, "val") or shard_paths(p, "train")
    elif p.is_file() and p.suffix == ".tar":
        urls = [str(p)]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower().lstrip(".") in IMAGE_KEYS)[:limit]
        if not files:
            raise FileNotFoundError(f"no .jpg/.png/.webp images under '{p}'")
        return torch.stack([eval_image(f.read_bytes(), image_size) for f in files])
    else:
        raise FileNotFoundError(f"'{p}' is neither an image folder, a .tar shard nor a shard folder")
    samples = itertools.islice(slot_samples(urls, 0, 1, epoch_seed=None), limit)
    return torch.stack([eval_image(_image_bytes(s), image_size) for s in samples])
