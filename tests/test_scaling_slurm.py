"""A tiny scaling study for real on the local Slurm cluster: 2 model sizes x 2 data sizes x 2 strategies,
half of it first, then the whole grid (only the missing points run), then `maskvlp scaling-fit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from maskvlp.cli import main
from maskvlp.sweep import study as st
from maskvlp.sweep.prepare import prepare

from .conftest import require_slurm
from .sweeping import tiny_base, tiny_shards

require_slurm()
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _scaling_file(path: Path, base: dict) -> Path:
    for key in ("train.samples", "train.warmup_samples"):  # derived by the rules below
        base.pop(key)
    raw = {
        "name": "tiny-scaling",
        "base": base,
        "space": {
            "model": {"choices": ["w64", "w96"], "set": ["model.vision", "model.text"]},
            "train.unique_pairs": {"type": "categorical", "choices": [64, 128]},
            "strategy": {
                "choices": {
                    "none": {"masking.strategy": "none"},
                    "random": {"masking.strategy": "random", "masking.ratio": 0.5},
                }
            },
        },
        # fixed epochs: samples seen = 2 x unique pairs, so compute varies with model and data size
        "rules": {"samples_per_pair": 2, "warmup_fraction": 0.1, "checkpoints": 2},
        "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
        "fit": {"metric": "zeroshot/objects/top1", "bootstrap": 50, "forms": ["compute"]},
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
        "parallel": 2,
        "retries": 0,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _point(run: Path) -> tuple:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return cfg["model"]["vision"], cfg["train"]["unique_pairs"], cfg["masking"]["strategy"], cfg["train"]["samples"]


def test_tiny_grid_on_slurm_resumes_only_missing_points_and_fits(tmp_path, tmp_path_factory):
    shards = tiny_shards(tmp_path_factory)
    runs, report = tmp_path / "runs", tmp_path / "report"
    path = _scaling_file(tmp_path / "scaling.yaml", tiny_base(shards, runs))
    args = ["sweep", str(path), "--params", "params.yaml", "--quiet", "--set", "launcher.executor=slurm"]

    assert main([*args, "--n-trials", "4"]) == 0  # half the grid, as if the study had been stopped there
    first = sorted(runs.glob("tiny-scaling/trial-*"))
    assert len(first) == 4
    stamps = {p: (p / "result.json").stat().st_mtime_ns for p in first}

    assert main(args) == 0  # the same command without the limit: only the missing points run
    sw = prepare(path, params="params.yaml")
    trials = st.load_study(sw.spec, sw.storage).trials
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.user_attrs["job"].startswith("slurm:") for t in trials)
    assert {p: (p / "result.json").stat().st_mtime_ns for p in first} == stamps  # done points untouched
    points = {_point(Path(t.user_attrs["run_dir"])) for t in trials}
    assert len(points) == 8  # every grid point once, none twice
    assert {(m, d, s) for m, d, s, _ in points} == {
        (m, d, s) for m in ("w64", "w96") for d in (64, 128) for s in ("none", "random")
    }
    assert all(samples == 2 * d for _, d, _, samples in points)  # the rule, applied per point
    record = json.loads((Path(trials[0].user_attrs["run_dir"]) / "result.json").read_text())
    assert record["unique_pairs"] in (64, 128) and record["train_flops"] > 0

    assert main(["scaling-fit", "tiny-scaling", "--runs-dir", str(runs), "--out", str(report), "--quiet"]) == 0
    fits = json.loads((report / "fits.json").read_text())
    assert set(fits["groups"]) == {"none", "random"} and len(fits["points"]) == 8
    by_group = {g: [p for p in fits["points"] if p["group"] == g] for g in fits["groups"]}
    # masking halves the image tower's tokens: the same point costs less compute with random masking
    for p in by_group["random"]:
        twin = next(
            q
            for q in by_group["none"]
            if q["params"]["model"] == p["params"]["model"] and q["data_size"] == p["data_size"]
        )
        assert p["compute"] < twin["compute"]
    for g in fits["groups"].values():  # converged with numbers, or reported as not converged without
        assert ("params" in g["compute"]) == g["compute"]["converged"]
    assert (report / "compute.png").stat().st_size > 0 and (report / "summary.md").is_file()
    assert list((runs / "tiny-scaling" / "scaling-fit").glob("events.out.tfevents.*"))
