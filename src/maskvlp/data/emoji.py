"""A real image set that ships in a Debian package: Noto Color Emoji rendered with Pillow.

`apt-get install fonts-noto-color-emoji` puts NotoColorEmoji.ttf on disk; every single-codepoint
emoji in its character map is a class, named by `unicodedata.name` ("SUNRISE OVER MOUNTAINS" ->
"sunrise over mountains"). Training pairs are renderings with varied scale, placement and
background; optional two-emoji scenes carry relation captions. Sample (emoji, j) depends only on
(seed, codepoint, j).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NOTO_BITMAP_SIZE = 109  # the only size the font's colour bitmaps (CBDT) come in

# Codepoints that are emoji components, not pictures: skin tones, regional indicators, tags, keycap
# bases and the like.
_EXCLUDED_RANGES = [
    (0x1F3FB, 0x1F3FF),
    (0x1F1E6, 0x1F1FF),
    (0xE0020, 0xE007F),
    (0x0000, 0x00FF),
    (0xFE00, 0xFE0F),
    (0x200D, 0x200D),
    (0x20E3, 0x20E3),
]
_TEMPLATES = ("{}", "an emoji of {}", "a picture of {}", "{} on a {} background", "a small {}", "a large {}")
_BACKGROUNDS = {
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
    "blue": (60, 90, 200),
    "yellow": (240, 220, 90),
    "green": (70, 160, 90),
}
_MISSING_FONT_HINT = "install it with: apt-get install fonts-noto-color-emoji (or set data.emoji.font_path)"


class EmojiFontMissing(FileNotFoundError):
    """The emoji font is not installed."""


def emoji_name(codepoint: int) -> str:
    return unicodedata.name(chr(codepoint)).lower()


@lru_cache(maxsize=4)
def list_emoji(font_path: str) -> tuple[tuple[int, str], ...]:
    """(codepoint, name) for every single-codepoint picture emoji in the font, sorted."""
    if not Path(font_path).is_file():
        raise EmojiFontMissing(f"emoji font '{font_path}' not found; {_MISSING_FONT_HINT}")
    from fontTools.ttLib import TTFont

    cmap = TTFont(font_path, lazy=True).getBestCmap()
    out = []
    for cp in sorted(cmap):
        if any(lo <= cp <= hi for lo, hi in _EXCLUDED_RANGES):
            continue
        try:
            out.append((cp, emoji_name(cp)))
        except ValueError:  # no Unicode name (private use)
            continue
    return tuple(out)


@lru_cache(maxsize=2048)
def render_emoji(font_path: str, codepoint: int) -> Image.Image:
    """The emoji as an RGBA image cropped to its ink."""
    font = ImageFont.truetype(font_path, NOTO_BITMAP_SIZE)
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), chr(codepoint), font=font, embedded_color=True)
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


def _background(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    name = list(_BACKGROUNDS)[rng.integers(len(_BACKGROUNDS))]
    base = np.array(_BACKGROUNDS[name], np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = (np.cos(a := rng.uniform(0, 2 * np.pi)) * xx + np.sin(a) * yy)[..., None]
    img = base + (ramp - 0.5) * rng.uniform(0, 50) + rng.normal(0, rng.uniform(0, 10), (size, size, 1))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"), name


def _paste(canvas: Image.Image, glyph: Image.Image, side: int, cx: float, cy: float) -> None:
    g = glyph.copy()
    g.thumbnail((side, side), Image.Resampling.LANCZOS)
    canvas.paste(g, (int(cx - g.width / 2), int(cy - g.height / 2)), g)


def render_sample(
    font_path: str, codepoints: tuple[int, ...], seed: int, variant: int, size: int
) -> tuple[Image.Image, str, dict]:
    """One rendering of one emoji, or a left/right or above/below scene of two."""
    rng = np.random.default_rng([seed, *codepoints, variant])
    canvas, bg = _background(rng, size)
    names = [emoji_name(cp) for cp in codepoints]
    if len(codepoints) == 1:
        scale = rng.uniform(0.4, 0.9)
        side = int(size * scale)
        cx, cy = rng.uniform(side / 2, size - side / 2, size=2)
        _paste(canvas, render_emoji(font_path, codepoints[0]), side, cx, cy)
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        if template.startswith(("a small", "a large")):
            template = "a small {}" if scale < 0.6 else "a large {}"
        meta = {"codepoint": codepoints[0], "label_name": names[0], "background": bg}
        return canvas, template.format(names[0], bg), meta
    side = int(size * rng.uniform(0.35, 0.45))
    horizontal = bool(rng.integers(2))
    lo, hi = side / 2 + 1, size - side / 2 - 1
    jitter = rng.uniform(lo, hi)
    first, second = ((lo, jitter), (hi, jitter)) if horizontal else ((jitter, lo), (jitter, hi))
    _paste(canvas, render_emoji(font_path, codepoints[0]), side, *first)
    _paste(canvas, render_emoji(font_path, codepoints[1]), side, *second)
    relation = "left of" if horizontal else "above"
    # the negative swaps the objects, not the relation word: the same words in another order, so text alone
    # cannot pass it (a negative saying "right of" / "below" was told from the caption's words by models at chance)
    negatives = {"relation": f"{names[1]} {relation} {names[0]}", "attribute": None, "object": None}
    meta = dict(codepoints=list(codepoints), label_name=names[0], relation=relation, background=bg, negatives=negatives)
    return canvas, f"{names[0]} {relation} {names[1]}", meta
