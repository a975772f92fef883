import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp.data import synthetic


def test_same_seed_and_index_give_the_same_scene():
    a, cap_a, meta_a = synthetic.generate_scene(3, 17, 64)
    b, cap_b, meta_b = synthetic.generate_scene(3, 17, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and cap_a == cap_b and meta_a == meta_b
    c, _, _ = synthetic.generate_scene(4, 17, 64)
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, 10_000), size=st.sampled_from([32, 64, 96]))
def test_caption_label_and_negatives_describe_the_scene(index, size):
    image, caption, meta = synthetic.generate_scene(0, index, size, 1, 4)
    assert image.size == (size, size) and image.mode == "RGB"
    objs = meta["objects"]
    assert 1 <= len(objs) <= 4
    # the caption names every object with its size, colour and shape, first object first
    for o in objs:
        assert f"a {o['size']} {o['color']} {o['shape']}" in caption
    assert caption.startswith(f"a {objs[0]['size']} {objs[0]['color']} {objs[0]['shape']}")
    assert meta["labels"] == [f"{o['color']} {o['shape']}" for o in objs]
    if len(objs) == 1:  # a class label only where the image determines it
        assert synthetic.CLASS_NAMES[meta["label"]] == meta["label_name"] == meta["labels"][0]
    else:
        assert "label" not in meta and "label_name" not in meta
    neg = meta["negatives"]
    assert neg["attribute"] != caption and neg["object"] != caption
    if len(objs) >= 2:
        assert meta["relation"] in synthetic.RELATIONS and meta["relation"] in caption
        assert neg["relation"] == caption.replace(meta["relation"], synthetic.OPPOSITE[meta["relation"]], 1)
    else:
        assert meta["relation"] is None and neg["relation"] is None


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 10_000))
def test_relation_matches_object_positions(index):
    _, _, meta = synthetic.generate_scene(1, index, 64, 2, 2)
    (x0, y0, s0), (x1, y1, s1) = (o["box"] for o in meta["objects"])
    dx, dy = (x1 + s1 / 2) - (x0 + s0 / 2), (y1 + s1 / 2) - (y0 + s0 / 2)
    expected = ("left of" if dx > 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
    assert meta["relation"] == expected


def test_object_pixels_carry_their_named_colour():
    image, _, meta = synthetic.generate_scene(0, 5, 96, 1, 1)
    x, y, s = meta["objects"][0]["box"]
    centre = np.asarray(image, dtype=float)[int(y + s / 2), int(x + s / 2)]
    target = np.array(synthetic.COLORS[meta["objects"][0]["color"]], dtype=float)
    nearest = min(synthetic.COLORS, key=lambda c: np.abs(np.array(synthetic.COLORS[c]) - centre).sum())
    assert nearest == meta["objects"][0]["color"], (centre, target)


def test_textured_scenes_have_patterned_backgrounds():
    # with textured_fraction=1 no scene has a flat background (cluster masking needs pixel patterns)
    kinds = {synthetic.generate_scene(0, i, 32, textured_fraction=1.0)[2]["background"] for i in range(50)}
    assert "plain" not in kinds and len(kinds) >= 3
    kinds = {synthetic.generate_scene(0, i, 32, textured_fraction=0.0)[2]["background"] for i in range(10)}
    assert kinds == {"plain"}


def test_places_bring_their_background_objects_and_arrangement():
    hits = total = 0
    for i in range(120):
        _, _, meta = synthetic.generate_scene(2, i, 64, 1, 3, context=1.0)
        place = synthetic.PLACES[meta["place"]]
        assert meta["background"] in place.backgrounds
        for o in meta["objects"][:2]:
            assert o["color"] in place.colors and o["shape"] in place.shapes
        if meta["relation"]:
            total += 1
            hits += meta["relation"] == place.relation
    assert total > 40 and hits / total > 0.95
    # without context, nothing ties objects to the background
    assert {synthetic.generate_scene(2, i, 64, context=0.0)[2]["place"] for i in range(30)} == {None}


def test_background_texture_differs_across_channels():
    """Textures are tinted per channel: R, G and B do not carry the same pattern at the same strength."""
    spreads = []
    for i in range(30):
        image, _, meta = synthetic.generate_scene(5, i, 64, 1, 1, textured_fraction=1.0)
        x, y, side = meta["objects"][0]["box"]
        px = np.asarray(image, dtype=float)
        bg = np.ones(px.shape[:2], bool)
        bg[int(y) : int(y + side) + 1, int(x) : int(x + side) + 1] = False
        std = px[bg].std(axis=0)  # per channel
        spreads.append(std.max() / max(std.min(), 1e-6))
    assert np.median(spreads) > 1.3
