"""Objects with parts (`data.synthetic.objects: parts`): textured parts, and clusters that are parts.

The measurement behind docs/testbed.md ("Objects with parts") is `cluster_purity` below; print its
table with `python -m tests.test_synthetic_parts` (200 scenes; raw, stored as JPEG, and cropped).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from maskvlp.config import CLIP_MEAN, CLIP_STD, Config, ConfigError
from maskvlp.data import synthetic
from maskvlp.data.clean import clean_sample, decode_image
from maskvlp.data.sources import SyntheticSource
from maskvlp.data.transforms import normalize, random_resized_crop_box, to_uint8_tensor
from maskvlp.masking.cluster import ClusterParams, find_clusters, standardised_patches
from maskvlp.params import load_config

torch.set_num_threads(1)

PATCH = 8
# sha256 of 120 default scenes (pixels, caption, metadata), taken before `objects` existed
FLAT_SCENES_SHA256 = "a89d7ad29d026014428787adf76db8f4c69357c3846198fd08877394ed1de87f"


def scenes_digest(**kwargs) -> str:
    h = hashlib.sha256()
    for i in range(40):
        for args in [{}, {"min_objects": 1, "max_objects": 4, "context": 0.7}, {"max_objects": 1, "context": 0.7}]:
            image, caption, meta = synthetic.generate_scene(0, i, 64, **args, **kwargs)
            h.update(np.asarray(image).tobytes())
            h.update(caption.encode())
            h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def test_default_scenes_are_byte_identical_to_before_parts_existed():
    assert scenes_digest() == FLAT_SCENES_SHA256
    assert scenes_digest(objects="flat") == FLAT_SCENES_SHA256


def test_parts_change_only_the_objects_pixels():
    """Parts draw from their own stream: layout, caption, labels, boxes, relation and negatives are the
    flat scene's, and only pixels inside an object's box change."""
    for i in range(60):
        flat, cap_f, meta_f = synthetic.generate_scene(3, i, 64, 1, 4, context=0.7)
        parts, cap_p, meta_p = synthetic.generate_scene(3, i, 64, 1, 4, context=0.7, objects="parts")
        assert cap_p == cap_f
        stripped = {**meta_p, "objects": [{k: v for k, v in o.items() if k != "parts"} for o in meta_p["objects"]]}
        assert stripped == meta_f
        changed = np.any(np.asarray(flat) != np.asarray(parts), axis=-1)
        inside = np.zeros_like(changed)
        for o in meta_f["objects"]:
            x, y, side = o["box"]
            inside[max(0, int(y) - 1) : int(y + side) + 2, max(0, int(x) - 1) : int(x + side) + 2] = True
        assert changed.any() and not (changed & ~inside).any()


def test_parts_are_seeded_by_seed_and_index_alone():
    a = synthetic.generate_scene(5, 11, 64, objects="parts")
    synthetic.generate_scene(5, 10, 64, objects="parts")  # another sample in between changes nothing
    b = synthetic.generate_scene(5, 11, 64, objects="parts")
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1:] == b[1:]
    c = synthetic.generate_scene(6, 11, 64, objects="parts")
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_unknown_object_style_is_refused():
    with pytest.raises(ValueError, match="objects must be one of"):
        synthetic.generate_scene(0, 0, 64, objects="striped")
    with pytest.raises(ConfigError, match=r"data\.synthetic\.objects"):
        load_config(None, ["data.synthetic.objects=striped"])
    assert load_config(None, ["data.synthetic.objects=parts"]).data.synthetic.objects == "parts"
    assert load_config(None).data.synthetic.objects == "flat"


def test_every_object_pixel_lies_in_exactly_one_textured_part():
    sizes: dict[str, list[int]] = {"small": [], "large": []}
    for i in range(80):
        image, _, meta = synthetic.generate_scene(1, i, 64, 1, 4, objects="parts")
        labels = synthetic.part_labels(meta, 64)
        px = np.asarray(image, dtype=float)
        for k, o in enumerate(meta["objects"]):
            parts = o["parts"]
            sizes[o["size"]].append(len(parts))
            names = [p["texture"] for p in parts]
            assert len(set(names)) == len(names) and {p["ink"] for p in parts} <= {"dark", "light"}
            for a in range(len(names)):
                for b in range(a):
                    assert abs(synthetic._tile_corr(names[a], names[b])) <= synthetic.MAX_TEXTURE_CORR
            x, y, side = o["box"]
            shape = synthetic._shape_mask(o["shape"], 64, x + side / 2, y + side / 2, side)[..., 0] > 0
            assert np.array_equal(shape, labels // 4 == k)  # the parts tile the shape, nothing more
            for j in range(len(parts)):
                part = labels == 4 * k + j
                assert part.sum() >= synthetic.MIN_PART_SHARE * shape.sum() - 1
                assert px[part].std(axis=0).max() > 15  # textured, not a flat fill
    assert set(sizes["small"]) == {2} and set(sizes["large"]) == {2, 3, 4}


def nearest_colour_rate(objects: str, n: int = 120) -> float:
    """How often a part's mean colour is nearest (L1) to its object's named colour, over every part of
    the parts layout (the same pixels in both styles)."""
    names = list(synthetic.COLORS)
    palette = np.array([synthetic.COLORS[c] for c in names], dtype=float)
    hits = total = 0
    for i in range(n):
        image, _, _ = synthetic.generate_scene(0, i, 64, 1, 3, 0.8, 0.7, objects=objects)
        _, _, meta = synthetic.generate_scene(0, i, 64, 1, 3, 0.8, 0.7, objects="parts")
        px, labels = np.asarray(image, dtype=float), synthetic.part_labels(meta, 64)
        for k, o in enumerate(meta["objects"]):
            for j in range(len(o["parts"])):
                mean = px[labels == 4 * k + j].mean(axis=0)
                hits += names[int(np.abs(palette - mean).sum(1).argmin())] == o["color"]
                total += 1
    return hits / total


def test_parts_keep_their_objects_named_colour():
    """Ink and paper balance: a part's mean colour names its object's colour as often as the flat
    fill's does (flat: 0.97 of parts; yellow's shading already drifts toward orange there)."""
    flat, parts = nearest_colour_rate("flat"), nearest_colour_rate("parts")
    assert parts >= flat - 0.02 and parts > 0.93, (flat, parts)


# ------------------------------------------------------------------------------- the measurement
def patch_labels(labels: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """(g*g,) the most common pixel label of each patch (-1 background, 4 k + j part j of object k)."""
    g = labels.shape[0] // patch
    blocks = labels[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    counts = np.zeros((g * g, 18), np.int64)
    np.add.at(counts, (np.repeat(np.arange(g * g), blocks.shape[1]), blocks.ravel() + 1), 1)
    return counts.argmax(1) - 1


def probe_scenes(
    objects: str, n: int = 200, stored: bool = False, crop: bool = False, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """n default-preset scenes of the given style, normalised as the model sees them, and their
    patches' part labels (from the parts layout, which the flat scene shares). stored: through the
    shard stage's own encoder (JPEG, quality 95); crop: a random resized crop at the cluster recipe's
    scale (0.9-1.0 of the area, aspect 3/4-4/3), the label map cropped with it."""

    def config(style: str) -> Config:
        cfg = Config()
        return replace(cfg, seed=seed, data=replace(cfg.data, synthetic=replace(cfg.data.synthetic, objects=style)))

    cfg = config(objects)
    source, layout, size, rng = (
        SyntheticSource(cfg),
        SyntheticSource(config("parts")),
        cfg.data.image_size,
        random.Random(seed),
    )
    images, labels = [], []
    for i in range(n):
        raw = source.load(i)
        image, lab = raw.image, synthetic.part_labels(layout.load(i).meta, size)
        if stored:
            clean = clean_sample(raw, size, cfg.data.image_format, cfg.data.jpeg_quality)
            image = decode_image(clean.image)
        if crop:
            box = random_resized_crop_box(size, size, (0.9, 1.0), (3 / 4, 4 / 3), rng)
            image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
            lab_img = Image.fromarray((lab + 1).astype(np.uint8)).resize(
                (size, size), Image.Resampling.NEAREST, box=box
            )
            lab = np.asarray(lab_img).astype(np.int64) - 1
        images.append(to_uint8_tensor(image))
        labels.append(patch_labels(lab))
    return normalize(torch.stack(images), CLIP_MEAN, CLIP_STD), np.stack(labels)


def cluster_purity(images: torch.Tensor, labels: np.ndarray, draws: int = 5, threshold: float = 0.5) -> dict:
    """Clusters anchored on an object patch, with the default anchor ratio, `draws` anchor draws:
    - part: fraction of the cluster's other patches in the anchor's own part (clusters of 2+ patches);
    - object: ... in the anchor's object; background: ... on background;
    - spill: fraction of the anchor object's *other* parts' patches that join the cluster (1 when a
      cluster is the whole object, as a colour fill's is; 0 when it is one part);
    - recall: fraction of the anchor part's other patches that join; size: patches per cluster."""
    rows = []
    for d in range(draws):
        generator = torch.Generator().manual_seed(d)
        _, anchors, cluster_id = find_clusters(images, PATCH, ClusterParams().anchor_ratio, threshold, generator)
        for b in range(images.shape[0]):
            lab = labels[b]
            for slot, idx in enumerate(anchors[b].tolist()):
                own = lab[idx]
                if own < 0:
                    continue
                members = (cluster_id[b] == slot).numpy()
                members[idx] = False
                part = lab == own
                part[idx] = False
                other_parts = (lab // 4 == own // 4) & (lab >= 0) & (lab != own)
                joined = lab[members]
                rows.append(
                    {
                        "size": members.sum() + 1.0,
                        "part": (joined == own).mean() if members.any() else np.nan,
                        "object": ((joined >= 0) & (joined // 4 == own // 4)).mean() if members.any() else np.nan,
                        "background": (joined < 0).mean() if members.any() else np.nan,
                        "spill": members[other_parts].mean() if other_parts.any() else np.nan,
                        "recall": members[part].mean() if part.any() else np.nan,
                    }
                )
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    out["clusters"] = len(rows)
    return out


def test_clusters_anchored_on_an_object_stay_in_one_part():
    """The point of parts: on flat objects a cluster is the object's colour fill (it takes in most of
    the object's other parts); on textured parts it mostly stays in the anchor's part."""
    flat_scenes, parts_scenes = probe_scenes("flat", 200), probe_scenes("parts", 200)
    flat, parts = cluster_purity(*flat_scenes), cluster_purity(*parts_scenes)
    assert flat["clusters"] > 250 and parts["clusters"] == flat["clusters"]  # the same anchors, same layout
    assert flat["spill"] > 0.6 and parts["spill"] < 0.4, (flat, parts)
    assert parts["part"] > 0.45 and parts["part"] > flat["part"] + 0.15, (flat, parts)
    # why: a part's patches correlate with each other, much less with the object's other parts
    corr_flat, corr_parts = patch_correlations(*flat_scenes), patch_correlations(*parts_scenes)
    assert corr_flat["same part"] - corr_flat["other part, same object"] < 0.05, corr_flat
    assert corr_parts["same part"] - corr_parts["other part, same object"] > 0.2, corr_parts
    stored = cluster_purity(*probe_scenes("parts", 200, stored=True))  # the shards' JPEG keeps the textures
    assert stored["spill"] < 0.45 and stored["part"] > 0.45, stored


def patch_correlations(images: torch.Tensor, labels: np.ndarray) -> dict:
    """Mean Pearson correlation (cluster masking's similarity) between the patches of one part, of two
    parts of one object, and of an object part and the background."""
    unit = standardised_patches(images, PATCH)
    sums = {"same part": [], "other part, same object": [], "object and background": []}
    for b in range(images.shape[0]):
        sim, lab = (unit[b] @ unit[b].T).numpy(), labels[b]
        obj, off_diag = lab >= 0, ~np.eye(len(lab), dtype=bool)
        same_obj = obj[:, None] & obj[None, :] & (lab[:, None] // 4 == lab[None, :] // 4)
        same_part = same_obj & (lab[:, None] == lab[None, :]) & off_diag
        sums["same part"] += sim[same_part].tolist()
        sums["other part, same object"] += sim[same_obj & (lab[:, None] != lab[None, :])].tolist()
        sums["object and background"] += sim[obj[:, None] & (lab[None, :] < 0)].tolist()
    return {k: float(np.mean(v)) for k, v in sums.items()}


def part_geometry(n: int = 200, size: int = 64, patch: int = PATCH) -> dict:
    """Parts per object and patches per part (most common label) by object size, at `size` px cut into
    `patch` px patches (default: the synthetic preset's 64 px and 8 px)."""
    out: dict = {}
    for kind in ("small", "large"):
        counts, patches = [], []
        for i in range(n):
            _, _, meta = synthetic.generate_scene(0, i, size, 1, 3, 0.8, 0.7, objects="parts")
            lab = patch_labels(synthetic.part_labels(meta, size), patch)
            for k, o in enumerate(meta["objects"]):
                if o["size"] == kind:
                    counts.append(len(o["parts"]))
                    patches += [int((lab == 4 * k + j).sum()) for j in range(len(o["parts"]))]
        out[kind] = {
            "parts": round(float(np.mean(counts)), 2),
            "patches per part": round(float(np.mean(patches)), 2),
            "parts of 2+ patches": round(float(np.mean(np.array(patches) >= 2)), 2),
        }
    return out


if __name__ == "__main__":
    print("64 px, 8 px patches:", json.dumps(part_geometry()))
    print("224 px, 16 px patches:", json.dumps(part_geometry(100, 224, 16)))
    for stored, crop in [(False, False), (True, False), (True, True)]:
        for objects in ("flat", "parts"):
            images, labels = probe_scenes(objects, 200, stored, crop)
            m = {**cluster_purity(images, labels), **patch_correlations(images, labels)}
            print(f"stored={stored:d} crop={crop:d} {objects:5}", " | ".join(f"{k} {v:.3f}" for k, v in m.items()))
