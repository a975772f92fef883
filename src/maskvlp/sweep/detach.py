"""`maskvlp sweep --detach`: the driver itself as a small Slurm job (1 CPU, 2 GB, no GPU), so that its
user may log off; the trials are Slurm jobs too. `maskvlp sweep-status` follows it."""

from __future__ import annotations

import time
from dataclasses import replace

from maskvlp.launch import PreemptibleJob, submit
from maskvlp.sweep.driver import refuse_force_new_while_jobs_run, run_sweep, set_aside, summary_line
from maskvlp.sweep.liveness import driver_lock, refuse_second_driver
from maskvlp.sweep.prepare import Sweep
from maskvlp.sweep.space import SweepSpecError
from maskvlp.sweep.study import create_or_resume


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
            refuse_force_new_while_jobs_run(sw)
            set_aside(sw.study_dir)
            create_or_resume(sw.spec, sw.storage, sw.spec.parallel, True)
        force_new = False

    launcher = replace(sw.base_cfg.launcher, **DRIVER_LAUNCHER, job_name=f"{sw.spec.name}-driver")
    cfg = replace(sw.base_cfg, launcher=launcher)
    sw.study_dir.mkdir(parents=True, exist_ok=True)
    submitted = submit(cfg, DriverJob(sw, force_new), sw.paths.driver_logs, "sweep-driver")
    return str(submitted.job.job_id)
