"""A study's finished trials read back from their run folders, for the analyses (sweep.fit, sweep.compare):
one reader, which counts the trials it leaves out by reason."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskvlp.runs import list_runs


@dataclass
class TrialRecord:
    root: Path  # the trial's run folder
    params: dict[str, Any]  # its sampled values (trial.json)
    result: dict[str, Any]  # its run record (result.json)


def metric_value(result: dict[str, Any], key: str) -> float | None:
    """An evaluation metric of the run record, else a key of the record itself; None unless a finite number."""
    value = result.get("eval", {}).get(key, result.get(key))
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def value_at(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The run record's value at a path of keys, e.g. ("masking", "mean_cluster_coverage"); None unless
    a finite number."""
    node: Any = result
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) and math.isfinite(node) else None


def finished_trials(study_dir: Path, needs: str | None = None) -> tuple[list[TrialRecord], dict[str, int]]:
    """The complete, evaluated trials of a study folder (with a finite `needs` metric when given), in
    path order, and counts of the trials left out by reason: pruned, not finished, no <metric>."""
    out, skipped = [], {}
    for run in list_runs(study_dir):
        if not run.paths.trial.is_file():
            continue
        r = run.result
        reason = None
        if r.get("status") == "pruned":
            reason = "pruned"
        elif r.get("status") != "complete" or not r.get("eval"):
            reason = "not finished"
        elif needs is not None and metric_value(r, needs) is None:
            reason = f"no {needs}"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        out.append(TrialRecord(run.paths.root, json.loads(run.paths.trial.read_text())["params"], r))
    return out, skipped
