"""One trial as a job: a Slurm job (through launch.submit) or a local process (`python -m maskvlp.sweep.job`).

The job trains the trial's params in its own run folder (resuming from the folder's checkpoint when
there is one, skipping training when whole weights exist), reports the intermediate objective to the
shared storage after each evaluation during training and stops when the pruner says so (state PRUNED,
the partial run kept with its checkpoint and marked in result.json), evaluates, writes the trial's
HParams session and tells the study. A job that dies before telling leaves its trial RUNNING; the
driver reconciles it (driver.py). Preemption under Slurm works as for single runs (launch.PreemptibleJob).

A job works only while it is its trial's *live attempt* (study.live_problem): the study in the storage
is the instance the job was started for, and its trial is still RUNNING. It checks before it writes
anything, once it holds the run folder, every LIVE_CHECK_S during training (rank 0 asks, all ranks
agree), before it evaluates and before it tells. A job that is not (one Slurm requeued by itself after
a node failure, one whose study was replaced by --force-new, one the driver already gave up on) stops
without writing more: at once when it starts, within LIVE_CHECK_S during training (a checkpoint
written in between is one of the same params, and the folder lock keeps it from overlapping the next
attempt). Rank 0 holds the run folder as its one writer (runs.folder_writer) while it works in it.

A diverged training (NaN loss) or a non-finite objective is a failed trial, told FAIL with the reason
(user attribute `failure`), and counted against the sweep's `retries`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskvlp.launch import CooperativeStop, PreemptibleJob
from maskvlp.runs import (
    FolderBusy,
    RunPaths,
    folder_writer,
    read_result,
    update_result,
    weights_complete,
    write_json_atomic,
)
from maskvlp.sweep.space import SweepSpec
from maskvlp.sweep.study import (
    intermediate_value,
    live_problem,
    load_study,
    non_finite,
    trial_handle,
    values_from_record,
)

LIVE_CHECK_S = 10.0  # how often a training job asks the storage whether it is still the live attempt
FOLDER_WAIT_S = 300.0  # how long a job waits for the run folder while an older attempt still holds it
EXIT_STOPPED, EXIT_NOT_LIVE = 3, 4  # a local trial process's exit codes besides 0 and a crash


class NotLive(RuntimeError):
    """This job is not (or no longer) its trial's live attempt; it wrote nothing and told nothing."""


@dataclass
class TrialTask:
    """Everything a trial's job needs; JSON-serialisable (written to RunPaths.trial, <run>/trial.json)."""

    cfg: dict[str, Any]  # the trial's complete, resolved params
    spec: dict[str, Any]  # the sweep file's mapping (re-parsed in the job)
    storage: str  # without a password (study.public_url); the job finds it in its environment
    number: int  # the Optuna trial number of this attempt
    params: dict[str, Any]  # the sampled values (hparams)
    instance: str = ""  # the study instance (study.INSTANCE_ATTR) this attempt belongs to

    def to_json(self) -> str:
        return json.dumps(vars(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialTask:
        return cls(**json.loads(text))


class PruneHook:
    """The training hook (train.TrainHook): report the intermediate objective; True = prune now."""

    def __init__(self, trial, spec: SweepSpec):
        self.trial, self.spec = trial, spec
        self.pruned_at: int | None = None
        self.last: float | None = None

    def __call__(self, samples_seen: int, metrics: dict[str, float]) -> bool:
        value = intermediate_value(self.spec, metrics)
        if value is None:
            return False
        self.last = value
        self.trial.report(value, samples_seen)
        if self.trial.should_prune():
            self.pruned_at = samples_seen
            return True
        return False


class LiveStop:
    """The stop request a trial's training polls every step: the inner request (a signal, preemption) or,
    checked every LIVE_CHECK_S against the storage by rank 0, the attempt no longer being live (then
    `abandoned` holds why, every rank agrees, and the training ends without writing: train.Abandoned)."""

    def __init__(self, inner: Any, study, task: TrialTask):
        self.inner, self.study, self.task = inner, study, task
        self.abandoned: str | None = None
        self._asks = _rank() == 0  # rank 0 asks the storage for every rank (train.pretrain agrees on it)
        self._next = time.monotonic() + LIVE_CHECK_S

    @property
    def requested(self) -> bool:
        if self._asks and self.abandoned is None and time.monotonic() >= self._next:
            self._next = time.monotonic() + LIVE_CHECK_S
            with contextlib.suppress(Exception):  # a storage hiccup is not a verdict: ask again later
                self.abandoned = live_problem(self.study, self.task.number, self.task.instance)
        return self.abandoned is not None or bool(self.inner.requested)

    def __getattr__(self, name: str) -> Any:  # submitit_handler, restore, ... of the inner request
        return getattr(self.inner, name)


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def run_trial(task: TrialTask, stop=None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and tell; returns {"state": COMPLETE | PRUNED | FAIL | STOPPED | RANK, ...}.
    STOPPED (a stop request: preemption, SIGTERM) leaves the trial RUNNING for the requeued job or the
    driver. Raises NotLive, before writing anything, when this job is not its trial's live attempt."""
    from maskvlp.params import config_from_dict
    from maskvlp.sweep.spec import parse
    from maskvlp.train import Abandoned, StopRequest

    spec = parse(task.spec)
    cfg = config_from_dict(task.cfg)
    paths = RunPaths(Path(cfg.train.runs_dir) / cfg.train.run_name)
    study = load_study(spec, task.storage)

    def check(when: str) -> None:
        problem = live_problem(study, task.number, task.instance)
        if problem:
            raise NotLive(f"trial {task.number} ({paths.root}), {when}: {problem}; this job stops without writing")

    check("at its start")
    own_stop = stop is None
    guard = LiveStop(stop or StopRequest(), study, task)
    try:
        if _rank() != 0:  # only rank 0 writes into the run folder; the others train beside it
            return _attempt(task, spec, cfg, paths, study, guard, progress, check)
        who = {"trial": task.number, "instance": task.instance, "slurm_job": os.environ.get("SLURM_JOB_ID", "")}
        with folder_writer(paths, who, wait_s=FOLDER_WAIT_S):
            check("once it held the run folder")
            return _attempt(task, spec, cfg, paths, study, guard, progress, check)
    except Abandoned as exc:
        raise NotLive(
            f"trial {task.number} ({paths.root}), during training: {exc}; this job stops without writing"
        ) from None
    finally:
        if own_stop:
            guard.inner.restore()


def _attempt(task, spec, cfg, paths: RunPaths, study, stop, progress: bool, check) -> dict[str, Any]:
    from optuna.trial import TrialState

    from maskvlp.checkpoint import list_checkpoints
    from maskvlp.evaluate import evaluate_and_write, write_tensorboard_hparams
    from maskvlp.train import pretrain
    from maskvlp.trainlog import NonFiniteLoss

    trial = trial_handle(study, task.number)
    hparams = {**task.params, "sweep.trial": task.number}
    hook = PruneHook(trial, spec)
    prunable = len(spec.objectives) == 1 and spec.pruner != "none"  # report() is single-objective only

    def fail(why: str) -> dict[str, Any]:
        check("before telling FAIL")
        trial.set_user_attr("failure", why)
        trial.set_user_attr("counts_as_failure", True)
        update_result(paths, sweep_state="FAIL", sweep_failure=why)
        study.tell(task.number, state=TrialState.FAIL)
        return {"state": "FAIL", "failure": why}

    if _rank() != 0 and weights_complete(paths.model):
        return {"state": "RANK", "rank": _rank()}  # nothing to train; rank 0 alone evaluates and tells
    if not weights_complete(paths.model):  # absent, or cut short by a kill or a full disk: train (again)
        resume = bool(list_checkpoints(paths.checkpoints))
        try:
            result = pretrain(cfg, resume=resume, progress=progress, stop=stop, hooks=[hook] if prunable else [])
        except NonFiniteLoss as exc:
            if _rank() != 0:
                return {"state": "RANK", "rank": _rank()}
            return fail(f"diverged: {exc}")
        rank = result["rank"]
        if rank != 0:  # rank 0 alone reports, evaluates and tells; a stop here is a signal or the pruner
            signalled = result["status"] == "stopped" and bool(getattr(stop, "requested", False))
            return {"state": "STOPPED" if signalled else "RANK", "rank": rank}
        if result["status"] == "stopped" and hook.pruned_at is None:
            write_json_atomic(paths.stopped, {"attempt": task.number})
            return {"state": "STOPPED", "result": result}
        if hook.pruned_at is not None:
            check("before telling PRUNED")
            update_result(paths, status="pruned", pruned_at_samples=hook.pruned_at, sweep_state="PRUNED")
            metrics = {"sweep/intermediate": hook.last}
            write_tensorboard_hparams(paths.root, metrics, {**hparams, "sweep.state": "PRUNED"})
            study.tell(task.number, state=TrialState.PRUNED)
            return {"state": "PRUNED", "pruned_at_samples": hook.pruned_at}
    check("before evaluating")
    metrics = evaluate_and_write(cfg, paths.root, progress=progress)
    values = values_from_record(spec, read_result(paths))
    if values is None:
        raise RuntimeError(f"trial {task.number}: the run record of {paths.root} lacks the objective")
    problem = non_finite(spec, values)
    if problem:
        return fail(problem)
    if hook.last is not None:
        metrics = {**metrics, "sweep/intermediate": hook.last}
    check("before telling COMPLETE")
    write_tensorboard_hparams(paths.root, metrics, {**hparams, "sweep.state": "COMPLETE"})
    update_result(paths, sweep_state="COMPLETE")
    study.tell(task.number, values)
    return {"state": "COMPLETE", "values": values}


class TrialJob(PreemptibleJob):
    """The callable submitted to Slurm for one trial: on preemption the step checkpoint is saved, then the
    job is requeued and the trial continues (still RUNNING), at most launcher.max_requeues times."""

    def __init__(self, task: TrialTask, requeues: int = 0):
        super().__init__(requeues, task.cfg["launcher"]["max_requeues"])
        self.task = task
        self.by_hand = f"Trial {task.number}: the driver retries it from its checkpoint"

    def run(self, stop: CooperativeStop) -> dict[str, Any]:
        try:
            return run_trial(self.task, stop=stop)
        except (NotLive, FolderBusy) as exc:  # ends the job without a retry by submitit; the driver decides
            print(f"maskvlp trial job: {exc}", file=sys.stderr, flush=True)
            return {"state": "NOT_LIVE", "why": str(exc)}

    def stopped(self, result: dict[str, Any]) -> bool:
        return result["state"] == "STOPPED"

    def resumed(self) -> TrialJob:
        return TrialJob(self.task, self.requeues + 1)


def main(argv: list[str] | None = None) -> int:
    """A local trial process: `python -m maskvlp.sweep.job RUN_DIR/trial.json`. SIGTERM stops it at a
    step boundary with a checkpoint (exit 3); the driver then retries it from that checkpoint."""
    argv = sys.argv[1:] if argv is None else argv
    task = TrialTask.from_json(Path(argv[0]).read_text())
    try:
        out = run_trial(task, progress=False)
    except (NotLive, FolderBusy) as exc:  # FolderBusy: a crash to the driver (counted, retried), said in a line
        print(f"maskvlp trial: {exc}", file=sys.stderr, flush=True)
        return EXIT_NOT_LIVE if isinstance(exc, NotLive) else 1
    print(json.dumps(out, default=str))
    return EXIT_STOPPED if out["state"] == "STOPPED" else 0


if __name__ == "__main__":
    sys.exit(main())
