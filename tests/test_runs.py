"""Run records, the training hook, the masking registry and evaluating other datasets, end to end."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from maskvlp import masking
from maskvlp.cli import main
from maskvlp.params import load_config
from maskvlp.runs import list_runs, read_result, run_paths
from maskvlp.train import pretrain

from .conftest import StopAfter, as_set_args, make_tiny_shards, tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("runs"), 500)


def cfg_for(shards: Path, runs: Path, *extra: str):
    return load_config(
        None,
        tiny_run(
            shards,
            500,
            runs,
            "train.samples=320",
            "train.batch_size=16",
            "train.warmup_samples=32",
            "train.checkpoint_every_samples=100000",
            "train.log_every_steps=2",
            "masking.strategy=random",
            "eval.subset_samples=40",
            *extra,
        ),
    )


def test_result_record_after_a_complete_run_and_after_evaluation(shards, tmp_path):
    cfg = cfg_for(shards, tmp_path, "masking.strategy=cluster", "masking.threshold=0.8")
    returned = pretrain(cfg, progress=False)
    paths = run_paths(cfg)
    record = read_result(paths)
    assert record["status"] == "complete" and returned["status"] == "complete"
    assert record["samples_seen"] == 320 and record["steps"] == 20
    assert 0 < record["train_loss"] < record["chance_loss"] + 1
    assert record["wall_s"] > 0 and record["images_per_s"] > 0 and len(record["git_commit"]) in (0, 40)
    assert record["masking"]["mean_mask_ratio"] == pytest.approx(0.5)
    assert 0 < record["masking"]["mean_cluster_coverage"] <= 1
    # masking-aware FLOPs: (32/8)^2 = 16 patches, 8 kept: the cost of 8 image tokens + 1 class token
    model = __import__("maskvlp.model", fromlist=["CLIP"]).CLIP.from_config(cfg.model)
    from maskvlp.masking import mask_flops_per_image

    mask = mask_flops_per_image(16, 8, cfg.masking.anchor_ratio)  # the mask's own cost, counted too
    assert 0 < mask < model.train_flops_per_sample(8) / 100
    assert record["train_flops"] == pytest.approx(320 * (model.train_flops_per_sample(8) + mask))
    assert model.train_flops_per_sample(8) < model.train_flops_per_sample(16)
    nonembed = record["params_nonembedding"]
    assert 0 < nonembed["text"] < sum(p.numel() for p in model.text.parameters()) / 2  # the table dominates
    # evaluation adds its metrics under their flat keys
    evals = ["eval.objects_per_class=2", "eval.linear_probe_samples=64", f"eval.metrics_file={tmp_path / 'm.json'}"]
    overrides = tiny_run(shards, 500, tmp_path, *evals)
    assert main(["evaluate", "--quiet", *as_set_args(overrides)]) == 0
    record = read_result(paths)
    assert record["eval"]["zeroshot/objects/top1"] >= 0 and "retrieval/val/i2t_r1" in record["eval"]
    [run] = list_runs(tmp_path)
    assert run.name == "default" and run.metrics == record["eval"]
    # a fresh run in the same folder (as `dvc repro` starts one) keeps nothing of the earlier record
    for path in run_paths(cfg).checkpoints.iterdir():
        path.unlink()
    run_paths(cfg).model.unlink()
    pretrain(cfg, progress=False)
    assert "eval" not in read_result(paths) and read_result(paths)["status"] == "complete"


def test_result_record_after_a_stop_and_a_failure(shards, tmp_path, monkeypatch):
    cfg = cfg_for(shards, tmp_path)
    stopped = pretrain(cfg, progress=False, stop=StopAfter(5))
    assert stopped["status"] == "stopped" and read_result(run_paths(cfg))["status"] == "stopped"
    assert read_result(run_paths(cfg))["steps"] == 5 and not run_paths(cfg).model.exists()
    done = pretrain(cfg, resume=True, progress=False)
    assert done["status"] == "complete" and done["samples_seen"] == 320

    failing = cfg_for(shards, tmp_path / "f")
    calls = {"n": 0}
    real_step = __import__("maskvlp.train", fromlist=["train_step"]).train_step

    def step_then_fail(s):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fell over")
        return real_step(s)

    monkeypatch.setattr("maskvlp.train.train_step", step_then_fail)
    with pytest.raises(RuntimeError, match="device fell over"):
        pretrain(failing, progress=False)
    record = read_result(run_paths(failing))
    assert record["status"] == "failed" and "device fell over" in record["error"] and record["steps"] == 2


def test_the_eval_hook_logs_can_stop_and_the_resumed_run_matches(shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    every = ("train.eval_every_samples=64",)
    whole = cfg_for(shards, tmp_path / "whole", *every)
    pretrain(whole, progress=False)
    seen = []

    def prune_at_128(samples: int, metrics: dict) -> bool:
        seen.append((samples, metrics))
        return samples >= 128

    cut = cfg_for(shards, tmp_path / "cut", *every)
    first = pretrain(cut, progress=False, hooks=[prune_at_128])
    assert first["status"] == "stopped" and first["samples_seen"] == 128
    assert [s for s, _ in seen] == [64, 128] and {"retrieval/subset/i2t_r1", "zeroshot/subset/top1"} <= set(seen[0][1])
    assert [p["samples_seen"] for p in read_result(run_paths(cut))["evals"]] == [64, 128]
    second = pretrain(cut, resume=True, progress=False)
    assert second["status"] == "complete"
    a, b = load_file(str(run_paths(whole).model)), load_file(str(run_paths(cut).model))
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating in between changes nothing
    acc = EventAccumulator(str(run_paths(cut).tensorboard))
    acc.Reload()
    points = [e.step for e in acc.Scalars("eval_subset/retrieval/subset/i2t_r1")]
    assert points == [64, 128, 192, 256]
    assert [p["samples_seen"] for p in read_result(run_paths(cut))["evals"]] == [64, 128, 192, 256]


def test_a_strategy_registered_here_runs_end_to_end(shards, tmp_path):
    """Keep the left half of the image: one function + one registry line, no other module touched."""

    def left_half(images, k, ctx):
        grid = images.shape[-1] // ctx.patch_size
        cols = torch.arange(grid * grid, device=images.device) % grid
        keep = torch.nonzero(cols < grid // 2).flatten()
        return masking.MaskResult(
            keep.expand(images.shape[0], -1).contiguous(), torch.zeros(images.shape[0]), 0, grid * grid
        )

    masking.register_strategy("left_half", left_half, describe=lambda k: "left half")
    try:
        cfg = cfg_for(shards, tmp_path, "masking.strategy=left_half")
        record = pretrain(cfg, progress=False)
        assert record["status"] == "complete" and record["masking"]["mean_mask_ratio"] == pytest.approx(0.5)
        assert record["masking"]["label"] == "left half"
        out = tmp_path / "masks.png"
        assert main(["masks", "--images", str(shards), "--out", str(out), "--count", "2"]) == 0
        assert Image.open(out).width > 900  # image, clusters and four strategy columns
    finally:
        del masking.STRATEGIES["left_half"]
    with pytest.raises(Exception, match="masking.strategy must be one of none, random, cluster"):
        cfg_for(shards, tmp_path, "masking.strategy=left_half")


def test_evaluate_another_dataset_table_and_shard_glob(shards, tmp_path, capsys):
    cfg = cfg_for(shards, tmp_path)
    pretrain(cfg, progress=False)
    paths = run_paths(cfg)
    before = read_result(paths)
    images = tmp_path / "captioned"
    images.mkdir()
    rows = []
    for i, (colour, name) in enumerate([((220, 20, 20), "red"), ((20, 20, 220), "blue")] * 4):
        Image.new("RGB", (40 + i, 33), colour).save(images / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": f"a {name} picture", "label": name})
    (images / "broken.png").write_bytes(b"not a png")
    rows += [
        {"path": "broken.png", "caption": "x", "label": "red"},
        {"path": "gone.png", "caption": "y", "label": "red"},
    ]
    pd.DataFrame(rows).to_csv(images / "captions.csv", index=False)
    args = ["evaluate", "--quiet", "--run", str(paths.root), *as_set_args(["data.folder.label_column=label"])]
    assert main([*args, "--dataset", str(images / "captions.csv"), "--dataset", f"{shards}/val-*.tar"]) == 0
    printed = capsys.readouterr().out
    assert "captions: skipped 2: " in printed and "missing_file=1" in printed and "unreadable_image=1" in printed
    assert "note: captions: no train split, so no linear probe" in printed
    table = json.loads((paths.extra_eval_dir("captions") / "metrics.json").read_text())
    assert {"retrieval/captions/i2t_r1", "zeroshot/captions/top1"} <= set(table)
    assert table["zeroshot/captions/chance_top1"] == 0.5
    notes = json.loads((paths.extra_eval_dir("captions") / "notes.json").read_text())
    assert notes["skipped"] == {"missing_file": 1, "unreadable_image": 1}
    val = json.loads((paths.extra_eval_dir("val") / "metrics.json").read_text())
    assert "retrieval/val/i2t_r1" in val and "zeroshot/val/top1" in val
    record = read_result(paths)
    assert "zeroshot/captions/top1" in record["eval"] and record["samples_seen"] == before["samples_seen"]
    assert not (paths.eval_dir() / "metrics.json").exists()  # the stage's own results are not touched

    assert main([*args, "--dataset", str(tmp_path / "nothing.csv")]) == 1
    assert "no such captions table" in capsys.readouterr().err
