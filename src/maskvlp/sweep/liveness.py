"""Who is alive: a trial's job (a Slurm job asked through sacct, a local process through the process table
or, on another host, its run folder's writer lock) and a study's driver: one per study, holding an flock
(runs.StudyPaths.driver_lock) that the kernel drops when it dies (a requeued `--detach` driver takes it again).
`--force-new` is refused while a trial job of the old study lives."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from maskvlp.launch import ALIVE_SLURM, LaunchError, sacct_states
from maskvlp.runs import RunPaths, StudyPaths, folder_in_use, try_lock
from maskvlp.sweep.space import SweepSpec, SweepSpecError
from maskvlp.sweep.study import open_storage

LOCK_PATIENCE_S = 2.0  # how long a starting driver retries the lock before it says another driver runs
UNKNOWN_GRACE_S = 120.0  # a job sacct does not know yet (just submitted) counts as alive this long


@dataclass
class Handle:
    number: int
    run_dir: Path
    job: str  # "slurm:<id>" or "local:<host>:<pid>:<start ticks>"
    launched: float = field(default_factory=time.time)
    process: subprocess.Popen | None = None  # local trials started by this driver
    slot: int | None = None  # local trials: the index of the CPU slot it is pinned to


def proc_start(pid: int) -> str:
    """The process's start time in clock ticks ("" when it is gone or a zombie): with the pid, its identity."""
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
    return proc_start(int(pid)) == start


def slurm_states_of(handles: list[Handle]) -> dict[str, str] | None:
    """sacct's states of the handles' Slurm jobs; None when sacct does not answer (then no Slurm trial
    is judged this pass: a live job must never be taken for a dead one)."""
    ids = [h.job.split(":", 1)[1] for h in handles if h.job.startswith("slurm:")]
    try:
        return sacct_states(ids) if ids else {}
    except LaunchError as exc:
        print(f"sweep: {exc}; trying again at the next poll", file=sys.stderr)
        return None


def recorded_handle(trial: optuna.trial.FrozenTrial) -> Handle | None:
    """The job of a RUNNING trial as the storage records it (attributes `job`, `launched`), else as its run
    folder does (the last Slurm job submitted: the driver may have died before noting it), launched now
    when no time is known (a job sacct does not know yet gets its grace period). None when it was never
    launched (no run folder or no job: the driver stopped between asking and starting it)."""
    run_dir = trial.user_attrs.get("run_dir")
    if not run_dir:
        return None
    jobs = RunPaths(Path(run_dir)).jobs
    lines = jobs.read_text().strip().splitlines() if jobs.is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    job = trial.user_attrs.get("job") or (f"slurm:{last['job_id']}" if last else "")
    stamp = trial.user_attrs.get("launched") or last.get("submitted")
    launched = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp else time.time()
    return Handle(trial.number, Path(run_dir), job, launched) if job else None


def alive_jobs(name: str, storage: str, parallel: int) -> list[str]:
    """The jobs of the stored study's RUNNING trials that still run (empty when there is no study)."""
    if not storage or (not Path(storage).exists() and "://" not in storage):
        return []
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage, parallel))
    except KeyError:
        return []
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    handles = [h for h in map(recorded_handle, running) if h is not None]
    states = slurm_states_of(handles)
    return [h.job for h in handles if job_alive(h.job, h.launched, states, h.run_dir)]


def refuse_force_new(spec: SweepSpec, storage: str) -> None:
    """--force-new would give the old study's name and storage to a new study while its jobs still write
    and tell: refused, naming the jobs and how to stop them."""
    jobs = alive_jobs(spec.name, storage, spec.parallel)
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
        f"--force-new: {len(jobs)} trial job(s) of the old study '{spec.name}' still run ({', '.join(jobs)}); "
        f"they would write into the new study. Stop them first with {' and '.join(how)}, or follow them "
        f"without --force-new (`maskvlp sweep-status {spec.name}`)"
    )


# ------------------------------------------------------------------------------------ the driver
def driver_alive(study_dir: Path) -> dict[str, Any] | None:
    """Who drives the study now (driver.json: host, pid, Slurm job), or None when no process holds the
    driver lock. The lock is the truth: a driver that died, even on another host, holds nothing."""
    lock = StudyPaths(study_dir).driver_lock
    return _driver_record(study_dir) if folder_in_use(RunPaths(lock.parent), lock) else None


def _driver_record(study_dir: Path) -> dict[str, Any]:
    try:
        return json.loads(StudyPaths(study_dir).driver_record.read_text())
    except (OSError, ValueError):
        return {"host": "?", "pid": "?"}


def driver_text(record: dict[str, Any]) -> str:
    """A driver as the messages name it: `pid P on HOST` and its Slurm job, if any."""
    job = f", Slurm job {record['slurm_job']}" if record.get("slurm_job") else ""
    return f"pid {record.get('pid')} on {record.get('host')}{job}"


def _driver_refusal(study_dir: Path, other: dict[str, Any]) -> SweepSpecError:
    return SweepSpecError(
        f"a driver for study '{study_dir.name}' already runs ({driver_text(other)}); "
        f"follow it with `maskvlp sweep-status {study_dir.name}`, or stop it first"
    )


def refuse_second_driver(study_dir: Path) -> None:
    if (other := driver_alive(study_dir)) is not None:
        raise _driver_refusal(study_dir, other)


@contextlib.contextmanager
def driver_lock(study_dir: Path):
    """One driver per study: a second one would start the same retries twice. An flock taken without
    waiting (of several drivers started at once exactly one gets it); the kernel releases it when the
    driver exits or dies, so a driver requeued by Slurm, or started again after a kill, takes it anew."""
    path = StudyPaths(study_dir).driver_lock
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_PATIENCE_S  # sweep-status tries the lock for an instant too
        while not try_lock(fd, path):
            if time.monotonic() >= deadline:
                raise _driver_refusal(study_dir, _driver_record(study_dir))
            time.sleep(0.1)
        pid = os.getpid()
        record = {"host": socket.gethostname(), "pid": pid, "start": proc_start(pid)}
        if os.environ.get("SLURM_JOB_ID"):
            record["slurm_job"] = os.environ["SLURM_JOB_ID"]
        yield record
    finally:
        os.close(fd)
