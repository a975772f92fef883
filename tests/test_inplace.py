"""Training in place on existing img2dataset-style shards: no shard stage, nothing written beside them,
unusable samples skipped and counted, exact resume, remote shards, upsampling, held-out val shards."""

import io
import json
import random
import tarfile
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from maskvlp.config import ConfigError
from maskvlp.data.clean import clean_sample
from maskvlp.data.loader import StreamSpec, TrainStream, epoch_shards, in_place_image
from maskvlp.data.shards import ShardError, shard
from maskvlp.data.sources import RawSample
from maskvlp.data.synthetic import generate_scene
from maskvlp.data.trainset import training_data
from maskvlp.data.transforms import train_image
from maskvlp.params import load_config
from maskvlp.runs import read_result, run_paths
from maskvlp.train import pretrain

from .conftest import StopAfter

SHARDS, PER_SHARD = 4, 40
# planted in the middle of shard 1 (never first in a shard: the stream reads one sample ahead)
BAD = {"unreadable_image": 1, "missing_caption": 1, "caption_not_utf8": 1, "empty_caption": 1, "image_too_small": 1}


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset(root: Path, shards: int = SHARDS, stats: bool = True, bad: bool = True) -> Path:
    """img2dataset's output layout: {00000..}.tar with {key}.jpg / .txt / .json, a {stem}_stats.json beside
    each tar, no manifest. Images are non-square (56 x 44) synthetic scenes; shard 1 holds one bad sample of
    each kind in BAD."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        written = 0
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                key = f"{s:05d}{i:04d}"
                img, caption, _ = generate_scene(0, s * PER_SHARD + i, 56, 1, 2)
                img = img.crop((0, 6, 56, 50))
                files = {"jpg": _jpeg(img), "txt": caption.encode()}
                if bad and s == 1 and 10 <= i < 10 + len(BAD):
                    kind = list(BAD)[i - 10]
                    if kind == "unreadable_image":
                        files["jpg"] = b"this is not a jpeg"
                    elif kind == "missing_caption":
                        del files["txt"]
                    elif kind == "caption_not_utf8":
                        files["txt"] = b"a red \xff\xfe circle"
                    elif kind == "empty_caption":
                        files["txt"] = b"   "
                    else:
                        files["jpg"] = _jpeg(img.resize((8, 8)))
                files["json"] = json.dumps({"key": key, "status": "success", "url": f"http://x/{key}.jpg"}).encode()
                for ext, data in files.items():
                    _add(tar, f"{key}.{ext}", data)
                written += 1
        if stats:
            (root / f"{s:05d}_stats.json").write_text(
                json.dumps({"count": written + 3, "successes": written, "failed_to_download": 3})
            )
    return root


def inplace_cfg(urls: str, runs: Path, *extra: str):
    return load_config(
        None,
        [
            "data.source=shards",
            f"data.shards.urls={urls}",
            "data.shards.in_place=true",
            "data.image_size=32",
            "data.min_image_side=16",
            "data.loader_workers=0",
            "data.shuffle_buffer=10",
            "model.image_size=32",
            "model.patch_size=8",
            "model.embed_dim=32",
            "model.context_length=24",
            f"train.runs_dir={runs}",
            f"data.out_dir={runs}/no-shards-here",  # no shard stage: nothing may need its folder
            "train.samples=192",
            "train.batch_size=16",
            "train.warmup_samples=32",
            "train.checkpoint_every_samples=64",
            "train.log_every_steps=2",
            "train.mask_image_every_steps=0",
            "masking.strategy=random",
            "eval.datasets=[objects]",
            *extra,
        ],
    )


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def weights(cfg) -> dict[str, torch.Tensor]:
    return load_file(str(run_paths(cfg).model))


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_img2dataset(tmp_path_factory.mktemp("img2dataset") / "cc")


@pytest.fixture(scope="module")
def whole_run(data, tmp_path_factory):
    """One uninterrupted in-place run (2 logical streams decoded by 2 workers) other tests compare with."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = inplace_cfg(f"{data}/{{00000..00003}}.tar", runs, "data.loader_workers=2")
    before = listing(data)
    result = pretrain(cfg, progress=False)
    assert listing(data) == before, "in-place training wrote beside the shards"
    return cfg, result


def test_trains_in_place_skipping_and_counting_unusable_samples(whole_run, data):
    cfg, result = whole_run
    assert result["status"] == "complete" and result["samples_seen"] == 192
    # 192 samples of 155 usable ones a pass: each planted sample was met at least once, and only those
    skipped = result["data_skipped"]
    assert set(skipped) == set(BAD), skipped
    assert all(1 <= n <= 2 for n in skipped.values()), skipped
    assert result["unique_pairs"] == SHARDS * PER_SHARD  # from the _stats.json files, not a count
    assert not run_paths(cfg).shard_counts.exists()
    info = json.loads(run_paths(cfg).info.read_text())
    assert info["in_place"] is True and info["train_shards"] == SHARDS and "manifest_sha256" not in info
    assert not (Path(cfg.data.out_dir) / "manifest.json").exists()  # no shard stage ran


def test_resumed_in_place_run_equals_an_uninterrupted_one(whole_run, data, tmp_path):
    whole, result = whole_run
    split = inplace_cfg(f"{data}/{{00000..00003}}.tar", tmp_path, "data.loader_workers=2")
    first = pretrain(split, progress=False, stop=StopAfter(5))
    assert first["status"] == "stopped" and first["steps"] == 5
    second = pretrain(split, resume=True, progress=False)
    assert second["status"] == "complete"
    assert same_weights(weights(whole), weights(split))
    assert second["data_skipped"] == result["data_skipped"]  # each skip counted once, as without the stop


def test_batches_do_not_depend_on_the_number_of_workers(data):
    spec = StreamSpec(
        tuple(f"{data}/{s:05d}.tar" for s in range(SHARDS)),
        batch_size=16,
        image_size=32,
        context_length=24,
        shuffle_buffer=10,
        streams=2,
        in_place=True,
        data_size=32,
        min_side=16,
    )
    from maskvlp.data.loader import train_loader

    def take(workers: int) -> list[dict]:
        it = iter(train_loader(spec, workers))
        return [next(it) for _ in range(12)]  # past one pass (155 usable samples)

    a, b = take(0), take(2)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"] and torch.equal(x["images"], y["images"]) and x["raw_end"] == y["raw_end"]
    met = Counter()
    for batch in a:
        assert len(batch["keys"]) == 16 and len(set(batch["keys"])) == 16
        met.update(batch["skipped"])
    assert set(met) == set(BAD)
    # a stream started at step 6 from the positions the first 6 batches reached gives batches 6..11
    positions = {}
    for batch in a[:6]:
        positions[batch["stream"]] = batch["raw_end"]
    resumed = iter(TrainStream(spec, start_step=6, positions=positions))
    for want in a[6:]:
        got = next(resumed)
        assert got["keys"] == want["keys"] and torch.equal(got["images"], want["images"])


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(16, 90),
    height=st.integers(16, 90),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P"]),
    seed=st.integers(0, 2**31),
)
def test_in_place_crop_equals_the_shard_stage_then_the_training_crop(width, height, mode, seed):
    """The in-place path decodes and centre-crops as the shard stage stores an image (lossless here), then
    crops as training crops a stored image: the same pixels, drawing the same random numbers."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    stored = clean_sample(RawSample("k", buf.getvalue(), "a caption"), 24, "png", 95)
    spec = StreamSpec(("x",), 1, 16, 8, in_place=True, data_size=24, min_side=1, hflip=True, crop_scale=(0.3, 1.0))
    got = in_place_image(buf.getvalue(), spec, random.Random(seed))
    want = train_image(stored.image, 16, (0.3, 1.0), spec.crop_ratio, random.Random(seed), True)
    assert torch.equal(got, want)


def test_counts_without_stats_are_counted_once_into_the_run_folder(tmp_path):
    data = write_img2dataset(tmp_path / "nostats", shards=2, stats=False, bad=False)
    cfg = inplace_cfg(f"{data}/*.tar", tmp_path / "runs", "train.unique_pairs=50", "train.samples=64")
    before = listing(data)
    result = pretrain(cfg, progress=False)
    assert result["status"] == "complete" and result["unique_pairs"] == 50
    counts = json.loads(run_paths(cfg).shard_counts.read_text())
    assert sorted(counts.values()) == [PER_SHARD, PER_SHARD]
    assert listing(data) == before
    with pytest.raises(ShardError, match="unique_pairs=81 exceeds the 80 pairs"):
        training_data(inplace_cfg(f"{data}/*.tar", tmp_path / "runs")).limits(81)


def test_remote_shards_train_like_local_ones(whole_run, data, tmp_path):
    """The same shards through `pipe:cat` and from an HTTP server on 127.0.0.1: the same weights."""
    whole, _ = whole_run
    piped = inplace_cfg(f"pipe:cat {data}/{{00000..00003}}.tar", tmp_path / "pipe", "data.loader_workers=2")
    assert pretrain(piped, progress=False)["status"] == "complete"
    assert same_weights(weights(whole), weights(piped))

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(data)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{00000..00003}}.tar"
        served = inplace_cfg(url, tmp_path / "http", "data.loader_workers=2")
        result = pretrain(served, progress=False)
    finally:
        server.shutdown()
    assert result["status"] == "complete" and result["unique_pairs"] == SHARDS * PER_SHARD  # _stats.json over HTTP
    assert same_weights(weights(whole), weights(served))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_upsampling_repeats_shards_per_epoch():
    urls = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    assert Counter(epoch_shards(urls, (1.0, 2.0, 3.0), rng)) == {"a": 1, "b": 2, "c": 3}
    reads = Counter()
    for epoch in range(2000):
        reads.update(epoch_shards(urls, (0.5, 1.0, 1.25), np.random.default_rng(epoch)))
    assert reads["b"] == 2000
    assert reads["a"] / 2000 == pytest.approx(0.5, abs=0.04) and reads["c"] / 2000 == pytest.approx(1.25, abs=0.04)


def test_sources_joined_with_upsampling_factors(tmp_path):
    a = write_img2dataset(tmp_path / "a", shards=2, bad=False)
    b = write_img2dataset(tmp_path / "b", shards=1, bad=False)
    cfg = inplace_cfg(f"{a}/*.tar::{b}/*.tar", tmp_path / "runs", "data.shards.upsampling=1::3")
    data = training_data(cfg)
    assert data.weights == (1.0, 1.0, 3.0) and data.train[-1] == f"{b}/00000.tar"
    spec = StreamSpec(data.train, 40, 32, 24, shuffle_buffer=1, in_place=True, data_size=32, weights=data.weights)
    stream = iter(TrainStream(spec))
    keys = [k for _ in range(5) for k in next(stream)["keys"]]  # one epoch: 2 x 40 from a, 3 x 40 from b
    assert len(keys) == 200 and Counter(k[:5] for k in keys) == {"00000": 160, "00001": 40}
    with pytest.raises(ConfigError, match="data.shards.urls: .* named twice"):
        training_data(inplace_cfg(f"{a}/*.tar::{a}/00000.tar", tmp_path / "runs"))


def test_val_split_from_val_urls_or_held_out_shards(data, tmp_path):
    held = training_data(inplace_cfg(f"{data}/*.tar", tmp_path, "data.shards.val_shard_fraction=0.25"))
    assert len(held.val) == 1 and len(held.train) == SHARDS - 1 and not set(held.val) & set(held.train)
    again = training_data(inplace_cfg(f"{data}/*.tar", tmp_path, "data.shards.val_shard_fraction=0.25"))
    assert again.val == held.val  # seeded by `seed`
    others = {
        training_data(inplace_cfg(f"{data}/*.tar", tmp_path, f"seed={s}", "data.shards.val_shard_fraction=0.25")).val
        for s in range(8)
    }
    assert len(others) > 1
    named = training_data(
        inplace_cfg(f"{data}/{{00000..00002}}.tar", tmp_path, f"data.shards.val_urls={data}/00003.tar")
    )
    assert named.val == (f"{data}/00003.tar",) and len(named.train) == 3
    with pytest.raises(ConfigError, match="val_urls: .* is a train shard too"):
        training_data(inplace_cfg(f"{data}/*.tar", tmp_path, f"data.shards.val_urls={data}/00003.tar"))
    with pytest.raises(ConfigError, match="names no shard file"):
        training_data(inplace_cfg(f"{data}/nothing-*.tar", tmp_path))


def test_val_evaluation_reads_the_held_out_shards(whole_run, data, tmp_path):
    from maskvlp.evalsets import val_set

    cfg = inplace_cfg(f"{data}/*.tar", tmp_path, "data.shards.val_shard_fraction=0.25")
    es = val_set(cfg, "val")
    keys = [k for batch in es.batches(32, 64) for k in batch["keys"]]
    shard_of_val = int(Path(training_data(cfg).val[0]).stem)
    assert keys and all(int(k[:5]) == shard_of_val for k in keys)
    no_val = inplace_cfg(f"{data}/*.tar", tmp_path)
    with pytest.raises(ValueError, match="val_shard_fraction"):
        val_set(no_val, "val")


def test_the_shard_stage_refuses_in_place_data(data, tmp_path):
    with pytest.raises(ShardError, match="in_place=true"):
        shard(inplace_cfg(f"{data}/*.tar", tmp_path), progress=False)


def test_a_run_over_nothing_usable_says_so(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i in range(4):
            _add(tar, f"k{i}.jpg", b"garbage")
            _add(tar, f"k{i}.txt", b"a caption")
    with pytest.raises(ValueError, match="no usable sample"):
        pretrain(inplace_cfg(f"{root}/*.tar", tmp_path / "runs", "train.samples=32"), progress=False)
    assert read_result(run_paths(inplace_cfg(f"{root}/*.tar", tmp_path / "runs")))["status"] == "failed"


def test_masks_command_shows_and_calibrates_on_the_shards_in_place(data, tmp_path, capsys):
    from maskvlp.cli import main

    out = tmp_path / "masks.png"
    args = [
        "--set",
        "data.source=shards",
        "--set",
        f"data.shards.urls={data}/*.tar",
        "--set",
        "data.shards.in_place=true",
    ]
    args += ["--set", "data.image_size=32", "--set", "model.image_size=32", "--set", "model.patch_size=8"]
    args += ["--set", "masking.calibrate_coverage=0.3", "--set", "data.min_image_side=16"]
    assert main(["masks", *args, "--count", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "threshold" in text, text
