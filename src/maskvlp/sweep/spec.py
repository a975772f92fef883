"""A sweep file (sweeps/*.yaml; the format: sweep.space) parsed, with its rules and analysis sections, and
validated against params.yaml before anything runs; `load` merges the command line's changes and parses
once; `open_study` reads a started study's spec back from its folder.

The analyses a sweep file may ask for are behind one interface, ANALYSES (nothing below this module
imports an analysis): `fit:` scaling curves over the grid (sweep.fit, `maskvlp scaling-fit`) and `compare:`
strategies over seeds (sweep.compare, `maskvlp sweep-report`). Each checks its section when the file is
parsed (`check`; at least that it is a mapping), its metric names against the params before anything
runs (`validate`), and writes its outputs from the study's finished trials (`write`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maskvlp.config import Config, ConfigError
from maskvlp.params import ParamsFile, load_config
from maskvlp.runs import StudyPaths
from maskvlp.sweep import compare, fit
from maskvlp.sweep.rules import check_rules
from maskvlp.sweep.space import (
    RECORD_OBJECTIVES,
    Objective,
    Param,
    SweepSpec,
    SweepSpecError,
    check_metric,
    fail,
    grid_size,
    objective_keys,
    yaml_value,
)


@dataclass(frozen=True)
class Analysis:
    section: str  # the sweep file's key
    example: str  # a well-formed section, for the message that refuses another type
    check: Callable[[SweepSpec], Any] | None  # at parse time, returns the analysis' spec (fit: its grid waits)
    validate: Callable[[SweepSpec, Config], Any]  # against the params, before anything runs; the same spec
    write: Callable[..., Any]  # the outputs, from the study folder(s) and that spec


ANALYSES = {
    "fit": Analysis("fit", "{metric: zeroshot/objects/top1}", None, fit.validate_fit, fit.write_outputs),
    "compare": Analysis(
        "compare",
        "{group: strategy, seeds: train.seed}",
        compare.compare_spec,
        compare.validate_compare,
        compare.write_comparison,
    ),
}


def analysis_sections(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each analysis' section of the sweep file's mapping ({} when absent); refused unless a mapping."""
    out = {}
    for name, a in ANALYSES.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise fail(name, f"must be a mapping such as {a.example}")
        out[name] = dict(value)
    return out


def check_analyses(spec: SweepSpec, present: set[str]) -> None:
    """Parse time: every section the file has (even an empty one) checked against the space."""
    for name, a in ANALYSES.items():
        if name in present and a.check is not None:
            a.check(spec)


def validate_analyses(spec: SweepSpec, cfg: Config) -> None:
    """Before anything runs: every section the spec holds, checked against the base params."""
    for name, a in ANALYSES.items():
        if getattr(spec, name):
            a.validate(spec, cfg)


SAMPLERS = ("tpe", "random", "grid", "nsga2", "qmc")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
TYPES = ("float", "int", "categorical")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TOP_LEVEL = ("name", "base", "space", "objectives", "sampler", "pruner", "n_trials", "parallel", "retries", "rules")


def parse(raw: Any, origin: str = "sweep file") -> SweepSpec:
    """A SweepSpec from the loaded YAML mapping (structure and ranges; see `validate` for params)."""
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{origin}: expected a mapping with name, space and objectives")
    unknown = set(raw) - {*TOP_LEVEL, *ANALYSES}
    if unknown:
        raise fail(", ".join(sorted(unknown)), f"unknown top-level key(s) in {origin}")
    name = str(raw.get("name", ""))
    if not NAME.match(name):
        raise fail("name", f"must be a folder-safe study name (letters, digits, _ . -), got {name!r}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise fail("base", "must map params keys to values, e.g. {train.samples: 15000}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise fail("space", "must map at least one params key to a distribution")
    space = tuple(param(k, v) for k, v in space_raw.items())
    objectives_raw = raw.get("objectives")
    if not isinstance(objectives_raw, list) or not objectives_raw:
        raise fail("objectives", "must list at least one {metric: KEY, direction: maximize|minimize}")
    objectives = []
    for i, o in enumerate(objectives_raw):
        if not isinstance(o, dict) or "metric" not in o:
            raise fail(f"objectives[{i}]", "must be {metric: KEY, direction: maximize|minimize}")
        direction = o.get("direction", "maximize")
        if direction not in DIRECTIONS:
            raise fail(f"objectives[{i}].direction", f"must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        objectives.append(Objective(str(o["metric"]), direction))
    sampler_raw = raw.get("sampler") or {}
    if not isinstance(sampler_raw, dict):
        raise fail("sampler", "must be a mapping such as {name: tpe, seed: 0}")
    sampler = sampler_raw.get("name", "nsga2" if len(objectives) > 1 else "tpe")
    if sampler not in SAMPLERS:
        raise fail("sampler.name", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "grid" and any(p.type == "float" and p.step is None for p in space):
        raise fail("sampler.name", "grid needs a step for every float parameter (or categorical choices)")
    pruner_raw = raw.get("pruner") or {}
    if not isinstance(pruner_raw, dict):
        raise fail("pruner", "must be a mapping such as {name: median, n_startup_trials: 5}")
    pruner = pruner_raw.get("name", "median")
    if pruner not in PRUNERS:
        raise fail("pruner.name", f"must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if pruner != "none" and len(objectives) > 1:
        raise fail("pruner.name", "pruning needs a single objective; set pruner: {name: none} for two objectives")
    ints = {}
    whole_grid = int(grid_size(space)) if sampler == "grid" and math.isfinite(grid_size(space)) else 20
    for key, default, minimum in (("n_trials", whole_grid, 1), ("parallel", 1, 1), ("retries", 1, 0)):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise fail(key, f"must be an integer >= {minimum}, got {value!r}")
        ints[key] = value
    seed = sampler_raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise fail("sampler.seed", f"must be an integer, got {seed!r}")
    rules = raw.get("rules") or {}
    try:
        check_rules(rules, base, space)
    except ValueError as exc:
        raise SweepSpecError(str(exc)) from None
    sampler_options = {k: v for k, v in sampler_raw.items() if k not in ("name", "seed")}
    pruner_options = {k: v for k, v in pruner_raw.items() if k != "name"}
    settings = dict(sampler_options=sampler_options, pruner_options=pruner_options, rules=dict(rules), raw=dict(raw))
    settings |= analysis_sections(raw)
    spec = SweepSpec(name, dict(base), space, tuple(objectives), sampler, seed, pruner, **ints, **settings)
    check_analyses(spec, present=set(raw))  # refuse a bad section before any trial runs
    return spec


def param(key: str, raw: Any) -> Param:
    """One entry of `space:` (a params key, or a label: see `_label`)."""
    where = f"space.{key}"
    if not isinstance(raw, dict):
        raise fail(where, "must be a mapping such as {type: float, low: 0.1, high: 0.9}")
    kind = raw.get("type", "categorical" if "choices" in raw else "float")
    if kind not in TYPES:
        raise fail(where, f"type must be one of {', '.join(TYPES)}, got {kind!r}")
    unknown = set(raw) - {"type", "low", "high", "step", "log", "choices", "when", "set"}
    if unknown:
        raise fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise fail(f"{where}.when", "must map params keys to the values that enable this parameter")
    if "." not in key:
        return _label(key, kind, raw, dict(when))
    if "set" in raw:
        raise fail(f"{where}.set", "only a label (a key without a dot, e.g. `model`) sets other keys")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{where}.choices", "a categorical parameter needs a non-empty list of choices")
        return Param(key, kind, choices=tuple(choices), when=dict(when))
    if "low" not in raw or "high" not in raw:
        raise fail(where, f"a {kind} parameter needs low and high")
    low, high = raw["low"], raw["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise fail(where, f"low and high must be numbers, got {low!r} and {high!r}")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise fail(where, f"an int parameter needs whole low and high, got {low!r} and {high!r}")
    if not low < high:
        raise fail(where, f"empty or inverted range: low {low} must be below high {high}")
    log, step = bool(raw.get("log", False)), raw.get("step")
    if log and low <= 0:
        raise fail(where, f"a log range must be positive (it cannot cross 0), got low {low}")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0 or step > high - low):
        raise fail(f"{where}.step", f"must be a positive number no larger than high - low, and not with log: {step!r}")
    return Param(key, kind, float(low), float(high), None if step is None else float(step), log, when=dict(when))


def _label(key: str, kind: str, raw: dict[str, Any], when: dict[str, Any]) -> Param:
    """A label: a categorical whose value is a name. Either `set: [keys]` (the value goes to each key,
    e.g. one model size for both towers) or `choices: {name: {params key: value, ...}}` (named bundles,
    e.g. a masking strategy with its ratio)."""
    where = f"space.{key}"
    if not NAME.match(key):
        raise fail(where, "a label must be a plain name (letters, digits, _ . -)")
    if kind != "categorical":
        raise fail(where, "a key without a dot is a label and must be categorical (params keys have dots)")
    choices, sets = raw.get("choices"), raw.get("set")
    if isinstance(choices, dict):
        if not choices:
            raise fail(f"{where}.choices", "a label needs at least one named choice")
        if sets is not None:
            raise fail(f"{where}.set", "give either set: [keys] or choices as named bundles, not both")
        bundles = {}
        for name, bundle in choices.items():
            if not isinstance(bundle, dict) or not bundle or not all(isinstance(k, str) and "." in k for k in bundle):
                raise fail(f"{where}.choices.{name}", "must map params keys to values, e.g. {masking.strategy: none}")
            bundles[str(name)] = dict(bundle)
        return Param(key, kind, choices=tuple(bundles), when=when, bundles=bundles)
    if not isinstance(choices, list) or not choices:
        raise fail(f"{where}.choices", "a label needs a non-empty list of choices (with set:) or named bundles")
    if not isinstance(sets, list) or not sets or not all(isinstance(k, str) and "." in k for k in sets):
        raise fail(
            where,
            "a key without a dot is a label: give `set: [params keys]` for its list of choices, or choices as "
            "named bundles {name: {key: value}}; or name a params key such as masking.ratio",
        )
    return Param(key, kind, choices=tuple(choices), when=when, sets=tuple(sets))


def validate(
    spec: SweepSpec, params: str | Path | ParamsFile | None = "params.yaml", extra: list[str] | None = None
) -> Config:
    """Check the spec against params.yaml: base and every space key are params keys whose extreme values
    the config accepts (with the parameter's `when` values set, which checks those keys too), and every
    objective is a key evaluation produces. Returns the base config. (The `fit:` and `compare:`
    sections are checked against it by validate_analyses.)"""
    base_overrides = spec.overrides({}) + list(extra or [])
    try:
        cfg = load_config(params, base_overrides)
    except ConfigError as exc:
        raise SweepSpecError(f"base: {exc}") from exc
    for p in spec.space:
        values = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        if p.type == "int":
            values = [int(v) for v in values]
        when = [f"{k}={yaml_value(v)}" for k, v in p.when.items()]
        for value in values:
            try:
                load_config(
                    params, [*base_overrides, *when, *(f"{k}={yaml_value(v)}" for k, v in p.expand(value).items())]
                )
            except ConfigError as exc:
                raise SweepSpecError(f"space.{p.key}: value {value!r} is refused by the params: {exc}") from exc
    known = objective_keys(cfg)
    for i, o in enumerate(spec.objectives):
        check_metric(f"objectives[{i}].metric", o.metric, cfg, known)
    if spec.pruner != "none":
        metric = spec.objectives[0].metric
        if metric in RECORD_OBJECTIVES:
            raise fail("pruner.name", f"pruning needs an evaluation metric objective, not {metric!r}")
        if cfg.train.eval_every_samples <= 0:
            raise fail(
                "pruner.name",
                "pruning needs evaluations during training: set train.eval_every_samples > 0 in base "
                "(or pruner: {name: none})",
            )
    return cfg


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items as {key: value} (values read as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SweepSpecError(f"--set {item}: must look like key=value, e.g. train.samples=5000")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load(
    path: str | Path, overrides: list[str] | None = None, n_trials: int | None = None, parallel: int | None = None
) -> SweepSpec:
    """The sweep file, with `--set` overrides merged into its base (they define the study) and the
    command line's n_trials and parallel in place of the file's; parsed once."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(f"sweep file '{path}' not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(raw, dict):
        raw["base"] = {**(raw.get("base") or {}), **parse_set(overrides or [])}
        for key, value in (("n_trials", n_trials), ("parallel", parallel)):
            if value is not None:
                raw[key] = value
    return parse(raw, str(path))


def open_study(name: str, runs_dir: str | Path = "runs") -> tuple[dict[str, Any], SweepSpec]:
    """The study started in <runs_dir>/<name>: its sweep.json (spec, storage, params) and the spec."""
    info_path = StudyPaths(Path(runs_dir) / name).info
    if not info_path.is_file():
        known = sorted(p.parent.name for p in Path(runs_dir).glob(f"*/{info_path.name}"))
        hint = f"; studies here: {', '.join(known)}" if known else ""
        raise SweepSpecError(f"no study '{name}' in {runs_dir}/ (no {info_path}){hint}")
    info = json.loads(info_path.read_text())
    return info, parse(info["spec"], str(info_path))
