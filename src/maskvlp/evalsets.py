"""Evaluation datasets: a registry of named sets plus any captions table or shard set given by path.

`maskvlp evaluate --dataset SPEC` and `eval.datasets` take:
- a registered name: `val` (the shard stage's val split; linear probe on its train split),
  `objects` (generated single-object scenes, 32 classes), `emoji` (every emoji of Debian's
  fonts-noto-color-emoji, rendered apart from training: zero-shot and relation composition) or `fashion-mnist` (Debian's
  dataset-fashion-mnist: zero-shot on its test split with its own templates, probe on its train split);
- a captions table (.csv / .tsv / .jsonl / .parquet, read as the folder source reads it, with
  `data.folder.path_column`, `caption_column`, `label_column`; images relative to the table);
- a shard folder with a maskvlp manifest (its val split, else train; the probe uses its train split),
  or webdataset shards by brace pattern or glob (`other/shards-{000..009}.tar`, `other/*.tar`);
- a CLIP_benchmark webdataset root or one of its split folders (data/clipbench.py: classnames.txt,
  zeroshot_classification_templates.txt, test/ and train/ of .tar shards with nshards.txt), named
  after the root's folder: zero-shot with its class names and templates and the probe on train/,
  or retrieval with every line of a sample's .txt as its own caption.
Unusable images are skipped and counted, as the shard stage counts them. Adding a named set: write
a builder `(cfg, spec) -> EvalSet` and call `register_dataset(name, builder)`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskvlp.config import Config, EvalConfig, check

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
Batches = Iterable[dict[str, Any]]  # {"images": uint8 (B,3,S,S), "captions", "metas", "keys"}


class EvalSetError(ValueError):
    """A dataset spec names nothing usable; the message lists what would be."""


@dataclass
class EvalSet:
    name: str  # the key segment in metric names: zeroshot/<name>/top1
    batches: Callable[[int, int], Batches]  # (image size, batch size) -> batches, each sample once
    classes: list[str] | None = None  # zero-shot class names, when samples carry labels
    train_batches: Callable[[int, int], Batches] | None = None  # a train split for the linear probe
    retrieval: bool = True
    skipped: Counter[str] = field(default_factory=Counter)  # unusable samples, by reason (filled while read)
    templates: tuple[str, ...] | None = None  # zero-shot prompt templates; None = evaluate.TEMPLATES
    notes: list[str] = field(default_factory=list)  # said with the set's results (where its names came from)
    multi_caption: bool = False  # samples may hold several captions: report retrieval/<name>/captions too


DATASETS: dict[str, Callable[[Config, str], EvalSet]] = {}


def register_dataset(name: str, builder: Callable[[Config, str], EvalSet]) -> None:
    DATASETS[name] = builder


def dataset_name(spec: str) -> str:
    """A short, path-free name for a spec: `captions` for dir/captions.csv, `shards` for other/shards/."""
    if spec in DATASETS:
        return spec
    path = Path(spec.split("::")[0])
    stem = path.stem if path.suffix else path.name
    stem = re.sub(r"[{*?\[].*$", "", stem).rstrip("-_.") or path.parent.name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "dataset"


def resolve(cfg: Config, spec: str) -> EvalSet:
    """The evaluation set a spec names (see the module docstring)."""
    from maskvlp.data import clipbench
    from maskvlp.data.shards import MANIFEST
    from maskvlp.data.sources import expand_urls

    if spec in DATASETS:
        return DATASETS[spec](cfg, spec)
    path = Path(spec)
    if path.suffix.lower() in TABLE_SUFFIXES:
        if not path.is_file():
            raise EvalSetError(f"--dataset {spec}: no such captions table")
        return table_set(cfg, path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return manifest_set(cfg, path, dataset_name(spec))
    found = clipbench.find_root(path)
    if found:
        return clipbench_set(*found)
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
    else:
        urls = [u for u in expand_urls(spec) if Path(u).is_file()]
    if not urls:
        raise EvalSetError(
            f"--dataset {spec!r}: not a registered set ({', '.join(DATASETS)}), a captions table "
            f"({', '.join(TABLE_SUFFIXES)}), a shard folder, a CLIP_benchmark root or a brace pattern / glob "
            "of .tar shards"
        )
    return shard_set(urls, dataset_name(spec))


# ------------------------------------------------------------------------------- shard sets
def shard_set(urls: list[str], name: str, classes: list[str] | None = None, train_urls: list[str] | None = None):
    from maskvlp.data.loader import EvalStream, eval_collate, sample_meta, slot_samples
    from maskvlp.data.shardio import tar_samples

    skipped: Counter[str] = Counter()
    if classes is None:  # labels named in the samples' json
        samples = slot_samples(urls, 0, 1, epoch_seed=None, reader=tar_samples)
        metas = (s.get("json", b"{}") for s in samples if isinstance(s, dict))
        names = {m["label_name"] for m in map(sample_meta, metas) if "label_name" in m}
        classes = sorted(names) or None

    def stream(paths: list[str], size: int, batch: int, counter: Counter[str]) -> Batches:
        return torch.utils.data.DataLoader(
            EvalStream(paths, size, skipped=counter), batch_size=batch, collate_fn=eval_collate
        )

    train = (lambda size, batch: stream(train_urls, size, batch, Counter())) if train_urls else None
    return EvalSet(name, lambda size, batch: stream(urls, size, batch, skipped), classes, train, skipped=skipped)


def manifest_set(cfg: Config, out_dir: str | Path, name: str) -> EvalSet:
    """A maskvlp shard folder: its val split (train when it has none); the probe trains on train."""
    from maskvlp.data.shards import load_manifest, shard_paths

    val, train = shard_paths(out_dir, "val"), shard_paths(out_dir, "train")
    classes = load_manifest(out_dir)["source"].get("classes") or None
    return shard_set(val, name, classes, train_urls=train) if val else shard_set(train, name, classes)


def val_set(cfg: Config, spec: str) -> EvalSet:
    """The training data's val split: the shard stage's (its train split fits the linear probe), or in
    place (data/trainset.py) data.shards.val_urls or the held-out shards (the probe fits on the others)."""
    if cfg.data.shards.in_place:  # (params refuse it without data.source: shards)
        from maskvlp.data.trainset import training_data

        data = training_data(cfg)
        if not data.val:
            raise EvalSetError(
                f"no val split in {cfg.data.shards.urls}: set data.shards.val_urls or data.shards.val_shard_fraction > 0"
            )
        return shard_set(list(data.val), "val", train_urls=list(data.train))
    from maskvlp.data.shards import shard_paths

    if not shard_paths(cfg.data.out_dir, "val"):
        raise EvalSetError(f"no val split in {cfg.data.out_dir}: set data.val_fraction > 0 and re-run the shard stage")
    return manifest_set(cfg, cfg.data.out_dir, "val")


# ------------------------------------------------------------------------------- CLIP_benchmark
def clipbench_set(root: Path, split: str | None = None) -> EvalSet:
    """A CLIP_benchmark webdataset root (data/clipbench.py), its test split or `split`. Unusable
    samples are counted by reason (those of the probe's train split as `train/<reason>`)."""
    from maskvlp.data import clipbench

    try:
        lay = clipbench.layout(root, split)
    except clipbench.ClipBenchError as exc:
        raise EvalSetError(str(exc)) from exc
    skipped: Counter[str] = Counter()

    def split_of(urls: list[str], prefix: str) -> Callable[[int, int], Batches]:
        return _batches_of(lambda size: clipbench.read_samples(urls, lay, size, skipped, prefix))

    where = f"{lay.name}: CLIP_benchmark {lay.kind} set {lay.root}, split {lay.split}/ ({len(lay.urls)} shards)"
    if lay.kind == "retrieval":
        return EvalSet(lay.name, split_of(lay.urls, ""), notes=[where], skipped=skipped, multi_caption=True)
    said = f"{len(lay.templates)} templates from {clipbench.TEMPLATES}" if lay.templates else "the default templates"
    notes = [f"{where}: {len(lay.classes)} classes from {clipbench.CLASSNAMES}, {said}"]
    train = split_of(lay.train_urls, "train/") if lay.train_urls else None
    return EvalSet(lay.name, split_of(lay.urls, ""), lay.classes, train, False, skipped, lay.templates, notes)


# ------------------------------------------------------------------------------- objects
def objects_set(cfg: Config, spec: str) -> EvalSet:
    """Single-object synthetic scenes, `eval.objects_per_class` per class, generated in memory (seeded
    apart from the training data): zero-shot without the ambiguity of multi-object scenes. Its train
    split (as many scenes, seeded apart again) fits the linear probe on a set whose label is visible."""
    from maskvlp.data.synthetic import CLASS_NAMES

    def split(offset: int):
        per_class, syn = cfg.eval.objects_per_class, cfg.data.synthetic
        return lambda size, batch_size: _objects(
            cfg.seed + offset, per_class, syn.context, size, batch_size, syn.objects
        )

    return EvalSet("objects", split(7_000_003), list(CLASS_NAMES), split(9_000_011), retrieval=False)


def _objects(
    seed: int, per_class: int, context: float, size: int, batch_size: int, objects: str = "flat"
) -> Iterator[dict[str, Any]]:
    from maskvlp.data import synthetic
    from maskvlp.data.transforms import to_uint8_tensor

    items, index = [], 0
    counts = dict.fromkeys(range(len(synthetic.CLASS_NAMES)), 0)
    while min(counts.values()) < per_class:
        image, caption, meta = synthetic.generate_scene(seed, index, size, 1, 1, context=context, objects=objects)
        index += 1
        if counts[meta["label"]] >= per_class:
            continue
        counts[meta["label"]] += 1
        items.append(_item(to_uint8_tensor(image), caption, f"obj{len(items)}", meta))
    yield from _batched(items, batch_size)


# ------------------------------------------------------------------------------- tables
def table_set(cfg: Config, table: Path) -> EvalSet:
    """A captions table with images on disk, cleaned as the shard stage cleans them (bad images and
    malformed rows skipped and counted)."""
    from dataclasses import replace

    from maskvlp.data.clean import clean_caption, decode_image, resize_center_crop, to_rgb
    from maskvlp.data.sources import FolderSource, Skip
    from maskvlp.data.transforms import to_uint8_tensor

    folder = replace(cfg.data.folder, table=str(table), images_dir="")
    source = FolderSource(replace(cfg, data=replace(cfg.data, folder=folder)))
    skipped: Counter[str] = Counter()
    labels = sorted({str(r[2]) for r in source.rows if not isinstance(r, Skip) and r[2] not in (None, "")})

    def items(size: int) -> Iterator[dict[str, Any]]:
        skipped.clear()
        for item in source.items():
            raw = source.load(item)
            caption = clean_caption(raw.caption) if not isinstance(raw, Skip) else raw
            img = caption if isinstance(caption, Skip) else decode_image(raw.image, cfg.data.min_image_side)
            if isinstance(img, Skip):
                skipped[img.reason] += 1
                continue
            yield _item(to_uint8_tensor(resize_center_crop(to_rgb(img), size)), caption, raw.key, raw.meta)

    return EvalSet(dataset_name(str(table)), _batches_of(items), labels or None, skipped=skipped)


def _item(image: torch.Tensor, caption: str, key: str, meta: dict[str, Any]) -> dict[str, Any]:
    """One sample as the evaluation stream yields it (data/loader.py EvalStream)."""
    return {"image": image, "caption": caption, "key": key, "meta": meta}


def _batches_of(items: Callable[[int], Iterable[dict[str, Any]]]) -> Callable[[int, int], Batches]:
    """(image size, batch size) -> the batches of the samples `items(image size)` yields."""
    return lambda size, batch_size: _batched(items(size), batch_size)


def _batched(items: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    """Samples -> batches, collated as the shard sets' DataLoader collates them."""
    from maskvlp.data.loader import eval_collate

    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield eval_collate(chunk)
            chunk = []
    if chunk:
        yield eval_collate(chunk)


# ------------------------------------------------------------------------------- emoji
EMOJI_SEED_OFFSET = 5_000_011  # renderings seeded apart from the shard stage's (placement, size, background)


def emoji_set(cfg: Config, spec: str) -> EvalSet:
    """Every emoji of the font (`data.emoji.max_emoji`, 0 = all), rendered once more with a seed the
    shard stage never uses: zero-shot over the emoji names (a held-out rendering of glyphs seen in
    training, on a new placement and background), plus two-emoji scenes (`data.emoji.scene_fraction`
    of them) whose relation captions and their swapped negatives give composition/emoji/relation.
    The scenes carry no label, so zero-shot scores single glyphs only. No retrieval: captions repeat
    the class names; no probe: one rendering per class."""
    import numpy as np

    from maskvlp.data import emoji
    from maskvlp.data.transforms import to_uint8_tensor

    e = cfg.data.emoji
    try:
        table = emoji.list_emoji(e.font_path)
    except FileNotFoundError as exc:  # refuse a missing font before any model runs
        raise EvalSetError(str(exc)) from exc
    table = table[: e.max_emoji] if e.max_emoji else table
    seed = cfg.seed + EMOJI_SEED_OFFSET

    def items(size: int) -> Iterator[dict[str, Any]]:
        codepoints = [cp for cp, _ in table]
        for cp in codepoints:
            image, caption, meta = emoji.render_sample(e.font_path, (cp,), seed, 0, size)
            yield _item(to_uint8_tensor(image), caption, f"emoji-{cp:05x}", meta)
        rng = np.random.default_rng([seed, 0xE30])
        for j in range(int(round(e.scene_fraction * len(codepoints)))):
            a, b = rng.choice(len(codepoints), size=2, replace=False)
            image, caption, meta = emoji.render_sample(e.font_path, (codepoints[a], codepoints[b]), seed, j, size)
            meta.pop("label_name", None)  # a scene of two: not a zero-shot sample
            yield _item(to_uint8_tensor(image), caption, f"emoji-scene-{j:05d}", meta)

    return EvalSet("emoji", _batches_of(items), [name for _, name in table], retrieval=False)


# ------------------------------------------------------------------------------- Fashion-MNIST
def fashion_mnist_set(cfg: Config, spec: str) -> EvalSet:
    """Debian's Fashion-MNIST (data/fashion_mnist.py): its test split (the first
    `eval.fashion_mnist_samples`, 0 = all 10,000) for zero-shot with its class names and templates, its
    train split for the linear probe. 28x28 grayscale, resized to the model's image size as RGB."""
    from maskvlp.data import fashion_mnist as fm

    directory = cfg.eval.fashion_mnist_dir
    try:
        fm.load_split(directory, "test", limit=1)  # refuse a missing package before any model runs
    except FileNotFoundError as exc:
        raise EvalSetError(str(exc)) from exc

    def split(name: str, limit: int):
        def batches(size: int, batch_size: int) -> Iterator[dict[str, Any]]:
            images, labels = fm.load_split(directory, name, limit)
            for start in range(0, len(images), batch_size):
                chunk = torch.from_numpy(images[start : start + batch_size].copy())[:, None].float()
                resized = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
                rgb = resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
                ys = labels[start : start + batch_size].tolist()
                yield {
                    "images": rgb,
                    "captions": [f"a photo of a {fm.CLASSES[y]}." for y in ys],
                    "metas": [{"label": y, "label_name": fm.CLASSES[y]} for y in ys],
                    "keys": [f"fashion-{name}-{start + i:05d}" for i in range(len(ys))],
                }

        return batches

    test = split("test", cfg.eval.fashion_mnist_samples)
    return EvalSet("fashion-mnist", test, list(fm.CLASSES), split("train", 0), retrieval=False, templates=fm.TEMPLATES)


register_dataset("val", val_set)
register_dataset("objects", objects_set)
register_dataset("emoji", emoji_set)
register_dataset("fashion-mnist", fashion_mnist_set)


def check_section(ev: EvalConfig) -> None:
    """Refuse out-of-range `eval.*` values (params.validate asks this before any work starts)."""
    check(ev.batch_size >= 1, "eval.batch_size", "must be >= 1", ev.batch_size)
    ok = bool(ev.datasets) and all(d in DATASETS or "/" in d or Path(d).suffix for d in ev.datasets)
    msg = (
        f"must list registered sets ({', '.join(DATASETS)}) or paths of captions tables / shards / CLIP_benchmark roots"
    )
    check(ok, "eval.datasets", msg, ev.datasets)
    check(ev.objects_per_class >= 1, "eval.objects_per_class", "must be >= 1", ev.objects_per_class)
    check(ev.subset_samples >= 2, "eval.subset_samples", "must be >= 2", ev.subset_samples)
    check(ev.linear_probe_samples >= 2, "eval.linear_probe_samples", "must be >= 2", ev.linear_probe_samples)
    n = ev.fashion_mnist_samples
    check(n >= 0, "eval.fashion_mnist_samples", "must be >= 0 (0 = all)", n)
