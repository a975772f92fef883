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


GRID_STUDY = {
    "name": "order",
    "space": {
        "strategy": {"choices": {"none": {"masking.strategy": "none"}, "random": {"masking.strategy": "random"}}},
        "budget": {"choices": {"samples": {"train.compute_samples": 0}, "compute": {"train.compute_samples": 96}}},
        "train.seed": {"type": "categorical", "choices": [0, 1, 2]},
    },
    "objectives": [{"metric": "zeroshot/val/top1", "direction": "maximize"}],
    "sampler": {"name": "grid", "seed": 0},
}


def _ask_all(study, n):
    points = []
    for _ in range(n):
        trial = study.ask()
        values = {p: trial.suggest_categorical(p, c) for p, c in study.sampler._search_space.items()}
        study.tell(trial, 0.5)
        points.append((values["train.seed"], values["strategy"], values["budget"]))
    return points


def test_a_comparisons_grid_runs_seed_by_seed_and_no_point_twice_when_resumed_with_another_seed():
    import optuna

    from maskvlp.sweep.study import make_sampler

    raw = {**GRID_STUDY, "compare": {"group": "strategy", "seeds": "train.seed", "budget": "budget"}}
    spec = sweepspec.parse(raw)
    study = optuna.create_study(sampler=make_sampler(spec))
    first = _ask_all(study, 5)
    assert [seed for seed, *_ in first] == [0, 0, 0, 0, 1]  # every arm at seed 0 before seed 1
    # resumed with another sampler seed (its shuffle differs): the rest of the grid, each point once
    study.sampler = make_sampler(sweepspec.parse({**raw, "sampler": {"name": "grid", "seed": 7}}), offset=5)
    rest = _ask_all(study, 7)
    assert sorted(first + rest) == sorted(
        {(s, g, b) for s in (0, 1, 2) for g in ("none", "random") for b in ("samples", "compute")}
    )
    assert [seed for seed, *_ in rest] == [1, 1, 1, 2, 2, 2, 2]
    # without a comparison: optuna's shuffle, still each point once
    plain = optuna.create_study(sampler=make_sampler(sweepspec.parse(GRID_STUDY)))
    points = _ask_all(plain, 12)
    assert len(set(points)) == 12 and [s for s, *_ in points] != sorted(s for s, *_ in points)


def test_a_grid_point_asked_and_never_launched_is_run_later():
    import optuna
    from optuna.trial import TrialState

    from maskvlp.sweep.study import make_sampler

    study = optuna.create_study(sampler=make_sampler(sweepspec.parse(GRID_STUDY)))
    lost = study.ask()  # the driver killed between ask and launch: told FAIL later, with no params
    study.tell(lost, state=TrialState.FAIL)
    assert len(set(_ask_all(study, 12))) == 12  # the whole grid still runs, the lost point included
