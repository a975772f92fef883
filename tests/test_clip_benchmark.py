"""CLIP_benchmark's webdataset layouts in evaluation (data/clipbench.py, evalsets.clipbench_set): a
classification root (classnames.txt, templates, test/ and train/ of .webp + .cls shards) and a
retrieval root (.txt with one caption a line), written here from the embedded scenes as CLIP_benchmark's
converter writes them, with bad samples of each kind, evaluated with a really trained tiny model."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from maskvlp.cli import main
from maskvlp.data import clipbench, synthetic
from maskvlp.evalsets import EvalSetError, resolve
from maskvlp.evaltasks import TEMPLATES, Encoded, classifier_weights, encode_texts, retrieval
from maskvlp.params import load_config

from .conftest import as_set_args, make_tiny_shards, tiny_run

pytestmark = pytest.mark.slow

CLASSES = synthetic.CLASS_NAMES  # 32
PER_CLASS = 2
TEMPLATE = "a tiny sketch of a {c}."
# bad samples: (members, the reason they are skipped)
BAD_CLS = [
    ({"webp": b"not an image at all"}, {"cls": b"3"}, "unreadable_image"),
    ({}, {"cls": b"1"}, "missing_image"),
    ({"webp": None}, {}, "missing_label"),
    ({"webp": None}, {"cls": b"seven"}, "label_not_integer"),
    ({"webp": None}, {"cls": b"32"}, "label_out_of_range"),
]
BAD_TXT = [
    ({"webp": b"\x00\x01 garbage"}, {"txt": b"a caption"}, "unreadable_image"),
    ({"webp": None}, {}, "missing_caption"),
    ({"webp": None}, {"txt": b"caf\xe9 au lait\nsecond line"}, "caption_not_utf8"),
    ({"webp": None}, {"txt": b"\n  \n"}, "empty_caption"),
]


def _encoded(image, fmt: str = "WEBP") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"s{i:07d}.{ext}" if "__key__" not in sample else f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _write_split(folder: Path, samples: list[dict[str, bytes]], shards: int) -> None:
    per = -(-len(samples) // shards)
    for n in range(shards):
        _write_tar(folder / f"{n}.tar", samples[n * per : (n + 1) * per])
    (folder / "nshards.txt").write_text(f"{shards}\n")


def _scenes(seed: int, per_class: int) -> list[tuple[object, str, int]]:
    """Single-object scenes, `per_class` of each class: (image, caption, class index)."""
    out, counts, index = [], Counter(), 0
    while len(out) < per_class * len(CLASSES):
        image, caption, meta = synthetic.generate_scene(seed, index, 32, 1, 1)
        index += 1
        if counts[meta["label"]] < per_class:
            counts[meta["label"]] += 1
            out.append((image, caption, meta["label"]))
    return out


def _bad(cases, good_image: bytes) -> list[dict[str, bytes]]:
    return [{**{k: v or good_image for k, v in img.items()}, **rest} for img, rest, _ in cases]


def make_classification_root(root: Path) -> dict[str, int]:
    """wds_objects/: test/ (2 shards: 64 good samples in .webp, .png and .jpg, 5 bad), train/ (64 good,
    1 bad), classnames.txt, a one-template templates file. The good test samples' count."""
    test = [
        {["webp", "png", "jpg"][i % 3]: _encoded(im, ["WEBP", "PNG", "JPEG"][i % 3]), "cls": b"%d" % y}
        for i, (im, _, y) in enumerate(_scenes(11, PER_CLASS))
    ]
    _write_split(root / "test", test[:40] + _bad(BAD_CLS, test[0]["webp"]) + test[40:], shards=2)
    train = [{"webp": _encoded(im), "cls": b"%d\n" % y} for im, _, y in _scenes(12, PER_CLASS)]
    _write_split(root / "train", train + [{"webp": train[0]["webp"]}], shards=1)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text(TEMPLATE + "\n")
    return {"good": len(test)}


def make_retrieval_root(root: Path, dataset_type: bool = True) -> dict[str, int]:
    """wds_scenes/: test/ of 24 images whose .txt holds 1 to 3 captions a line (a blank line among
    them), 4 bad samples. The good samples' and their non-blank lines' counts."""
    samples, lines = [], 0
    for i, (im, caption, _) in enumerate(_scenes(13, 1)[:24]):
        own = [caption, f"a picture of {caption}", f"  {caption}  seen from   far away "][: 1 + i % 3]
        lines += len(own)
        samples.append({"jpg": _encoded(im, "JPEG"), "txt": ("\n\n".join(own) + "\n").encode()})
    _write_split(root / "test", samples[:10] + _bad(BAD_TXT, samples[0]["jpg"]) + samples[10:], shards=1)
    if dataset_type:
        (root / "dataset_type.txt").write_text("retrieval\n")
    return {"good": len(samples), "lines": lines}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny finished run (as tests/test_train.py's fixtures make one) and its overrides."""
    tmp = tmp_path_factory.mktemp("clipbench")
    shards = make_tiny_shards(tmp, 300)
    overrides = tiny_run(shards, 300, tmp / "runs", "train.samples=128", "train.batch_size=32", "eval.batch_size=64")
    from maskvlp.train import pretrain

    torch.set_num_threads(1)
    pretrain(load_config(None, overrides), progress=False)
    return tmp / "runs" / "default", overrides


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, tuple[Path, dict[str, int]]]:
    base = tmp_path_factory.mktemp("wds")
    cls, ret = base / "wds_objects", base / "wds_scenes"
    return {"cls": (cls, make_classification_root(cls)), "ret": (ret, make_retrieval_root(ret))}


def _extra(run: Path, name: str) -> tuple[dict, dict]:
    folder = run / "eval-extra" / name
    return json.loads((folder / "metrics.json").read_text()), json.loads((folder / "notes.json").read_text())


# ------------------------------------------------------------------------ classification
def test_classification_root_zero_shot_probe_and_skips(trained, roots, capsys):
    run, overrides = trained
    root, counts = roots["cls"]
    assert main(["evaluate", "--quiet", "--run", str(run), "--dataset", str(root), *as_set_args(overrides)]) == 0
    metrics, notes = _extra(run, "wds_objects")  # named after the root's folder, not "0" or "test"
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert 0 <= metrics[f"zeroshot/wds_objects/{key}"] <= 1
    assert metrics["zeroshot/wds_objects/chance_top1"] == pytest.approx(1 / len(CLASSES))
    assert metrics["zeroshot/wds_objects/samples"] == counts["good"]  # every good sample, whatever its format
    assert "linear_probe/wds_objects/top1" in metrics  # train/ exists
    assert not any(k.startswith("retrieval/") for k in metrics)  # class names are no captions to retrieve
    reasons = {reason: 1 for _, _, reason in BAD_CLS} | {"train/missing_label": 1}
    assert notes["skipped"] == reasons
    assert any("32 classes from classnames.txt, 1 templates from zeroshot_classification" in n for n in notes["notes"])
    out = capsys.readouterr().out
    assert "wds_objects: skipped 6" in out and "eval-extra/wds_objects/metrics.json" in out


def test_the_root_s_templates_make_the_classifier(trained, roots):
    from maskvlp.data.tokenizer import Tokenizer
    from maskvlp.evaluate import load_run

    run, overrides = trained
    es = resolve(load_config(None, overrides), str(roots["cls"][0]))
    assert es.classes == CLASSES and es.templates == ("a tiny sketch of a {}.",)  # {c} in evaltasks' {} form
    model, run_cfg = load_run(run)
    tok, cpu = Tokenizer(run_cfg.model.context_length), torch.device("cpu")
    ours = classifier_weights(model, es.classes, tok, cpu, es.templates)
    default = classifier_weights(model, es.classes, tok, cpu, TEMPLATES)
    alone = torch.nn.functional.normalize(encode_texts(model, [f"a tiny sketch of a {c}." for c in CLASSES], tok, cpu))
    assert torch.allclose(ours, alone, atol=1e-5) and not torch.allclose(ours, default, atol=1e-3)


def test_a_split_folder_is_named_after_its_root_and_the_probe_needs_train(trained, roots, tmp_path):
    cfg = load_config(None, trained[1])
    root = roots["cls"][0]
    es = resolve(cfg, str(root / "test"))
    assert es.name == "wds_objects" and es.train_batches is not None
    assert resolve(cfg, str(root / "train")).train_batches is None  # the evaluated split is no probe split
    lone = tmp_path / "wds_lone"
    shutil.copytree(root, lone, ignore=shutil.ignore_patterns("train"))
    assert resolve(cfg, str(lone)).train_batches is None
    run, overrides = trained
    assert main(["evaluate", "--quiet", "--run", str(run), "--dataset", str(lone), *as_set_args(overrides)]) == 0
    metrics, notes = _extra(run, "wds_lone")
    assert "zeroshot/wds_lone/top1" in metrics and not any(k.startswith("linear_probe/") for k in metrics)
    assert "wds_lone: no train split, so no linear probe" in notes["notes"]


def test_a_root_without_classnames_says_which_file_to_add(trained, roots, tmp_path, capsys):
    root = tmp_path / "wds_nameless"
    shutil.copytree(roots["cls"][0], root, ignore=shutil.ignore_patterns("classnames.txt", "zero*"))
    with pytest.raises(EvalSetError, match=f"{root / 'classnames.txt'} is missing: add it"):
        resolve(load_config(None, trained[1]), str(root))
    run, overrides = trained
    assert main(["evaluate", "--quiet", "--run", str(run), "--dataset", str(root), *as_set_args(overrides)]) == 1
    assert "classnames.txt is missing" in capsys.readouterr().err


def test_layout_errors_name_the_file(tmp_path):
    root = tmp_path / "wds_x"
    _write_split(root / "test", [{"webp": b"x", "cls": b"0"}], shards=1)
    (root / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(clipbench.ClipBenchError, match=r"counts 3 shards but 2 are missing \(1.tar, 2.tar\)"):
        clipbench.layout(root)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(clipbench.ClipBenchError, match="multilabel"):
        clipbench.layout(root)
    (root / "dataset_type.txt").unlink()
    (root / "classnames.txt").write_text("cat\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\nthe {d}.\n")
    with pytest.raises(clipbench.ClipBenchError, match="templates.txt, line 2: 'the {d}.'"):
        clipbench.layout(root)
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\n\nthe {}.\n")  # both forms
    assert clipbench.layout(root).templates == ("a {}.", "the {}.")
    assert clipbench.find_root(tmp_path) is None and clipbench.find_root(root / "test") == (root, "test")


# ------------------------------------------------------------------------------ retrieval
def test_retrieval_root_every_line_is_a_caption(trained, roots, tmp_path):
    run, overrides = trained
    root, counts = roots["ret"]
    assert main(["evaluate", "--quiet", "--run", str(run), "--dataset", str(root), *as_set_args(overrides)]) == 0
    metrics, notes = _extra(run, "wds_scenes")
    assert metrics["retrieval/wds_scenes/samples"] == counts["good"]
    assert metrics["retrieval/wds_scenes/captions"] == counts["lines"] > counts["good"]
    for k in (1, 5, 10):
        assert 0 <= metrics[f"retrieval/wds_scenes/i2t_r{k}"] <= 1 and 0 <= metrics[f"retrieval/wds_scenes/t2i_r{k}"]
    assert notes["skipped"] == {reason: 1 for _, _, reason in BAD_TXT}
    assert any(f"{counts['lines']} captions of {counts['good']} images" in n for n in notes["notes"])
    assert not any(k.startswith("zeroshot/") for k in metrics)
    # without dataset_type.txt the samples' .txt says retrieval
    bare = tmp_path / "wds_bare"
    make_retrieval_root(bare, dataset_type=False)
    es = resolve(load_config(None, overrides), str(bare))
    assert es.retrieval and es.classes is None and es.name == "wds_bare"
    batches = list(es.batches(32, 8))
    assert sum(1 + len(m["captions"]) for b in batches for m in b["metas"]) == counts["lines"]


def test_retrieval_scores_every_line_as_a_positive_of_its_image(trained):
    """A hand-made case: each image's feature is the text feature of one of its own captions, not
    always the first, so image->text R@1 is 1 only if every line is a positive of its image."""
    from maskvlp.data.tokenizer import Tokenizer
    from maskvlp.evaluate import load_run

    model, run_cfg = load_run(trained[0])
    tok, cpu = Tokenizer(run_cfg.model.context_length), torch.device("cpu")
    own = [["red circle", "a photo of a red circle"], ["blue square"], ["green star", "big green star", "a star"]]
    texts = [t for captions in own for t in captions]
    text_features = encode_texts(model, texts, tok, cpu)
    features = text_features[[1, 2, 5]]  # image 0 = its 2nd line, image 1 = its only line, image 2 = its 3rd
    enc = Encoded(features, [c[0] for c in own], [{"captions": c[1:]} for c in own], ["a", "b", "c"])
    res = retrieval(model, enc, tok, cpu)
    assert res["i2t_r1"] == 1.0
    # text -> image by hand: caption t (of image `mine`) is a hit at k when fewer than k other images
    # score at least as high as its own
    sim, owner = features @ text_features.T, [0, 0, 1, 2, 2, 2]
    for k in (1, 5, 10):
        hits = [int((sim[:, t] >= sim[mine, t]).sum()) - 1 < k for t, mine in enumerate(owner)]
        assert res[f"t2i_r{k}"] == pytest.approx(sum(hits) / len(texts))
    assert res["t2i_r5"] == 1.0  # 3 images: any caption's image ranks within 5


# ------------------------------------------------------------------------- the reader alone
def test_a_truncated_shard_is_counted_and_the_rest_read(roots, tmp_path):
    root = tmp_path / "wds_cut"
    shutil.copytree(roots["cls"][0], root)
    whole = (root / "test" / "0.tar").read_bytes()
    (root / "test" / "0.tar").write_bytes(whole[: len(whole) // 2 + 700])  # cut inside a member
    lay, skipped = clipbench.layout(root), Counter()
    items = list(clipbench.read_samples(lay.urls, lay, 16, skipped))
    assert skipped["truncated_tar"] == 1 and 32 <= len(items) < roots["cls"][1]["good"]
    assert all(it["image"].shape == (3, 16, 16) and it["caption"] == CLASSES[it["meta"]["label"]] for it in items)


@given(st.lists(st.text(alphabet="ab c\t\u00e9", max_size=12), max_size=6))
def test_caption_lines_keep_every_non_blank_line(lines):
    got = clipbench.caption_lines("\n".join(lines).encode())
    want = [" ".join(line.split()) for line in lines if line.split()]
    assert got == want if want else got.reason in ("empty_caption", "missing_caption")


# ------------------------------------------------------------------------- the stage
def test_eval_datasets_lists_a_root_for_the_stage(trained, roots, tmp_path):
    run, overrides = trained
    root = roots["cls"][0]
    stage = [*overrides, f"eval.datasets=[{root}]", f"eval.metrics_file={tmp_path / 'eval.json'}"]
    assert main(["evaluate", "--quiet", *as_set_args(stage)]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["zeroshot/wds_objects/chance_top1"] == pytest.approx(1 / 32)
    assert "linear_probe/wds_objects/top1" in metrics
    result = json.loads((run / "result.json").read_text())
    assert result["eval_skipped"]["wds_objects/label_out_of_range"] == 1
