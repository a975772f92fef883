"""Sweep files: parsed and validated against params.yaml before anything is submitted."""

import copy

import pytest

from maskvlp.sweep import spec as sweepspec
from maskvlp.sweep.space import SweepSpecError, grid_size

GOOD = {
    "name": "masking",
    "base": {"train.samples": 2000, "train.eval_every_samples": 500},
    "space": {
        "masking.ratio": {"type": "float", "low": 0.25, "high": 0.75, "step": 0.25},
        "masking.anchor_ratio": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
        "masking.features": {"type": "categorical", "choices": ["rgb", "rgb+embed"]},
        "masking.threshold": {"type": "float", "low": 0.2, "high": 0.9, "when": {"masking.strategy": "cluster"}},
    },
    "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
}


def spec_with(**changes):
    raw = copy.deepcopy(GOOD)
    for key, value in changes.items():
        raw[key] = value
    return raw


def test_the_versioned_masking_sweep_is_valid():
    spec = sweepspec.load("sweeps/masking.yaml")
    cfg = sweepspec.validate(spec, "params.yaml")
    assert cfg.masking.strategy == "cluster" and {p.key for p in spec.space} >= {"masking.ratio", "masking.threshold"}


def test_a_good_spec_parses_with_defaults_and_gives_trial_overrides():
    spec = sweepspec.parse(GOOD)
    assert (spec.sampler, spec.pruner, spec.n_trials, spec.parallel, spec.retries) == ("tpe", "median", 20, 1, 1)
    assert sweepspec.validate(spec, None).train.samples == 2000
    assert spec.overrides({"masking.ratio": 0.5, "masking.features": "rgb+embed"}) == [
        "train.samples=2000",
        "train.eval_every_samples=500",
        "masking.ratio=0.5",
        "masking.features=rgb+embed",
    ]
    two = sweepspec.parse(
        spec_with(
            objectives=[{"metric": "retrieval/val/i2t_r1"}, {"metric": "train_flops", "direction": "minimize"}],
            pruner={"name": "none"},
        )
    )
    assert two.sampler == "nsga2"  # the default for two objectives
    sweepspec.validate(two, None)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"space": {"masking.ratoi": {"low": 0.1, "high": 0.5}}}, "space.masking.ratoi"),
        ({"space": {"masking.ratio": {"low": 0.6, "high": 0.5}}}, "inverted range"),
        ({"space": {"masking.ratio": {"low": 0.5, "high": 0.5}}}, "empty or inverted"),
        ({"space": {"masking.ratio": {"low": 0.1, "high": 1.0}}}, "value 1.0 is refused"),
        ({"space": {"masking.features": {"type": "categorical", "choices": []}}}, "non-empty list of choices"),
        ({"space": {"masking.threshold": {"low": -0.5, "high": 0.5, "log": True}}}, "cannot cross 0"),
        ({"space": {"masking.ratio": {"type": "normal", "low": 0, "high": 1}}}, "type must be one of"),
        ({"space": {}}, "space: must map at least one"),
        ({"objectives": [{"metric": "zeroshot/objects/top2"}]}, "objectives[0].metric"),
        ({"objectives": [{"metric": "top1"}]}, "did you mean"),
        ({"objectives": [{"metric": "train_flops", "direction": "down"}]}, "direction"),
        ({"sampler": {"name": "cmaes"}}, "sampler.name"),
        ({"pruner": {"name": "patient"}}, "pruner.name"),
        ({"base": {"train.samples": 2000}}, "train.eval_every_samples"),  # pruning without evaluations
        ({"objectives": [{"metric": "train_flops", "direction": "minimize"}]}, "evaluation metric objective"),
        ({"sampler": {"name": "tpe", "seed": "zero"}}, "sampler.seed"),
        ({"parallel": 0}, "parallel: must be an integer >= 1"),
        ({"n_trials": "many"}, "n_trials"),
        ({"name": "my study/1"}, "name"),
        ({"base": {"train.samplez": 10}}, "base:"),
        ({"sampler": {"name": "grid"}}, "grid needs a step"),
    ],
)
def test_bad_specs_are_refused_naming_the_key(change, message):
    with pytest.raises(SweepSpecError) as info:
        sweepspec.validate(sweepspec.parse(spec_with(**change)), None)
    assert message in str(info.value)


def test_two_objectives_cannot_be_pruned():
    raw = spec_with(objectives=[{"metric": "retrieval/val/i2t_r1"}, {"metric": "wall_s", "direction": "minimize"}])
    with pytest.raises(SweepSpecError, match="pruning needs a single objective"):
        sweepspec.parse(raw)


def test_grid_size_counts_steps_and_choices():
    raw = spec_with(
        space={
            "masking.ratio": {"low": 0.25, "high": 0.75, "step": 0.25},
            "masking.features": {"choices": ["rgb", "rgb+embed"]},
            "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        }
    )
    assert grid_size(sweepspec.parse(raw)) == 3 * 2 * 4


STUDY_FILES = sorted(p for p in __import__("pathlib").Path("sweeps").glob("*.yaml") if p.name != "dvc.yaml")


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_every_committed_study_file_is_valid_at_every_grid_point(path):
    """The study files users run (and the GPU one no test can run here): the params accept the base,
    the analyses and every point of a grid, before any shards exist."""
    from maskvlp.params import load_config
    from maskvlp.sweep.space import grid_points

    spec = sweepspec.load(path)
    cfg = sweepspec.validate(spec)
    sweepspec.validate_analyses(spec, cfg)
    if spec.sampler == "grid" and grid_size(spec) <= 200:
        for values in grid_points(spec):
            load_config("params.yaml", spec.overrides(values))
