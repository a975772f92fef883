"""Data-path benchmark: sharding throughput, per-core decode+augment at 224 px, streaming loader, in place.

    .venv/bin/python benchmarks/bench_data.py            # full run (~1 min on 2 cores)
    .venv/bin/python benchmarks/bench_data.py --quick    # smoke run (small counts)

Prints one markdown table. All scratch data lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from maskvlp.config import CLIP_MEAN, CLIP_STD
from maskvlp.data.loader import StreamSpec, train_loader
from maskvlp.data.shards import shard, shard_paths
from maskvlp.data.transforms import normalize, train_image
from maskvlp.params import load_config

SIZE = 224
SCALE, RATIO = (0.9, 1.0), (0.75, 4 / 3)
Row = tuple[str, str, float, int, str]  # section, case, images/s, cores, note


def make_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """Smooth random colour field + gradient + mild grain: compresses like a photo, not like noise."""
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    gradient = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None]
    grain = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    pixels = np.clip(smooth + gradient + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def config(**overrides: object):
    """Default config with `data.<key>=<value>` overrides (keys use `__` for dots)."""
    return load_config(None, [f"data.{k.replace('__', '.')}={v}" for k, v in overrides.items()])


def rate(fn: Callable[[int, bytes], object], items: Sequence[bytes], repeats: int, warmup: int = 16) -> float:
    """Images/s of fn over items, median of `repeats` timed passes after a short warmup."""
    for i, data in enumerate(items[:warmup]):
        fn(i, data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i, data in enumerate(items):
            fn(i, data)
        times.append(time.perf_counter() - start)
    return len(items) / statistics.median(times)


# ------------------------------------------------------------------------------------ 1. sharding
def bench_sharding(tmp: Path, num_samples: int) -> list[Row]:
    shard(config(out_dir=tmp / "warmup", synthetic__num_samples=50, num_workers=1), progress=False)
    rates = {}
    for workers in (1, 2):
        cfg = config(out_dir=tmp / f"synthetic-{workers}", synthetic__num_samples=num_samples, num_workers=workers)
        start = time.perf_counter()
        shard(cfg, progress=False)
        rates[workers] = num_samples / (time.perf_counter() - start)
    case = f"synthetic {cfg.data.image_size}px, {{}} worker(s)"
    note = f"{num_samples} samples"
    return [
        ("shard", case.format(1), rates[1], 1, note),
        ("shard", case.format(2), rates[2], 2, f"{note}; 2w/1w = {rates[2] / rates[1]:.2f}x"),
    ]


# ------------------------------------------------------------------------------- 2. per-core path
def bench_per_core(jpegs: dict[str, list[bytes]], repeats: int) -> list[Row]:
    rrc = v2.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO, antialias=True)
    baseline = v2.Compose([rrc, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)])

    def decode(i: int, data: bytes) -> Image.Image:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    def torchvision_path(i: int, data: bytes) -> torch.Tensor:
        return baseline(Image.open(io.BytesIO(data)).convert("RGB"))

    def maskvlp_path(i: int, data: bytes) -> torch.Tensor:
        return train_image(data, SIZE, SCALE, RATIO, random.Random(i))

    rows: list[Row] = []
    for name, items in jpegs.items():
        w, h = Image.open(io.BytesIO(items[0])).size
        case = f"{name} {w}x{h}"
        a = rate(torchvision_path, items, repeats)
        b = rate(maskvlp_path, items, repeats)
        c = rate(decode, items, repeats)
        rows += [
            ("per-core", f"{case}: (a) PIL + torchvision v2 RRC/ToDtype/Normalize", a, 1, "float32 out"),
            ("per-core", f"{case}: (b) maskvlp train_image", b, 1, f"uint8 out; b/a = {b / a:.2f}x"),
            ("per-core", f"{case}: (c) PIL decode only", c, 1, "ceiling"),
        ]
    batch = torch.randint(0, 256, (256, 3, SIZE, SIZE), dtype=torch.uint8)
    normalize(batch, CLIP_MEAN, CLIP_STD)  # warmup
    times = []
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        normalize(batch, CLIP_MEAN, CLIP_STD)
        times.append(time.perf_counter() - start)
    note = "per image; done on the device in training"
    return rows + [("per-core", "maskvlp normalize on CPU (batch 256)", 256 / statistics.median(times), 1, note)]


# ------------------------------------------------------------------------------ 3. streaming loader
def bench_loader(tmp: Path, jpegs: list[bytes], batches: int, warmup: int = 2) -> list[Row]:
    images = tmp / "folder"
    images.mkdir()
    with open(images / "table.csv", "w", newline="") as fh:
        table = csv.writer(fh)
        table.writerow(["path", "caption"])
        for i, data in enumerate(jpegs):
            (images / f"img_{i:05d}.jpg").write_bytes(data)
            table.writerow([f"img_{i:05d}.jpg", f"a synthetic test image number {i}"])
    out_dir = tmp / "shards-224"
    cfg = config(
        source="folder",
        folder__table=images / "table.csv",
        image_size=SIZE,
        out_dir=out_dir,
        val_fraction=0,
        max_samples_per_shard=128,
        num_workers=2,
    )
    shard(cfg, progress=False)
    urls = tuple(shard_paths(out_dir, "train"))
    spec = StreamSpec(urls=urls, batch_size=64, image_size=SIZE, context_length=77, seed=0)
    rows: list[Row] = []
    for workers in (0, 2):
        # the logical streams fix the batches; the workers must divide them (data.loader_workers)
        it = iter(train_loader(replace(spec, streams=max(1, workers)), num_workers=workers))
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        elapsed = time.perf_counter() - start
        del it  # shuts the workers down
        case, note = f"train_loader 224px shards, num_workers={workers}", f"{batches} batches of 64, {len(urls)} shards"
        rows.append(("loader", case, batches * spec.batch_size / elapsed, max(1, workers), note))
    return rows


# ---------------------------------------------------------------- 4. in place vs maskvlp's own shards
def bench_in_place(tmp: Path, jpegs: list[bytes], batches: int, repeats: int, warmup: int = 2) -> list[Row]:
    """The loader on one core (num_workers=0) over img2dataset-style tars of the original JPEGs read in
    place (decode, centre crop to 224 as the shard stage does, training crop) beside the same images
    sharded by `maskvlp shard` at 224 px; and the extra crop's own cost, per image, measured apart:
    decode + centre crop of an original minus decoding the 224 px image the shard stage stored."""
    import json
    import tarfile

    from maskvlp.data.clean import clean_sample, decode_image, resize_center_crop, to_rgb
    from maskvlp.data.sources import RawSample

    raw_dir = tmp / "img2dataset"
    raw_dir.mkdir()
    per = 128
    for s in range(0, len(jpegs), per):
        with tarfile.open(raw_dir / f"{s // per:05d}.tar", "w") as tar:
            for i, data in enumerate(jpegs[s : s + per], start=s):
                for ext, blob in (("jpg", data), ("txt", f"a synthetic test image number {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        (raw_dir / f"{s // per:05d}_stats.json").write_text(json.dumps({"successes": len(jpegs[s : s + per])}))
    own_dir = tmp / "own-224"
    own_dir.mkdir()
    shard_urls = []
    for s in range(0, len(jpegs), per):  # the shard stage's bytes for the same images (clean_sample at 224 px)
        path = own_dir / f"train-{s // per:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, data in enumerate(jpegs[s : s + per], start=s):
                stored = clean_sample(RawSample(f"{i:09d}", data, "x"), SIZE, "jpg", 95)
                for ext, blob in (("jpg", stored.image), ("txt", f"a synthetic test image number {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        shard_urls.append(str(path))
    base = dict(batch_size=64, image_size=SIZE, context_length=77, seed=0, shuffle_buffer=256)
    specs = {
        "maskvlp shards (224 px stored)": StreamSpec(urls=tuple(shard_urls), **base),
        "in place (originals)": StreamSpec(
            urls=tuple(sorted(str(p) for p in raw_dir.glob("*.tar"))), in_place=True, data_size=SIZE, **base
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in specs}
    for _ in range(max(1, repeats)):  # alternated, median of the rounds: drift on a shared machine hits both
        for name, spec in specs.items():
            it = iter(train_loader(spec, num_workers=0))
            for _ in range(warmup):
                next(it)
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            samples[name].append(batches * spec.batch_size / (time.perf_counter() - start))
    loader_rates = {name: statistics.median(rates) for name, rates in samples.items()}
    stored = [clean_sample(RawSample("k", data, "x"), SIZE, "jpg", 95).image for data in jpegs]
    crop_rate = rate(
        lambda i, data: resize_center_crop(to_rgb(decode_image(data, draft_to=SIZE)), SIZE), jpegs, repeats
    )
    stored_rate = rate(lambda i, data: decode_image(stored[i]).convert("RGB"), stored, repeats)
    extra_ms = 1000 * (1 / crop_rate - 1 / stored_rate)
    own, in_place = loader_rates.values()
    slower_ms = 1000 * (1 / in_place - 1 / own)
    w, h = Image.open(io.BytesIO(jpegs[0])).size
    verdict = "within" if slower_ms <= extra_ms * 1.1 else "beyond"
    return [
        ("in place", f"train_loader, {name}, {w}x{h} originals", r, 1,
         f"{batches} batches of 64, num_workers=0, median of {len(samples[name])} alternated rounds")
        for name, r in loader_rates.items()
    ] + [
        ("in place", "extra crop alone: decode+centre-crop original vs decode stored", crop_rate, 1,
         f"{extra_ms:.2f} ms/image extra"),
        ("in place", "in place vs own shards, per image", in_place, 1,
         f"{slower_ms:.2f} ms/image slower = {slower_ms / extra_ms:.2f}x the extra crop's cost: {verdict} it (+10%)"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    args = parser.parse_args()
    n_shard, n_img, repeats, batches = (300, 64, 1, 4) if args.quick else (2000, 512, 3, 30)
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    jpegs = {
        "small": [make_jpeg(rng, 320, 256) for _ in range(n_img)],
        "large": [make_jpeg(rng, 640, 480) for _ in range(n_img)],
    }
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        rows += bench_sharding(Path(tmp), n_shard)
        rows += bench_per_core(jpegs, repeats)
        rows += bench_loader(Path(tmp), jpegs["small"], batches)
        rows += bench_in_place(Path(tmp), jpegs["large"], batches, repeats)

    print(f"\ntorch {torch.__version__}, {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}\n")
    print("| section | case | images/s | cores | images/s/core | note |")
    print("|---|---|---:|---:|---:|---|")
    for section, case, ips, cores, note in rows:
        print(f"| {section} | {case} | {ips:,.0f} | {cores} | {ips / cores:,.0f} | {note} |")


if __name__ == "__main__":
    main()
