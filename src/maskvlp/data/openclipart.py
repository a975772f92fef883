"""OpenClipart (Debian's `openclipart-svg`, public domain): metadata, captions, categories, rendering.

Each drawing is an SVG under /usr/share/openclipart/svg/<top>/<leaf>/... whose RDF metadata (the
`cc:Work` element) carries a `dc:title`, usually keywords (`dc:subject` / `rdf:li`) and sometimes a
`dc:description`. Its folder is its category: the leaf folder (`food/fruit`) or the top one (`food`).
The renderer is cairosvg (PyPI; it needs Debian's libcairo2): it rendered 150 of 150 randomly drawn
files at 64 px, 48 ms each on average (resvg-py 0.5.0 refused 26 of 60 with `pt` sizes).

This module is pure functions over bytes and paths; the shard source that walks the package is built
on it. Every failure is a reason to skip, never an exception: `SkipReason` names it.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "openclipart-svg"
DUPLICATES = ("unsorted", "duplicates")  # a folder of copies: left out
NOISE_KEYWORDS = {"hash", ""}  # placeholders that many files carry in their keyword list
PLACEHOLDER = re.compile(r"^hash\(0x[0-9a-f]+\)$", re.IGNORECASE)  # a Perl reference printed as metadata
MAX_SVG_BYTES = 4_000_000  # larger files are skipped (svg_too_large): slow to render, rarely clip art
DC = "http://purl.org/dc/elements/1.1/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


@dataclass(frozen=True)
class SkipReason:
    reason: str  # bad_svg, no_title, svg_too_large, empty_file, render_failed, blank_render
    detail: str = ""


@dataclass(frozen=True)
class Meta:
    title: str
    description: str
    keywords: tuple[str, ...]


def _clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_metadata(data: bytes) -> Meta | SkipReason:
    """The drawing's title, description and keywords from its `cc:Work` metadata (whatever the cc
    namespace's version). No parseable XML, or no title: a SkipReason."""
    if not data.strip():
        return SkipReason("empty_file")
    if len(data) > MAX_SVG_BYTES:
        return SkipReason("svg_too_large", f"{len(data)} bytes")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:  # malformed XML, an undeclared non-UTF-8 byte, an entity bomb
        return SkipReason("bad_svg", str(exc))
    work = next((el for el in root.iter() if isinstance(el.tag, str) and el.tag.endswith("}Work")), None)
    if work is None:
        return SkipReason("no_title", "no cc:Work metadata")
    title = _clean(work.findtext(f"{{{DC}}}title"))
    if not title:
        return SkipReason("no_title")
    description = _clean(work.findtext(f"{{{DC}}}description"))
    description = "" if PLACEHOLDER.match(description) else description
    words = []
    for li in work.iterfind(f"{{{DC}}}subject//{{{RDF}}}li"):
        word = _clean(li.text).lower()
        if word not in NOISE_KEYWORDS and not PLACEHOLDER.match(word) and word not in words:
            words.append(word)
    return Meta(title, description, tuple(words))


def name_title(path: str | Path) -> str:
    """A title from the file name, for drawings whose own title names their collection: words split at
    `_`, `-`, `.` and spaces, trailing numbers cut off (`home6` -> `home`) and words that still hold a
    digit dropped (`star_94pt05step` -> `star`), e.g. `aiga_barber_shop_beauty_salon1` -> `aiga barber
    shop beauty salon`. Empty when nothing is left."""
    words = []
    for word in re.split(r"[_\-.\s]+", Path(path).stem.lower()):
        word = word.rstrip("0123456789")
        if word and not any(ch.isdigit() for ch in word):
            words.append(word)
    return " ".join(words)


def collection_titles(titles: list[str], min_share: int) -> set[str]:
    """Titles that `min_share` or more drawings carry: in OpenClipart these name a collection or an
    author's set ("gramastar" on 1,375 generated stars, "Part of the Flat Icon Collection (Wed Aug 25
    23:29:46 2004)", "Lemon SVG theme"), not what one drawing shows. 0 = none."""
    if min_share <= 0:
        return set()
    return {title for title, n in Counter(titles).items() if n >= min_share}


def caption(meta: Meta, category: str, template: str = "{title}", max_keywords: int = 5) -> str:
    """The caption from a template with fields {title}, {description}, {keywords} (the first
    `max_keywords`, comma-separated) and {category} (the class name). Empty parts leave no stray
    punctuation: a run of separators keeps its first, and leading or trailing ones go."""
    keywords = ", ".join(meta.keywords[:max_keywords])
    text = template.format(title=meta.title, description=meta.description, keywords=keywords, category=category)
    text = re.sub(r"\s*([,;:.])(?:\s*[,;:.])+", r"\1", text)  # "title. , kw" (empty description) -> "title. kw"
    text = re.sub(r"\s+([,;:.])", r"\1", text)
    return _clean(text).strip(" ,;:-")


def category(path: str | Path, root: str | Path, level: str = "leaf") -> str | None:
    """The drawing's folder below root: `food/fruit` (leaf) or `food` (top); None for files directly in
    root or in the duplicates folder (left out)."""
    parts = Path(path).relative_to(root).parts[:-1]
    if not parts or tuple(parts[:2]) == DUPLICATES:
        return None
    return parts[0] if level == "top" else "/".join(parts)


def class_names(categories: list[str]) -> dict[str, str]:
    """A readable class name per category for zero-shot prompts: the last folder with `_` as spaces
    (`signs_and_symbols/flags` -> `flags`), prefixed with its parent where two leaves share a name."""
    last = {c: c.split("/")[-1].replace("_", " ") for c in categories}
    clash = {n for n in last.values() if list(last.values()).count(n) > 1}
    return {
        c: (" ".join(p.replace("_", " ") for p in c.split("/")[-2:]) if last[c] in clash else last[c])
        for c in categories
    }


def render(data: bytes, size: int, background: tuple[int, int, int] = (255, 255, 255)):
    """The drawing as an RGB PIL image of size x size: scaled so its longer side is `size` (aspect
    kept), centred on `background`. A render that fails or comes out blank (every pixel the
    background) is a SkipReason."""
    import cairosvg
    from PIL import Image, ImageStat

    try:
        png = cairosvg.svg2png(bytestring=data, output_width=size)
        img = Image.open(io.BytesIO(png))
        if img.height > size:  # taller than wide: render again with the height as the longer side
            img = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data, output_height=size)))
        img.load()
    except Exception as exc:  # cairosvg raises many types on odd SVGs; each is a reason to skip
        return SkipReason("render_failed", f"{type(exc).__name__}: {exc}"[:200])
    if img.width < 1 or img.height < 1:
        return SkipReason("render_failed", "empty size")
    canvas = Image.new("RGB", (size, size), background)
    rgba = img.convert("RGBA")
    canvas.paste(rgba, ((size - img.width) // 2, (size - img.height) // 2), rgba)
    if max(hi - lo for lo, hi in ImageStat.Stat(canvas).extrema) <= 2:
        return SkipReason("blank_render")
    return canvas
