"""One trial as a job: a Slurm job (through launch.submit) or a local process (`python -m maskvlp.sweep.job`).

The job trains the trial's params in its own run folder (resuming from the folder's checkpoint when
there is one, skipping training when the weights exist), reports the intermediate objective to the
shared storage after each evaluation during training and stops when the pruner says so (state PRUNED,
the partial run kept with its checkpoint and marked in result.json), evaluates, writes the trial's
HParams session and tells the study. A job that dies before telling leaves its trial RUNNING; the
driver reconciles it (driver.py). Preemption under Slurm works as for single runs (launch.TrainJob).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskvlp.runs import RunPaths, read_result, update_result, write_json_atomic
from maskvlp.sweepspec import SweepSpec

TRIAL_FILE = "trial.json"  # what the driver hands a local trial process
STOPPED_FILE = "stopped.json"  # {"attempt": N}: attempt N stopped cleanly (checkpoint saved), not a crash


@dataclass
class TrialTask:
    """Everything a trial's job needs; JSON-serialisable (written to <run>/trial.json)."""

    cfg: dict[str, Any]  # the trial's complete, resolved params
    spec: dict[str, Any]  # the sweep file's mapping (re-parsed in the job)
    storage: str
    number: int  # the Optuna trial number of this attempt
    params: dict[str, Any]  # the sampled values (hparams)

    def to_json(self) -> str:
        return json.dumps(vars(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialTask:
        return cls(**json.loads(text))


class PruneHook:
    """The training hook (train.TrainHook): report the intermediate objective; True = prune now."""

    def __init__(self, trial, spec: SweepSpec):
        from maskvlp.sweep.study import intermediate_value

        self.trial, self.spec, self._value = trial, spec, intermediate_value
        self.pruned_at: int | None = None
        self.last: float | None = None

    def __call__(self, samples_seen: int, metrics: dict[str, float]) -> bool:
        value = self._value(self.spec, metrics)
        if value is None:
            return False
        self.last = value
        self.trial.report(value, samples_seen)
        if self.trial.should_prune():
            self.pruned_at = samples_seen
            return True
        return False


def run_trial(task: TrialTask, stop=None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and tell; returns {"state": COMPLETE | PRUNED | STOPPED, ...}. STOPPED (a stop
    request: preemption, SIGTERM) leaves the trial RUNNING for the requeued job or the driver."""
    from optuna.trial import TrialState

    from maskvlp.checkpoint import list_checkpoints
    from maskvlp.evaluate import evaluate_and_write, write_tensorboard_hparams
    from maskvlp.launch import _config_from
    from maskvlp.sweep.study import load_study, trial_handle, values_from_record
    from maskvlp.sweepspec import parse
    from maskvlp.train import pretrain

    spec = parse(task.spec)
    cfg = _config_from(task.cfg)
    paths = RunPaths(Path(cfg.train.runs_dir) / cfg.train.run_name)
    study = load_study(spec, task.storage)
    trial = trial_handle(study, task.number)
    hparams = {**task.params, "sweep.trial": task.number}
    hook = PruneHook(trial, spec)
    prunable = len(spec.objectives) == 1 and spec.pruner != "none"  # report() is single-objective only
    rank = 0
    if not paths.model.exists():
        resume = bool(list_checkpoints(paths.checkpoints))
        result = pretrain(cfg, resume=resume, progress=progress, stop=stop, hooks=[hook] if prunable else [])
        rank = result["rank"]
        if rank != 0:  # rank 0 alone reports, evaluates and tells; a stop here is a signal or the pruner
            signalled = result["status"] == "stopped" and bool(getattr(stop, "requested", False))
            return {"state": "STOPPED" if signalled else "RANK", "rank": rank}
        if result["status"] == "stopped" and hook.pruned_at is None:
            write_json_atomic(paths.root / STOPPED_FILE, {"attempt": task.number})
            return {"state": "STOPPED", "result": result}
        if hook.pruned_at is not None:
            update_result(paths, status="pruned", pruned_at_samples=hook.pruned_at, sweep_state="PRUNED")
            metrics = {"sweep/intermediate": hook.last}
            write_tensorboard_hparams(paths.root, metrics, {**hparams, "sweep.state": "PRUNED"})
            study.tell(task.number, state=TrialState.PRUNED)
            return {"state": "PRUNED", "pruned_at_samples": hook.pruned_at}
    metrics = evaluate_and_write(cfg, paths.root, progress=progress)
    values = values_from_record(spec, read_result(paths))
    if values is None or not all(math.isfinite(v) for v in values):
        raise RuntimeError(f"trial {task.number}: the run record of {paths.root} lacks a finite objective: {values}")
    if hook.last is not None:
        metrics = {**metrics, "sweep/intermediate": hook.last}
    write_tensorboard_hparams(paths.root, metrics, {**hparams, "sweep.state": "COMPLETE"})
    update_result(paths, sweep_state="COMPLETE")
    study.tell(task.number, values)
    return {"state": "COMPLETE", "values": values}


class TrialJob:
    """The callable submitted to Slurm for one trial; checkpointable like launch.TrainJob: on preemption
    the step checkpoint is saved, then the job is requeued and the trial continues (still RUNNING)."""

    def __init__(self, task: TrialTask, requeues: int = 0):
        self.task, self.requeues = task, requeues

    def __call__(self) -> dict[str, Any]:
        from maskvlp.launch import LaunchError, _CooperativeStop, _export_torch_distributed

        _export_torch_distributed()
        stop = _CooperativeStop()
        out = run_trial(self.task, stop=stop)
        if out["state"] == "STOPPED":
            handler = stop.submitit_handler
            if callable(handler):
                handler(signal.SIGUSR2, None)
            time.sleep(120)
            raise LaunchError("stopped for preemption but the job was not requeued")
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        from maskvlp.launch import LaunchError

        limit = self.task.cfg["launcher"]["max_requeues"]
        if self.requeues >= limit:
            raise LaunchError(f"trial {self.task.number}: preempted {self.requeues} times (launcher.max_requeues)")
        return submitit.helpers.DelayedSubmission(TrialJob(self.task, self.requeues + 1))


def main(argv: list[str] | None = None) -> int:
    """A local trial process: `python -m maskvlp.sweep.job RUN_DIR/trial.json`. SIGTERM stops it at a
    step boundary with a checkpoint (exit 3); the driver then retries it from that checkpoint."""
    argv = sys.argv[1:] if argv is None else argv
    task = TrialTask.from_json(Path(argv[0]).read_text())
    out = run_trial(task, progress=False)
    print(json.dumps(out, default=str))
    return 3 if out["state"] == "STOPPED" else 0


if __name__ == "__main__":
    sys.exit(main())
