"""Scaling studies without training: sweep labels and rules, the fit section checked against the grid
before anything runs, and the study fitter over run records laid out as trials leave them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from maskvlp.sweep import fit as scaling
from maskvlp.sweep.rules import derive
from maskvlp.sweep.space import SweepSpecError, grid_points
from maskvlp.sweep.spec import parse, validate

ROOT = Path(__file__).resolve().parents[1]

STRATEGIES = {
    "none": {"masking.strategy": "none"},
    "random": {"masking.strategy": "random", "masking.ratio": 0.5},
}


def _raw(**fields):
    raw = {
        "name": "scal",
        "base": {"train.samples": 2000},
        "space": {
            "model": {"choices": ["w64", "w96", "w128", "w192"], "set": ["model.vision", "model.text"]},
            "train.unique_pairs": {"type": "categorical", "choices": [200, 400]},
            "strategy": {"choices": STRATEGIES},
        },
        "rules": {"warmup_fraction": 0.1, "checkpoints": 2},
        "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
        "fit": {"metric": "zeroshot/objects/top1"},
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
    }
    raw.update(fields)
    return raw


def test_labels_expand_into_the_keys_they_set_and_rules_derive_per_point():
    spec = parse(_raw())
    assert spec.n_trials == 16  # a grid's n_trials defaults to the whole grid
    resolved = spec.resolve({"model": "w96", "train.unique_pairs": 400, "strategy": "random"})
    assert resolved == {
        "train.samples": 2000,
        "model.vision": "w96",
        "model.text": "w96",
        "train.unique_pairs": 400,
        "masking.strategy": "random",
        "masking.ratio": 0.5,
        "train.warmup_samples": 200,
        "train.checkpoint_every_samples": 1000,
    }
    # every grid point is a distinct set of params, and all of them load through the config
    points = [json.dumps(spec.resolve(v), sort_keys=True) for v in grid_points(spec)]
    assert len(set(points)) == 16
    validate(spec, ROOT / "params.yaml")


def test_fixed_epochs_and_lr_by_width_rules():
    rules = {"samples_per_pair": 3, "warmup_fraction": 0.05, "lr": 4e-4, "lr_width_exponent": -1.0}
    assert derive({"train.unique_pairs": 500, "model.vision": "w256"}, rules) == {
        "train.samples": 1500,
        "train.warmup_samples": 75,
        "train.lr": pytest.approx(2e-4),  # width 256 is twice the reference 128
    }
    assert derive({}, {"warmup_fraction": 0.1}) == {}  # the base alone: nothing to derive from yet


def test_old_sweep_files_keep_their_fingerprint():
    """Labels add fields to a parameter; studies started before them must still resume."""
    import hashlib

    spec = parse(yaml.safe_load((ROOT / "sweeps/masking.yaml").read_text()))
    ident = {
        "base": spec.base,
        "space": [
            {k: v for k, v in vars(p).items() if k not in ("sets", "bundles")} | {"choices": list(p.choices)}
            for p in spec.space
        ],
        "objectives": [vars(o) for o in spec.objectives],
    }
    old = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert spec.fingerprint() == old
    assert parse(_raw()).fingerprint() != parse(_raw(rules={"warmup_fraction": 0.2})).fingerprint()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"model": {"choices": ["w64", "w96"]}}}, "set: \\[params keys\\]"),
        ({"space": {"model": {"type": "float", "low": 1, "high": 2}}}, "must be categorical"),
        ({"space": {"strategy": {"choices": {"none": {"strategy": "none"}}}}}, "choices.none: must map params keys"),
        ({"space": {"masking.ratio": {"choices": [0.5], "set": ["masking.threshold"]}}}, "only a label"),
        ({"space": {"model": {"choices": [], "set": ["model.vision"]}}}, "non-empty list"),
        ({"rules": {"warmup": 0.1}}, "unknown rule"),
        ({"rules": {"warmup_fraction": 1.5}}, "a fraction in \\[0, 1\\)"),
        ({"rules": {"checkpoints": 2}, "base": {"train.samples": 10, "train.checkpoint_every_samples": 5}}, "drop one"),
        ({"rules": {"warmup_fraction": 0.1}, "base": {}}, "needs train.samples"),
        ({"rules": {"lr_width_exponent": -1}}, "needs rules.lr"),
    ],
)
def test_bad_labels_and_rules_are_refused_naming_the_key(change, message):
    raw = _raw()
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key == "space" else value
    with pytest.raises(SweepSpecError, match=message):
        parse(raw)


def test_a_model_size_that_does_not_exist_is_refused_before_anything_runs():
    raw = _raw()
    raw["space"]["model"]["choices"] = ["w64", "w100"]
    with pytest.raises(SweepSpecError, match="space.model: value 'w100' is refused.*model.vision"):
        validate(parse(raw), ROOT / "params.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": {"choices": ["w64", "w96"], "set": ["model.vision", "model.text"]}},
            "2 compute values per strategy",
        ),
        ({"train.unique_pairs": {"type": "categorical", "choices": [200]}}, "joint fit"),
    ],
)
def test_fewer_grid_points_than_the_fit_needs_are_refused(change, message):
    raw = _raw(fit={"metric": "zeroshot/objects/top1", "forms": ["compute", "joint"]})
    raw["space"] = {**raw["space"], **change}
    with pytest.raises(SweepSpecError, match=message):
        scaling.fit_spec(parse(raw))


def test_joint_form_is_left_out_with_a_note_when_not_asked_for_and_the_metric_is_checked():
    raw = _raw()
    raw["space"]["train.unique_pairs"]["choices"] = [200]
    fs = scaling.fit_spec(parse(raw))
    assert fs.forms == ("compute",) and "joint fit" in fs.notes[0]
    cfg = validate(parse(raw), ROOT / "params.yaml")
    with pytest.raises(SweepSpecError, match="fit.metric.*did you mean"):
        scaling.validate_fit(parse({**raw, "fit": {"metric": "zeroshot/nope/top1"}}), cfg)
    with pytest.raises(SweepSpecError, match="a grid"):
        scaling.fit_spec(parse({**raw, "sampler": {"name": "tpe"}}))


def _write_trial(study: Path, n: int, params: dict, record: dict) -> None:
    run = study / f"trial-{n:04d}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "trial.json").write_text(json.dumps({"params": params}))
    (run / "result.json").write_text(json.dumps(record))


def test_study_fit_from_run_records_recovers_the_curves_and_writes_every_output(tmp_path):
    """Records laid out as trials leave them, with errors drawn from known power laws: the fit recovers
    them, says which strategy lies below, and writes JSON, Markdown, PNGs and TensorBoard figures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(0)
    study, extension, n = tmp_path / "runs" / "scal", tmp_path / "runs" / "scal-more", 0
    truth = {"none": (0.30, 0.25, 0.5, 1.0), "random": (0.20, 0.25, 0.5, 0.5)}  # E, A, alpha, compute factor
    compute = np.geomspace(1e11, 1e14, 8)
    c0 = float(np.exp(np.mean(np.log(compute))))
    for group, (e, a, alpha, factor) in truth.items():
        for i, c in enumerate(compute):
            err = e + a * (c * factor / c0) ** -alpha + rng.normal(0, 0.002)
            record = {
                "status": "complete",
                "train_flops": c * factor,
                "params_nonembedding": {"vision": 1000 * (i + 1), "text": 1000 * (i + 1)},
                "unique_pairs": 400,
                "samples_seen": 2000,
                "wall_s": 10.0,
                "images_per_s": 200.0,
                "eval": {"zeroshot/objects/top1": 1 - err},
            }
            # half the points in a second study (e.g. another samples budget), fitted together
            _write_trial(study if i % 2 else extension, n, {"strategy": group, "model": f"m{i}"}, record)
            n += 1
    _write_trial(study, n, {"strategy": "none"}, {"status": "pruned", "eval": {}})  # left out, counted
    fs = scaling.FitSpec("zeroshot/objects/top1", "one_minus", "strategy", ("compute",), None, bootstrap=200)
    out = scaling.write_outputs("scal", [study, extension], tmp_path / "report", fs, quiet=True)
    assert out["skipped"] == {"pruned": 1} and len(out["points"]) == 16
    for group, (e, _, alpha, _) in truth.items():
        fit = out["groups"][group]["compute"]
        assert fit["converged"], fit
        lo, hi = fit["intervals"]["alpha"]
        assert lo <= alpha <= hi
        lo, hi = fit["intervals"]["E"]
        assert lo <= e <= hi
    (sentence,) = out["comparisons"]
    assert sentence.startswith("none lies above random") and "separate" in sentence
    report = tmp_path / "report"
    assert json.loads((report / "fits.json").read_text())["groups"]["random"]["compute"]["converged"]
    assert "| random | m0 |" in (report / "summary.md").read_text()
    assert (report / "compute.png").stat().st_size > 10_000
    assert (report / "model_size.png").is_file() and not (report / "data_size.png").exists()  # one data size
    acc = EventAccumulator(str(study / "scaling-fit"), size_guidance={"images": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) == {"scaling/compute", "scaling/model_size"}


def test_a_study_without_finished_trials_says_why(tmp_path):
    study = tmp_path / "scal"
    _write_trial(study, 0, {"strategy": "none"}, {"status": "running"})
    fs = scaling.FitSpec("zeroshot/objects/top1", "one_minus", "strategy", ("compute",), None)
    with pytest.raises(scaling.ScalingError, match="no finished, evaluated trial.*1 not finished"):
        scaling.write_outputs("scal", study, tmp_path / "out", fs, quiet=True)
