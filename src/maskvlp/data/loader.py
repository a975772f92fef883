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

In place (existing shards, data/trainset.py): shards are read through data/shardio.py (local files,
pipe: commands, http(s) URLs), `weights` repeat a shard within an epoch (open_clip's upsampling: the
integer part every epoch, the fraction by a seeded draw per epoch), and each sample is decoded, made RGB
and centre-cropped to data.image_size as the shard stage does before the training crop. A sample that
cannot be used is skipped and counted by reason: missing image or caption and bad captions before the
shuffle, undecodable or too small images when the batch is built, so a batch may consume more raw
samples than it holds. Each batch carries its logical stream, the raw position after it and its skips;
the loop keeps the last position per stream (checkpointed), and a resumed stream skips exactly that
many raw samples: the same batches as an uninterrupted run.

Evaluation stream (EvalStream): every sample exactly once, in shard order within each worker, full images.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskvlp.data.clean import clean_caption, decode_image, resize_center_crop, to_rgb
from maskvlp.data.sources import IMAGE_EXTS, Skip
from maskvlp.data.tokenizer import Tokenizer
from maskvlp.data.transforms import augment, to_uint8_tensor, train_image

MAX_UNUSABLE_IN_A_ROW = 1000  # in place: this many undecodable images in a row end the run with an error


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
    streams: int = 1  # logical streams per rank (data.loader_workers): fixes the batches, not the processes
    hflip: bool = False  # random horizontal flip (FLIP's recipe)
    limits: tuple[int, ...] = ()  # per url: read only its first N samples (train.unique_pairs); () = all
    in_place: bool = False  # existing shards: read through shardio, decoded and centre-cropped on the fly
    data_size: int = 0  # in place: the centre crop's side before the training crop (data.image_size)
    min_side: int = 1  # in place: images whose shorter side is smaller are skipped (data.min_image_side)
    weights: tuple[float, ...] = ()  # in place: per url, reads per epoch (data.shards.upsampling); () = once
    retries: int = 3  # in place: pipe:/http(s) streams reopened this many times


def _raw_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Grouped tar members {"__key__", "jpg", "txt", ...} as bytes, shard by shard, in order."""
    return wds.tarfile_samples({"url": u} for u in urls)


def epoch_shards(urls: list[str], weights: tuple[float, ...], rng: np.random.Generator) -> list[str]:
    """The shards of one epoch with upsampling `weights`: each url int(w) times, once more with
    probability w - int(w) (one seeded draw per url), in listing order (the epoch's permutation follows)."""
    draws = rng.random(len(urls))
    return [u for u, w, d in zip(urls, weights, draws) for _ in range(int(w) + (d < w - int(w)))]


def slot_samples(
    urls: list[str],
    slot: int,
    num_slots: int,
    epoch_seed: int | None,
    limits: tuple[int, ...] = (),
    weights: tuple[float, ...] = (),
    reader: Any = None,
) -> Iterator[dict[str, Any]]:
    """One pass over the samples of this slot. epoch_seed=None keeps shard order (evaluation). With
    `limits`, only the first limits[i] samples of urls[i] exist (shards limited to 0 are left out).
    `weights` (per url) repeat shards within the epoch (epoch_shards); `reader(url)` yields one shard's
    grouped samples (default: webdataset's tar reader, for local files)."""
    cap = dict(zip(urls, limits)) if limits else {}
    if limits:
        kept = [(u, n, w) for u, n, w in zip(urls, limits, weights or [1.0] * len(urls)) if n > 0]
        urls, weights = [u for u, _, _ in kept], tuple(w for _, _, w in kept) if weights else ()
    rng = np.random.default_rng(epoch_seed) if epoch_seed is not None else None
    listed = epoch_shards(urls, weights, rng) if weights and rng is not None else list(urls)
    order = rng.permutation(len(listed)).tolist() if rng is not None else list(range(len(listed)))
    shards = [listed[i] for i in order]

    def read(selected: list[str]) -> Iterator[dict[str, Any]]:
        """Grouped tar members {"__key__", "jpg", "txt", ...} as bytes, shard by shard, in order."""
        if reader is not None:
            one = (reader(u) if not cap else itertools.islice(reader(u), cap[u]) for u in selected)
            return itertools.chain.from_iterable(one)
        if not cap:
            return _raw_samples(selected)
        return itertools.chain.from_iterable(itertools.islice(_raw_samples([u]), cap[u]) for u in selected)

    if len(shards) >= num_slots:
        yield from read(shards[slot::num_slots])
    else:
        yield from itertools.islice(read(shards), slot, None, num_slots)


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
    for key in IMAGE_EXTS:
        if key in sample:
            return sample[key]
    raise KeyError(f"sample {sample.get('__key__')} of {sample.get('__url__')} holds no image")


def _unusable(sample: dict[str, Any]) -> Skip | None:
    """Why a raw sample cannot be trained on, told without decoding its image: no image, no caption,
    a caption that is empty or not UTF-8 (the shard stage's reasons); None when it may be usable."""
    if not any(k in sample for k in IMAGE_EXTS):
        return Skip("missing_image", sample.get("__key__", ""))
    caption = clean_caption(sample.get("txt"))
    return caption if isinstance(caption, Skip) else None


def in_place_image(data: bytes, spec: StreamSpec, rng: random.Random) -> torch.Tensor | Skip:
    """An existing shard's image as training sees it: decoded, made RGB and centre-cropped to
    data.image_size exactly as the shard stage stores it (clean.py), then the training crop (transforms.py)."""
    img = decode_image(data, spec.min_side, draft_to=spec.data_size)
    if isinstance(img, Skip):
        return img
    try:
        square = resize_center_crop(to_rgb(img), spec.data_size)
    except (OSError, ValueError) as exc:
        return Skip("unreadable_image", detail=str(exc))
    return augment(square, spec.image_size, spec.crop_scale, spec.crop_ratio, rng, spec.hflip)


def _worker() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainStream(IterableDataset):
    """Infinite batches {"images": uint8 (B,3,S,S), "tokens": long (B,C), "keys": list[str]}.

    Each rank's stream is split into `spec.streams` logical streams (slot = rank * streams + l);
    global batch g is logical stream g % streams's (g // streams)-th batch. Which process decodes
    it does not matter: W DataLoader workers (W dividing `streams`, or the main process alone) each
    take the logical streams the round-robin hands them, so the batches are the same whatever the
    number of workers the CPU budget allows (cpushare.py)."""

    def __init__(self, spec: StreamSpec, start_step: int = 0, positions: dict[int, int] | None = None):
        if not spec.urls:
            raise ValueError("no training shards: run the shard stage first (`maskvlp shard`)")
        self.spec, self.start_step, self.positions = spec, start_step, positions or {}

    def raw_stream(self, slot: int, num_slots: int, skipped: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
        """The slot's shuffled raw samples, epoch after epoch. In place, samples without an image or a
        usable caption (and unreadable or truncated tars) are left out before the shuffle and counted in
        `skipped`; an epoch with no usable sample at all is an error, not an endless loop."""
        s = self.spec
        reader = None
        if s.in_place:
            from maskvlp.data.shardio import tar_samples

            def reader(url: str) -> Iterator[dict[str, Any] | Skip]:
                return tar_samples(url, s.retries)

        def epochs():
            for epoch in itertools.count():
                samples = slot_samples(
                    list(s.urls), slot, num_slots, s.seed * 100003 + epoch, s.limits, s.weights, reader
                )
                if not s.in_place:
                    yield from samples
                    continue
                usable = 0
                for sample in samples:
                    problem = sample if isinstance(sample, Skip) else _unusable(sample)
                    if problem is not None:
                        skipped[problem.reason] += 1
                        continue
                    usable += 1
                    yield sample
                if not usable:
                    raise ValueError(
                        f"no usable sample in an epoch of training slot {slot} (of {num_slots}) over {len(s.urls)} "
                        f"shard(s), e.g. {s.urls[0]}; skipped so far: {dict(skipped)}"
                    )

        return buffer_shuffle(epochs(), s.shuffle_buffer, random.Random(f"{s.seed}/shuffle/{slot}"))

    def logical_batches(self, stream: int) -> Iterator[dict[str, Any]]:
        """The batches of one logical stream from where a run resumed at `start_step`: after the raw
        position its last batch reached (`positions`, from the checkpoint), else after
        produced batches x batch size raw samples (exact when no sample was ever skipped)."""
        s = self.spec
        slot, num_slots = s.rank * s.streams + stream, s.world_size * s.streams
        produced = max(0, -(-(self.start_step - stream) // s.streams))  # its batches before start_step
        skip = self.positions.get(stream, produced * s.batch_size)
        tokenizer = Tokenizer(s.context_length)
        skipped: Counter[str] = Counter()  # since the last batch: it carries them
        raw_samples = self.raw_stream(slot, num_slots, skipped)
        deque(itertools.islice(raw_samples, skip), maxlen=0)  # the batches already trained on
        skipped.clear()  # their skips are in the resumed run's totals
        position = skip
        while True:
            if not s.in_place:
                raw = list(itertools.islice(raw_samples, s.batch_size))
                images = []
                for sample in raw:
                    rng = random.Random(f"{s.seed}/aug/{slot}/{position}")
                    images.append(
                        train_image(_image_bytes(sample), s.image_size, s.crop_scale, s.crop_ratio, rng, s.hflip)
                    )
                    position += 1
                captions = [sample["txt"].decode("utf-8") for sample in raw]
            else:
                raw, images, captions, failed = [], [], [], 0
                for sample in raw_samples:
                    rng = random.Random(f"{s.seed}/aug/{slot}/{position}")
                    position += 1
                    image = in_place_image(_image_bytes(sample), s, rng)
                    if isinstance(image, Skip):
                        skipped[image.reason] += 1
                        failed += 1
                        if failed >= MAX_UNUSABLE_IN_A_ROW:
                            raise ValueError(
                                f"no usable sample in {failed} in a row of training slot {slot} over {len(s.urls)} "
                                f"shard(s), e.g. {s.urls[0]}: skipped {dict(skipped)}. Check data.shards.urls"
                            )
                        continue
                    failed = 0
                    raw.append(sample)
                    images.append(image)
                    captions.append(clean_caption(sample["txt"]))
                    if len(raw) == s.batch_size:
                        break
            yield {
                # stack the contiguous HWC storage (10x cheaper than stacking CHW views), view as CHW
                "images": torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2),
                "tokens": tokenizer(captions),
                "keys": [sample["__key__"] for sample in raw],
                "stream": stream,  # which logical stream made it, and the raw position after it (resume)
                "raw_end": position,
                "skipped": dict(skipped),  # unusable samples met while making it, by reason
            }
            skipped.clear()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        streams = self.spec.streams
        # A (resumed) DataLoader hands batch k to worker k % workers: this worker produces global
        # batches first, first + workers, ... whose logical streams are those congruent to `first`.
        first = self.start_step + worker
        mine = {
            stream: self.logical_batches(stream) for stream in range(streams) if stream % workers == first % workers
        }
        for g in itertools.count(first, workers):
            yield next(mine[g % streams])


class EvalStream(IterableDataset):
    """Each sample once: {"image": uint8 (3,S,S), "caption": str, "key": str, "meta": dict}, read through
    shardio (local files, pipe: commands, http(s) URLs). Samples without a usable image or caption, and
    unreadable or truncated tars, are skipped and counted in `skipped` (by the shard stage's reasons;
    counted in the reading process, so read it with num_workers=0)."""

    def __init__(self, urls: list[str], image_size: int, skipped: Counter | None = None):
        self.urls, self.image_size = list(urls), image_size
        self.skipped: Counter[str] = Counter() if skipped is None else skipped

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from maskvlp.data.shardio import tar_samples

        worker, workers = _worker()  # the DataLoader workers split the samples (none: this process reads all)
        for sample in slot_samples(self.urls, worker, workers, epoch_seed=None, reader=tar_samples):
            if isinstance(sample, Skip):
                self.skipped[sample.reason] += 1
                continue
            data = next((sample[k] for k in IMAGE_EXTS if k in sample), None)
            img = decode_image(data) if data is not None else None
            caption = clean_caption(sample.get("txt"))
            reason = (
                "missing_image" if img is None else getattr(img, "reason", None) or getattr(caption, "reason", None)
            )
            if reason:
                self.skipped[reason] += 1
                continue
            yield {
                "image": to_uint8_tensor(resize_center_crop(to_rgb(img), self.image_size)),
                "caption": caption,
                "key": sample["__key__"],
                "meta": sample_meta(sample.get("json")),
            }


def sample_meta(raw: bytes | None) -> dict[str, Any]:
    """A sample's json as a dict ({} when absent or not a JSON object)."""
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def eval_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "images": torch.stack([it["image"] for it in items]),
        "captions": [it["caption"] for it in items],
        "keys": [it["key"] for it in items],
        "metas": [it["meta"] for it in items],
    }


def train_loader(
    spec: StreamSpec,
    num_workers: int,
    start_step: int = 0,
    pin_memory: bool = False,
    positions: dict[int, int] | None = None,
) -> DataLoader:
    """Batches in an order fixed by `spec` alone (its `streams` included), decoded by `num_workers`
    processes (0 = the main process; otherwise a divisor of `spec.streams`). `pin_memory` (for a CUDA
    device) makes the step's `non_blocking` copies asynchronous instead of staged and synchronous.
    `positions` ({logical stream: raw position after its last batch}) resumes each stream exactly."""
    if num_workers and spec.streams % num_workers:
        raise ValueError(f"{num_workers} loader workers cannot share {spec.streams} logical streams evenly")
    return DataLoader(
        TrainStream(spec, start_step, positions),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        pin_memory=pin_memory,
    )


def read_images(
    path: str, limit: int, image_size: int, min_side: int = 1, data_size: int = 0, retries: int = 3
) -> tuple[torch.Tensor, Counter[str]]:
    """Up to `limit` full images as uint8 (N, 3, S, S) from a folder of images, one .tar shard (a pipe:
    command or http(s) URL too), or a shard folder with a manifest (its val split, else train), and the
    unusable files skipped, counted by reason (as the shard stage counts them). `data_size` > 0: each
    image is first centre-cropped to it, as the shard stage stores it (existing shards read in place)."""
    from pathlib import Path

    from maskvlp.data.shards import MANIFEST, shard_paths

    p = Path(path)
    skipped: Counter[str] = Counter()
    if data_size or path.startswith(("pipe:", "http://", "https://")):
        from maskvlp.data.shardio import tar_samples

        def shard_blobs():
            for sample in tar_samples(path, retries):
                problem = sample if isinstance(sample, Skip) else _unusable(sample)
                if problem is not None:
                    skipped[problem.reason] += 1
                    continue
                yield _image_bytes(sample)

        blobs = shard_blobs()
    elif p.is_dir() and (p / MANIFEST).is_file():
        urls = shard_paths(p, "val") or shard_paths(p, "train")
        blobs = (_image_bytes(s) for s in slot_samples(urls, 0, 1, epoch_seed=None))
    elif p.is_file() and p.suffix == ".tar":
        blobs = (_image_bytes(s) for s in slot_samples([str(p)], 0, 1, epoch_seed=None))
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower().lstrip(".") in IMAGE_EXTS)
        if not files:
            raise FileNotFoundError(f"no .jpg/.png/.webp images under '{p}'")
        blobs = (f.read_bytes() for f in files)
    else:
        raise FileNotFoundError(f"'{p}' is neither an image folder, a .tar shard nor a shard folder")
    images: list[torch.Tensor] = []
    for data in blobs:
        if len(images) >= limit:
            break
        img = decode_image(data, min_side)
        if not isinstance(img, Image.Image):
            skipped[img.reason] += 1
            continue
        img = to_rgb(img)
        if data_size:
            img = resize_center_crop(img, data_size)
        images.append(to_uint8_tensor(resize_center_crop(img, image_size)))
    if not images:
        raise FileNotFoundError(f"no usable image in '{p}' (skipped: {dict(skipped) or 'none found'})")
    return torch.stack(images), skipped
