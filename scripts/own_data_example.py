"""Write example data in the layouts researchers already have, from images this project ships:

  OUT/img2dataset/{00000..}.tar   img2dataset's output: {key}.jpg + .txt + .json per sample and a
                                  {stem}_stats.json beside each tar, no manifest (the embedded scenes,
                                  seeded apart from the default training data, 96 x 80 px)
  OUT/wds_fashion_mnist/          a CLIP_benchmark classification root: classnames.txt,
                                  zeroshot_classification_templates.txt, test/ and train/ splits of
                                  {key}.webp + {key}.cls with nshards.txt (Debian's dataset-fashion-mnist)
  OUT/wds_scenes/                 a CLIP_benchmark retrieval root: dataset_type.txt, test/ shards of
                                  {key}.webp + {key}.txt with two captions, one a line

README "Your own data" trains in place on the first and evaluates on the other two. Usage:
  python scripts/own_data_example.py [OUT] [--samples N]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from maskvlp.config import EvalConfig
from maskvlp.data import fashion_mnist as fm
from maskvlp.data.synthetic import generate_scene

PER_SHARD = 500
SEED = 11  # the scenes of the example set: not the default training data's (seed 0)


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def write_tars(folder: Path, samples: list[dict[str, bytes]], name: str = "{:05d}.tar") -> list[int]:
    """Samples ({"__key__": str, ext: bytes}) into tars of PER_SHARD; the number in each tar."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = []
    for start in range(0, len(samples), PER_SHARD):
        chunk = samples[start : start + PER_SHARD]
        with tarfile.open(folder / name.format(len(counts)), "w") as tar:
            for sample in chunk:
                for ext, data in sample.items():
                    if ext != "__key__":
                        info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                        info.size, info.mtime = len(data), 0
                        tar.addfile(info, io.BytesIO(data))
        counts.append(len(chunk))
    return counts


def img2dataset(out: Path, n: int) -> None:
    samples = []
    for i in range(n):
        img, caption, _ = generate_scene(SEED, i, 96, context=0.7)
        key = f"{i:09d}"
        meta = {"key": key, "caption": caption, "status": "success", "width": 96, "height": 80}
        samples.append({"__key__": key, "jpg": encoded(img.crop((0, 8, 96, 88)), "JPEG"),
                        "txt": caption.encode(), "json": json.dumps(meta).encode()})  # fmt: skip
    for shard, count in enumerate(write_tars(out, samples)):
        stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats))


def classification(out: Path) -> None:
    (out / "classnames.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "classnames.txt").write_text("".join(f"{c}\n" for c in fm.CLASSES))
    templates = "".join(t.replace("{}", "{c}") + "\n" for t in fm.TEMPLATES)
    (out / "zeroshot_classification_templates.txt").write_text(templates)
    for split, source, limit in (("test", "test", 1000), ("train", "train", 2000)):
        images, labels = fm.load_split(EvalConfig().fashion_mnist_dir, source, limit)
        samples = [{"__key__": f"s{i:07d}", "webp": encoded(Image.fromarray(im).convert("RGB"), "WEBP"),
                    "cls": str(int(y)).encode()} for i, (im, y) in enumerate(zip(images, labels))]  # fmt: skip
        counts = write_tars(out / split, samples, "{}.tar")
        (out / split / "nshards.txt").write_text(f"{len(counts)}\n")


def retrieval(out: Path, n: int = 500) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_type.txt").write_text("retrieval\n")
    samples = []
    for i in range(n):
        img, caption, _ = generate_scene(SEED + 1, i, 96, context=0.7)
        lines = f"{caption}\na picture of {caption}\n"
        samples.append({"__key__": f"s{i:07d}", "webp": encoded(img, "WEBP"), "txt": lines.encode()})
    counts = write_tars(out / "test", samples, "{}.tar")
    (out / "test" / "nshards.txt").write_text(f"{len(counts)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="data/example", help="output folder (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4000, help="img2dataset pairs (default: %(default)s)")
    args = parser.parse_args()
    out = Path(args.out)
    img2dataset(out / "img2dataset", args.samples)
    classification(out / "wds_fashion_mnist")
    retrieval(out / "wds_scenes")
    print(f"wrote {out}/img2dataset ({args.samples} pairs), {out}/wds_fashion_mnist, {out}/wds_scenes")


if __name__ == "__main__":
    main()
