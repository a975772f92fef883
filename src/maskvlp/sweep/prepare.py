"""A sweep made ready to run, everything checked before anything is submitted: the sweep file with the
command line's changes (parsed once), the params with its base, the analyses' sections, the shards, every
grid point, where the study lives, and the share of the cores each local trial gets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskvlp.config import Config
from maskvlp.params import ParamsFile, load_config, read_params
from maskvlp.runs import RunPaths, StudyPaths
from maskvlp.sweep.space import SweepSpec, SweepSpecError, grid_points, grid_size
from maskvlp.sweep.spec import load, validate, validate_analyses
from maskvlp.sweep.study import storage_url, take_password

GRID_CHECK_LIMIT = 2000  # grids up to this many points get every point loaded before anything runs


@dataclass
class Sweep:
    """A sweep ready to run: the spec (with command-line changes; spec.raw is what the jobs parse), where
    the study lives, and how trials are configured."""

    spec: SweepSpec
    params: str | None
    base_cfg: Config
    study_dir: Path
    storage: str
    executor: str
    cpu_sets: list[frozenset[int]]  # local trials: the CPUs of each of the `parallel` slots (empty for Slurm)
    # the params file as read when the sweep was prepared: every trial of this driver is configured from
    # it, whatever happens to the file meanwhile
    params_file: ParamsFile | None = None

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.study_dir)

    @property
    def info(self) -> dict[str, Any]:
        spec = self.spec
        info = {"name": spec.name, "spec": spec.raw, "fingerprint": spec.fingerprint(), "storage": self.storage}
        data = self.params_file.data if self.params_file else None
        return info | {"params": self.params, "params_data": data, "executor": self.executor}


def prepare(path: str | Path, overrides: list[str] | None = None, params: str | None = "params.yaml",
            n_trials: int | None = None, parallel: int | None = None, storage: str | None = None) -> Sweep:  # fmt: skip
    """Load and validate everything before anything is submitted: the sweep file, the params with the
    sweep's base and `--set` overrides (merged into the base: they define the study), the shards."""
    spec = load(path, overrides, n_trials, parallel)
    snapshot = read_params(params)  # read once: the trials never see a later edit of the file
    cfg = validate(spec, snapshot)
    if spec.sampler == "grid" and spec.n_trials > grid_size(spec):
        raise SweepSpecError(f"n_trials: {spec.n_trials} exceeds the grid's {int(grid_size(spec))} points")
    validate_analyses(spec, cfg)
    from maskvlp.data.trainset import training_data

    try:
        training_data(cfg)  # the shards are there (and match the params), or the shards in place exist
    except FileNotFoundError as exc:
        raise SweepSpecError(f"data: {exc}") from exc  # load_manifest says how to make the shards
    if spec.sampler == "grid":
        check_grid(spec, snapshot)
    study_dir = Path(cfg.train.runs_dir) / spec.name
    url = take_password(storage_url(study_dir, storage))  # a password moves to the environment
    executor = cfg.launcher.executor
    cpu_sets = cpu_slots(sorted(os.sched_getaffinity(0)), spec.parallel) if executor == "local" else []
    return Sweep(spec, params, cfg, study_dir, url, executor, cpu_sets, snapshot)


def params_changes(sw: Sweep, recorded: dict[str, Any] | None) -> list[str]:
    """What differs between the params file a study started with (`recorded`: sweep.json's params_data)
    and the one read now, both with the sweep's base and as a run compares them on resume (launcher
    keys may differ); a key this code added since compares at its default. [] when nothing differs or
    the study recorded no params (it began before studies kept them)."""
    if recorded is None or (sw.params_file is not None and recorded == sw.params_file.data):
        return []  # the same file: nothing to resolve (and no torch to import on a driver's start)
    from maskvlp.config import ConfigError
    from maskvlp.session import resume_signature

    try:
        then = load_config(ParamsFile("the study's params (sweep.json)", recorded), sw.spec.overrides({}))
    except ConfigError as exc:
        return [f"the params this study started with no longer load: {exc}"]
    old, new = resume_signature(then), resume_signature(sw.base_cfg)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_grid(spec: SweepSpec, params: str | ParamsFile | None) -> None:
    """Every point of a grid (up to GRID_CHECK_LIMIT) through the params validation, and its data size
    against the shards: a combination the config refuses, or more unique pairs than the train split
    holds, is refused here, naming the point, instead of failing as a trial later."""
    from maskvlp.config import ConfigError
    from maskvlp.data.shards import ShardError
    from maskvlp.data.trainset import training_data

    if grid_size(spec) > GRID_CHECK_LIMIT:
        return
    for values in grid_points(spec):
        try:
            cfg = load_config(params, spec.overrides(values))
            training_data(cfg).limits(cfg.train.unique_pairs)
        except (ConfigError, ShardError) as exc:
            point = ", ".join(f"{k}={v}" for k, v in values.items())
            raise SweepSpecError(f"space: the grid point {point} is refused: {exc}") from exc


def cpu_slots(cpus: list[int], parallel: int) -> list[frozenset[int]]:
    """The driver's CPUs split into `parallel` slots, one per local trial process: contiguous, as even as
    possible (8 CPUs, parallel 3: 3+3+2); with more slots than CPUs, slots share CPUs round-robin.
    A trial process is pinned to its slot, so its CPU share (cpushare.py: torch threads, loader
    workers) follows from its affinity mask as for any process started under taskset."""
    if parallel >= len(cpus):
        return [frozenset({cpus[i % len(cpus)]}) for i in range(parallel)]
    size, extra = divmod(len(cpus), parallel)
    slots, start = [], 0
    for i in range(parallel):
        end = start + size + (1 if i < extra else 0)
        slots.append(frozenset(cpus[start:end]))
        start = end
    return slots


def trial_config(sw: Sweep, values: dict[str, Any], run_dir: Path) -> Config:
    """The trial's complete params: params.yaml + base + sampled values, in its own run folder."""
    extra = [f"train.runs_dir={run_dir.parent}", f"train.run_name={run_dir.name}"]
    extra += [f"eval.metrics_file={RunPaths(run_dir).eval_dir() / 'summary.json'}"]
    extra += [f"launcher.job_name={sw.spec.name}-{run_dir.name}"]
    return load_config(sw.params_file, sw.spec.overrides(values) + extra)
