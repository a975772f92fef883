"""Slurm, through submitit: the only module that runs Slurm's commands (sbatch, squeue, sacct, scancel).
Stages submitted as jobs (or to submitit's in-process debug executor), their preemption, what Slurm says
of them (pending reasons, accounting states), cancelling a job, and the launcher section's checks.

Preemption and time limits: Slurm (or `job._interrupt()`) sends SIGUSR2. submitit's own handler
would checkpoint at whatever instruction the signal lands on; instead every task of a training job
turns the signal into a stop request, all ranks agree at the next step boundary, rank 0 saves a step
checkpoint, and only then is submitit's handler called, which asks the job's `checkpoint` for the
resubmission (the same run with resume=True) and requeues the job. So no step is lost or repeated.
The number of requeues is bounded by launcher.max_requeues. `PreemptibleJob` is that sequence, once,
for the jobs of the stages that know how to stop (train.TrainJob, sweep.job.TrialJob, ...).

Slurm also starts a job again by itself, without a signal the job can act on: when its node fails
(NODE_FAIL; JobRequeue=1) or on `scontrol requeue`. Then it runs the job's first submission again, not
submitit's resumed one; `restarted_by_slurm` tells the job so, and a training job resumes its last
checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskvlp.config import Config, ConfigError, LauncherConfig, check, choice, control_character, no_control_characters
from maskvlp.runs import RunPaths

PREEMPT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
EXECUTORS = ("local", "slurm", "debug")  # launcher.executor


class LaunchError(RuntimeError):
    """A job could not be submitted or did not finish; the message carries Slurm's own words."""


def restarted_by_slurm(environ: dict[str, str] | None = None) -> bool:
    """Whether Slurm has started this job before (SLURM_RESTART_COUNT > 0: requeued by submitit after a
    checkpoint, or by Slurm itself after a node failure or `scontrol requeue`)."""
    value = (os.environ if environ is None else environ).get("SLURM_RESTART_COUNT", "")
    return value.isdigit() and int(value) > 0


def export_torch_distributed() -> None:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from submitit's job environment."""
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class CooperativeStop:
    """Turns SIGUSR2/SIGTERM into a stop request (`requested`) that the job's loop honours at a step
    boundary, and remembers submitit's USR2 handler so that the requeue can happen after the checkpoint."""

    def __init__(self):
        self.requested = False
        self.submitit_handler = signal.getsignal(signal.SIGUSR2)
        self.signals: list[int] = []
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signals.append(signum)
        if signum == signal.SIGUSR2:  # SIGTERM alone (preemption notice) waits for the USR2
            self.requested = True

    def requeue(self) -> None:
        """After the checkpoint: let submitit requeue the job (rank 0) and end this attempt."""
        if callable(self.submitit_handler):
            self.submitit_handler(signal.SIGUSR2, None)
        time.sleep(120)  # other ranks: wait for the requeue to end this attempt
        raise LaunchError("stopped for preemption but the job was not requeued")


class PreemptibleJob:
    """Base of the checkpointable callables submitted through submitit (the module docstring tells the
    sequence). A subclass implements `run(stop)`, which returns a result that `stopped` recognises when
    `stop.requested` made it save a checkpoint and end early, and `resumed()`, the same job as its next
    attempt (resuming from that checkpoint) with `requeues + 1`. `checkpoint`, which submitit calls,
    resubmits `resumed()` at most `max_requeues` times (None: without bound). A job that cannot stop at
    a boundary of its own overrides `__call__` and keeps `checkpoint`: submitit's handler then requeues
    it wherever the signal lands."""

    by_hand = ""  # how to continue once the requeues are spent, for the message that refuses one more

    def __init__(self, requeues: int = 0, max_requeues: int | None = None):
        self.requeues, self.max_requeues = requeues, max_requeues

    def __call__(self) -> Any:
        export_torch_distributed()
        stop = CooperativeStop()
        result = self.run(stop)
        if self.stopped(result):  # the checkpoint is saved at a step boundary: now requeue
            stop.requeue()
        return result

    def run(self, stop: CooperativeStop) -> Any:
        raise NotImplementedError

    def stopped(self, result: Any) -> bool:
        return result["status"] == "stopped"

    def resumed(self) -> PreemptibleJob:
        raise NotImplementedError

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        if self.max_requeues is not None and self.requeues >= self.max_requeues:
            raise LaunchError(
                f"preempted {self.requeues} times already; launcher.max_requeues={self.max_requeues} reached. "
                + self.by_hand
            )
        return submitit.helpers.DelayedSubmission(self.resumed())


# ------------------------------------------------------------------------------- submission
def make_executor(cfg: Config, folder: Path):
    import submitit

    la = cfg.launcher
    cluster = "debug" if la.executor == "debug" else "slurm"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=la.max_requeues)
    params: dict[str, Any] = {"name": la.job_name, "nodes": la.nodes, "tasks_per_node": la.tasks_per_node}
    params |= {"cpus_per_task": la.cpus_per_task, "mem_gb": la.mem_gb, "timeout_min": la.timeout_min}
    optional = {"gpus_per_node": la.gpus_per_node, "slurm_partition": la.partition, "slurm_account": la.account}
    optional |= {"slurm_qos": la.qos, "slurm_additional_parameters": dict(la.additional_parameters)}
    executor.update_parameters(**params, **{k: v for k, v in optional.items() if v})
    return executor


@dataclass
class Submitted:
    job: Any
    log_folder: Path


def record_job(run_dir: Path, job_id: str, kind: str, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {"job_id": job_id, "kind": kind, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry |= {"executor": cfg.launcher.executor, "partition": cfg.launcher.partition}
    with open(RunPaths(run_dir).jobs, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def submit(cfg: Config, callable_: Any, run_dir: Path, kind: str) -> Submitted:
    """Submit one job; sbatch's own error message is passed on verbatim with a hint."""
    folder = RunPaths(run_dir).slurm_logs
    executor = make_executor(cfg, folder)
    try:
        job = executor.submit(callable_)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr or exc.output or b""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise LaunchError(f"sbatch refused the job:\n{detail.strip() or exc}\n{_hint(detail)}") from exc
    except Exception as exc:  # submitit wraps sbatch failures in its own errors
        text = str(exc)
        if "sbatch" not in text and "Submission" not in type(exc).__name__ and "batch job" not in text:
            raise
        raise LaunchError(f"sbatch refused the job:\n{text.strip()}\n{_hint(text)}") from exc
    if cfg.launcher.executor == "slurm":
        record_job(run_dir, str(job.job_id), kind, cfg)
    return Submitted(job, folder / str(job.job_id))


def _hint(message: str) -> str:
    m = message.lower()
    if "partition" in m:
        return "hint: list partitions with `sinfo`, then set launcher.partition"
    if "memory" in m or "cpu" in m or "node" in m or "gres" in m or "resources" in m:
        return (
            "hint: the request exceeds what a node offers (`sinfo -N -l`): lower launcher.cpus_per_task, "
            "mem_gb, gpus_per_node or tasks_per_node"
        )
    if "account" in m or "qos" in m:
        return "hint: check launcher.account / launcher.qos with `sacctmgr show assoc user=$USER`"
    return "hint: run the same request by hand with sbatch to see what the cluster expects"


def wait(submitted: Submitted, poll_s: float = 2.0, interactive: bool | None = None) -> Any:
    """Wait for the job; Ctrl-C asks whether to cancel or detach (cancels when nobody can answer)."""
    job = submitted.job
    interactive = sys.stdin.isatty() if interactive is None else interactive
    try:
        while not job.done():
            reason = pending_reasons([str(job.job_id)]).get(str(job.job_id), "")
            if reason in HOPELESS_REASONS:
                job.cancel(check=False)
                raise LaunchError(
                    f"job {job.job_id} can never start (Slurm: pending, reason {reason}); cancelled it.\n"
                    f"{_hint('resources ' + reason)}"
                )
            time.sleep(poll_s)
    except KeyboardInterrupt:
        answer = "c"
        if interactive:
            answer = (input(f"\njob {job.job_id} is still running: [c]ancel it or [d]etach? [c] ").strip() or "c")[0]
        if answer.lower() == "d":
            print(
                f"detached; job {job.job_id} keeps running. Follow it with `maskvlp jobs`; "
                f"cancel with `scancel {job.job_id}`",
                file=sys.stderr,
            )
        else:
            job.cancel(check=False)
            print(f"cancelled job {job.job_id}", file=sys.stderr)
        raise
    state = job.state
    if state.startswith("CANCELLED"):
        raise LaunchError(f"job {job.job_id} was cancelled; logs in {submitted.log_folder}")
    try:
        return job.results()[0]  # one result per task; rank 0's speaks for the job
    except Exception as exc:  # submitit.core.utils.FailedJobError / UncompletedJobError carry the traceback
        raise LaunchError(f"job {job.job_id} failed ({state}); logs in {submitted.log_folder}\n{exc}") from exc


# Pending reasons that no amount of waiting clears (Slurm's squeue %r).
HOPELESS_REASONS = set(
    "PartitionConfig BadConstraints PartitionNodeLimit PartitionTimeLimit InvalidAccount InvalidQOS "
    "QOSMaxCpuPerJobLimit AssocMaxCpuPerJobLimit".split()
)
# sacct states of a job that may still run (or be requeued); any other state is an ended job
ALIVE_SLURM = set(
    "PENDING RUNNING REQUEUED REQUEUE_HOLD REQUEUE_FED CONFIGURING COMPLETING RESIZING SUSPENDED SIGNALING "
    "STAGE_OUT".split()
)


def pending_reasons(job_ids: list[str]) -> dict[str, str]:
    """squeue's reasons of those of the jobs that are pending, in one call ({} when squeue does not answer)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", ",".join(job_ids), "-t", "PD", "-o", "%i|%r"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    reasons = {}
    for line in out.splitlines():
        job_id, _, reason = line.partition("|")
        if job_id.strip():
            reasons[job_id.strip()] = reason.strip()
    return reasons


def cancel(job_id: str) -> None:
    """scancel the job; raises LaunchError when scancel fails or does not answer."""
    try:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"scancel {job_id} failed ({exc})") from exc


# ---------------------------------------------------------------------------- reconciliation
def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's accounting view of the jobs: {job id: state}."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"sacct failed ({exc}); is Slurm accounting running? (scripts/slurm-local.sh start)") from exc
    states = {}
    for line in out.splitlines():
        job_id, _, state = line.partition("|")
        states[job_id.strip()] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return states


def list_jobs(run_dir: Path) -> list[dict[str, Any]]:
    path = RunPaths(run_dir).jobs
    if not path.is_file():
        return []
    jobs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    states = sacct_states([j["job_id"] for j in jobs])
    for j in jobs:
        j["state"] = states.get(j["job_id"], "UNKNOWN")
    return jobs


# --------------------------------------------------------------------------- the launcher section
# sbatch option names, as submitit writes them: `#SBATCH --{name}={value}` with `_` turned into `-`
SBATCH_OPTION = re.compile(r"^[a-z][a-z0-9_-]*$")
# sbatch options that maskvlp sets from its own launcher keys (launch.make_executor), that submitit
# needs for logs and preemption (one in launcher.additional_parameters would replace them), or that
# run a shell command
SBATCH_SET_BY_MASKVLP = {
    option: f"maskvlp sets it from launcher.{key}: set that instead"
    for option, key in (
        *[("job-name", "job_name"), ("partition", "partition"), ("account", "account"), ("qos", "qos")],
        *[("nodes", "nodes"), ("ntasks-per-node", "tasks_per_node"), ("cpus-per-task", "cpus_per_task")],
        *[("gpus-per-node", "gpus_per_node"), ("mem", "mem_gb"), ("time", "timeout_min")],
    )
} | {
    "output": "submitit sets it: the job's logs go to the run's slurm folder; leave it out",
    "error": "submitit sets it: the job's logs go to the run's slurm folder; leave it out",
    "open-mode": "submitit sets it: requeued attempts append to the same logs; leave it out",
    "signal": "submitit sets it: its preemption signal saves a checkpoint before the requeue; leave it out",
    "array": "maskvlp submits one job per run; leave it out",
    "wrap": "sbatch would run its value as a shell command; leave it out",
}
# full sbatch options that are also abbreviations of one above (sbatch takes exact names first)
SBATCH_PREFIX_OPTIONS = {"gpus", "ntasks"}
_ENDS_SBATCH_LINE = "it would end the #SBATCH line and run the rest as a shell command"


def check_additional_parameters(params: dict[str, Any]) -> None:
    """launcher.additional_parameters become `#SBATCH --name=value` lines: names must be sbatch option
    names, values one-line strings, numbers or true (a flag), and none may replace what maskvlp sets."""
    key = "launcher.additional_parameters"
    for name, value in params.items():
        name = str(name)
        bad = control_character(name)
        if bad is not None:
            raise ConfigError(
                f"{key}: control character {bad!r} in the name {name!r} not allowed ({_ENDS_SBATCH_LINE})"
            )
        if not SBATCH_OPTION.match(name):
            raise ConfigError(
                f"{key}: {name!r} is not an sbatch option name (lower-case letters, digits, '-' and '_', "
                "without the leading '--'), e.g. constraint or mem_per_cpu"
            )
        option = name.replace("_", "-")
        if option in SBATCH_SET_BY_MASKVLP:
            raise ConfigError(f"{key}.{name}: not allowed: {SBATCH_SET_BY_MASKVLP[option]}")
        clash = [o for o in SBATCH_SET_BY_MASKVLP if o.startswith(option)]
        if clash and option not in SBATCH_PREFIX_OPTIONS:  # sbatch accepts abbreviated long options
            raise ConfigError(
                f"{key}.{name}: not allowed: sbatch may read --{option} as an abbreviation of --{clash[0]}, "
                f"and {SBATCH_SET_BY_MASKVLP[clash[0]]}"
            )
        if isinstance(value, str):
            no_control_characters(f"{key}.{name}", value, _ENDS_SBATCH_LINE)
        elif value is not True and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(
                f"{key}.{name}: must be a string, a number, or true for an option without value "
                f"(leave the key out to not pass it), got {value!r}"
            )


def check_section(la: LauncherConfig) -> None:
    """Refuse out-of-range `launcher.*` values and strings that would break an #SBATCH line."""
    choice("launcher.executor", la.executor, EXECUTORS)
    check(la.nodes >= 1, "launcher.nodes", "must be >= 1", la.nodes)
    check(la.tasks_per_node >= 1, "launcher.tasks_per_node", "must be >= 1", la.tasks_per_node)
    check(la.gpus_per_node >= 0, "launcher.gpus_per_node", "must be >= 0", la.gpus_per_node)
    check(la.cpus_per_task >= 1, "launcher.cpus_per_task", "must be >= 1", la.cpus_per_task)
    check(la.threads >= 0, "launcher.threads", "must be >= 0 (0 = derived from the CPUs the process has)", la.threads)
    check(la.mem_gb > 0, "launcher.mem_gb", "must be > 0", la.mem_gb)
    check(la.timeout_min >= 1, "launcher.timeout_min", "must be >= 1", la.timeout_min)
    check(la.max_requeues >= 0, "launcher.max_requeues", "must be >= 0", la.max_requeues)
    # the strings launch.make_executor hands to submitit, which writes each into an #SBATCH line
    for name in ("job_name", "partition", "account", "qos"):
        no_control_characters(f"launcher.{name}", getattr(la, name), _ENDS_SBATCH_LINE)
    check_additional_parameters(la.additional_parameters)
