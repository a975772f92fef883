"""Where training reads its pairs: maskvlp's own shard folder, or existing shards in place.

`training_data(cfg)` is the one answer every reader of the training data asks (the session's stream
and calibration, the probe scenes, the `val` evaluation set, a sweep's checks):
- `data.shards.in_place: false` (default): the shard stage's folder `data.out_dir`, its manifest checked
  against the params (stale shards are refused);
- `data.shards.in_place: true`: `data.shards.urls` as they are (brace patterns, globs, pipe: commands,
  http(s) URLs; parts joined by '::', each with its `upsampling` factor), nothing copied and nothing
  written beside them; the val split is `data.shards.val_urls`, or `val_shard_fraction` of the whole
  shards held out (seeded by `seed`), or none.
Sample counts come from the manifest, or in place from sizes.json / img2dataset's _stats.json / one
counting pass cached in the run folder (data/shardio.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskvlp.config import Config, ConfigError
from maskvlp.data.shards import MANIFEST, ShardError, check_manifest, limits_for, load_manifest, sha256_file
from maskvlp.data.sources import expand_urls

VAL_HOLDOUT_SEED = 0x5A1  # mixed with `seed` to pick the held-out val shards


@dataclass(frozen=True)
class TrainData:
    train: tuple[str, ...]  # the train split's shards, in listing order
    val: tuple[str, ...]  # the val split's shards (may be empty)
    in_place: bool = False
    weights: tuple[float, ...] = ()  # per train shard: reads per epoch (data.shards.upsampling); () = once each
    classes: list[str] | None = None  # class names the source recorded (maskvlp shards only)
    counts: tuple[int, ...] | None = None  # samples per train shard when known without reading (manifest)
    retries: int = 3  # pipe:/http(s): reopen a failed stream this many times
    record: dict[str, Any] = field(default_factory=dict)  # what run.json records about the data

    def train_counts(self, cache: Path | None = None, progress: bool = False) -> tuple[int, ...]:
        """Samples per train shard: the manifest's, else sizes.json / _stats.json / a counting pass
        cached in `cache` (the run folder's shard_counts.json; never beside the shards)."""
        if self.counts is not None:
            return self.counts
        from maskvlp.data.shardio import shard_counts

        return tuple(shard_counts(list(self.train), cache, self.retries, progress))

    def limits(self, unique_pairs: int, cache: Path | None = None) -> tuple[int, ...]:
        """Per train shard, how many of its first samples make the first `unique_pairs` pairs (() = all)."""
        if unique_pairs <= 0:
            return ()
        return limits_for(self.train_counts(cache), unique_pairs, self.describe())

    def describe(self) -> str:
        return f"the {len(self.train)} train shard(s) of {self.record.get('source', '?')}"


def _parts(cfg: Config) -> list[tuple[str, list[str]]]:
    """(pattern, its shards) for each '::' part of data.shards.urls; a part matching nothing is refused."""
    out = []
    for part in cfg.data.shards.urls.split("::"):
        urls = expand_urls(part)
        local_missing = [
            u for u in urls if not u.startswith(("pipe:", "http://", "https://")) and not Path(u).is_file()
        ]
        if not urls or local_missing:
            raise ConfigError(
                f"data.shards.urls: {part!r} names no shard file"
                + (f" ({', '.join(local_missing[:3])} not found)" if local_missing else "")
                + ": give a brace pattern, a glob, a pipe: command or an http(s) URL of existing .tar shards"
            )
        out.append((part, urls))
    return out


def _in_place(cfg: Config) -> TrainData:
    sh = cfg.data.shards
    parts = _parts(cfg)
    factors = [float(f) for f in sh.upsampling.split("::")] if sh.upsampling else [1.0] * len(parts)
    urls = [u for _, us in parts for u in us]
    weights = [f for f, (_, us) in zip(factors, parts) for _ in us]
    if len(set(urls)) != len(urls):
        dup = next(u for u in urls if urls.count(u) > 1)
        raise ConfigError(f"data.shards.urls: {dup} is named twice: to read it more often, use data.shards.upsampling")
    if sh.val_urls:
        val = [u for part in sh.val_urls.split("::") for u in expand_urls(part)]
        if not val:
            raise ConfigError(f"data.shards.val_urls: {sh.val_urls!r} names no shard file")
        overlap = sorted(set(val) & set(urls))
        if overlap:
            raise ConfigError(
                f"data.shards.val_urls: {overlap[0]} is a train shard too: the splits must not share shards"
            )
    elif sh.val_shard_fraction > 0:
        n_val = max(1, round(sh.val_shard_fraction * len(urls)))
        if n_val >= len(urls):
            raise ConfigError(
                f"data.shards.val_shard_fraction={sh.val_shard_fraction} would hold out all {len(urls)} shard(s): "
                "lower it, or give data.shards.val_urls"
            )
        held = set(np.random.default_rng([cfg.seed, VAL_HOLDOUT_SEED]).permutation(len(urls))[:n_val].tolist())
        val = [u for i, u in enumerate(urls) if i in held]
        weights = [w for i, w in enumerate(weights) if i not in held]
        urls = [u for i, u in enumerate(urls) if i not in held]
    else:
        val = []
    uniform = all(w == 1.0 for w in weights)
    record = {"source": sh.urls, "in_place": True, "train_shards": len(urls), "val_shards": len(val)}
    if not uniform:
        record["upsampling"] = sh.upsampling
    return TrainData(tuple(urls), tuple(val), True, () if uniform else tuple(weights), None, None, sh.retries, record)


def _own_shards(cfg: Config) -> TrainData:
    out_dir = Path(cfg.data.out_dir)
    manifest = load_manifest(out_dir)
    check_manifest(cfg, manifest)
    splits = manifest["splits"]

    def paths(split: str) -> tuple[str, ...]:
        return tuple(str(out_dir / sh["name"]) for sh in splits.get(split, {}).get("shards", []))

    counts = tuple(sh["count"] for sh in splits["train"]["shards"])
    record = {"source": str(out_dir), "manifest_sha256": sha256_file(out_dir / MANIFEST)}
    classes = manifest["source"].get("classes") or None
    return TrainData(paths("train"), paths("val"), False, (), classes, counts, 0, record)


def training_data(cfg: Config) -> TrainData:
    """The training data `cfg` names, checked: maskvlp's shards (the manifest must match the params) or
    existing shards in place (every local file must exist). Raises FileNotFoundError / ShardError /
    ConfigError with what to do."""
    if cfg.data.shards.in_place:  # (params refuse it without data.source: shards)
        return _in_place(cfg)
    return _own_shards(cfg)


__all__ = ["TrainData", "training_data", "ShardError"]
