"""The `real` preset's parts and the comparison study, end to end on data the tests write themselves:
a small OpenClipart-like SVG tree, a few emoji of Debian's font, a small Fashion-MNIST IDX copy.
Real shards, real training, a real Optuna study with local trial processes, the report read back."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from maskvlp.cli import main
from maskvlp.data.shards import shard, shard_paths
from maskvlp.params import load_config
from maskvlp.stats import mean_ci

from .test_idx import _fake_fashion
from .test_openclipart import svg

CATEGORIES = (("food/fruit", "apple", "#d22"), ("animals/birds", "bird", "#22d"), ("plants/flowers", "tulip", "#dd2"))


def clipart_tree(root: Path, per_class: int = 16) -> Path:
    """Three categories of drawings that differ in shape, colour and size."""
    for c, (folder, title, colour) in enumerate(CATEGORIES):
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            size = 20 + 2 * i
            body = (
                f'<circle cx="50" cy="50" r="{size}" fill="{colour}"/>'
                if c == 0
                else f'<rect x="{50 - size}" y="{50 - size}" width="{2 * size}" height="{2 * size}" fill="{colour}"/>'
                if c == 1
                else f'<polygon points="50,{50 - size} {50 + size},{50 + size} {50 - size},{50 + size}" fill="{colour}"/>'
            )
            (root / folder / f"{title}_{i}.svg").write_bytes(svg(title=f"a {title} number {i}", body=body))
    return root


def real_overrides(tmp: Path, per_class: int = 16, emoji: int = 24) -> list[str]:
    root = tmp / "svg"
    if not root.exists():
        clipart_tree(root, per_class)
    fashion = tmp / "fm"
    if not fashion.exists():
        _fake_fashion(fashion, n=40)
    return [
        "data.preset=real",
        f"data.openclipart.root={root}",
        "data.openclipart.min_per_class=5",
        f"data.emoji.max_emoji={emoji}",
        "data.emoji.samples_per_emoji=2",
        "data.emoji.scene_fraction=0.25",
        f"data.out_dir={tmp / 'shards'}",
        "data.image_size=32",
        "data.num_workers=1",
        "data.val_fraction=0.25",
        "data.max_samples_per_shard=40",
        f"eval.fashion_mnist_dir={fashion}",
        "eval.fashion_mnist_samples=30",
    ]


def _members(url: str) -> list[dict]:
    with tarfile.open(url) as tar:
        return [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]


def test_the_real_preset_shards_clip_art_val_and_a_mixed_train_split(tmp_path):
    manifest = shard(load_config("params.yaml", real_overrides(tmp_path)), progress=False)
    assert manifest["source"]["kind"] == "mix"
    assert manifest["source"]["classes"] == ["birds", "fruit", "flowers"]  # the val source's classes only
    val = [m for url in shard_paths(tmp_path / "shards", "val") for m in _members(url)]
    assert {m["source"] for m in val} == {"openclipart"}  # emoji never in val
    assert sorted({m["label_name"] for m in val}) == ["birds", "flowers", "fruit"]  # stratified
    train = [[m for m in _members(url)] for url in shard_paths(tmp_path / "shards", "train")]
    emoji = [m for shard_ in train for m in shard_ if m["source"] == "emoji"]
    assert len(emoji) == 24 * 2 + 12  # renderings + two-emoji scenes
    assert all("label" not in m and "label_name" not in m for m in emoji)  # labels kept apart, never mixed
    assert all("source_label_name" in m for m in emoji)
    # the sources are interleaved: each shard of the train split holds both
    assert all({m["source"] for m in shard_} == {"openclipart", "emoji"} for shard_ in train[:-1])


def test_emoji_evaluation_set_renders_apart_from_training_with_composition_scenes(tmp_path):
    from maskvlp.evalsets import resolve

    cfg = load_config("params.yaml", real_overrides(tmp_path, emoji=10))
    es = resolve(cfg, "emoji")
    assert es.name == "emoji" and len(es.classes) == 10 and not es.retrieval
    batches = list(es.batches(32, 64))
    metas = [m for b in batches for m in b["metas"]]
    singles = [m for m in metas if "label_name" in m]
    scenes = [m for m in metas if "negatives" in m]
    assert [m["label_name"] for m in singles] == es.classes  # every class once
    assert len(scenes) == round(0.25 * 10) and all("label_name" not in m for m in scenes)
    # a held-out rendering: not the pixels the shard stage writes for the same emoji
    from maskvlp.data import emoji
    from maskvlp.data.transforms import to_uint8_tensor

    cp = singles[0]["codepoint"]
    trained = to_uint8_tensor(emoji.render_sample(cfg.data.emoji.font_path, (cp,), cfg.seed, 0, 32)[0])
    assert not (batches[0]["images"][0] == trained).all()


def test_a_missing_package_names_it_and_writes_nothing(tmp_path):
    from maskvlp.data.sources import OpenClipartMissing

    over = real_overrides(tmp_path) + [f"data.openclipart.root={tmp_path / 'absent'}"]
    with pytest.raises(OpenClipartMissing, match="apt-get install openclipart-svg"):
        shard(load_config("params.yaml", over), progress=False)
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


@pytest.mark.slow
def test_tiny_comparison_study_reports_means_intervals_claims_and_a_plot(tmp_path, capsys):
    """2 strategies x 2 seeds at a compute-matched budget, tiny model, ~170 images, local trials."""
    over = real_overrides(tmp_path)
    shard(load_config("params.yaml", over), progress=False)
    base = dict(o.split("=", 1) for o in over)
    base = {k: yaml.safe_load(v) for k, v in base.items()}
    base |= {
        "data.loader_workers": 0,
        "model.image_size": 32,
        "model.patch_size": 8,
        "model.embed_dim": 32,
        "model.context_length": 24,
        "train.runs_dir": str(tmp_path / "runs"),
        "train.samples": 160,
        "train.compute_samples": 160,
        "train.batch_size": 32,
        "train.warmup_samples": 32,
        "train.log_every_steps": 1,
        "eval.linear_probe_samples": 64,
    }
    sweep = {
        "name": "tinypaper",
        "base": base,
        "space": {
            "strategy": {
                "choices": {
                    "none": {"masking.strategy": "none"},
                    "random": {"masking.strategy": "random", "masking.ratio": 0.75},
                }
            },
            "train.seed": {"type": "categorical", "choices": [0, 1]},
        },
        "objectives": [{"metric": "zeroshot/val/top1", "direction": "maximize"}],
        "compare": {
            "group": "strategy",
            "seeds": "train.seed",
            "claims": ["none > random"],
            "claim_metrics": ["zeroshot/val/top1", "retrieval/val/t2i_r1"],
        },
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
        "parallel": 2,
        "retries": 0,
    }
    path = tmp_path / "tinypaper.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    report = tmp_path / "report"
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet", "--report", str(report)]) == 0

    result = json.loads((report / "comparison.json").read_text())
    trials = sorted((tmp_path / "runs" / "tinypaper").glob("trial-*"))
    records = [json.loads((t / "result.json").read_text()) for t in trials]
    params = [json.loads((t / "trial.json").read_text())["params"] for t in trials]
    assert len(records) == 4 and all(r["status"] == "complete" for r in records)
    # the compute budget: random 0.75 saw more samples for about the same FLOPs (to one batch)
    seen = {p["strategy"]: r["samples_seen"] for p, r in zip(params, records)}
    assert seen["random"] > seen["none"]
    flops = {p["strategy"]: r["train_flops"] for p, r in zip(params, records)}
    assert abs(flops["random"] / flops["none"] - 1) < 0.35  # whole batches of 32: a step is a large share here
    # the table's numbers are the intervals of the trials' own records
    for strategy in ("none", "random"):
        values = [r["eval"]["zeroshot/val/top1"] for p, r in zip(params, records) if p["strategy"] == strategy]
        cell = result["table"]["all"][strategy]["zeroshot/val/top1"]
        expected = mean_ci(values)
        assert cell["mean"] == pytest.approx(expected.mean) and cell["n"] == 2
        assert cell["low"] == pytest.approx(expected.low, nan_ok=True)
    assert {"zeroshot/emoji/top1", "zeroshot/fashion-mnist/top1", "linear_probe/fashion-mnist/top1"} <= set(
        result["columns"]
    )
    assert "composition/emoji/relation" in result["columns"] and "images_per_s" in result["columns"]
    claims = result["claims"]
    assert [(c["better"], c["worse"], c["metric"]) for c in claims] == [
        ("none", "random", "zeroshot/val/top1"),
        ("none", "random", "retrieval/val/t2i_r1"),
    ]
    assert all(c["verdict"] in ("holds", "reversed", "overlap", "no spread") for c in claims)
    md = (report / "comparison.md").read_text()
    assert "| none | 2 |" in md and "| random | 2 |" in md and " ± " in md
    assert all(c["sentence"] in md for c in claims)
    assert (report / "comparison.png").stat().st_size > 10_000
    assert "## Comparison over seeds" in (report / "trials.md").read_text()


OPENCLIPART = Path("/usr/share/openclipart/svg")
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (OPENCLIPART.is_dir() and FASHION.is_dir()),
    reason="needs Debian's openclipart-svg and dataset-fashion-mnist (installed by .ci/run)",
)
def test_the_installed_packages_read_as_documented():
    """The real packages, as .ci/run installs them: 113 leaf categories with >= 10 drawings, the
    Fashion-MNIST splits of 60,000 / 10,000 28x28 images, and a rendering of one drawing per category."""
    from maskvlp.data import fashion_mnist as fm
    from maskvlp.data.sources import OpenClipartSource

    cfg = load_config("params.yaml", ["data.preset=real", "data.openclipart.max_per_class=1", "data.val_fraction=0"])
    source = OpenClipartSource(cfg)
    assert len(source.classes) == 113 and len(source.plan) == 113
    rendered = [source.load(item) for item in source.plan[:20]]
    assert sum(not hasattr(r, "reason") for r in rendered) >= 15  # a few drawings are blank or refused
    for split, count in (("train", 60_000), ("test", 10_000)):
        images, labels = fm.load_split(FASHION, split)
        assert images.shape == (count, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
