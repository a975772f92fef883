"""The `shard` stage: any source -> webdataset tar shards + manifest.json.

Output: `{out_dir}/{train,val}-%06d.tar` with `{key}.{jpg|png|webp}`, `{key}.txt` and `{key}.json`
per sample (readable by open_clip / img2dataset tooling), and `{out_dir}/manifest.json` recording per
split the sample count and shards with sha256, the source, the params used and the skipped inputs
by reason. Shards and manifest are written under a temporary name and renamed when complete, and
tar headers carry a fixed mtime, so the same params give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webdataset as wds

from maskvlp import __version__
from maskvlp.config import Config, to_dict
from maskvlp.cpushare import available_cpus
from maskvlp.data.clean import CleanSample, clean_sample
from maskvlp.data.sources import RawSample, Skip, make_source
from maskvlp.progress import Progress
from maskvlp.runs import write_json_atomic

MANIFEST = "manifest.json"
SIZES = "sizes.json"  # open_clip's per-shard sample counts ({shard file name: count})
SPLITS = ("train", "val")


class ShardError(RuntimeError):
    """Sharding cannot produce a usable dataset (e.g. every input was skipped)."""


def split_of(key: str, seed: int, val_fraction: float) -> str:
    """Deterministic train/val assignment from (seed, key) alone: independent of order and workers."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class AtomicShardWriter:
    """Writes `{prefix}-%06d.tar` shards of at most `max_count` samples, each renamed into place when
    closed, so a half-written shard never carries its final name."""

    def __init__(self, out_dir: Path, prefix: str, max_count: int, ext: str):
        self.out_dir, self.prefix, self.max_count, self.ext = out_dir, prefix, max_count, ext
        self.shards: list[dict[str, Any]] = []
        self._fh = self._tar = None
        self._count = 0

    def write(self, sample: CleanSample) -> None:
        if self._tar is None or self._count >= self.max_count:
            self._finish()
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self._fh = open(self.out_dir / (name + ".tmp"), "wb")
            self._tar = wds.TarWriter(self._fh, mtime=0, encoder=False)
            self._name, self._count = name, 0
        meta = json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode()
        self._tar.write({"__key__": sample.key, self.ext: sample.image, "txt": sample.caption.encode(), "json": meta})
        self._count += 1

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._fh.close()
        final = self.out_dir / self._name
        os.replace(self.out_dir / (self._name + ".tmp"), final)
        self.shards.append({"name": self._name, "count": self._count, "sha256": sha256_file(final)})
        self._tar = self._fh = None

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.shards


# The source and settings live in each worker process (set once by the pool initialiser).
_worker: dict[str, Any] = {}


def _init_worker(source, image_size: int, image_format: str, jpeg_quality: int, min_image_side: int) -> None:
    _worker.update(source=source, args=(image_size, image_format, jpeg_quality, min_image_side))


def _process(item) -> CleanSample | Skip:
    raw = _worker["source"].load(item)
    if isinstance(raw, Skip):
        return raw
    assert isinstance(raw, RawSample)
    return clean_sample(raw, *_worker["args"])


def _results(source, cfg: Config, workers: int) -> Iterator[CleanSample | Skip]:
    d = cfg.data
    init = (source, d.image_size, d.image_format, d.jpeg_quality, d.min_image_side)
    if workers <= 1:
        _init_worker(*init)
        yield from map(_process, source.items())
        return
    # imap keeps input order, so the output does not depend on the number of workers
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        yield from pool.imap(_process, source.items(), chunksize=32)


def clear_outputs(out_dir: Path) -> None:
    for path in list(out_dir.glob("*.tar")) + list(out_dir.glob("*.tmp")) + [out_dir / MANIFEST, out_dir / SIZES]:
        if path.exists():
            path.unlink()


def shard(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Run the shard stage for `cfg.data`; returns the manifest (also written to out_dir)."""
    d = cfg.data
    if d.shards.in_place:  # (params refuse it without data.source: shards)
        raise ShardError(
            "data.shards.in_place=true: `maskvlp pretrain` reads the shards where they are; the shard stage would "
            "copy them. Set data.shards.in_place=false to re-shard them into data.out_dir"
        )
    source = make_source(cfg)  # fails early, with a clear message, on a bad table / missing font
    out_dir = Path(d.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(out_dir)
    writers = {s: AtomicShardWriter(out_dir, s, d.max_samples_per_shard, d.image_format) for s in SPLITS}
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    seen_keys: set[str] = set()
    workers = d.num_workers or available_cpus()[0]
    total = len(source) if hasattr(source, "__len__") else None
    bar = Progress(total, f"shard {d.source}", unit="img", enabled=progress)
    for result in _results(source, cfg, workers):
        bar.update(1)
        if isinstance(result, CleanSample) and result.key in seen_keys:
            result = Skip("duplicate_key", result.key)
        if isinstance(result, Skip):
            skipped[result.reason] += 1
            if len(examples.setdefault(result.reason, [])) < 5:
                examples[result.reason].append(f"{result.key}: {result.detail}".strip(": "))
            bar.set_postfix(skipped=sum(skipped.values()))
            continue
        seen_keys.add(result.key)
        chosen = result.meta.get("split")  # a source's own (stratified) split, else the hash of the key
        writers[chosen if chosen in SPLITS else split_of(result.key, cfg.seed, d.val_fraction)].write(result)
    bar.close()
    splits = {s: w.close() for s, w in writers.items()}
    counts = {s: sum(sh["count"] for sh in shards) for s, shards in splits.items()}
    if sum(counts.values()) == 0:
        clear_outputs(out_dir)
        detail = ", ".join(f"{r}={n}" for r, n in skipped.most_common()) or "the source is empty"
        raise ShardError(f"every input was skipped ({detail}); examples: {examples}. Check data.{d.source}.")
    manifest = {
        "format": "maskvlp-shards/1",
        "maskvlp_version": __version__,
        "source": source.describe(),
        "params": {"seed": cfg.seed, "data": to_dict(cfg)["data"]},
        "image_ext": d.image_format,
        "splits": {s: {"count": counts[s], "shards": splits[s]} for s in SPLITS},
        # open_clip's --train-data / --val-data take a brace pattern (no globs) plus sizes.json
        "open_clip": {s: brace_pattern(out_dir, splits[s]) for s in SPLITS if splits[s]},
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": examples,
    }
    write_json_atomic(out_dir / SIZES, {sh["name"]: sh["count"] for s in SPLITS for sh in splits[s]})
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def brace_pattern(out_dir: Path, shards: list[dict[str, Any]]) -> str:
    """`dir/train-{000000..000003}.tar` for the shards of one split (named consecutively from 0)."""
    prefix = shards[0]["name"].rsplit("-", 1)[0]
    if len(shards) == 1:
        return str(out_dir / shards[0]["name"])
    return str(out_dir / f"{prefix}-{{000000..{len(shards) - 1:06d}}}.tar")


def summary(manifest: dict[str, Any]) -> str:
    lines = [f"{s}: {v['count']} samples in {len(v['shards'])} shard(s)" for s, v in manifest["splits"].items()]
    skipped = manifest["skipped"]
    if skipped:
        lines.append(f"skipped {sum(skipped.values())}: " + ", ".join(f"{k}={n}" for k, n in skipped.items()))
        for reason, ex in manifest["skipped_examples"].items():
            lines.append(f"  {reason}, e.g. {ex[0]}")
    else:
        lines.append("skipped 0")
    for split, pattern in manifest.get("open_clip", {}).items():
        lines.append(f"open_clip --{split}-data '{pattern}' (sample counts in {SIZES})")
    return "\n".join(lines)


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no shard manifest at '{path}': run `maskvlp shard` (or `dvc repro shard`) first")
    return json.loads(path.read_text())


def shard_paths(out_dir: str | Path, split: str) -> list[str]:
    """The shard files of a split, as listed in the manifest (in order)."""
    shards = load_manifest(out_dir)["splits"].get(split, {}).get("shards", [])
    return [str(Path(out_dir) / sh["name"]) for sh in shards]


def first_pairs(out_dir: str | Path, split: str, n: int) -> tuple[int, ...]:
    """Per shard of the split (manifest order), how many of its samples make up the split's first `n`
    pairs in shard-then-member order: the data-size axis of scaling studies (train.unique_pairs).
    n = 0 means every pair (an empty tuple)."""
    if n <= 0:
        return ()
    shards = load_manifest(out_dir)["splits"].get(split, {}).get("shards", [])
    return limits_for([sh["count"] for sh in shards], n, f"the {split} split of {out_dir}")


def limits_for(counts: list[int] | tuple[int, ...], n: int, where: str) -> tuple[int, ...]:
    """Per shard of `counts` samples, how many of its first samples make the first `n` pairs in
    shard-then-member order (`where` names the shards in the refusal when they hold fewer)."""
    total = sum(counts)
    if n > total:
        raise ShardError(f"train.unique_pairs={n} exceeds the {total} pairs of {where}: lower it, or add data")
    limits, left = [], n
    for count in counts:
        take = min(count, left)
        limits.append(take)
        left -= take
    return tuple(limits)


# The data params that determine the shards (the shard stage's params in dvc.yaml).
SHARD_PARAMS = tuple(
    "preset source image_size image_format jpeg_quality min_image_side val_fraction max_samples_per_shard "
    "synthetic emoji openclipart mix folder shards".split()
)


def _with_defaults(written: Any, default: Any) -> Any:
    """A recorded params value with the keys it lacks (added to the schema since) at their defaults."""
    if isinstance(written, dict) and isinstance(default, dict):
        return {**default, **{k: _with_defaults(v, default.get(k)) for k, v in written.items()}}
    return written


def check_manifest(cfg: Config, manifest: dict[str, Any]) -> None:
    """Refuse shards written with other data params than `cfg` (stale shards), naming the keys."""
    written = manifest.get("params", {})
    current = {"seed": cfg.seed, "data": to_dict(cfg)["data"]}
    diffs = [] if written.get("seed") == current["seed"] else [f"seed: {written.get('seed')} -> {cfg.seed}"]
    defaults = to_dict(Config())["data"]  # a key added since the shards were written compares at its default
    for key in SHARD_PARAMS:
        old = _with_defaults(written.get("data", {}).get(key, defaults[key]), defaults[key])
        new = current["data"][key]
        if old != new:
            diffs.append(f"data.{key}: {old} -> {new}")
    if diffs:
        raise ShardError(
            f"the shards in {cfg.data.out_dir} were written with other params ({'; '.join(diffs)}): "
            "re-run `maskvlp shard` (or `dvc repro`)"
        )
    if manifest["splits"]["train"]["count"] == 0:
        raise ShardError(f"the shard set in {cfg.data.out_dir} has no training samples")
