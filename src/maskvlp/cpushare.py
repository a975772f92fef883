"""How many CPUs this process may use, and the torch threads and loader workers that follow from it.

torch's intra-op threads spin against each other when processes share cores (OpenMP barriers): two
trainings on a 2-core machine, each with 2 threads, ran 6x slower than the same two one after the
other (benchmarks/RESULTS.md). So every training or evaluation process takes only its share:
1. `launcher.threads` when set (> 0): an explicit override;
2. inside a Slurm job, the job's CPUs per task (`SLURM_CPUS_PER_TASK`, from `launcher.cpus_per_task`).
   Slurm here runs without cgroups, so nothing else would stop a job from using every core;
3. otherwise the CPUs of the process's affinity mask (`taskset`, a container's cpuset), shared
   between the processes torchrun started on this machine (`LOCAL_WORLD_SIZE`).
DataLoader workers come out of the same budget: at most `cpus - 1` of them (none on one CPU), each
single-threaded (PyTorch sets that in its workers). The batches do not depend on how many run:
`data.loader_workers` fixes the number of logical streams, and the workers share them (loader.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from maskvlp.config import Config


@dataclass(frozen=True)
class CpuShare:
    cpus: int  # CPUs this process may use
    source: str  # where that number came from: launcher.threads | slurm | affinity
    threads: int  # torch intra-op threads of the main process
    loader_workers: int  # DataLoader worker processes


def available_cpus(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(CPUs, source) for this process, without the explicit override."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID") and env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(env["SLURM_CPUS_PER_TASK"])), "slurm"
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    local = env.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        cpus //= int(local)
    return max(1, cpus), "affinity"


def loader_processes(streams: int, cpus: int) -> int:
    """DataLoader workers for `data.loader_workers` logical streams on `cpus` CPUs: the largest divisor
    of `streams` that leaves the main process a CPU of its own (0 = decode in the main process)."""
    return max((w for w in range(1, streams + 1) if streams % w == 0 and w <= cpus - 1), default=0)


def loader_hint(share: CpuShare, streams: int) -> str | None:
    """A line for the log when `data.loader_workers` (the streams) leaves CPUs of the share idle that
    decoding could use: a GPU step at ~5,000 images/s needs ~7 cores of JPEG decode (~780 images/s per
    core, benchmarks/RESULTS.md). None when the workers already use every CPU but the main process's."""
    if share.loader_workers >= share.cpus - 1:
        return None
    best = share.cpus - 1  # the main process keeps one CPU
    return (
        f"data loading: {share.loader_workers} worker(s) on {share.cpus} CPUs, limited by data.loader_workers="
        f"{streams} streams (workers divide the streams); set data.loader_workers to a multiple of {best} "
        f"(e.g. --set data.loader_workers={best}) to decode on {best} workers: the streams fix the batches, "
        "so change it between runs, not on resume"
    )


def cpu_share(cfg: Config, environ: Mapping[str, str] | None = None) -> CpuShare:
    """The share for one training / evaluation process of `cfg` (pure: reads only `environ`)."""
    cpus, source = available_cpus(environ)
    workers = loader_processes(cfg.data.loader_workers, cpus)
    if cfg.launcher.threads > 0:
        return CpuShare(cpus, "launcher.threads", cfg.launcher.threads, workers)
    # The main process keeps every CPU of the share: its loader workers are single-threaded and, for
    # CPU training, mostly idle (measured on 2 cores: 2 threads + 1 worker 16.4 s, 1 thread + 1
    # worker 22.7 s, 2 threads + 0 workers 17.1 s for the same run).
    return CpuShare(cpus, source, cpus, workers)


def apply_cpu_share(cfg: Config) -> CpuShare:
    """Set torch's thread count for this process to its share; returns the share (for the run's records)."""
    share = cpu_share(cfg)
    torch.set_num_threads(share.threads)
    return share


@contextlib.contextmanager
def cpu_share_applied(cfg: Config) -> Iterator[CpuShare]:
    """`apply_cpu_share` for the duration of a call, then the caller's thread count again."""
    before = torch.get_num_threads()
    try:
        yield apply_cpu_share(cfg)
    finally:
        torch.set_num_threads(before)
