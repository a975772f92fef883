import numpy as np
import pytest

from maskvlp.config import ConfigError  # noqa: F401  (import check)
from maskvlp.data import emoji
from maskvlp.data.shards import shard

from .conftest import EMOJI_FONT, make_cfg, requires_emoji_font


def test_missing_font_gives_install_hint(tmp_path):
    with pytest.raises(emoji.EmojiFontMissing, match="apt-get install fonts-noto-color-emoji"):
        emoji.list_emoji(str(tmp_path / "nope.ttf"))


@requires_emoji_font
def test_font_lists_named_picture_emoji():
    table = emoji.list_emoji(EMOJI_FONT)
    assert len(table) > 1000
    names = dict(table)
    assert names[0x1F304] == "sunrise over mountains"
    assert all(not (0x1F3FB <= cp <= 0x1F3FF) for cp, _ in table)  # no skin-tone modifiers


@requires_emoji_font
def test_rendered_emoji_is_colourful_and_varies_by_variant():
    a, cap, meta = emoji.render_sample(EMOJI_FONT, (0x1F304,), 0, 0, 64)
    b, _, _ = emoji.render_sample(EMOJI_FONT, (0x1F304,), 0, 1, 64)
    arr = np.asarray(a, dtype=float)
    assert a.size == (64, 64) and "sunrise over mountains" in cap and meta["label_name"] == "sunrise over mountains"
    assert arr.std(axis=(0, 1)).max() > 20  # not a blank canvas
    assert not np.array_equal(arr, np.asarray(b))


@requires_emoji_font
def test_two_emoji_scene_has_relation_caption_and_negative():
    _, cap, meta = emoji.render_sample(EMOJI_FONT, (0x1F304, 0x1F680), 0, 3, 64)
    assert meta["relation"] in cap and cap.startswith("sunrise over mountains")
    negative = meta["negatives"]["relation"]
    assert negative != cap and sorted(negative.split()) == sorted(cap.split())  # the same words: objects swapped
    assert negative == f"rocket {meta['relation']} sunrise over mountains"


@requires_emoji_font
def test_emoji_source_shards_with_class_labels(tmp_path):
    cfg = make_cfg(
        tmp_path,
        "data.source=emoji",
        "data.emoji.max_emoji=20",
        "data.emoji.samples_per_emoji=2",
        "data.emoji.scene_fraction=0.25",
    )
    manifest = shard(cfg, progress=False)
    total = manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"]
    assert total == 20 * 2 + 10
    assert len(manifest["source"]["classes"]) == 20
