"""The embedded default dataset: seeded scenes of coloured shapes with compositional captions.

Each scene holds 1-4 shapes (colour x shape x size) on a plain or textured background. Shapes carry
a shading ramp and a little noise, and textured backgrounds carry stripes, gradients, checks or
noise, so that every visual structure has a pixel *pattern*: cluster masking standardises each
patch, and perfectly flat patches would keep only their colour triplet (see docs/algorithms.md, "Flat patches").

Captions name objects, attributes and spatial relations ("a small red circle left of a large blue
square"). Each sample's metadata carries a class label (the first-named object's "colour shape")
for zero-shot classification, and SugarCrepe-style negatives: a swapped/replaced attribute, a
swapped relation and a replaced object. Sample i depends only on (seed, i).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "cyan": (30, 200, 210),
    "pink": (250, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": (0.20, 0.28), "large": (0.36, 0.48)}  # side as a fraction of the image side
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BACKGROUNDS = ("plain", "gradient", "stripes", "checks", "noise")
BACKGROUND_TONES = [(128, 128, 128), (200, 195, 185), (70, 70, 75), (150, 160, 170), (235, 235, 230)]

CLASS_NAMES: list[str] = [f"{c} {s}" for c in COLORS for s in SHAPES]


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    cx: float  # centre, in pixels
    cy: float
    side: float  # bounding-box side, in pixels

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


def class_index(color: str, shape: str) -> int:
    return CLASS_NAMES.index(f"{color} {shape}")


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    tone = np.array(BACKGROUND_TONES[rng.integers(len(BACKGROUND_TONES))], dtype=np.float32)
    img = np.broadcast_to(tone, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        img += (ramp - ramp.mean())[..., None] * rng.uniform(60, 110)
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.2)
        wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        img += wave[..., None] * rng.uniform(25, 45)
    elif kind == "checks":
        cell = max(2, int(size * rng.uniform(0.06, 0.14)))
        board = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2) * 2 - 1
        img += board[..., None].astype(np.float32) * rng.uniform(20, 35)
    elif kind == "noise":
        img += rng.normal(0, rng.uniform(15, 30), size=(size, size, 1))
    return img


def _shape_mask(shape: str, size: int, cx: float, cy: float, side: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    h = side / 2
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=255)
    else:  # diamond
        draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=255)
    return np.asarray(canvas, dtype=np.float32)[..., None] / 255.0


def _place(rng: np.random.Generator, size: int, sides: list[float]) -> list[tuple[float, float]] | None:
    """Centres for boxes of the given sides, inside the image and not overlapping."""
    centres: list[tuple[float, float]] = []
    for side in sides:
        for _ in range(50):
            cx = rng.uniform(side / 2, size - side / 2)
            cy = rng.uniform(side / 2, size - side / 2)
            if all(
                abs(cx - ox) > (side + os_) / 2 + 1 or abs(cy - oy) > (side + os_) / 2 + 1
                for (ox, oy), os_ in zip(centres, sides)
            ):
                centres.append((cx, cy))
                break
        else:
            return None
    return centres


def relation_between(a: SceneObject, b: SceneObject) -> str:
    """The dominant spatial relation of a to b, in image coordinates (y grows downwards)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _caption(objs: list[SceneObject], relation: str | None) -> str:
    if len(objs) == 1:
        return objs[0].phrase()
    text = f"{objs[0].phrase()} {relation} {objs[1].phrase()}"
    for extra in objs[2:]:
        text += f" and {extra.phrase()}"
    return text


def _negatives(rng: np.random.Generator, objs: list[SceneObject], relation: str | None) -> dict[str, str | None]:
    """SugarCrepe-style hard negatives: each differs from the caption in one compositional way."""
    first = objs[0]
    # Attribute: swap colours of the two named objects when they differ, else replace a colour.
    if len(objs) >= 2 and objs[0].color != objs[1].color:
        swapped = [replace(objs[0], color=objs[1].color), replace(objs[1], color=objs[0].color), *objs[2:]]
    else:
        other = [c for c in COLORS if c != first.color]
        swapped = [replace(first, color=other[rng.integers(len(other))]), *objs[1:]]
    others = [s for s in SHAPES if s != first.shape]
    replaced = [replace(first, shape=others[rng.integers(len(others))]), *objs[1:]]
    return {
        "attribute": _caption(swapped, relation),
        "relation": _caption(objs, OPPOSITE[relation]) if relation else None,
        "object": _caption(replaced, relation),
    }


def generate_scene(
    seed: int, index: int, size: int, min_objects: int = 1, max_objects: int = 3, textured_fraction: float = 0.8
) -> tuple[Image.Image, str, dict]:
    """Scene `index` of the dataset seeded by `seed`: (RGB image size x size, caption, metadata)."""
    rng = np.random.default_rng([seed, index])
    background = BACKGROUNDS[1 + rng.integers(len(BACKGROUNDS) - 1)] if rng.random() < textured_fraction else "plain"
    for _ in range(20):  # re-draw the layout until the shapes fit without overlapping
        n = int(rng.integers(min_objects, max_objects + 1))
        sizes = [list(SIZES)[rng.integers(len(SIZES))] for _ in range(n)]
        sides = [rng.uniform(*SIZES[s]) * size for s in sizes]
        centres = _place(rng, size, sides)
        if centres is not None:
            break
    else:  # pragma: no cover - four small shapes always fit
        raise RuntimeError(f"could not lay out scene {index}")
    names = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[:n]]  # distinct colours
    objs = [
        SceneObject(names[k], SHAPES[rng.integers(len(SHAPES))], sizes[k], cx, cy, side)
        for k, ((cx, cy), side) in enumerate(zip(centres, sides))
    ]
    img = _background(rng, size, background)
    for obj in objs:
        mask = _shape_mask(obj.shape, size, obj.cx, obj.cy, obj.side)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = ((np.cos(angle) * (xx - obj.cx) + np.sin(angle) * (yy - obj.cy)) / obj.side)[..., None]
        fill = np.array(COLORS[obj.color], np.float32) * (0.85 + 0.3 * ramp) + rng.normal(0, 6, (size, size, 1))
        img = img * (1 - mask) + fill * mask
    relation = relation_between(objs[0], objs[1]) if n >= 2 else None
    caption = _caption(objs, relation)
    meta = {
        "label": class_index(objs[0].color, objs[0].shape),
        "label_name": f"{objs[0].color} {objs[0].shape}",
        "objects": [
            {
                "color": o.color,
                "shape": o.shape,
                "size": o.size,
                "box": [round(o.cx - o.side / 2, 2), round(o.cy - o.side / 2, 2), round(o.side, 2)],
            }
            for o in objs
        ],
        "relation": relation,
        "background": background,
        "negatives": _negatives(rng, objs, relation),
    }
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return image, caption, meta
