"""The run folder and its records: the one module that knows where a run keeps what.

    runs/<name>/
      config.yaml          the run's complete, resolved params (re-run it with --params)
      run.json             how it started: git commit, shard manifest hash, world size, CPU share, ...
      result.json          how it ended (see below); rewritten atomically at every change
      checkpoints/         step-NNNNNNNNN.pt (atomic, the last N kept)
      tb/                  TensorBoard: training curves, mask pictures, evaluations during training
      model.safetensors    the final weights
      eval/                metrics.json + the TensorBoard HParams session of the stage's evaluation
      eval/<dataset>/      metrics.json of `maskvlp evaluate --dataset SPEC` on another set
      jobs.jsonl, slurm/   Slurm jobs submitted for the run and their logs

result.json holds `status` (running | complete | stopped | failed | pruned: a sweep trial stopped by its pruner), `samples_seen`, `steps`,
`train_loss`, `wall_s`, `images_per_s`, `train_flops`, `params_nonembedding`, `masking`,
`git_commit`, `evals` (evaluations during training) and, once evaluated, `eval` (flat metric keys).
Sweeps, scaling fits and the report read runs through :func:`list_runs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("running", "complete", "stopped", "failed", "pruned")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.jsonl"

    @property
    def slurm_logs(self) -> Path:
        return self.root / "slurm"

    def eval_dir(self, dataset: str | None = None) -> Path:
        """eval/ for the stage's own evaluation; eval/<dataset>/ for another set."""
        return self.root / "eval" if dataset is None else self.root / "eval" / dataset


def run_paths(cfg: Any) -> RunPaths:
    """The folder of the run that `cfg` (a Config) describes: <train.runs_dir>/<train.run_name>."""
    return RunPaths(Path(cfg.train.runs_dir) / cfg.train.run_name)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON under a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_result(paths: RunPaths) -> dict[str, Any]:
    """The run's result record ({} when it has none yet)."""
    if not paths.result.is_file():
        return {}
    return json.loads(paths.result.read_text())


def update_result(paths: RunPaths, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into result.json (the `eval` mapping is merged key by key) and write it atomically."""
    record = read_result(paths)
    for key, value in fields.items():
        if key == "eval" and isinstance(value, dict):
            record["eval"] = {**record.get("eval", {}), **value}
        else:
            record[key] = value
    write_json_atomic(paths.result, record)
    return record


@dataclass
class Run:
    paths: RunPaths
    config: dict[str, Any]  # the run's config.yaml as a plain dict
    result: dict[str, Any]  # its result.json ({} if it has none)

    @property
    def name(self) -> str:
        return self.paths.name

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.get("eval", {})


def load_run_record(root: str | Path) -> Run | None:
    """The run in `root`, or None when the folder holds no run (no config.yaml)."""
    import yaml

    paths = RunPaths(Path(root))
    if not paths.config.is_file():
        return None
    return Run(paths, yaml.safe_load(paths.config.read_text()) or {}, read_result(paths))


def list_runs(locations: list[str | Path] | str | Path) -> list[Run]:
    """Runs found in the given folders: each may be a run folder itself or hold run folders at any
    depth (runs/, runs/<study>/trial-0003/, ...). Sorted by path."""
    roots = [locations] if isinstance(locations, str | Path) else list(locations)
    found: dict[Path, Run] = {}
    for root in map(Path, roots):
        candidates = [root] if (root / "config.yaml").is_file() else sorted(p.parent for p in root.rglob("config.yaml"))
        for folder in candidates:
            run = load_run_record(folder)
            if run is not None and folder not in found:
                found[folder] = run
    return [found[k] for k in sorted(found)]
