"""The sweep file's data model (no optuna here): a study's space, objectives and settings as sweep.spec
parses them from a file such as (docs/sweeps.md has every key)

    name: masking                      # the study: runs/<name>/trial-NNNN/
    base: {train.samples: 15000}       # overrides on params.yaml for every trial
    space:                             # params keys -> distributions; a key without a dot is a label
      masking.ratio: {type: float, low: 0.3, high: 0.8, step: 0.05, when: {masking.strategy: cluster}}
      model: {choices: [w64, w128], set: [model.vision, model.text]}     # one value, several keys
      strategy: {choices: {none: {masking.strategy: none}, random: {masking.strategy: random}}}
    rules: {warmup_fraction: 0.1}      # params derived per trial (sweep.rules)
    fit: {...}, compare: {...}         # analyses of the finished trials (sweep.spec.ANALYSES)
    objectives: [{metric: zeroshot/objects/top1, direction: maximize}]
    sampler: {name: tpe, seed: 0}; pruner: {name: median}; n_trials: 24; parallel: 2; retries: 1
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from maskvlp.config import Config
from maskvlp.sweep.rules import derive

# run-record keys (result.json) an objective may name besides the evaluation metrics
RECORD_OBJECTIVES = ("train_flops", "wall_s", "images_per_s", "train_loss")


class SweepSpecError(ValueError):
    """The sweep file is invalid; the message names the key and what to do."""


@dataclass(frozen=True)
class Param:
    key: str  # a params key, e.g. masking.ratio
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: dict[str, Any] = field(default_factory=dict)  # sampled only when these (base) params hold
    sets: tuple[str, ...] = ()  # a label (key without a dot): the chosen value goes to each of these keys
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)  # a label: choice name -> params

    @property
    def is_label(self) -> bool:
        return bool(self.sets or self.bundles)

    def expand(self, value: Any) -> dict[str, Any]:
        """The params keys this parameter's value sets: itself, each of `sets`, or the chosen bundle."""
        if self.bundles:
            return dict(self.bundles[value])
        if self.sets:
            return {k: value for k in self.sets}
        return {self.key: value}

    def identity(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("sets", "bundles")} | {"choices": list(self.choices)}
        if self.is_label:  # only for labels, so the fingerprints of studies from before labels stay the same
            out |= {"sets": list(self.sets), "bundles": self.bundles}
        return out


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]
    space: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    n_trials: int = 20
    parallel: int = 1
    retries: int = 1
    sampler_options: dict[str, Any] = field(default_factory=dict)  # more keyword arguments of the sampler
    pruner_options: dict[str, Any] = field(default_factory=dict)  # of the pruner, e.g. n_startup_trials
    rules: dict[str, Any] = field(default_factory=dict)  # params derived per trial (sweep.rules.RULES)
    fit: dict[str, Any] = field(default_factory=dict)  # scaling studies: the fit (sweep.fit.FitSpec)
    compare: dict[str, Any] = field(default_factory=dict)  # strategies over seeds (sweep.compare)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the mapping parsed:
    # what sweep.json stores and each trial's job parses again

    def fingerprint(self) -> str:
        """What makes a study this study: base, space, rules and objectives (not n_trials, parallel,
        retries, sampler, pruner, fit or launcher.* keys, which may change between runs of the same study)."""
        ident = {
            "base": {k: v for k, v in self.base.items() if not k.startswith("launcher.")},  # where, not what
            "space": [p.identity() for p in self.space],
            "objectives": [vars(o) for o in self.objectives],
        }
        if self.rules:
            ident["rules"] = self.rules
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """The params of one trial as {key: value}: the base, the sampled values (labels expanded into
        the keys they set), then the keys the rules derive from those."""
        merged = dict(self.base)
        by_key = {p.key: p for p in self.space}
        for key, value in values.items():
            merged.update(by_key[key].expand(value) if key in by_key else {key: value})
        return {**merged, **derive(merged, self.rules)}

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """`key=value` overrides of one trial (see `resolve`)."""
        return [f"{k}={yaml_value(v)}" for k, v in self.resolve(values).items()]


def yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def fail(key: str, message: str) -> SweepSpecError:
    return SweepSpecError(f"{key}: {message}")


def objective_keys(cfg: Config) -> set[str]:
    """Metric keys evaluation can produce for cfg's eval.datasets, plus the run-record keys."""
    from maskvlp.evalsets import dataset_name
    from maskvlp.metrics import TASK_METRICS

    keys = set(RECORD_OBJECTIVES)
    for spec in cfg.eval.datasets:
        name = dataset_name(spec)
        keys |= {f"{task}/{name}/{m}" for task, metrics in TASK_METRICS.items() for m in metrics}
    return keys


def check_metric(where: str, metric: str, cfg: Config, known: set[str], records: bool = True) -> None:
    """Refuse a metric key that evaluation of cfg's eval.datasets does not produce (nor the run record,
    unless `records` is False), hinting at the keys of the same last part."""
    if metric in known:
        return
    near = sorted(k for k in known if k.split("/")[-1] == metric.split("/")[-1])[:6]
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    also = f" nor a run-record key ({', '.join(RECORD_OBJECTIVES)})" if records else ""
    raise fail(where, f"{metric!r} is not produced by evaluation of {cfg.eval.datasets}{also}{hint}")


def grid_values(spec: SweepSpec) -> dict[str, list[Any]]:
    """The values each parameter of a grid takes (categoricals: their choices; numbers: low..high by step)."""
    space = {}
    for p in spec.space:
        if p.type == "categorical":
            space[p.key] = list(p.choices)
            continue
        n = int((p.high - p.low) / (p.step or 1) + 1e-9) + 1
        values = [p.low + i * (p.step or 1) for i in range(n)]
        space[p.key] = [int(round(v)) for v in values] if p.type == "int" else [round(v, 12) for v in values]
    return space


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of the grid as {parameter: value}."""
    space = grid_values(spec)
    return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]


def grid_size(spec: SweepSpec | tuple[Param, ...]) -> float:
    """Points of the full grid of a spec or a space (inf when a float has no step)."""
    space = spec.space if isinstance(spec, SweepSpec) else spec
    total = 1.0
    for p in space:
        if p.type == "categorical":
            total *= len(p.choices)
        elif p.step is None and p.type == "float":
            return math.inf
        else:
            total *= math.floor((p.high - p.low) / (p.step or 1) + 1e-9) + 1
    return total
