"""CLIP_benchmark's webdataset layout (the clip-benchmark/wds_* sets): recognise a root, read its files.

A root holds `classnames.txt` (line i names class i), `zeroshot_classification_templates.txt` (one
template a line, `{c}` for the class name), optionally `dataset_type.txt` (`classification`,
`retrieval` or `multilabel`), and one folder per split (`test/`, often `train/`) of `0.tar 1.tar ...`
with `nshards.txt`. A classification sample is `{key}.webp|png|jpg|jpeg` + `{key}.cls` (the class
index as text); a retrieval sample is the image + `{key}.txt` (several captions, one a line).

`find_root` says whether a folder is such a root or one of its split folders; `layout` reads the
root's files (clear errors naming the file to add or fix); `read_samples` yields each usable sample
of a split once, as evalsets' sets yield them, and counts the others by reason. evalsets.py builds
the evaluation set on these.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskvlp.data.shardio import Skip, tar_samples
from maskvlp.data.sources import IMAGE_EXTS

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
DATASET_TYPE = "dataset_type.txt"
NSHARDS = "nshards.txt"
META_FILES = (CLASSNAMES, TEMPLATES, DATASET_TYPE)
EVAL_SPLIT, PROBE_SPLIT = "test", "train"  # CLIP_benchmark scores its test split; the probe fits on train
SNIFF_SAMPLES = 64  # samples read to tell classification from retrieval when the root does not say


class ClipBenchError(ValueError):
    """The folder looks like a CLIP_benchmark set but cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class Layout:
    root: Path
    name: str  # the root folder's name, as metric keys use it: zeroshot/<name>/top1
    kind: str  # "classification" | "retrieval"
    split: str  # the evaluated split
    urls: list[str]  # its shards
    train_urls: list[str] | None  # classification with a train split (and another split evaluated)
    classes: list[str] | None  # classification: from classnames.txt
    templates: tuple[str, ...] | None  # in "{}" form; None = no templates file


def find_root(path: str | Path) -> tuple[Path, str | None] | None:
    """(root, split) when `path` is a CLIP_benchmark root (split None: its test split) or one of its
    split folders, else None. A root has one of META_FILES or a split folder with nshards.txt (or a
    test/ of .tar shards); a split folder has nshards.txt or sits in a folder with META_FILES."""
    p = Path(path)
    if not p.is_dir():
        return None
    subdirs = [d for d in p.iterdir() if d.is_dir()]
    if any((p / f).is_file() for f in META_FILES) or any((d / NSHARDS).is_file() for d in subdirs):
        return p, None
    if (p / EVAL_SPLIT).is_dir() and any((p / EVAL_SPLIT).glob("*.tar")):
        return p, None
    if (p / NSHARDS).is_file() or (any(p.glob("*.tar")) and any((p.parent / f).is_file() for f in META_FILES)):
        return p.parent, p.name
    return None


def layout(root: str | Path, split: str | None = None) -> Layout:
    """The set at `root` (split None = test): its kind, shards, class names and templates."""
    root = Path(root)
    split = split or EVAL_SPLIT
    if not (root / split).is_dir():
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.tar")))
        raise ClipBenchError(
            f"{root}: no {split}/ split folder (CLIP_benchmark evaluates test/; found: {', '.join(found) or 'none'}); "
            "pass a split folder itself to evaluate another"
        )
    urls = split_urls(root / split)
    kind = dataset_kind(root, urls)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name).strip("_.") or "clip_benchmark"
    if kind == "retrieval":
        return Layout(root, name, kind, split, urls, None, None, None)
    if not (root / CLASSNAMES).is_file():
        raise ClipBenchError(
            f"{root}: its samples carry class indices (.cls) but {root / CLASSNAMES} is missing: add it, "
            "one class name a line (line i names class i)"
        )
    classes = _lines(root / CLASSNAMES)
    while classes and not classes[-1]:
        classes.pop()  # trailing blank lines name no class; blank lines inside keep their index
    if not classes:
        raise ClipBenchError(f"{root / CLASSNAMES} names no class: one class name a line (line i names class i)")
    templates = read_templates(root / TEMPLATES) if (root / TEMPLATES).is_file() else None
    train = root / PROBE_SPLIT
    train_urls = split_urls(train) if split != PROBE_SPLIT and train.is_dir() else None
    return Layout(root, name, kind, split, urls, train_urls, classes, templates)


def split_urls(folder: Path) -> list[str]:
    """The shards of a split folder: 0.tar .. (n-1).tar by its nshards.txt, else its .tar files in
    numeric order. A shard that nshards.txt counts but is absent is an error (a partial download)."""
    if (folder / NSHARDS).is_file():
        text = (folder / NSHARDS).read_text(errors="replace").strip()
        if not text.isdigit() or int(text) < 1:
            raise ClipBenchError(f"{folder / NSHARDS} holds {text!r}, not a number of shards >= 1")
        urls = [folder / f"{i}.tar" for i in range(int(text))]
        missing = [u.name for u in urls if not u.is_file()]
        if missing:
            raise ClipBenchError(
                f"{folder}: {NSHARDS} counts {len(urls)} shards but {len(missing)} are missing "
                f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): finish the download"
            )
        return [str(u) for u in urls]
    tars = sorted(folder.glob("*.tar"), key=lambda t: (not t.stem.isdigit(), int(t.stem) if t.stem.isdigit() else 0, t))
    if not tars:
        raise ClipBenchError(f"{folder}: no .tar shards (and no {NSHARDS})")
    return [str(t) for t in tars]


def dataset_kind(root: Path, urls: list[str]) -> str:
    """dataset_type.txt's word; without it, classification when classnames.txt is there, else what
    the first samples carry (.cls: classification, .txt: retrieval)."""
    if (root / DATASET_TYPE).is_file():
        kind = (root / DATASET_TYPE).read_text(errors="replace").strip().lower()
    elif (root / CLASSNAMES).is_file():
        kind = "classification"
    else:
        exts = Counter(k for s in _first_samples(urls, SNIFF_SAMPLES) for k in s if not k.startswith("__"))
        kind = "classification" if exts["cls"] else "multilabel" if exts["npy"] else "retrieval" if exts["txt"] else ""
        if not kind:
            raise ClipBenchError(
                f"{root}: cannot tell classification from retrieval (the first samples hold neither .cls nor .txt): "
                f"add {root / DATASET_TYPE} holding `classification` or `retrieval`"
            )
    if kind == "multilabel":
        raise ClipBenchError(
            f"{root}: multilabel sets (.npy labels) are not supported; only classification and retrieval"
        )
    if kind not in ("classification", "retrieval"):
        raise ClipBenchError(f"{root / DATASET_TYPE} says {kind!r}: expected `classification` or `retrieval`")
    return kind


def read_templates(path: Path) -> tuple[str, ...]:
    """The templates of a templates file, blank lines left out, `{c}` turned into evaltasks' `{}`."""
    out = []
    for n, line in enumerate(_lines(path), 1):
        if not line:
            continue
        template = line.replace("{c}", "{}")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise ClipBenchError(
                f"{path}, line {n}: {line!r} is not a template with {{c}} for the class ({exc})"
            ) from exc
        out.append(template)
    if not out:
        raise ClipBenchError(f"{path} holds no template: one a line, with {{c}} where the class name goes")
    return tuple(out)


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise ClipBenchError(f"{path} is not valid UTF-8 ({exc})") from exc


def _first_samples(urls: list[str], n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sample in _samples(urls, Counter()):
        out.append(sample)
        if len(out) >= n:
            break
    return out


def _samples(urls: list[str], skipped: Counter[str], prefix: str = "") -> Iterator[dict[str, Any]]:
    """The grouped tar members of each shard in order (data/shardio.py); a truncated or unreadable tar
    ends its shard and is counted (`truncated_tar`, `unreadable_tar`)."""
    for url in urls:
        for sample in tar_samples(url):
            if isinstance(sample, Skip):
                skipped[prefix + sample.reason] += 1
                continue
            yield sample


def caption_lines(raw: bytes | None) -> list[str] | Skip:
    """Each non-blank line of a retrieval sample's .txt as its own caption (whitespace collapsed as
    clean_caption collapses it), or a Skip: missing, not valid UTF-8, or no caption at all."""
    from maskvlp.data.clean import clean_caption

    whole = clean_caption(raw)
    if isinstance(whole, Skip):
        return whole
    return [c for c in map(clean_caption, raw.decode("utf-8").splitlines()) if isinstance(c, str)]


def class_index(raw: bytes | None, num_classes: int) -> int | Skip:
    """The class index of a .cls (decimal text), or a Skip saying why it cannot be used."""
    if raw is None:
        return Skip("missing_label")
    try:
        label = int(raw.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        return Skip("label_not_integer", detail=repr(raw[:40]))
    return (
        label if 0 <= label < num_classes else Skip("label_out_of_range", detail=f"{label} not in [0, {num_classes})")
    )


def read_samples(
    urls: list[str], lay: Layout, image_size: int, skipped: Counter[str], prefix: str = ""
) -> Iterator[dict[str, Any]]:
    """Each usable sample of `urls` once, in shard order: {"image": uint8 (3,S,S), "caption", "key",
    "meta"}. Classification: the caption is the class name, meta {"label": index}. Retrieval: the
    caption is the first line, meta {"captions": [the other lines]} (evaltasks.retrieval takes them
    all). Unusable samples are counted in `skipped` under `prefix + reason`."""
    from maskvlp.data.clean import decode_image, resize_center_crop, to_rgb
    from maskvlp.data.transforms import to_uint8_tensor

    for sample in _samples(urls, skipped, prefix):
        key = sample["__key__"]
        data = next((sample[k] for k in IMAGE_EXTS if k in sample), None)
        if lay.kind == "classification":
            label = class_index(sample.get("cls"), len(lay.classes or ()))
            text = label if isinstance(label, Skip) else lay.classes[label]
        else:
            text = caption_lines(sample.get("txt"))
        img = Skip("missing_image") if data is None else text if isinstance(text, Skip) else decode_image(data, 1, key)
        if not isinstance(img, Skip):
            try:
                image = to_uint8_tensor(resize_center_crop(to_rgb(img), image_size))
            except (OSError, ValueError):
                img = Skip("unreadable_image")
        if isinstance(img, Skip):
            skipped[prefix + img.reason] += 1
            continue
        if lay.kind == "classification":
            yield {"image": image, "caption": text, "key": key, "meta": {"label": label}}
        else:
            yield {"image": image, "caption": text[0], "key": key, "meta": {"captions": text[1:]}}
