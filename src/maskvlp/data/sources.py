"""Where image-caption pairs come from: generated scenes, emoji, a folder + table, existing shards.

A source lists light, picklable `items()` in the main process; `load(item)` runs in a worker and
returns a :class:`RawSample` (image as a PIL image or undecoded bytes) or a :class:`Skip` naming
why the input cannot be used. Decoding and checking the bytes happens later, in `clean.py`.
`check_section` refuses bad `data.*` values before any work starts (params.validate asks it).
Over 450 lines on purpose: six short source classes that share RawSample/Skip and the table reader.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from braceexpand import braceexpand
from PIL import Image

from maskvlp.config import Config, ConfigError, DataConfig, check, choice
from maskvlp.data import emoji, synthetic
from maskvlp.data.shardio import Skip, is_remote, tar_samples

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class RawSample:
    key: str
    image: Image.Image | bytes
    caption: str | bytes | None
    meta: dict[str, Any] = field(default_factory=dict)


def sanitize_key(text: str) -> str:
    """A webdataset key: no dots (they start the extension) and no path separators."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "sample"


class SyntheticSource:
    def __init__(self, cfg: Config):
        self.seed, self.size, self.s = cfg.seed, cfg.data.image_size, cfg.data.synthetic

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthetic", "num_samples": self.s.num_samples, "classes": synthetic.CLASS_NAMES}

    def __len__(self) -> int:
        return self.s.num_samples

    def items(self) -> Iterator[int]:
        return iter(range(self.s.num_samples))

    def load(self, index: int) -> RawSample:
        s = self.s
        image, caption, meta = synthetic.generate_scene(
            self.seed, index, self.size, s.min_objects, s.max_objects, s.textured_fraction, s.context, s.objects
        )
        return RawSample(f"syn{index:07d}", image, caption, meta)


class EmojiSource:
    def __init__(self, cfg: Config):
        self.seed, self.size, self.e = cfg.seed, cfg.data.image_size, cfg.data.emoji
        table = emoji.list_emoji(self.e.font_path)  # raises EmojiFontMissing with an install hint
        self.table = table[: self.e.max_emoji] if self.e.max_emoji else table

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "emoji",
            "font": self.e.font_path,
            "num_classes": len(self.table),
            "classes": [name for _, name in self.table],
        }

    def _num_scenes(self) -> int:
        return int(round(self.e.scene_fraction * len(self.table) * self.e.samples_per_emoji))

    def __len__(self) -> int:
        return len(self.table) * self.e.samples_per_emoji + self._num_scenes()

    def items(self) -> Iterator[tuple[tuple[int, ...], int]]:
        codepoints = [cp for cp, _ in self.table]
        for cp in codepoints:
            for j in range(self.e.samples_per_emoji):
                yield (cp,), j
        n_scenes = self._num_scenes()
        rng = np.random.default_rng([self.seed, 0xE30])
        for j in range(n_scenes):
            a, b = rng.choice(len(codepoints), size=2, replace=False)
            yield (codepoints[a], codepoints[b]), j

    def load(self, item: tuple[tuple[int, ...], int]) -> RawSample:
        cps, variant = item
        image, caption, meta = emoji.render_sample(self.e.font_path, cps, self.seed, variant, self.size)
        if len(cps) == 1:
            meta["label"] = [cp for cp, _ in self.table].index(cps[0])
        key = "emo" + "-".join(f"{cp:05x}" for cp in cps) + f"-{variant}"
        return RawSample(key, image, caption, meta)


# A line that starts like a row of an image table ("cat.jpg," or "cat.png<TAB>"): inside a quoted
# field it means a broken quote swallowed the rows after it.
_ROW_START = re.compile(r"^[^,\t\n]*\.(?:jpe?g|png|webp|gif|bmp|tiff?)\s*[,\t]", re.IGNORECASE)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]] | Skip]  # (line number, {column: value}) or malformed_row


def _read_delimited(path: Path, delimiter: str) -> Table:
    """CSV (RFC 4180 quoting) or TSV (no quoting) read record by record with line numbers, so that a
    row with the wrong number of fields or a broken quote is reported as `malformed_row` at its line
    instead of being glued into the next row's path (pandas does that silently)."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows: list[tuple[int, dict[str, Any]] | Skip] = []
    # surrogateescape keeps a row with bad bytes readable; clean.py then skips that caption
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            return Table([], [])
        header = [h.strip() for h in header]
        last_line = reader.line_num
        for fields in reader:
            first, last_line = last_line + 1, reader.line_num
            where = f"line {first}" if first == last_line else f"lines {first}-{last_line}"
            if not fields or fields == [""]:
                continue  # blank line
            problem = ""
            if len(fields) != len(header):
                problem = f"{len(fields)} field(s), the header has {len(header)}"
            elif any(_ROW_START.match(part) for field in fields for part in field.splitlines()[1:]):
                problem = "a quote left open swallows the rows after it"
            if problem:
                rows.append(Skip("malformed_row", f"{path.name}:{first}", f"{where}: {problem}"))
            else:
                rows.append((first, dict(zip(header, fields))))
    return Table(header, rows)


def _read_jsonl(path: Path) -> Table:
    rows: list[tuple[int, dict[str, Any]] | Skip] = []
    columns: dict[str, None] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                problem = "" if isinstance(record, dict) else "not a JSON object"
            except ValueError as exc:
                problem = f"not JSON ({exc})"
            if problem:
                rows.append(Skip("malformed_row", f"{path.name}:{number}", f"line {number}: {problem}"))
                continue
            columns.update(dict.fromkeys(record))
            rows.append((number, record))
    return Table(list(columns), rows)


def read_table(path: Path) -> Table:
    """A captions table: .csv, .tsv, .jsonl/.json (one object per line) or .parquet."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_delimited(path, ",")
    if suffix == ".tsv":
        return _read_delimited(path, "\t")
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        return Table([str(c) for c in df.columns], [(i + 1, r) for i, r in enumerate(df.to_dict("records"))])
    raise ConfigError(f"data.folder.table: '{path}' must end in .csv, .tsv, .jsonl or .parquet")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


class FolderSource:
    def __init__(self, cfg: Config):
        f = cfg.data.folder
        self.table_path = Path(f.table)
        if not self.table_path.is_file():
            raise ConfigError(f"data.folder.table: '{f.table}' not found")
        self.root = Path(f.images_dir) if f.images_dir else self.table_path.parent
        if not self.root.is_dir():
            raise ConfigError(f"data.folder.images_dir: '{self.root}' is not a directory")
        self.real_root = self.root.resolve()
        self.allow_outside = f.allow_outside
        table = read_table(self.table_path)
        for key in ("path_column", "caption_column", "label_column"):
            if (col := getattr(f, key)) and col not in table.columns:
                raise ConfigError(
                    f"data.folder.{key}: column '{col}' not in {self.table_path} "
                    f"(columns: {', '.join(map(str, table.columns))})"
                )
        self.rows: list[tuple[str, str, Any] | Skip] = [
            row
            if isinstance(row, Skip)
            else (
                _text(row[1].get(f.path_column)),
                _text(row[1].get(f.caption_column)),
                row[1].get(f.label_column) if f.label_column else None,
            )
            for row in table.rows
        ]

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "table": str(self.table_path), "images_dir": str(self.root), "rows": len(self.rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def items(self) -> Iterator[tuple[str, str, Any] | Skip]:
        return iter(self.rows)

    def load(self, item: tuple[str, str, Any] | Skip) -> RawSample | Skip:
        if isinstance(item, Skip):
            return item
        rel, caption, label = item
        key = sanitize_key(str(Path(rel).with_suffix("")))
        path = self.root / rel  # an absolute rel replaces the root
        if rel and not self.allow_outside:
            # the path as the file system follows it (.., symlinks) must stay inside images_dir
            try:
                real = path.resolve()
            except (OSError, RuntimeError) as exc:  # a symlink loop
                return Skip("missing_file", key, f"{path}: {exc}")
            if not real.is_relative_to(self.real_root):
                return Skip(
                    "outside_folder",
                    key,
                    f"{rel} leads to {real}, outside data.folder.images_dir {self.real_root} "
                    "(set data.folder.allow_outside=true to read it)",
                )
        if not rel or not path.is_file():
            return Skip("missing_file", key, str(path))
        meta = {"source_path": rel}
        if label is not None:
            meta["label_name"] = str(label)
        return RawSample(key, path.read_bytes(), caption, meta)


def expand_urls(pattern: str) -> list[str]:
    """Shard paths from a brace pattern ("a-{000..009}.tar"), a glob, or several joined by '::' (pipe:
    commands and http(s) URLs are brace-expanded, never globbed)."""
    urls: list[str] = []
    for part in pattern.split("::"):
        for expanded in braceexpand(part):
            remote = expanded.startswith(("pipe:", "http://", "https://"))  # no glob in commands and URLs
            matches = sorted(glob.glob(expanded)) if not remote and any(ch in expanded for ch in "*?[") else [expanded]
            urls.extend(matches)
    return urls


class ShardSource:
    """Existing webdataset / img2dataset shards ({key}.jpg|png|webp + {key}.txt [+ {key}.json]), local
    files, pipe: commands or http(s) URLs, read through data/shardio.tar_samples (grouped as webdataset
    groups them): a truncated or unreadable tar, a sample without image and one without caption are
    told apart and counted.
    """

    def __init__(self, cfg: Config):
        self.urls = expand_urls(cfg.data.shards.urls)
        self.retries = cfg.data.shards.retries
        missing = [u for u in self.urls if not is_remote(u) and not Path(u).is_file()]
        if not self.urls or missing:
            raise ConfigError(f"data.shards.urls: no shard file at {missing[:3] or cfg.data.shards.urls!r}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "shards", "urls": self.urls}

    def items(self) -> Iterator[RawSample | Skip]:
        for url in self.urls:
            yield from self._read(url)

    def load(self, item: RawSample | Skip) -> RawSample | Skip:
        return item

    def _read(self, url: str) -> Iterator[RawSample | Skip]:
        for entry in tar_samples(url, self.retries):
            if isinstance(entry, Skip):
                yield entry
                continue
            key = entry["__key__"]
            image_ext = next((e for e in IMAGE_EXTS if e in entry), None)
            missing = "image" if image_ext is None else "caption" if "txt" not in entry else ""
            if missing:
                yield Skip(f"missing_{missing}", key, url)
                continue
            try:
                meta = json.loads(entry.get("json", b"{}"))
            except ValueError:
                meta = {}
            meta = meta if isinstance(meta, dict) else {"json": meta}
            yield RawSample(sanitize_key(key), entry[image_ext], entry["txt"], meta)


class OpenClipartMissing(FileNotFoundError):
    """The package's drawings are not there; the message says how to install them."""


class OpenClipartSource:
    """Debian's OpenClipart drawings (data/openclipart.py): rendered at data.image_size on the
    configured background, captioned from their metadata, labelled by category folder. The train/val
    split is stratified by category (seeded), so every category has val drawings to be scored on."""

    def __init__(self, cfg: Config):
        import zlib

        from maskvlp.data import openclipart as oc

        self.o, self.size, self.oc = cfg.data.openclipart, cfg.data.image_size, oc
        root = Path(self.o.root)
        if not root.is_dir():
            raise OpenClipartMissing(
                f"OpenClipart not found at {root}: install it with `apt-get install {oc.PACKAGE}` "
                "(or set data.openclipart.root)"
            )
        self.root = root
        by_cat: dict[str, list[Path]] = {}
        self.excluded: list[Skip] = []
        for path in sorted(root.rglob("*.svg")):
            cat = oc.category(path, root, self.o.level)
            if cat is None:
                self.excluded.append(Skip("duplicates_or_uncategorised", self._key(path)))
            else:
                by_cat.setdefault(cat, []).append(path)
        kept = {c: ps for c, ps in by_cat.items() if len(ps) >= self.o.min_per_class}
        for c, ps in by_cat.items():
            if c not in kept:
                self.excluded += [Skip("rare_category", self._key(p), c) for p in ps]
        if not kept:
            raise ValueError(
                f"no OpenClipart category under {root} has data.openclipart.min_per_class="
                f"{self.o.min_per_class} drawings; lower it"
            )
        self.classes = sorted(kept)
        self.names = oc.class_names(self.classes)
        # titles shared by many drawings name a collection (oc.collection_titles): counted over every
        # drawing of the kept categories (before max_per_class), so the set does not depend on the subset
        titles = []
        if self.o.collection_title_min:
            for ps in kept.values():
                for path in ps:
                    with contextlib.suppress(OSError):
                        meta = oc.parse_metadata(path.read_bytes())
                        if isinstance(meta, oc.Meta):
                            titles.append(meta.title)
        self.collections = oc.collection_titles(titles, self.o.collection_title_min)
        self.collection_drawings = sum(title in self.collections for title in titles)
        self.plan: list[tuple[Path, str, str]] = []
        for cat in self.classes:
            rng = np.random.default_rng([cfg.seed, zlib.crc32(cat.encode())])
            paths = [kept[cat][i] for i in rng.permutation(len(kept[cat]))]
            if self.o.max_per_class:
                paths = paths[: self.o.max_per_class]
            n_val = max(1, round(cfg.data.val_fraction * len(paths))) if cfg.data.val_fraction > 0 else 0
            self.plan += [(p, cat, "val" if i < n_val else "train") for i, p in enumerate(paths)]

    def _key(self, path: Path) -> str:
        return "oc-" + sanitize_key(str(path.relative_to(self.root).with_suffix("")))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "openclipart",
            "root": str(self.root),
            "level": self.o.level,
            "template": self.o.template,
            # drawings whose title names their collection are titled from their file name instead
            "collection_title_min": self.o.collection_title_min,
            "collection_titles": len(self.collections),
            "collection_titled_drawings": self.collection_drawings,
            "num_classes": len(self.classes),
            "categories": self.classes,
            "classes": [self.names[c] for c in self.classes],
        }

    def __len__(self) -> int:
        return len(self.plan) + len(self.excluded)

    def items(self) -> Iterator[tuple[Path, str, str] | Skip]:
        yield from self.excluded
        yield from self.plan

    def load(self, item: tuple[Path, str, str] | Skip) -> RawSample | Skip:
        if isinstance(item, Skip):
            return item
        path, cat, split = item
        key, oc = self._key(path), self.oc
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Skip("unreadable_file", key, str(exc))
        meta = oc.parse_metadata(data)
        if isinstance(meta, oc.SkipReason):
            return Skip(meta.reason, key, meta.detail)
        image = oc.render(data, self.size, tuple(self.o.background))
        if isinstance(image, oc.SkipReason):
            return Skip(image.reason, key, image.detail)
        name = self.names[cat]
        info = {"label": self.classes.index(cat), "label_name": name, "category": cat, "split": split}
        if meta.title in self.collections and (named := oc.name_title(path)):
            info["collection"] = meta.title  # the title it carried; the caption's {title} is its file name's
            meta = oc.Meta(named, meta.description, meta.keywords)
        return RawSample(key, image, oc.caption(meta, name, self.o.template), info | {"title": meta.title})


class MixSource:
    """Several sources in one shard set (`data.mix.sources`; the `real` preset: OpenClipart + emoji).

    A source in `data.mix.val_sources` keeps its own split (OpenClipart's stratified one; others the
    hash of the key) and its class labels, which make the val split's classes. Every sample of the
    other sources goes to the train split, its label kept as `source_label_name` only, so a probe
    fitted on the train split never mixes one source's label indices with another's."""

    def __init__(self, cfg: Config):
        self.names = list(cfg.data.mix.sources)
        self.val = set(cfg.data.mix.val_sources)
        self.parts = [SOURCES[name](cfg) for name in self.names]  # each refuses a missing package itself

    def describe(self) -> dict[str, Any]:
        parts = [p.describe() for p in self.parts]
        classes: list[str] = []
        for name, part in zip(self.names, parts):
            if name in self.val:
                classes += [c for c in part.get("classes") or [] if c not in classes]
        return {"kind": "mix", "val_sources": sorted(self.val), "sources": parts, "classes": classes}

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts if hasattr(p, "__len__"))  # existing shards: not known ahead

    def items(self) -> Iterator[tuple[int, Any]]:
        """The parts interleaved in proportion to their sizes, so every shard (and so every stretch of
        the training stream's shuffle buffer) holds each source at its share; parts of unknown size
        (existing shards) follow the others."""
        import heapq

        sized = [i for i, p in enumerate(self.parts) if hasattr(p, "__len__") and len(p)]
        streams = {i: iter(self.parts[i].items()) for i in sized}
        heap = [(0.5 / len(self.parts[i]), i, 0) for i in sized]
        heapq.heapify(heap)
        while heap:
            _, i, k = heapq.heappop(heap)
            item = next(streams[i], None)
            if item is None:
                continue
            yield i, item
            heapq.heappush(heap, ((k + 1.5) / len(self.parts[i]), i, k + 1))
        for i, part in enumerate(self.parts):
            if i not in sized:
                for item in part.items():
                    yield i, item

    def load(self, item: tuple[int, Any]) -> RawSample | Skip:
        i, inner = item
        raw = self.parts[i].load(inner)
        if isinstance(raw, Skip):
            return raw
        raw.meta["source"] = self.names[i]
        if self.names[i] not in self.val:
            raw.meta.pop("label", None)
            if (name := raw.meta.pop("label_name", None)) is not None:
                raw.meta["source_label_name"] = name
            raw.meta["split"] = "train"
        return raw


# data.source -> its class (check_section takes the choices from here)
SOURCES = {
    "synthetic": SyntheticSource,
    "emoji": EmojiSource,
    "openclipart": OpenClipartSource,
    "mix": MixSource,
    "folder": FolderSource,
    "shards": ShardSource,
}


def make_source(cfg: Config):
    return SOURCES[cfg.data.source](cfg)


def _positive(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def _check_shards(d: DataConfig) -> None:
    """`data.shards`' in-place keys (data/trainset.py reads them)."""
    sh = d.shards
    msg = f"needs data.source=shards (it is {d.source!r})"
    check(not sh.in_place or d.source == "shards", "data.shards.in_place", msg, sh.in_place)
    f = sh.val_shard_fraction
    check(0 <= f < 1, "data.shards.val_shard_fraction", "must be in [0, 1)", f)
    msg = f"and data.shards.val_shard_fraction={f} both name a val split: choose one"
    check(not (sh.val_urls and f > 0), "data.shards.val_urls", msg, sh.val_urls)
    n = len(sh.urls.split("::"))
    ok = not sh.upsampling or (len(parts := sh.upsampling.split("::")) == n and all(map(_positive, parts)))
    msg = f"must be '' or one positive number per '::' part of data.shards.urls ({n}), e.g. {'::'.join(['1'] * n)!r}"
    check(ok, "data.shards.upsampling", msg, sh.upsampling)
    check(sh.retries >= 0, "data.shards.retries", "must be >= 0", sh.retries)


def check_section(d: DataConfig) -> None:
    """Refuse out-of-range `data.*` values of the sources (params.validate asks this, then
    clean.check_section for the encoding keys, before any work starts)."""
    choice("data.source", d.source, tuple(SOURCES))
    check(d.image_size >= 8, "data.image_size", "must be >= 8 pixels", d.image_size)
    check(0 <= d.val_fraction < 1, "data.val_fraction", "must be in [0, 1)", d.val_fraction)
    check(d.max_samples_per_shard >= 1, "data.max_samples_per_shard", "must be >= 1", d.max_samples_per_shard)
    check(d.num_workers >= 0, "data.num_workers", "must be >= 0 (0 = one per core)", d.num_workers)
    check(d.loader_workers >= 0, "data.loader_workers", "must be >= 0", d.loader_workers)
    check(d.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1", d.shuffle_buffer)
    s = d.synthetic
    check(s.num_samples >= 1, "data.synthetic.num_samples", "must be >= 1", s.num_samples)
    check(1 <= s.min_objects <= 4, "data.synthetic.min_objects", "must be in [1, 4]", s.min_objects)
    msg = f"must be in [min_objects={s.min_objects}, 4]"
    check(s.min_objects <= s.max_objects <= 4, "data.synthetic.max_objects", msg, s.max_objects)
    check(0 <= s.context <= 1, "data.synthetic.context", "must be in [0, 1]", s.context)
    check(0 <= s.textured_fraction <= 1, "data.synthetic.textured_fraction", "must be in [0, 1]", s.textured_fraction)
    choice("data.synthetic.objects", s.objects, synthetic.OBJECT_STYLES)
    oc = d.openclipart
    choice("data.openclipart.level", oc.level, ("leaf", "top"))
    check(oc.min_per_class >= 1, "data.openclipart.min_per_class", "must be >= 1", oc.min_per_class)
    check(oc.max_per_class >= 0, "data.openclipart.max_per_class", "must be >= 0 (0 = all)", oc.max_per_class)
    n = oc.collection_title_min
    check(n == 0 or n >= 2, "data.openclipart.collection_title_min", "must be 0 (off) or >= 2", n)
    rgb = len(oc.background) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in oc.background)
    check(rgb, "data.openclipart.background", "must be three integers 0..255 (RGB)", oc.background)
    try:
        oc.template.format(title="", description="", keywords="", category="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"data.openclipart.template: {oc.template!r} has an unknown field {exc}; "
            "use {title}, {description}, {keywords}, {category}"
        ) from exc
    mx = d.mix
    mixable = tuple(name for name in SOURCES if name != "mix")
    ok = bool(mx.sources) and all(name in mixable for name in mx.sources) and len(set(mx.sources)) == len(mx.sources)
    check(ok, "data.mix.sources", f"must list distinct sources among {', '.join(mixable)}", mx.sources)
    msg = f"must be among data.mix.sources={mx.sources} (the others go to the train split only)"
    check(all(name in mx.sources for name in mx.val_sources), "data.mix.val_sources", msg, mx.val_sources)
    e = d.emoji
    check(e.samples_per_emoji >= 1, "data.emoji.samples_per_emoji", "must be >= 1", e.samples_per_emoji)
    check(e.max_emoji >= 0, "data.emoji.max_emoji", "must be >= 0 (0 = all)", e.max_emoji)
    check(0 <= e.scene_fraction <= 4, "data.emoji.scene_fraction", "must be in [0, 4]", e.scene_fraction)
    uses = d.mix.sources if d.source == "mix" else [d.source]
    if "folder" in uses:
        check(bool(d.folder.table), "data.folder.table", "must name a CSV/TSV/JSONL/Parquet file", d.folder.table)
    if "shards" in uses:
        check(bool(d.shards.urls), "data.shards.urls", "must name existing shards (brace pattern or glob)", "")
    _check_shards(d)
    a = d.augment
    lo, hi = a.crop_scale_min, a.crop_scale_max
    check(0 < lo <= hi <= 1, "data.augment.crop_scale_min/max", "must satisfy 0 < min <= max <= 1", (lo, hi))
    lo, hi = a.crop_ratio_min, a.crop_ratio_max
    check(0 < lo <= hi, "data.augment.crop_ratio_min/max", "must satisfy 0 < min <= max", (lo, hi))
    check(len(a.mean) == 3 and len(a.std) == 3, "data.augment.mean/std", "must have 3 values each", (a.mean, a.std))
    check(all(v > 0 for v in a.std), "data.augment.std", "must be positive", a.std)
