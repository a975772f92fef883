"""`maskvlp sweep FILE`: run a study to `n_trials` finished trials, `parallel` at a time.

The driver holds no state of its own: everything is in the study's storage (trial params, states,
user attributes `run_dir` and `job`) and in the trials' run folders, so it can be killed at any
moment and started again with the same command. Each pass of its loop:

1. polls its trials: a trial its job has told (COMPLETE, PRUNED) frees its slot at once;
2. reconciles trials whose job is gone while the trial is still RUNNING (sacct for Slurm jobs, the
   process table for local ones): a run that finished its evaluation is told COMPLETE from its record;
   otherwise the attempt is told FAIL and a retry with the same params and run folder is enqueued
   (it resumes from the folder's checkpoint), at most `retries` times for crashes (a clean stop, such
   as Ctrl-C or SIGTERM, does not count);
3. starts trials until `parallel` are in flight: enqueued retries first, then new points from the
   sampler, while finished + in flight < n_trials. A new trial starts as soon as any slot frees.

Every study instance has an id (study.INSTANCE_ATTR) that each job carries and checks before it writes
or tells (job.py): `--force-new` is refused while any trial job of the old study is alive, and a job of a
replaced study, or one Slurm requeued on its own after the driver gave up on it, stops without writing.
Trials pending in Slurm for a reason that cannot clear (launch.HOPELESS_REASONS) are cancelled and
failed with that reason. One driver per study: an flock on `<runs_dir>/.<name>.driver.lock`, which the
kernel drops when the driver dies (a requeued `--detach` driver takes it again).

Local trials are separate processes in their own session (Ctrl-C of the driver stops them at a step
boundary with a checkpoint); Slurm trials are jobs submitted through launch.submit and keep running
when the driver dies. Each trial process gets its share of the cores: locally `launcher.threads` =
CPUs // parallel, under Slurm the job's `launcher.cpus_per_task`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from maskvlp.config import Config, to_dict
from maskvlp.params import load_config
from maskvlp.progress import Progress, format_duration
from maskvlp.runs import (
    RunPaths,
    folder_in_use,
    read_result,
    try_lock,
    weights_complete,
    write_json_atomic,
    write_text_atomic,
)
from maskvlp.sweep.job import EXIT_NOT_LIVE, EXIT_STOPPED, STOPPED_FILE, TRIAL_FILE, TrialJob, TrialTask
from maskvlp.sweep.study import (
    INSTANCE_ATTR,
    Logical,
    create_or_resume,
    is_finished,
    logical_trials,
    non_finite,
    storage_url,
    suggest,
    take_password,
    trial_handle,
    values_from_record,
)
from maskvlp.sweepspec import SweepSpec, SweepSpecError, grid_size, validate

SWEEP_FILE = "sweep.json"  # in the study folder: the spec, storage and params the study was started with
LOCK_FILE = "driver.json"  # who drives the study (for messages); the lock itself is driver_lock_path()
LOCK_PATIENCE_S = 2.0  # how long a starting driver retries the lock before it says another driver runs
ALIVE_SLURM = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
}
UNKNOWN_GRACE_S = 120.0  # a job sacct does not know yet (just submitted) counts as alive this long


@dataclass
class Sweep:
    """A sweep ready to run: the spec (with command-line changes), its raw mapping for the jobs, where
    the study lives, and how trials are configured."""

    spec: SweepSpec
    raw: dict[str, Any]
    params: str | None
    base_cfg: Config
    study_dir: Path
    storage: str
    executor: str
    cpu_sets: list[frozenset[int]]  # local trials: the CPUs of each of the `parallel` slots (empty for Slurm)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "spec": self.raw,
            "fingerprint": self.spec.fingerprint(),
            "storage": self.storage,
            "params": self.params,
            "executor": self.executor,
        }


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SweepSpecError(f"--set {item}: must look like key=value, e.g. train.samples=5000")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def prepare(
    path: str | Path,
    overrides: list[str] | None = None,
    params: str | None = "params.yaml",
    n_trials: int | None = None,
    parallel: int | None = None,
    storage: str | None = None,
) -> Sweep:
    """Load and validate everything before anything is submitted: the sweep file, the params with the
    sweep's base and `--set` overrides (merged into the base: they define the study), the shards."""
    from maskvlp.data.shards import check_manifest, load_manifest
    from maskvlp.sweepspec import load, parse

    spec = load(path)
    raw = yaml.safe_load(Path(path).read_text())
    raw["base"] = {**(raw.get("base") or {}), **_parse_set(overrides or [])}
    for key, value in (("n_trials", n_trials), ("parallel", parallel)):
        if value is not None:
            raw[key] = value
    spec = parse(raw, str(path))
    cfg = validate(spec, params)
    if spec.sampler == "grid" and spec.n_trials > grid_size(spec):
        raise SweepSpecError(f"n_trials: {spec.n_trials} exceeds the grid's {int(grid_size(spec))} points")
    if spec.fit:
        from maskvlp.scaling import validate_fit

        validate_fit(spec, cfg)
    if spec.compare:
        from maskvlp.sweep.compare import validate_compare

        validate_compare(spec, cfg)
    try:
        check_manifest(cfg, load_manifest(cfg.data.out_dir))
    except FileNotFoundError as exc:
        raise SweepSpecError(f"data: {exc}") from exc  # load_manifest says how to make the shards
    if spec.sampler == "grid":
        check_grid(spec, params)
    study_dir = Path(cfg.train.runs_dir) / spec.name
    url = take_password(storage_url(study_dir, storage))  # a password moves to the environment
    executor = cfg.launcher.executor
    cpu_sets = cpu_slots(sorted(os.sched_getaffinity(0)), spec.parallel) if executor == "local" else []
    return Sweep(spec, raw, params, cfg, study_dir, url, executor, cpu_sets)


GRID_CHECK_LIMIT = 2000  # grids up to this many points get every point loaded before anything runs


def check_grid(spec: SweepSpec, params: str | None) -> None:
    """Every point of a grid (up to GRID_CHECK_LIMIT) through the params validation, and its data size
    against the shards: a combination the config refuses, or more unique pairs than the train split
    holds, is refused here, naming the point, instead of failing as a trial later."""
    from maskvlp.config import ConfigError
    from maskvlp.data.shards import ShardError, first_pairs
    from maskvlp.sweepspec import grid_points

    if grid_size(spec) > GRID_CHECK_LIMIT:
        return
    for values in grid_points(spec):
        try:
            cfg = load_config(params, spec.overrides(values))
            first_pairs(cfg.data.out_dir, "train", cfg.train.unique_pairs)
        except (ConfigError, ShardError) as exc:
            point = ", ".join(f"{k}={v}" for k, v in values.items())
            raise SweepSpecError(f"space: the grid point {point} is refused: {exc}") from exc


def cpu_slots(cpus: list[int], parallel: int) -> list[frozenset[int]]:
    """The driver's CPUs split into `parallel` slots, one per local trial process: contiguous, as even as
    possible (8 CPUs, parallel 3: 3+3+2); with more slots than CPUs, slots share CPUs round-robin.
    A trial process is pinned to its slot, so its CPU share (resources.py: torch threads, loader
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
    extra = [
        f"train.runs_dir={run_dir.parent}",
        f"train.run_name={run_dir.name}",
        f"eval.metrics_file={run_dir / 'eval' / 'summary.json'}",
        f"launcher.job_name={sw.spec.name}-{run_dir.name}",
    ]
    return load_config(sw.params, sw.spec.overrides(values) + extra)


# --------------------------------------------------------------------------------- job handles
@dataclass
class Handle:
    number: int
    run_dir: Path
    job: str  # "slurm:<id>" or "local:<host>:<pid>:<start ticks>"
    launched: float = field(default_factory=time.time)
    process: subprocess.Popen | None = None  # local trials started by this driver
    slot: int | None = None  # local trials: the index of the CPU slot it is pinned to


def _proc_start(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]  # state, ..., starttime (field 22)


def job_alive(job: str, launched: float, slurm_states: dict[str, str] | None, run_dir: Path | None = None) -> bool:
    """Whether the job may still run. A local trial on another host cannot be asked through the process
    table: it counts as alive while it holds its run folder's writer lock (runs.folder_writer)."""
    kind, _, ref = job.partition(":")
    if kind == "slurm":
        if slurm_states is None:  # sacct did not answer
            return True
        state = slurm_states.get(ref, "UNKNOWN")
        return state in ALIVE_SLURM or (state == "UNKNOWN" and time.time() - launched < UNKNOWN_GRACE_S)
    host, pid, start = ref.split(":")
    if host != socket.gethostname():
        return run_dir is not None and folder_in_use(RunPaths(run_dir))
    return _proc_start(int(pid)) == start


def _slurm_states(handles: list[Handle]) -> dict[str, str] | None:
    """sacct's states of the handles' Slurm jobs; None when sacct does not answer (then no Slurm trial
    is judged this pass: a live job must never be taken for a dead one)."""
    from maskvlp.launch import LaunchError, sacct_states

    ids = [h.job.split(":", 1)[1] for h in handles if h.job.startswith("slurm:")]
    try:
        return sacct_states(ids) if ids else {}
    except LaunchError as exc:
        print(f"sweep: {exc}; trying again at the next poll", file=sys.stderr)
        return None


def _recorded_job(trial: optuna.trial.FrozenTrial) -> str:
    """The trial's job: its `job` attribute, else the last Slurm job its run folder recorded (the driver
    may have died between submitting and noting it)."""
    if trial.user_attrs.get("job"):
        return trial.user_attrs["job"]
    jobs = RunPaths(Path(trial.user_attrs.get("run_dir", "."))).jobs
    lines = jobs.read_text().splitlines() if jobs.is_file() else []
    return f"slurm:{json.loads(lines[-1])['job_id']}" if lines else ""


def _launched_at(trial: optuna.trial.FrozenTrial) -> float:
    """When the trial's job was started: its `launched` attribute, else the submission time its run
    folder recorded, else now (so a job sacct does not know yet gets its grace period)."""
    stamp = trial.user_attrs.get("launched")
    jobs = RunPaths(Path(trial.user_attrs.get("run_dir", "."))).jobs
    if not stamp and jobs.is_file() and jobs.read_text().strip():
        stamp = json.loads(jobs.read_text().splitlines()[-1]).get("submitted")
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp else time.time()


def recorded_handle(trial: optuna.trial.FrozenTrial) -> Handle | None:
    """The job of a RUNNING trial as the storage and its run folder record it; None when it was never
    launched (no run folder or no job: the driver stopped between asking and starting it)."""
    job = _recorded_job(trial)
    if not trial.user_attrs.get("run_dir") or not job:
        return None
    return Handle(trial.number, Path(trial.user_attrs["run_dir"]), job, _launched_at(trial))


# ------------------------------------------------------------------------------------- driver
class Driver:
    def __init__(self, sw: Sweep, study: optuna.Study, progress: bool = True, poll_s: float = 2.0):
        self.sw, self.study, self.poll_s = sw, study, poll_s
        self.active: dict[int, Handle] = {}
        self.progress = progress
        self.launched_count = 0
        self.instance = str(study.user_attrs.get(INSTANCE_ATTR, ""))

    # -- launching
    def launch(self) -> Handle | None:
        """Ask the study for a trial (an enqueued retry first) and start its job. A trial whose params the
        config refuses is told FAIL (a crash: it is retried, then given up); a job the cluster refuses stops
        the sweep (every trial would be refused alike)."""
        from maskvlp.config import ConfigError
        from maskvlp.launch import LaunchError

        trial = self.study.ask()
        try:
            return self._start(trial)
        except ConfigError as exc:
            self._fail(trial, f"params refused: {exc}", crash=True)
            self._say(f"trial {trial.number}: params refused, told FAIL: {exc}")
            return None
        except (LaunchError, OSError) as exc:
            self._fail(trial, f"could not start its job: {exc}", crash=False)
            raise

    def _fail(
        self, trial: optuna.Trial | optuna.trial.FrozenTrial, why: str, crash: bool, no_retry: bool = False
    ) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            handle = trial_handle(self.study, trial.number)
            handle.set_user_attr("failure", why)
            handle.set_user_attr("counts_as_failure", crash)
            if no_retry:
                handle.set_user_attr("no_retry", True)
        self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def _start(self, trial: optuna.Trial) -> Handle:
        sw, spec = self.sw, self.sw.spec
        values = suggest(trial, spec)
        run_dir = Path(trial.user_attrs.get("run_dir") or sw.study_dir / f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", spec.overrides(values))
        cfg = trial_config(sw, values, run_dir)
        task = TrialTask(to_dict(cfg), sw.raw, sw.storage, trial.number, values, self.instance)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / TRIAL_FILE, task.to_json())
        if sw.executor == "local":
            slot = self.free_slot()
            cpus = sw.cpu_sets[slot]
            log = open(run_dir / "trial.log", "a")  # noqa: SIM115 (the child keeps it)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "maskvlp.sweep.job", str(run_dir / TRIAL_FILE)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the driver's Ctrl-C is relayed as SIGTERM (a clean stop), not SIGINT
                env=env,
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # its share of the cores
            )
            log.close()
            job = f"local:{socket.gethostname()}:{proc.pid}:{_proc_start(proc.pid)}"
            handle = Handle(trial.number, run_dir, job, process=proc, slot=slot)
        else:
            from maskvlp.launch import submit

            submitted = submit(cfg, TrialJob(task), run_dir, "trial")
            handle = Handle(trial.number, run_dir, f"slurm:{submitted.job.job_id}")
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # it may have told already
            trial.set_user_attr("job", handle.job)
            trial.set_user_attr("launched", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.active[trial.number] = handle
        self.launched_count += 1
        return handle

    def free_slot(self) -> int:
        """A CPU slot no running local trial holds (adopted orphans hold the slot matching their affinity)."""
        taken = {h.slot for h in self.active.values()}
        return next(i for i in range(len(self.sw.cpu_sets)) if i not in taken)

    # -- reconciliation
    def settle_dead(self, trial: optuna.trial.FrozenTrial, why: str) -> str:
        """A RUNNING trial whose job is gone: told COMPLETE from its record when it evaluated, PRUNED
        when it was pruned, else FAIL (`ensure_retries` then enqueues its retry). Returns what was done."""
        run_dir = Path(trial.user_attrs.get("run_dir", ""))
        result = read_result(RunPaths(run_dir)) if trial.user_attrs.get("run_dir") else {}
        values = values_from_record(self.sw.spec, result) if weights_complete(RunPaths(run_dir).model) else None
        if values is not None and result.get("eval"):
            problem = non_finite(self.sw.spec, values)
            if problem:  # a failed trial, counted against retries (never COMPLETE, never retried forever)
                self._fail(trial, problem, crash=True)
                return f"FAIL ({problem})"
            self.study.tell(trial.number, values, skip_if_finished=True)
            return "COMPLETE (from its run record)"
        if result.get("failure") == "non_finite_loss" and result.get("status") == "failed":
            self._fail(trial, f"diverged: {result.get('error', 'non-finite loss')}", crash=True)
            return "FAIL (diverged: non-finite training loss)"
        if result.get("status") == "pruned":
            self.study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
            return "PRUNED (from its run record)"
        launched = bool(trial.user_attrs.get("job"))
        marker = run_dir / STOPPED_FILE
        clean = why == "stopped cleanly" or (
            marker.is_file() and json.loads(marker.read_text()).get("attempt") == trial.number
        )
        self._fail(trial, why, crash=launched and not clean)
        if not trial.user_attrs.get("run_dir"):
            if self.sw.spec.sampler == "grid" and trial.params:
                # the grid sampler counts the FAIL as its point visited: put the point back in the queue
                self.study.enqueue_trial(dict(trial.params))
                return "FAIL (never launched; its grid point is enqueued again)"
            return "FAIL (never launched)"
        return "FAIL" + (" (a clean stop: not counted against retries)" if clean else "")

    def ensure_retries(self) -> None:
        """Every logical trial whose latest attempt FAILed with retries left gets exactly one WAITING
        retry (same params, same folder: it resumes from the folder's checkpoint). Idempotent, so a
        driver killed between a FAIL and its retry leaves nothing stranded."""
        for g in logical_trials(self.study):
            if g.last.state != TrialState.FAIL or is_finished(g, self.sw.spec.retries):
                continue
            self.study.enqueue_trial(
                dict(g.last.params),
                user_attrs={"run_dir": g.run_dir, "retry_of": g.last.number, "attempt": len(g.attempts) + 1},
            )
            self._say(
                f"trial {g.number}: retry enqueued ({g.failures} of {self.sw.spec.retries} crash retries used); "
                f"it resumes from {g.run_dir}/checkpoints"
            )

    def poll(self) -> None:
        """Free the slots of trials that finished, reconcile those whose job died."""
        states = _slurm_states(list(self.active.values()))
        trials = self.study.get_trials(deepcopy=False)
        pending: list[Handle] = []
        for number, h in list(self.active.items()):
            trial = trials[number]
            if trial.state != TrialState.RUNNING:
                self._reap(h)
                self._say(f"trial {number} {trial.state.name} {self._values(trial)}")
                del self.active[number]
                continue
            if h.process is not None:
                code = h.process.poll()
                if code is None:
                    continue
                why = {EXIT_STOPPED: "stopped cleanly", EXIT_NOT_LIVE: "not the live attempt"}.get(
                    code, f"process exited with code {code}"
                )
            elif job_alive(h.job, h.launched, states, h.run_dir):
                if (states or {}).get(h.job.split(":", 1)[1]) == "PENDING":
                    pending.append(h)
                continue
            else:
                why = f"job ended {(states or {}).get(h.job.split(':', 1)[1], 'UNKNOWN')}"
            trial = self.study.get_trials(deepcopy=False)[number]  # it may have told just now
            if trial.state == TrialState.RUNNING:
                self._say(f"trial {number}: {why}: {self.settle_dead(trial, why)} (logs in {h.run_dir})")
            del self.active[number]
        self.give_up_hopeless(pending)

    def give_up_hopeless(self, pending: list[Handle]) -> None:
        """Pending Slurm trials whose reason no waiting clears (a partition too small, an invalid account,
        ...): the job is cancelled and the trial failed with Slurm's reason, not retried (a retry would
        wait forever alike). Other reasons (Resources, Priority) just wait."""
        from maskvlp.launch import HOPELESS_REASONS, pending_reasons

        reasons = pending_reasons([h.job.split(":", 1)[1] for h in pending])
        for h in pending:
            job_id = h.job.split(":", 1)[1]
            reason = reasons.get(job_id, "")
            if reason not in HOPELESS_REASONS:
                continue
            try:
                subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=True)
            except (OSError, subprocess.SubprocessError) as exc:
                self._say(f"trial {h.number}: scancel {job_id} failed ({exc}); trying again at the next poll")
                continue
            why = f"job {job_id} can never start (Slurm: pending, reason {reason}); cancelled"
            self._fail(trial_handle(self.study, h.number), why, crash=True, no_retry=True)
            self._say(f"trial {h.number}: {why}; told FAIL, not retried (check launcher.* against `sinfo`)")
            del self.active[h.number]

    def adopt_orphans(self) -> None:
        """At start: RUNNING trials of an earlier driver. Alive jobs are followed again; dead ones settled."""
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        handles = {}
        for t in trials:
            if t.number in self.active:
                continue
            handle = recorded_handle(t)
            if handle is None:
                self._say(f"trial {t.number}: {self.settle_dead(t, 'never launched (the driver stopped first)')}")
                continue
            handles[t.number] = handle
        states = _slurm_states(list(handles.values()))
        for number, h in handles.items():
            if job_alive(h.job, h.launched, states, h.run_dir):
                if h.job.startswith("local:"):
                    h.slot = self._slot_of(int(h.job.split(":")[2]))
                self.active[number] = h
                self._say(f"trial {number}: its job {h.job} is still running: following it")
            else:
                trial = self.study.get_trials(deepcopy=False)[number]
                self._say(f"trial {number}: {self.settle_dead(trial, f'job gone ({h.job})')}")

    # -- the loop
    def counts(self) -> tuple[int, int, list[Logical]]:
        groups = logical_trials(self.study)
        finished = sum(is_finished(g, self.sw.spec.retries) for g in groups)
        waiting = sum(g.last.state == TrialState.WAITING for g in groups)
        return finished, waiting, groups

    def run(self) -> list[Logical]:
        spec = self.sw.spec
        self.adopt_orphans()
        self.ensure_retries()
        finished, _, _ = self.counts()
        bar = Progress(spec.n_trials, f"sweep {spec.name}", unit="trial", enabled=self.progress, initial=finished)
        try:
            while True:
                self.poll()
                self.ensure_retries()
                finished, waiting, groups = self.counts()
                bar.update(finished - bar.n)
                bar.set_postfix(running=len(self.active), best=self._best())
                while len(self.active) < spec.parallel and (
                    waiting > 0 or finished + len(self.active) + waiting < spec.n_trials
                ):
                    h = self.launch()
                    if h is not None:
                        self._say(f"trial {h.number} started ({h.job}) in {h.run_dir}")
                    self.ensure_retries()
                    finished, waiting, groups = self.counts()
                if not self.active:
                    break  # finished >= n_trials: nothing left to start
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self.stop_local()
            raise
        finally:
            bar.close()
        return groups

    def stop_local(self) -> None:
        """Ctrl-C: local trials get SIGTERM (checkpoint at the next step, then exit); Slurm jobs keep
        running and the next `maskvlp sweep` follows them again."""
        for h in self.active.values():
            if h.process is not None and h.process.poll() is None:
                h.process.send_signal(signal.SIGTERM)
        for h in self.active.values():
            if h.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.process.wait(timeout=120)
        if any(h.process is None for h in self.active.values()):
            print("sweep: Slurm trials keep running; run the same command again to follow them", file=sys.stderr)

    # -- helpers
    def _slot_of(self, pid: int) -> int | None:
        try:
            cpus = frozenset(os.sched_getaffinity(pid))
        except OSError:
            return None
        taken = {h.slot for h in self.active.values()}
        return next((i for i, s in enumerate(self.sw.cpu_sets) if s == cpus and i not in taken), None)

    def _reap(self, h: Handle) -> None:
        if h.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.process.wait(timeout=60)

    def _values(self, trial: optuna.trial.FrozenTrial) -> str:
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            at = max(trial.intermediate_values)
            return f"at {at} samples (intermediate {trial.intermediate_values[at]:.4f})"
        if trial.state != TrialState.COMPLETE or trial.values is None:
            return ""
        return " ".join(f"{o.metric}={v:.4f}" for o, v in zip(self.sw.spec.objectives, trial.values))

    def _best(self) -> str:
        try:
            if len(self.sw.spec.objectives) > 1:
                return f"{len(self.study.best_trials)} on the Pareto front"
            return f"{self.study.best_value:.4f}"
        except ValueError:
            return "-"

    def _say(self, message: str) -> None:
        print(f"sweep {self.sw.spec.name}: {message}", file=sys.stderr, flush=True)


def driver_lock_path(study_dir: Path) -> Path:
    """The driver's lock file: beside the study folder, not in it, so --force-new can move the folder
    aside while the lock is held."""
    return study_dir.parent / f".{study_dir.name}.driver.lock"


def driver_alive(study_dir: Path) -> dict[str, Any] | None:
    """Who drives the study now (driver.json: host, pid, Slurm job), or None when no process holds the
    driver lock. The lock is the truth: a driver that died, even on another host, holds nothing."""
    if not folder_in_use(RunPaths(driver_lock_path(study_dir).parent), driver_lock_path(study_dir)):
        return None
    return _driver_record(study_dir)


def _driver_record(study_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((study_dir / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {"host": "?", "pid": "?"}


def _driver_refusal(study_dir: Path, other: dict[str, Any]) -> SweepSpecError:
    job = f", Slurm job {other['slurm_job']}" if other.get("slurm_job") else ""
    return SweepSpecError(
        f"a driver for study '{study_dir.name}' already runs (pid {other.get('pid')} on {other.get('host')}{job}); "
        f"follow it with `maskvlp sweep-status {study_dir.name}`, or stop it first"
    )


def refuse_second_driver(study_dir: Path) -> None:
    other = driver_alive(study_dir)
    if other is not None:
        raise _driver_refusal(study_dir, other)


@contextlib.contextmanager
def driver_lock(study_dir: Path):
    """One driver per study: a second one would start the same retries twice. An flock taken without
    waiting (of several drivers started at once exactly one gets it); the kernel releases it when the
    driver exits or dies, so a driver requeued by Slurm, or started again after a kill, takes it anew."""
    path = driver_lock_path(study_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_PATIENCE_S  # sweep-status tries the lock for an instant too
        while not try_lock(fd, path):
            if time.monotonic() >= deadline:
                raise _driver_refusal(study_dir, _driver_record(study_dir))
            time.sleep(0.1)
        pid = os.getpid()
        record = {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}
        if os.environ.get("SLURM_JOB_ID"):
            record["slurm_job"] = os.environ["SLURM_JOB_ID"]
        yield record
    finally:
        os.close(fd)


def alive_trial_jobs(sw: Sweep) -> list[str]:
    """The jobs of the stored study's RUNNING trials that still run (empty when there is no study)."""
    import optuna

    from maskvlp.sweep.study import open_storage

    if not sw.storage or (not Path(sw.storage).exists() and "://" not in sw.storage):
        return []
    storage = open_storage(sw.storage, sw.spec.parallel)
    try:
        study = optuna.load_study(study_name=sw.spec.name, storage=storage)
    except KeyError:
        return []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    handles = [h for h in map(recorded_handle, running) if h is not None]
    states = _slurm_states(handles)
    return [h.job for h in handles if job_alive(h.job, h.launched, states, h.run_dir)]


def refuse_force_new_while_jobs_run(sw: Sweep) -> None:
    """--force-new would give the old study's name and storage to a new study while its jobs still write
    and tell: refused, naming the jobs and how to stop them."""
    jobs = alive_trial_jobs(sw)
    if not jobs:
        return
    slurm = [j.split(":", 1)[1] for j in jobs if j.startswith("slurm:")]
    local = [j.split(":")[2] for j in jobs if j.startswith("local:")]
    how = []
    if slurm:
        how.append(f"`scancel {' '.join(slurm)}`")
    if local:
        how.append(f"`kill {' '.join(local)}` (on the host that runs them)")
    raise SweepSpecError(
        f"--force-new: {len(jobs)} trial job(s) of the old study '{sw.spec.name}' still run ({', '.join(jobs)}); "
        f"they would write into the new study. Stop them first with {' and '.join(how)}, or follow them "
        f"without --force-new (`maskvlp sweep-status {sw.spec.name}`)"
    )


def set_aside(study_dir: Path) -> Path | None:
    """--force-new: move the old study's folder to <name>.replaced-<time> (nothing is deleted)."""
    if not study_dir.exists():
        return None
    target = study_dir.with_name(f"{study_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    study_dir.rename(target)
    return target


def run_sweep(sw: Sweep, force_new: bool = False, progress: bool = True, poll_s: float = 2.0) -> list[Logical]:
    """Create or resume the study and drive it to n_trials finished trials."""
    with driver_lock(sw.study_dir) as record:  # before --force-new moves anything a running driver uses
        if force_new:
            refuse_force_new_while_jobs_run(sw)
            moved = set_aside(sw.study_dir)  # its journal too, when it lives there (an RDB study is deleted below)
            if moved:
                print(f"sweep {sw.spec.name}: the old study's folder is now {moved}", file=sys.stderr)
        study = create_or_resume(sw.spec, sw.storage, sw.spec.parallel, force_new)
        sw.study_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sw.study_dir / SWEEP_FILE, sw.info, sort_keys=False)  # the space's order is the spec's
        write_json_atomic(sw.study_dir / LOCK_FILE, record)
        try:
            return Driver(sw, study, progress, poll_s).run()
        finally:
            with contextlib.suppress(OSError):
                (sw.study_dir / LOCK_FILE).unlink()


def summary_line(sw: Sweep, groups: list[Logical], elapsed_s: float) -> str:
    states: dict[str, int] = {}
    for g in groups:
        states[g.last.state.name] = states.get(g.last.state.name, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return (
        f"sweep {sw.spec.name}: {counts} in {format_duration(elapsed_s)}; report: maskvlp sweep-report {sw.spec.name}"
    )


class DriverJob:
    """`maskvlp sweep --detach`: the driver itself as a small Slurm job."""

    def __init__(self, sw: Sweep, force_new: bool):
        self.sw, self.force_new = sw, force_new

    def __call__(self) -> str:
        started = time.time()
        groups = run_sweep(self.sw, self.force_new, progress=True)
        return summary_line(self.sw, groups, time.time() - started)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Time limit or preemption: requeue the driver (it resumes the study; trials keep running)."""
        import submitit

        return submitit.helpers.DelayedSubmission(DriverJob(self.sw, force_new=False))


def detach(sw: Sweep, force_new: bool) -> str:
    """Submit the driver as a Slurm job (1 CPU, 2 GB, the launcher's partition and time limit; at the time
    limit it is requeued, up to launcher.max_requeues times). --force-new is done here, before submitting,
    so a requeued driver resumes the new study instead of setting it aside again."""
    from maskvlp.launch import submit

    if sw.executor != "slurm":
        raise SweepSpecError(
            "--detach runs the driver as a Slurm job, and its trials must be Slurm jobs too: "
            "add --set launcher.executor=slurm"
        )
    refuse_second_driver(sw.study_dir)
    if force_new:
        with driver_lock(sw.study_dir):
            refuse_force_new_while_jobs_run(sw)
            set_aside(sw.study_dir)
            create_or_resume(sw.spec, sw.storage, sw.spec.parallel, True)
        force_new = False

    cfg = sw.base_cfg
    cfg = replace(
        cfg,
        launcher=replace(
            cfg.launcher,
            executor="slurm",
            cpus_per_task=1,
            mem_gb=2.0,
            nodes=1,
            tasks_per_node=1,
            gpus_per_node=0,
            job_name=f"{sw.spec.name}-driver",
        ),
    )
    sw.study_dir.mkdir(parents=True, exist_ok=True)
    submitted = submit(cfg, DriverJob(sw, force_new), sw.study_dir / "driver", "sweep-driver")
    return str(submitted.job.job_id)
