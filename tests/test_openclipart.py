"""OpenClipart metadata, captions, categories and rendering, on small SVG files written here."""

from __future__ import annotations

import pytest

from maskvlp.data import openclipart as oc

WORK = """<?xml version="1.0" encoding="{encoding}"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="{cc}" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     width="{width}pt" height="{height}pt" viewBox="0 0 {width} {height}">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag><rdf:li>hash</rdf:li><rdf:li></rdf:li>{keywords}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  {body}
</svg>"""


def svg(
    title="An  Apple",
    description="",
    keywords=("food", "Apple", "fruit", "apple"),
    body='<circle cx="50" cy="50" r="40" fill="#d22"/>',
    width=100,
    height=100,
    cc="http://web.resource.org/cc/",
    encoding="UTF-8",
) -> bytes:
    words = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    text = WORK.format(
        title=title, description=description, keywords=words, body=body, width=width, height=height, cc=cc,
        encoding=encoding,
    )  # fmt: skip
    return text.encode("utf-8" if encoding == "UTF-8" else encoding)


def test_title_description_and_keywords_come_from_the_work_not_the_author():
    meta = oc.parse_metadata(svg(description=" A red\n apple. "))
    assert meta == oc.Meta("An Apple", "A red apple.", ("food", "apple", "fruit"))  # placeholders and repeats gone
    newer = oc.parse_metadata(svg(cc="http://creativecommons.org/ns#"))  # the cc namespace's later version
    assert newer.title == "An Apple"
    latin = oc.parse_metadata(svg(title="Caf\u00e9 au lait", encoding="ISO-8859-1"))  # declared, not UTF-8
    assert latin.title == "Caf\u00e9 au lait"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_file"),
        (b"   \n", "empty_file"),
        (b"<svg><unclosed></svg>", "bad_svg"),
        ("<?xml version='1.0' encoding='UTF-8'?><svg>caf\xe9</svg>".encode("latin-1"), "bad_svg"),  # not UTF-8
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="1" height="1"/></svg>', "no_title"),
        (svg(title="   "), "no_title"),
        (b"<svg>" + b" " * (oc.MAX_SVG_BYTES + 1) + b"</svg>", "svg_too_large"),
    ],
)
def test_unusable_files_are_a_reason_to_skip_not_an_error(data, reason):
    assert oc.parse_metadata(data).reason == reason


def test_captions_from_a_template_leave_no_stray_punctuation():
    meta = oc.Meta("An Apple", "", ("food", "apple", "fruit", "red", "round", "shiny"))
    assert oc.caption(meta, "fruit") == "An Apple"
    assert oc.caption(meta, "fruit", "{title}. {description}, {keywords}") == "An Apple. food, apple, fruit, red, round"
    assert oc.caption(meta, "fruit", "a drawing of {title} ({category})") == "a drawing of An Apple (fruit)"
    assert oc.caption(oc.Meta("Pear", "", ()), "fruit", "{title}, {keywords}") == "Pear"


def test_categories_at_leaf_and_top_level_and_readable_class_names(tmp_path):
    root = tmp_path / "svg"
    assert oc.category(root / "food/fruit/a.svg", root) == "food/fruit"
    assert oc.category(root / "food/fruit/a.svg", root, "top") == "food"
    assert oc.category(root / "animals/a.svg", root) == "animals"
    assert oc.category(root / "unsorted/duplicates/a.svg", root) is None
    assert oc.category(root / "a.svg", root) is None
    names = oc.class_names(["food/fruit", "signs_and_symbols/flags", "recreation/games", "computer/games"])
    assert names["signs_and_symbols/flags"] == "flags" and names["food/fruit"] == "fruit"
    assert names["recreation/games"] == "recreation games" and names["computer/games"] == "computer games"


def test_render_keeps_the_aspect_on_the_background_and_refuses_blank_or_broken_drawings():
    wide = oc.render(svg(width=200, height=100, body='<rect width="200" height="100" fill="#00f"/>'), 32)
    assert wide.size == (32, 32) and wide.mode == "RGB"
    assert wide.getpixel((16, 16)) == (0, 0, 255) and wide.getpixel((16, 2)) == (255, 255, 255)  # letterboxed
    tall = oc.render(svg(width=50, height=100, body='<rect width="50" height="100" fill="#0f0"/>'), 32, (0, 0, 0))
    assert tall.getpixel((16, 16)) == (0, 255, 0) and tall.getpixel((2, 16)) == (0, 0, 0)
    assert oc.render(svg(body=""), 32).reason == "blank_render"
    assert oc.render(b"<svg><unclosed></svg>", 32).reason == "render_failed"


def _tree(root):
    """A small OpenClipart-like tree: two categories of 6 drawings, a rare one, duplicates, bad files."""
    colours = ["#d22", "#2d2", "#22d", "#dd2", "#2dd", "#d2d"]
    for folder, title in (("food/fruit", "apple"), ("animals/birds", "bird")):
        (root / folder).mkdir(parents=True)
        for i, c in enumerate(colours):
            body = f'<circle cx="50" cy="50" r="{20 + 3 * i}" fill="{c}"/>'
            (root / folder / f"{title}_{i}.svg").write_bytes(svg(title=f"A {title} {i}", body=body))
    (root / "food/fruit/broken.svg").write_bytes(b"<svg><unclosed>")
    (root / "food/fruit/untitled.svg").write_bytes(svg(title=""))
    (root / "food/fruit/empty_drawing.svg").write_bytes(svg(body=""))
    (root / "plants").mkdir()
    (root / "plants/tree.svg").write_bytes(svg(title="A tree"))  # 1 drawing: a rare category
    (root / "unsorted/duplicates").mkdir(parents=True)
    (root / "unsorted/duplicates/apple_0.svg").write_bytes(svg(title="A copy"))
    return root


def test_openclipart_source_shards_with_a_stratified_split_and_counts_every_skip(tmp_path):
    from maskvlp.data.shards import load_manifest, shard, shard_paths
    from maskvlp.params import load_config

    root = _tree(tmp_path / "svg")
    over = [
        "data.source=openclipart",
        f"data.openclipart.root={root}",
        "data.openclipart.min_per_class=5",
        "data.openclipart.template='a drawing of {title}'",
        f"data.out_dir={tmp_path / 'shards'}",
        "data.image_size=32",
        "data.num_workers=1",
        "data.val_fraction=0.2",
    ]
    manifest = shard(load_config(None, over), progress=False)
    assert manifest["source"]["classes"] == ["birds", "fruit"]  # leaf names, sorted by folder
    assert manifest["skipped"] == {
        "bad_svg": 1,
        "no_title": 1,
        "blank_render": 1,
        "rare_category": 1,
        "duplicates_or_uncategorised": 1,
    }
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 12
    import json
    import tarfile

    val = []
    for url in shard_paths(tmp_path / "shards", "val"):
        with tarfile.open(url) as tar:
            val += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    # stratified: every category has val drawings (fruit: 9 files, 6 usable; birds: 6)
    assert sorted({m["label_name"] for m in val}) == ["birds", "fruit"]
    again = shard(load_config(None, over), progress=False)  # deterministic by seed
    assert again["splits"] == load_manifest(tmp_path / "shards")["splits"]


def test_openclipart_missing_package_and_bad_template_are_clear(tmp_path):
    from maskvlp.config import ConfigError
    from maskvlp.data.sources import OpenClipartMissing, make_source
    from maskvlp.params import load_config

    cfg = load_config(None, ["data.source=openclipart", f"data.openclipart.root={tmp_path / 'none'}"])
    with pytest.raises(OpenClipartMissing, match="apt-get install openclipart-svg"):
        make_source(cfg)
    with pytest.raises(ConfigError, match="data.openclipart.template.*unknown field 'name'"):
        load_config(None, ["data.openclipart.template='{name}'"])
    with pytest.raises(ConfigError, match="data.openclipart.level"):
        load_config(None, ["data.openclipart.level=middle"])


@pytest.mark.parametrize(
    ("stem", "title"),
    [
        ("star_94pt05step", "star"),
        ("home6", "home"),
        ("aiga_barber_shop_beauty_salon1", "aiga barber shop beauty salon"),
        ("tasmania-outline", "tasmania outline"),
        ("jigsaw_red_09", "jigsaw red"),
        ("14_ellipse", "ellipse"),
        ("0123", ""),
    ],
)
def test_a_title_from_the_file_name_keeps_the_words_and_drops_numbers(stem, title):
    assert oc.name_title(f"/x/{stem}.svg") == title


def test_collection_titles_are_those_many_drawings_share_and_placeholders_are_dropped():
    titles = ["gramastar"] * 5 + ["card"] * 4 + ["An apple"]
    assert oc.collection_titles(titles, 5) == {"gramastar"}
    assert oc.collection_titles(titles, 4) == {"gramastar", "card"}
    assert oc.collection_titles(titles, 0) == set()
    meta = oc.parse_metadata(svg(description="HASH(0x85a831c)", keywords=("hash(0x8669854)", "usb", "connector")))
    assert meta.description == "" and meta.keywords == ("usb", "connector")


def test_drawings_titled_by_their_collection_are_captioned_from_their_file_names(tmp_path):
    """A set of drawings that all carry their collection's name as title ("Lemon SVG theme") would give
    identical captions: they get their file names' words instead, and the manifest counts them."""
    from maskvlp.config import ConfigError
    from maskvlp.data.shards import shard, shard_paths
    from maskvlp.params import load_config

    root = _tree(tmp_path / "svg")
    icons = root / "computer/icons"
    icons.mkdir(parents=True)
    for i, name in enumerate(["xeyes", "file_find", "knife2", "math-lsub", "home6"]):
        body = f'<rect width="{40 + 10 * i}" height="50" fill="#{i}{i}4"/>'
        (icons / f"{name}.svg").write_bytes(svg(title="Lemon SVG theme", body=body))
    over = [
        "data.source=openclipart",
        f"data.openclipart.root={root}",
        "data.openclipart.min_per_class=5",
        f"data.out_dir={tmp_path / 'shards'}",
        "data.image_size=32",
        "data.num_workers=1",
        "data.val_fraction=0.2",
    ]
    import json
    import tarfile

    def captions(extra):
        manifest = shard(load_config(None, over + extra), progress=False)
        got = {}
        for split in ("train", "val"):
            for url in shard_paths(tmp_path / "shards", split):
                with tarfile.open(url) as tar:
                    for m in tar.getmembers():
                        if m.name.endswith(".json") and "computer" in m.name:
                            meta = json.load(tar.extractfile(m))
                            got[meta["title"]] = meta.get("collection")
        return manifest, got

    manifest, got = captions([])
    assert got == dict.fromkeys(["xeyes", "file find", "knife", "math lsub", "home"], "Lemon SVG theme")
    assert manifest["source"]["collection_titles"] == 1 and manifest["source"]["collection_titled_drawings"] == 5
    _, off = captions(["data.openclipart.collection_title_min=0"])
    assert off == {"Lemon SVG theme": None}  # all five under one caption
    with pytest.raises(ConfigError, match="data.openclipart.collection_title_min"):
        load_config(None, ["data.openclipart.collection_title_min=1"])
