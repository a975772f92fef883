"""`maskvlp sweep FILE`: run a study to `n_trials` finished trials, `parallel` at a time (with `--detach`,
the driver itself runs as a small Slurm job, DriverJob, so that its user may log off).

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
failed with that reason. One driver per study (sweep.liveness.driver_lock). What a sweep is before it
runs (the checked spec, the study's folder and storage, the CPU slots) is sweep.prepare's.

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
from collections import Counter
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from maskvlp.config import ConfigError, to_dict
from maskvlp.launch import HOPELESS_REASONS, LaunchError, PreemptibleJob, cancel, pending_reasons, submit
from maskvlp.progress import Progress, format_duration
from maskvlp.runs import RunPaths, read_result, weights_complete, write_json_atomic, write_text_atomic
from maskvlp.sweep.job import EXIT_NOT_LIVE, EXIT_STOPPED, TrialJob, TrialTask
from maskvlp.sweep.liveness import (
    Handle,
    driver_lock,
    job_alive,
    proc_start,
    recorded_handle,
    refuse_force_new,
    refuse_second_driver,
    slurm_states_of,
)
from maskvlp.sweep.prepare import Sweep, params_changes, trial_config
from maskvlp.sweep.space import SweepSpecError
from maskvlp.sweep.study import (
    INSTANCE_ATTR,
    Logical,
    create_or_resume,
    is_finished,
    logical_trials,
    non_finite,
    suggest,
    trial_handle,
    values_from_record,
)

# ------------------------------------------------------------------------------------- driver
GIVE_UP_AFTER = 3  # logical trials failing for good in a row, none completing between: a systematic fault


class SweepStopped(RuntimeError):
    """The driver stopped launching: trial after trial failed the same way."""


class Driver:
    def __init__(self, sw: Sweep, study: optuna.Study, progress: bool = True, poll_s: float = 2.0):
        self.sw, self.study, self.poll_s = sw, study, poll_s
        self.active: dict[int, Handle] = {}
        self.progress = progress
        self.instance = str(study.user_attrs.get(INSTANCE_ATTR, ""))
        self.settled: set[int] = set()  # logical trials seen finished (those finished before this run too)
        self.failed_in_a_row, self.last_failure = 0, ""

    def note_settled(self, groups: list[Logical], count: bool = True) -> None:
        """Count the logical trials that failed for good in a row, in the order they settle (a COMPLETE or
        PRUNED one resets the count); `count` False: only remember those already settled."""
        for g in groups:
            if g.number in self.settled or not is_finished(g, self.sw.spec.retries):
                continue
            self.settled.add(g.number)
            if not count:
                continue
            failed = g.last.state == TrialState.FAIL
            self.failed_in_a_row = self.failed_in_a_row + 1 if failed else 0
            self.last_failure = str(g.last.user_attrs.get("failure", "")) if failed else self.last_failure

    # -- launching
    def launch(self) -> Handle | None:
        """Ask the study for a trial (an enqueued retry first) and start its job. A trial whose params the
        config refuses is told FAIL (a crash: it is retried, then given up); a job the cluster refuses stops
        the sweep (every trial would be refused alike)."""
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

    def _fail(self, trial: optuna.trial.BaseTrial, why: str, crash: bool, no_retry: bool = False) -> None:
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
        run_dir = Path(trial.user_attrs.get("run_dir") or sw.paths.trial(trial.number).root)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", spec.overrides(values))
        cfg = trial_config(sw, values, run_dir)
        task = TrialTask(to_dict(cfg), spec.raw, sw.storage, trial.number, values, self.instance)
        run_dir.mkdir(parents=True, exist_ok=True)
        paths = RunPaths(run_dir)
        write_text_atomic(paths.trial, task.to_json())
        if sw.executor == "local":
            slot = self.free_slot()
            cpus = sw.cpu_sets[slot]
            log = open(paths.trial_log, "a")  # noqa: SIM115 (the child keeps it)
            proc = subprocess.Popen(
                [sys.executable, "-m", "maskvlp.sweep.job", str(paths.trial)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the driver's Ctrl-C is relayed as SIGTERM (a clean stop), not SIGINT
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # its share of the cores
            )
            log.close()
            job = f"local:{socket.gethostname()}:{proc.pid}:{proc_start(proc.pid)}"
            handle = Handle(trial.number, run_dir, job, process=proc, slot=slot)
        else:
            submitted = submit(cfg, TrialJob(task), run_dir, "trial")
            handle = Handle(trial.number, run_dir, f"slurm:{submitted.job.job_id}")
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # it may have told already
            trial.set_user_attr("job", handle.job)
            trial.set_user_attr("launched", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.active[trial.number] = handle
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
        marker = RunPaths(run_dir).stopped
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
        states = slurm_states_of(list(self.active.values()))
        trials = self.study.get_trials(deepcopy=False)
        pending: list[Handle] = []
        for number, h in list(self.active.items()):
            trial = trials[number]
            if trial.state != TrialState.RUNNING:
                if h.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        h.process.wait(timeout=60)
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
        reasons = pending_reasons([h.job.split(":", 1)[1] for h in pending])
        for h in pending:
            job_id = h.job.split(":", 1)[1]
            reason = reasons.get(job_id, "")
            if reason not in HOPELESS_REASONS:
                continue
            try:
                cancel(job_id)
            except LaunchError as exc:
                self._say(f"trial {h.number}: {exc}; trying again at the next poll")
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
        states = slurm_states_of(list(handles.values()))
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
        finished, _, groups = self.counts()
        self.note_settled(groups, count=False)
        bar = Progress(spec.n_trials, f"sweep {spec.name}", unit="trial", enabled=self.progress, initial=finished)
        try:
            while True:
                self.poll()
                self.ensure_retries()
                finished, waiting, groups = self.counts()
                bar.update(finished - bar.n)
                bar.set_postfix(running=len(self.active), best=self._best())
                self.note_settled(groups)
                broken = self.failed_in_a_row >= GIVE_UP_AFTER
                while (
                    not broken
                    and len(self.active) < spec.parallel
                    and (waiting > 0 or finished + len(self.active) + waiting < spec.n_trials)
                ):
                    h = self.launch()
                    if h is not None:
                        self._say(f"trial {h.number} started ({h.job}) in {h.run_dir}")
                    self.ensure_retries()
                    finished, waiting, groups = self.counts()
                if broken and not self.active:
                    raise SweepStopped(
                        f"sweep {spec.name}: {self.failed_in_a_row} trials in a row failed for good (the last: "
                        f"{self.last_failure}); it stops instead of failing the rest alike. Fix the cause (their "
                        "logs are in their run folders), raise `retries:` in the sweep file by one (not part of the "
                        "study's identity) and run the same command again: the failed trials resume from their folders"
                    )
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
            refuse_force_new(sw.spec, sw.storage)
            moved = set_aside(sw.study_dir)  # its journal too, when it lives there (an RDB study is deleted below)
            if moved:
                print(f"sweep {sw.spec.name}: the old study's folder is now {moved}", file=sys.stderr)
        elif sw.paths.info.is_file():  # resuming: the same params as the trials already run, or none
            changed = params_changes(sw, json.loads(sw.paths.info.read_text()).get("params_data"))
            if changed:
                raise SweepSpecError(
                    f"{sw.params} changed since study '{sw.spec.name}' started ({'; '.join(changed)}): its new "
                    "trials would not be comparable with those already run. Restore the file, or pass --force-new "
                    "to set the old study aside and start again with it"
                )
        study = create_or_resume(sw.spec, sw.storage, sw.spec.parallel, force_new)
        sw.study_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sw.paths.info, sw.info, sort_keys=False)  # the space's order is the spec's
        write_json_atomic(sw.paths.driver_record, record)
        try:
            return Driver(sw, study, progress, poll_s).run()
        finally:
            with contextlib.suppress(OSError):
                sw.paths.driver_record.unlink()


def summary_line(sw: Sweep, groups: list[Logical], elapsed_s: float) -> str:
    states = Counter(g.last.state.name for g in groups)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return (
        f"sweep {sw.spec.name}: {counts} in {format_duration(elapsed_s)}; report: maskvlp sweep-report {sw.spec.name}"
    )


# ------------------------------------------------------------------ --detach: the driver as a Slurm job
class DriverJob(PreemptibleJob):
    """The driver as a Slurm job. It holds no state, so it does not stop at a boundary of its own: at the
    time limit or on preemption submitit requeues it wherever the signal lands and it resumes the study
    (trials keep running). No bound of its own (max_requeues None); submitit stops after
    launcher.max_requeues time limits."""

    def __init__(self, sw: Sweep, force_new: bool, requeues: int = 0):
        super().__init__(requeues, max_requeues=None)
        self.sw, self.force_new = sw, force_new

    def __call__(self) -> str:
        started = time.time()
        groups = run_sweep(self.sw, self.force_new, progress=True)
        return summary_line(self.sw, groups, time.time() - started)

    def resumed(self) -> DriverJob:
        return DriverJob(self.sw, force_new=False, requeues=self.requeues + 1)


def check_detach(sw: Sweep) -> None:
    """Refuse --detach for local trials (before anything is printed or submitted)."""
    if sw.executor != "slurm":
        raise SweepSpecError(
            "--detach runs the driver as a Slurm job, and its trials must be Slurm jobs too: "
            "add --set launcher.executor=slurm"
        )


DRIVER_LAUNCHER = dict(executor="slurm", cpus_per_task=1, mem_gb=2.0, nodes=1, tasks_per_node=1, gpus_per_node=0)


def detach(sw: Sweep, force_new: bool) -> str:
    """Submit the driver as a Slurm job (1 CPU, 2 GB, the launcher's partition and time limit; at the time
    limit it is requeued, up to launcher.max_requeues times). --force-new is done here, before submitting,
    so a requeued driver resumes the new study instead of setting it aside again."""
    check_detach(sw)
    refuse_second_driver(sw.study_dir)
    if force_new:
        with driver_lock(sw.study_dir):
            refuse_force_new(sw.spec, sw.storage)
            set_aside(sw.study_dir)
            create_or_resume(sw.spec, sw.storage, sw.spec.parallel, True)
        force_new = False
    launcher = replace(sw.base_cfg.launcher, **DRIVER_LAUNCHER, job_name=f"{sw.spec.name}-driver")
    cfg = replace(sw.base_cfg, launcher=launcher)
    sw.study_dir.mkdir(parents=True, exist_ok=True)
    return str(submit(cfg, DriverJob(sw, force_new), sw.paths.driver_logs, "sweep-driver").job.job_id)
