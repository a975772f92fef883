"""Folder + table and existing-shard sources, with every kind of bad input: skipped, counted, never a crash."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskvlp.config import ConfigError
from maskvlp.data.clean import to_rgb
from maskvlp.data.shards import ShardError, shard

from .conftest import make_cfg, write_tar


def _jpeg(color=(200, 30, 30), size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else (0, 200, 200, 0)).save(buf, "JPEG")
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_folder(root: Path) -> list[dict]:
    """Images of every odd kind plus broken ones; returns the table rows."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    good = {
        "rgb.jpg": _jpeg(),
        "sub/cmyk.jpg": _jpeg(mode="CMYK"),
        "palette.png": _png(Image.new("P", (20, 20), 3)),
        "alpha.png": _png(Image.new("RGBA", (20, 20), (0, 0, 255, 0))),
        "la.png": _png(Image.new("LA", (20, 20), (10, 128))),
        "gray16.png": _png(Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))),
        "tall.png": _png(Image.new("RGB", (16, 120), (0, 255, 0))),
    }
    bad = {
        "empty.jpg": b"",
        "garbage.jpg": b"this is not an image at all" * 10,
        "truncated.jpg": _jpeg(size=(200, 200))[:300],
        "dot.png": _png(Image.new("RGB", (1, 1))),  # below data.min_image_side
    }
    for name, data in {**good, **bad}.items():
        (root / name).write_bytes(data)
    rows = [{"path": n, "caption": f"picture {i}"} for i, n in enumerate({**good, **bad})]
    rows.append({"path": "missing.jpg", "caption": "gone"})
    rows.append({"path": "rgb.jpg", "caption": "the same file listed twice"})  # duplicate key
    rows.append({"path": "tall.png", "caption": "   "})  # empty caption (and duplicate, caption checked first)
    return rows


def test_to_rgb_handles_odd_modes():
    white16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(to_rgb(white16)).min() == 255  # 16-bit white stays white, not clipped grey
    clear = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    assert tuple(np.asarray(to_rgb(clear))[0, 0]) == (255, 255, 255)  # transparent -> white background
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_folder_source_skips_and_counts_each_bad_input(tmp_path, fmt):
    rows = make_folder(tmp_path / "imgs")
    df = pd.DataFrame(rows)
    table = tmp_path / f"pairs.{fmt}"
    {
        "csv": lambda: df.to_csv(table, index=False),
        "tsv": lambda: df.to_csv(table, sep="\t", index=False),
        "jsonl": lambda: df.to_json(table, orient="records", lines=True),
        "parquet": lambda: df.to_parquet(table),
    }[fmt]()
    cfg = make_cfg(
        tmp_path,
        "data.source=folder",
        f"data.folder.table={table}",
        f"data.folder.images_dir={tmp_path / 'imgs'}",
        "data.val_fraction=0",
    )
    manifest = shard(cfg, progress=False)
    assert manifest["splits"]["train"]["count"] == 7
    assert manifest["skipped"] == {
        "duplicate_key": 1,
        "empty_caption": 1,
        "empty_file": 1,
        "image_too_small": 1,
        "missing_file": 1,
        "truncated_image": 1,
        "unreadable_image": 1,
    }
    # every stored image was converted to RGB at the configured size
    with tarfile.open(Path(cfg.data.out_dir) / "train-000000.tar") as tar:
        jpgs = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
        img = Image.open(tar.extractfile(jpgs[0]))
        assert img.mode == "RGB" and img.size == (32, 32)


def test_non_utf8_caption_is_skipped(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "b.jpg").write_bytes(_jpeg())
    table = tmp_path / "pairs.csv"
    table.write_bytes(b"path,caption\na.jpg,fine caption\nb.jpg,caf\xe9 in latin-1\n")
    cfg = make_cfg(tmp_path, "data.source=folder", f"data.folder.table={table}", "data.val_fraction=0")
    manifest = shard(cfg, progress=False)
    assert manifest["splits"]["train"]["count"] == 1
    assert manifest["skipped"] == {"caption_not_utf8": 1}
    # the example said "can't encode character '\udce9' ... surrogates not allowed"
    assert manifest["skipped_examples"]["caption_not_utf8"] == [
        "b: caption is not valid UTF-8 (byte 0xe9 at position 3)"
    ]


def test_the_unreadable_image_example_names_the_file(tmp_path):
    """The example showed `cannot identify image file <_io.BytesIO object at 0x...>`."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "sub" / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    table = tmp_path / "pairs.csv"
    table.write_text("path,caption\na.jpg,fine\nsub/garbage.jpg,broken\n")
    cfg = make_cfg(tmp_path, "data.source=folder", f"data.folder.table={table}", "data.val_fraction=0")
    manifest = shard(cfg, progress=False)
    assert manifest["skipped_examples"]["unreadable_image"] == [
        "sub_garbage: cannot identify image file 'sub/garbage.jpg'"
    ]


def test_folder_missing_column_names_the_columns(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("file,text\na.jpg,x\n")
    cfg = make_cfg(tmp_path, "data.source=folder", f"data.folder.table={table}")
    with pytest.raises(ConfigError, match=r"path_column.*columns: file, text"):
        shard(cfg, progress=False)


def test_everything_skipped_fails_clearly_and_leaves_no_shards(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"")
    table = tmp_path / "pairs.csv"
    table.write_text("path,caption\nbad.jpg,x\nnothere.jpg,y\n")
    cfg = make_cfg(tmp_path, "data.source=folder", f"data.folder.table={table}")
    with pytest.raises(ShardError, match="every input was skipped.*empty_file=1.*missing_file=1"):
        shard(cfg, progress=False)
    assert not list(Path(cfg.data.out_dir).glob("*.tar"))


def test_shard_source_validates_img2dataset_style_shards(tmp_path):
    good = [
        ("000001.jpg", _jpeg()),
        ("000001.txt", b"a red thing"),
        ("000001.json", json.dumps({"url": "x", "label_name": "red"}).encode()),
        ("000002.png", _png(Image.new("RGB", (16, 16)))),
        ("000002.txt", b"png sample"),
        ("000003.jpg", _jpeg()),  # no caption
        ("000004.txt", b"no image"),
        ("000005.jpg", b""),
        ("000005.txt", b"empty image"),
        ("000006.jpg", _jpeg()),
        ("000006.txt", b"\xff\xfe bad"),
    ]
    write_tar(tmp_path / "in-000000.tar", good)
    # a truncated tar: the second shard is cut in the middle of a member
    write_tar(
        tmp_path / "full.tar",
        [m for i in range(10, 14) for m in ((f"{i:06d}.jpg", _jpeg()), (f"{i:06d}.txt", b"caption"))],
    )
    data = (tmp_path / "full.tar").read_bytes()
    # each sample is 2 x 512 header bytes + 1024 + 512 data bytes: cut inside the 4th sample's image
    (tmp_path / "in-000001.tar").write_bytes(data[: 3 * 2560 + 700])
    (tmp_path / "full.tar").unlink()
    cfg = make_cfg(
        tmp_path, "data.source=shards", f"data.shards.urls={tmp_path}/in-{{000000..000001}}.tar", "data.val_fraction=0"
    )
    manifest = shard(cfg, progress=False)
    assert manifest["splits"]["train"]["count"] == 2 + 3  # the complete samples before the cut are kept
    assert manifest["skipped"] == {
        "caption_not_utf8": 1,
        "empty_file": 1,
        "missing_caption": 1,
        "missing_image": 1,
        "truncated_tar": 1,
    }


def test_shard_source_with_no_matching_files_is_a_config_error(tmp_path):
    cfg = make_cfg(tmp_path, "data.source=shards", f"data.shards.urls={tmp_path}/none-*.tar")
    with pytest.raises(ConfigError, match="data.shards.urls"):
        shard(cfg, progress=False)


def test_malformed_table_rows_are_skipped_with_their_line_numbers(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / f"{name}.jpg").write_bytes(_jpeg())
    table = tmp_path / "pairs.csv"
    table.write_text(
        "path,caption\n"
        "a.jpg,a red square\n"
        "b.jpg,a caption,with a stray field\n"  # line 3: 3 fields
        'c.jpg,"a quote left open\n'  # line 4: swallows line 5
        "d.jpg,a dog\n"
        'e.jpg,"a quoted, fine caption"\n'
    )
    cfg = make_cfg(tmp_path, "data.source=folder", f"data.folder.table={table}", "data.val_fraction=0")
    manifest = shard(cfg, progress=False)
    assert manifest["skipped"] == {"malformed_row": 2}
    assert manifest["splits"]["train"]["count"] == 1  # a; e is glued into c's open quote
    examples = " ".join(manifest["skipped_examples"]["malformed_row"])
    assert "line 3: 3 field(s), the header has 2" in examples
    assert "lines 4-" in examples and "missing_file" not in manifest["skipped"]


def test_malformed_jsonl_lines_are_skipped_with_their_line_numbers(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    table = tmp_path / "pairs.jsonl"
    table.write_text('{"path": "a.jpg", "caption": "fine"}\n{"path": "b.jpg", "caption": \n[1, 2]\n')
    cfg = make_cfg(tmp_path, "data.source=folder", f"data.folder.table={table}", "data.val_fraction=0")
    manifest = shard(cfg, progress=False)
    assert manifest["skipped"] == {"malformed_row": 2}
    examples = " ".join(manifest["skipped_examples"]["malformed_row"])
    assert "line 2: not JSON" in examples and "line 3: not a JSON object" in examples


def test_a_folder_of_valid_images_of_odd_shapes_loses_nothing(tmp_path):
    """Shapes that the float crop box used to push a hair outside the image (5% of (m+37) x m)."""
    shapes = [(86, 49), (92, 55), (132, 95), (16, 4000), (4000, 16), (17, 16), (1199 + 37, 1199), (64, 64), (65, 63)]
    shapes += [(m + 37, m) for m in range(20, 200, 7)]
    rows = []
    for i, (w, h) in enumerate(shapes):
        name = f"img{i:03d}.png" if i % 2 else f"img{i:03d}.jpg"
        Image.new("RGB", (w, h), (i * 7 % 255, 90, 200)).save(tmp_path / name)
        rows.append({"path": name, "caption": f"a picture of {w} by {h}"})
    table = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    for size in (64, 224):
        cfg = make_cfg(
            tmp_path,
            "data.source=folder",
            f"data.folder.table={table}",
            f"data.image_size={size}",
            "data.val_fraction=0",
        )
        manifest = shard(cfg, progress=False)
        assert manifest["skipped"] == {}
        assert manifest["splits"]["train"]["count"] == len(shapes)


def _outside_layout(tmp_path: Path) -> tuple[Path, Path]:
    """imgs/ with an image and a symlink to an image outside it; a table naming ../, absolute and
    symlinked paths besides the one inside."""
    imgs, outside = tmp_path / "imgs", tmp_path / "private"
    imgs.mkdir()
    outside.mkdir()
    (imgs / "inside.jpg").write_bytes(_jpeg())
    (imgs / "sub").mkdir()
    (imgs / "sub" / "deep.jpg").write_bytes(_jpeg(color=(0, 90, 0)))
    (outside / "x.jpg").write_bytes(_jpeg(color=(10, 10, 200)))
    (outside / "abs.jpg").write_bytes(_jpeg(color=(10, 200, 10)))
    (outside / "linked.jpg").write_bytes(_jpeg(color=(200, 200, 10)))
    (imgs / "link.jpg").symlink_to(outside / "linked.jpg")
    (imgs / "inner-link.jpg").symlink_to(imgs / "inside.jpg")  # a symlink that stays inside is fine
    table = tmp_path / "pairs.csv"
    table.write_text(
        "path,caption\n"
        "inside.jpg,in the folder\n"
        "sub/../sub/deep.jpg,in a sub folder\n"
        "inner-link.jpg,a link inside\n"
        "../private/x.jpg,climbs out\n"
        f"{outside / 'abs.jpg'},absolute\n"
        "link.jpg,a link out\n"
    )
    return table, imgs


def _outside_cfg(tmp_path: Path, *extra: str):
    """The folder source over _outside_layout's table, every sample in the train split."""
    table, imgs = _outside_layout(tmp_path)
    folder = [f"data.folder.table={table}", f"data.folder.images_dir={imgs}", *extra]
    return make_cfg(tmp_path, "data.source=folder", *folder, "data.val_fraction=0")


def test_folder_source_keeps_every_path_inside_images_dir(tmp_path):
    """Table rows with ../, absolute paths or symlinks out of data.folder.images_dir were read into the shards."""
    cfg = _outside_cfg(tmp_path)
    manifest = shard(cfg, progress=False)
    assert manifest["splits"]["train"]["count"] == 3
    assert manifest["skipped"] == {"outside_folder": 3}
    examples = " ".join(manifest["skipped_examples"]["outside_folder"])
    for rel in ("../private/x.jpg", str(tmp_path / "private" / "abs.jpg"), "link.jpg"):
        assert rel in examples
    assert "data.folder.allow_outside" in examples
    with tarfile.open(Path(cfg.data.out_dir) / "train-000000.tar") as tar:
        captions = sorted(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt"))
    assert captions == ["a link inside", "in a sub folder", "in the folder"]


def test_folder_source_reads_outside_paths_when_allowed(tmp_path):
    cfg = _outside_cfg(tmp_path, "data.folder.allow_outside=true")
    manifest = shard(cfg, progress=False)
    assert manifest["splits"]["train"]["count"] == 6 and manifest["skipped"] == {}
