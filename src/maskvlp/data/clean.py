"""Turn a raw sample into what a shard stores, or say exactly why it cannot be used.

Images of any mode (CMYK, palette, 16-bit, alpha, ...) become 8-bit RGB, are resized so the shorter
side is `image_size`, centre-cropped square and re-encoded. Captions must be non-empty valid UTF-8.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskvlp.config import DataConfig, check, choice
from maskvlp.data.sources import RawSample, Skip

IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}  # data.image_format -> Pillow format


@dataclass
class CleanSample:
    key: str
    image: bytes  # encoded in the shard's image format
    caption: str
    meta: dict[str, Any]


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparency is composited on white; 16-bit and float images are rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square inside a width x height image, in whole pixels: (left, top, right, bottom).

    Integer arithmetic only, so the box can never fall outside the image: a float box computed as
    `size / (size / min(w, h))` can land a rounding error below 0, and Pillow then refuses the
    resize ("box offset can't be negative"), which dropped ~5% of valid odd-shaped images."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to `size`, centre-cropped square: (size, size), for any image of sides >= 1."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC, box=center_square(*img.size), reducing_gap=3.0)


_BYTES_IO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _pillow_message(exc: Exception, name: str) -> str:
    """Pillow's message with the in-memory file it was given (`<_io.BytesIO object at 0x...>`) named."""
    return _BYTES_IO.sub(repr(name) if name else "(the image's bytes)", str(exc))


def decode_image(data: bytes, min_side: int = 1, name: str = "", draft_to: int = 0) -> Image.Image | Skip:
    """The decoded image, or a Skip naming why not (empty, unreadable, truncated, too large, smaller
    than `min_side` pixels on its shorter side). `name` (a file name or key) names the image in the
    Skip's detail. `draft_to` > 0: a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides
    stay >= draft_to (libjpeg's DCT scaling; the image is resized to that size next anyway), 2-4x
    faster for photos several times larger; the size checks use the stored size."""
    if len(data) == 0:
        return Skip("empty_file")
    try:
        img = Image.open(io.BytesIO(data))
        if draft_to and img.format == "JPEG" and min(img.size) >= max(min_side, 2 * draft_to):
            img.draft("RGB", (draft_to, draft_to))
        img.load()
    except UnidentifiedImageError as exc:
        return Skip("unreadable_image", detail=_pillow_message(exc, name))
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow: "image file is truncated", "broken data stream", ...
        text = str(exc).lower()
        reason = "truncated_image" if "truncat" in text or "broken" in text else "unreadable_image"
        return Skip(reason, detail=_pillow_message(exc, name))
    except Image.DecompressionBombError as exc:
        return Skip("image_too_large", detail=_pillow_message(exc, name))
    if img.width < 1 or img.height < 1:
        return Skip("unreadable_image", detail="zero-sized image")
    if min(img.size) < min_side:
        # a 1x1 or 3x500 image upscaled to the crop is a flat square, not a picture of anything
        return Skip("image_too_small", detail=f"{img.width}x{img.height} < data.min_image_side={min_side}")
    return img


def clean_caption(caption: str | bytes | None) -> str | Skip:
    """The caption with its whitespace collapsed, or a Skip: missing, empty, or not valid UTF-8 (bytes
    from a shard, or text from a table read with surrogateescape, whose surrogates stand for the bytes
    that did not decode)."""
    if caption is None:
        return Skip("missing_caption")
    if isinstance(caption, str):
        try:
            caption = caption.encode("utf-8", "surrogateescape")  # the table's bytes again
        except UnicodeEncodeError as exc:  # a surrogate no byte stands for, e.g. JSON's "\ud800"
            where = f"a lone surrogate U+{ord(caption[exc.start]):04X} at character {exc.start}"
            return Skip("caption_not_utf8", detail=f"caption is not valid UTF-8 ({where})")
    try:
        caption = caption.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{caption[exc.start]:02x} at position {exc.start}"
        return Skip("caption_not_utf8", detail=f"caption is not valid UTF-8 ({where})")
    caption = " ".join(caption.split())
    return caption if caption else Skip("empty_caption")


def clean_sample(
    raw: RawSample, image_size: int, image_format: str, jpeg_quality: int, min_image_side: int = 1
) -> CleanSample | Skip:
    """Generated images (PIL) are used as they are; encoded ones are decoded and must have a shorter
    side of at least `min_image_side` pixels."""
    caption = clean_caption(raw.caption)
    if isinstance(caption, Skip):
        return Skip(caption.reason, raw.key, caption.detail)
    # the path the folder source read it from (kept in the json of the shards it made), else the key
    name = str(raw.meta.get("source_path") or raw.key)
    img = raw.image if isinstance(raw.image, Image.Image) else decode_image(raw.image, min_image_side, name, image_size)
    if isinstance(img, Skip):
        return Skip(img.reason, raw.key, img.detail)
    try:
        rgb = resize_center_crop(to_rgb(img), image_size)
    except (OSError, ValueError) as exc:
        return Skip("unreadable_image", raw.key, _pillow_message(exc, name))
    buf = io.BytesIO()
    opts = {"quality": jpeg_quality} if image_format in ("jpg", "webp") else {}
    rgb.save(buf, format=IMAGE_FORMATS[image_format], **opts)
    return CleanSample(raw.key, buf.getvalue(), caption, raw.meta)


def check_section(d: DataConfig) -> None:
    """Refuse out-of-range encoding keys of `data.*` (params.validate asks this before any work starts)."""
    choice("data.image_format", d.image_format, tuple(IMAGE_FORMATS))
    check(d.min_image_side >= 1, "data.min_image_side", "must be >= 1 pixel", d.min_image_side)
    check(1 <= d.jpeg_quality <= 100, "data.jpeg_quality", "must be in [1, 100]", d.jpeg_quality)
