"""The embedded default dataset: seeded scenes of coloured shapes with compositional captions.

Each scene holds 1-4 shapes (colour x shape x size) on a plain or textured background. Shapes carry
a shading ramp and a little noise, and textured backgrounds carry stripes, gradients, checks or
noise, so that every visual structure has a pixel *pattern*: cluster masking standardises each
patch, and perfectly flat patches would keep only their colour triplet (see docs/algorithms.md, "Flat patches").
Colour and texture differ across channels (tinted backgrounds, textures and shading with a
per-channel direction), so a patch's pattern is not the same grey ramp in R, G and B.

Context (docs/testbed.md): a fraction `context` of scenes belongs to a *place*, with its own
background family and tones, the object kinds that occur there, and a typical arrangement of the
first two objects. There, a masked object is partly predictable from the rest of the image (the
background, the other object), which is what cluster masking's idea needs to show; the other scenes
draw everything independently.

Objects with parts (`objects="parts"`, docs/testbed.md): each object is cut into 2-4 parts (boxes
across it), each textured with its own ink tile of 2-4 px period, so that cluster masking's
standardised patches match within a part and much less across parts: a cluster is a part of an
object, not the whole object's colour fill. The parts draw from their own random stream; the
scene is otherwise the flat one (layout, caption, metadata), plus each object's `parts`.

Captions name objects, attributes and spatial relations ("a small red circle left of a large blue
square"). Metadata: the objects with their boxes, `labels` (every object's "colour shape"), and for
single-object scenes only, a class `label` / `label_name` that the image determines (in a
multi-object scene "the first-named object" cannot be told from the pixels); SugarCrepe-style
negatives: a swapped/replaced attribute, a swapped relation and a replaced object. Sample i depends
only on (seed, i).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

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
OBJECT_STYLES = ("flat", "parts")  # data.synthetic.objects

# Parts (objects: parts). Each part of an object is textured with a binary "ink" tile of 8x8 px
# (periods of 2-4 px). A tile repeats every 8 px, so on the stored image every 8x8 patch of a part
# holds the same pattern (a crop shifts it, a resize blurs it), and the parts of one object get tiles
# that correlate at most MAX_TEXTURE_CORR: a part's standardised patches match each other, not the
# neighbouring part's.
_X, _Y = np.meshgrid(np.arange(8), np.arange(8))
PART_TEXTURES: dict[str, np.ndarray] = {
    "dots": (_X % 4 < 2) & (_Y % 4 < 2),
    "fine dots": (_X % 2 == 0) & (_Y % 2 == 0),
    "vertical lines": _X % 4 == 0,
    "horizontal lines": _Y % 4 == 0,
    "rising lines": (_X + _Y) % 4 == 0,
    "falling lines": (_X - _Y) % 4 == 0,
    "grid": (_X % 4 == 0) | (_Y % 4 == 0),
    "hatching": ((_X + _Y) % 4 == 0) | ((_X - _Y) % 4 == 0),
    "stripes": _X % 4 < 2,
    "checks": (_X // 2 + _Y // 2) % 2 == 0,
}
MAX_TEXTURE_CORR = 0.35
MIN_PART_SHARE = 0.15  # each part holds at least this share of its object's pixels
# How far a part's ink moves each channel, as a multiple of the most it can without clipping; drawn
# per part and channel (the texture's tint). Above 1 the paper clips a little (see _part_fill).
PART_STRENGTH = (0.9, 1.3)


def _tile_corr(a: str, b: str) -> float:
    ta, tb = (PART_TEXTURES[n] - PART_TEXTURES[n].mean() for n in (a, b))
    return float((ta * tb).mean() / (ta.std() * tb.std()))


# n -> every set of n textures whose tiles correlate at most MAX_TEXTURE_CORR pairwise (n = 2, 3, 4)
_TEXTURE_SETS = {
    n: [
        c
        for c in combinations(PART_TEXTURES, n)
        if all(abs(_tile_corr(a, b)) <= MAX_TEXTURE_CORR for a, b in combinations(c, 2))
    ]
    for n in (2, 3, 4)
}

CLASS_NAMES: list[str] = [f"{c} {s}" for c in COLORS for s in SHAPES]


@dataclass(frozen=True)
class Place:
    """A scene type: its background family and tones, the objects that occur there, their arrangement."""

    backgrounds: tuple[str, ...]
    tones: tuple[tuple[int, int, int], ...]
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    relation: str  # how the first-named object stands to the second


PLACES: dict[str, Place] = {
    "beach": Place(
        ("gradient",), ((225, 205, 150), (150, 200, 230)), ("yellow", "orange", "cyan"), ("circle", "triangle"), "above"
    ),
    "garden": Place(
        ("noise",), ((90, 150, 70), (120, 170, 90)), ("red", "pink", "purple"), ("diamond", "circle"), "left of"
    ),
    "kitchen": Place(
        ("checks",), ((235, 230, 215), (190, 200, 215)), ("blue", "green", "red"), ("square", "circle"), "right of"
    ),
    "city": Place(
        ("stripes",), ((110, 110, 125), (160, 150, 140)), ("blue", "orange", "green"), ("square", "triangle"), "below"
    ),
}


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


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A per-channel direction for a texture or a shading ramp: mostly positive, not equal across
    channels (so the pattern differs between R, G and B), norm sqrt(3) like (1, 1, 1)."""
    t = rng.uniform(-0.3, 1.0, 3).astype(np.float32)
    return t * np.float32(np.sqrt(3) / max(np.linalg.norm(t), 1e-3))


def _background(rng: np.random.Generator, size: int, kind: str, tones: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    tone = np.array(tones[rng.integers(len(tones))], dtype=np.float32)
    img = np.broadcast_to(tone, (size, size, 3)).copy()
    tint = _tint(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        img += (ramp - ramp.mean())[..., None] * rng.uniform(60, 110) * tint
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.2)
        wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        img += wave[..., None] * rng.uniform(25, 45) * tint
    elif kind == "checks":
        cell = max(2, int(size * rng.uniform(0.06, 0.14)))
        board = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2) * 2 - 1
        img += board[..., None].astype(np.float32) * rng.uniform(20, 35) * tint
    elif kind == "noise":
        img += rng.normal(0, rng.uniform(15, 30), size=(size, size, 1)) * tint
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


def _in_box(box: list[float], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows), len(cols), 1) 0/1: which of these pixels have their centre in box [x0, y0, x1, y1)
    (half-open, so boxes that share an edge share no pixel)."""
    x0, y0, x1, y1 = box
    r, c = rows + 0.5, cols + 0.5
    return (((r >= y0) & (r < y1))[:, None] & ((c >= x0) & (c < x1))[None, :]).astype(np.float32)[..., None]


def _window(obj: SceneObject, size: int) -> tuple[slice, slice]:
    """Rows and columns of the image that hold the object (its box, 1 px margin)."""
    h = obj.side / 2 + 1
    rows = slice(max(0, int(np.floor(obj.cy - h))), min(size, int(np.ceil(obj.cy + h)) + 1))
    cols = slice(max(0, int(np.floor(obj.cx - h))), min(size, int(np.ceil(obj.cx + h)) + 1))
    return rows, cols


def _part_boxes(rng: np.random.Generator, obj: SceneObject, mask: np.ndarray, size: int) -> list[list[float]]:
    """2-4 boxes [x0, y0, x1, y1] tiling the object's box (1 px margin): one cut across the object,
    then (large objects) one or both halves cut the other way. Each part (box within the shape) holds
    at least MIN_PART_SHARE of the object's pixels; small objects have 2 parts."""
    h = obj.side / 2
    x0, y0 = max(0.0, obj.cx - h - 1), max(0.0, obj.cy - h - 1)
    outer = [x0, y0, min(float(size), obj.cx + h + 1), min(float(size), obj.cy + h + 1)]
    rows, cols = _window(obj, size)
    mask, at = mask[rows, cols], (np.arange(size)[rows], np.arange(size)[cols])
    total = float(mask.sum())
    for n in ([2] if obj.size == "small" else [int(rng.integers(2, 5))]) + [2] * 8:
        axis = int(rng.integers(2))  # 0: a vertical cut (left | right), 1: horizontal (top | bottom)
        lo = (obj.cx, obj.cy)[axis] - h
        cut = round(lo + obj.side * rng.uniform(0.38, 0.62), 2)
        first, second = list(outer), list(outer)
        first[2 + axis], second[axis] = cut, cut
        boxes = [first, second]
        # n = 3: cut one half along the other axis; n = 4: both (the second first, so index 0 still holds)
        for k in [int(rng.integers(2))] if n == 3 else [1, 0] if n == 4 else []:
            box, other = boxes[k], 1 - axis
            lo = (obj.cx, obj.cy)[other] - h
            cut = round(lo + obj.side * rng.uniform(0.38, 0.62), 2)
            a, b = list(box), list(box)
            a[2 + other], b[other] = cut, cut
            boxes[k : k + 1] = [a, b]
        boxes = [[round(v, 2) for v in b] for b in boxes]
        if all(float((mask * _in_box(b, *at)).sum()) >= MIN_PART_SHARE * total for b in boxes):
            return boxes
    return boxes  # pragma: no cover - a cut near the middle always leaves two large halves


def _part_fill(
    rng: np.random.Generator, obj: SceneObject, mask: np.ndarray, fill: np.ndarray, size: int
) -> tuple[np.ndarray, list]:
    """The object's fill with its parts' textures, and the parts' metadata (box, texture, ink).

    A part's ink is dark or light: all channels down, or all up (a change of brightness, which the
    halved chroma resolution of the shards' JPEG keeps). With ink tile m, a fraction d of the tile
    inked, the part adds delta * (m - d) per channel: zero on average over a tile, so the part keeps
    about the flat fill's mean colour, the object's named colour. delta is, per pixel and channel,
    the most that keeps ink and paper inside 0..255, times a strength drawn from PART_STRENGTH per
    channel. It is that large because a texture must outweigh the colour's spread across channels
    to become a patch's Pearson pattern; strengths above 1 clip the paper a little, and the part
    means stay nearest their named colour as often as the flat fill's (tests/test_synthetic_parts.py).
    """
    boxes = _part_boxes(rng, obj, mask, size)
    choices = _TEXTURE_SETS[len(boxes)]
    chosen = choices[rng.integers(len(choices))]
    names = [chosen[i] for i in rng.permutation(len(boxes))]
    rows, cols = _window(obj, size)
    at = (np.arange(size)[rows], np.arange(size)[cols])
    out = np.clip(fill, 0, 255)
    win = out[rows, cols]  # a view: the parts are written into `out`
    base, meta = win.copy(), []
    for box, name in zip(boxes, names):
        light = bool(rng.integers(2))
        paper_room = base if light else 255 - base  # the paper moves against the ink
        tile = PART_TEXTURES[name]
        d = float(tile.mean())
        delta = np.minimum(paper_room / d, (255 - paper_room) / (1 - d)) * rng.uniform(*PART_STRENGTH, 3)
        ink = tile[np.ix_(at[0] % 8, at[1] % 8)][..., None]
        win += _in_box(box, *at) * (delta if light else -delta) * (ink - d)
        meta.append({"box": box, "texture": name, "ink": "light" if light else "dark"})
    return out, meta


def _place(rng: np.random.Generator, size: int, sides: list[float]) -> list[tuple[float, float]] | None:
    """Centres for boxes of the given sides, inside the image and not overlapping."""
    centres: list[tuple[float, float]] = []
    for side in sides:
        for _ in range(50):
            cx, cy = rng.uniform(side / 2, size - side / 2), rng.uniform(side / 2, size - side / 2)
            if all(
                abs(cx - ox) > (side + os_) / 2 + 1 or abs(cy - oy) > (side + os_) / 2 + 1
                for (ox, oy), os_ in zip(centres, sides)
            ):
                centres.append((cx, cy))
                break
        else:
            return None
    return centres


def part_labels(meta: dict, size: int) -> np.ndarray:
    """(size, size) int: -1 on background, 4 k + j on part j of object k, from a parts scene's
    metadata (its objects' boxes and part boxes; the boxes are rounded to 0.01 px, so a pixel on an
    outline may differ from the image)."""
    labels = np.full((size, size), -1, np.int64)
    for k, obj in enumerate(meta["objects"]):
        x0, y0, side = obj["box"]
        mask = _shape_mask(obj["shape"], size, x0 + side / 2, y0 + side / 2, side)
        for j, part in enumerate(obj.get("parts", [])):
            labels[(mask * _in_box(part["box"], np.arange(size), np.arange(size)))[..., 0] > 0] = 4 * k + j
    return labels


def relation_between(a: SceneObject, b: SceneObject) -> str:
    """The dominant spatial relation of a to b, in image coordinates (y grows downwards)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _caption(objs: list[SceneObject], relation: str | None) -> str:
    if len(objs) == 1:
        return objs[0].phrase()
    return " and ".join([f"{objs[0].phrase()} {relation} {objs[1].phrase()}", *(o.phrase() for o in objs[2:])])


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
    seed: int,
    index: int,
    size: int,
    min_objects: int = 1,
    max_objects: int = 3,
    textured_fraction: float = 0.8,
    context: float = 0.0,
    objects: str = "flat",
) -> tuple[Image.Image, str, dict]:
    """Scene `index` of the dataset seeded by `seed`: (RGB image size x size, caption, metadata).
    With probability `context` the scene is one of PLACES (its background, objects and arrangement).
    objects="parts" gives every object 2-4 textured parts (metadata: each object's `parts`); the parts
    draw from their own stream, so the scene is otherwise the flat one: same layout, caption, metadata."""
    if objects not in OBJECT_STYLES:
        raise ValueError(f"objects must be one of {OBJECT_STYLES}, not {objects!r}")
    rng = np.random.default_rng([seed, index])
    part_rng = np.random.default_rng([seed, index, 1]) if objects == "parts" else None
    parts: list[list] = []
    place_name = list(PLACES)[rng.integers(len(PLACES))] if rng.random() < context else None
    place = PLACES[place_name] if place_name else None
    if place is not None:
        background = place.backgrounds[rng.integers(len(place.backgrounds))]
    else:
        textured = rng.random() < textured_fraction
        background = BACKGROUNDS[1 + rng.integers(len(BACKGROUNDS) - 1)] if textured else "plain"
    n = int(rng.integers(min_objects, max_objects + 1))
    if place is not None:  # the place's kinds for the first two objects, distinct colours throughout
        first = [place.colors[i] for i in rng.permutation(len(place.colors))[: min(n, 2)]]
        rest = [c for c in COLORS if c not in first]
        names = first + [rest[i] for i in rng.permutation(len(rest))[: n - len(first)]]
        shapes = [place.shapes[rng.integers(len(place.shapes))] if k < 2 else SHAPES[rng.integers(4)] for k in range(n)]
    else:
        names = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[:n]]
        shapes = [SHAPES[rng.integers(len(SHAPES))] for _ in range(n)]
    layout = None
    for _ in range(40):  # re-draw until the shapes fit without overlapping (and, in a place, are arranged)
        sizes = [list(SIZES)[rng.integers(len(SIZES))] for _ in range(n)]
        sides = [rng.uniform(*SIZES[s]) * size for s in sizes]
        centres = _place(rng, size, sides)
        if centres is None:
            continue
        layout = (sizes, sides, centres)
        if place is None or n < 2:
            break
        a, b = (SceneObject("", "", "", cx, cy, sd) for (cx, cy), sd in zip(centres[:2], sides[:2]))
        if relation_between(a, b) == place.relation:
            break
    if layout is None:  # pragma: no cover - four small shapes always fit
        raise RuntimeError(f"could not lay out scene {index}")
    sizes, sides, centres = layout
    objs = [
        SceneObject(names[k], shapes[k], sizes[k], cx, cy, side)
        for k, ((cx, cy), side) in enumerate(zip(centres, sides))
    ]
    img = _background(rng, size, background, place.tones if place else tuple(BACKGROUND_TONES))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for obj in objs:
        mask = _shape_mask(obj.shape, size, obj.cx, obj.cy, obj.side)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = ((np.cos(angle) * (xx - obj.cx) + np.sin(angle) * (yy - obj.cy)) / obj.side)[..., None]
        shading = 0.85 + 0.3 * ramp * _tint(rng)  # the ramp's strength differs per channel
        fill = np.array(COLORS[obj.color], np.float32) * shading + rng.normal(0, 6, (size, size, 3))
        if part_rng is not None:
            fill, obj_parts = _part_fill(part_rng, obj, mask, fill, size)
            parts.append(obj_parts)
        img = img * (1 - mask) + fill * mask
    relation = relation_between(objs[0], objs[1]) if n >= 2 else None
    caption = _caption(objs, relation)
    meta: dict = {}
    if n == 1:  # a class the image determines
        name = f"{objs[0].color} {objs[0].shape}"
        meta.update(label=CLASS_NAMES.index(name), label_name=name)
    meta.update(
        labels=[f"{o.color} {o.shape}" for o in objs],
        objects=[
            {
                "color": o.color,
                "shape": o.shape,
                "size": o.size,
                "box": [round(o.cx - o.side / 2, 2), round(o.cy - o.side / 2, 2), round(o.side, 2)],
            }
            for o in objs
        ],
        relation=relation,
        background=background,
        place=place_name,
        negatives=_negatives(rng, objs, relation),
    )
    for entry, obj_parts in zip(meta["objects"], parts):  # objects: parts only
        entry["parts"] = obj_parts
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return image, caption, meta
