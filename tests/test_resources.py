"""Each process takes its share of the CPUs: Slurm's CPUs per task, the affinity mask, or the override."""

import os

import torch

from maskvlp.cpushare import apply_cpu_share, cpu_share, loader_processes

from .conftest import make_cfg


def test_inside_a_slurm_job_the_share_is_its_cpus_per_task(tmp_path):
    cfg = make_cfg(tmp_path, "data.loader_workers=2")
    share = cpu_share(cfg, {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1"})
    assert (share.cpus, share.source, share.threads, share.loader_workers) == (1, "slurm", 1, 0)
    share = cpu_share(cfg, {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "8"})
    assert (share.cpus, share.threads, share.loader_workers) == (8, 8, 2)


def test_locally_the_share_is_the_affinity_mask_split_between_torchrun_processes(tmp_path):
    cfg = make_cfg(tmp_path)
    mask = len(os.sched_getaffinity(0))
    assert cpu_share(cfg, {}).cpus == mask and cpu_share(cfg, {}).source == "affinity"
    assert cpu_share(cfg, {"LOCAL_WORLD_SIZE": str(mask)}).cpus == 1
    assert cpu_share(cfg, {"SLURM_JOB_ID": "3"}).source == "affinity"  # salloc shell without a per-task count


def test_the_explicit_override_wins(tmp_path):
    cfg = make_cfg(tmp_path, "launcher.threads=3")
    share = cpu_share(cfg, {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1"})
    assert share.threads == 3 and share.source == "launcher.threads"


def test_loader_workers_divide_the_streams_and_leave_the_main_process_a_cpu():
    assert [loader_processes(2, cpus) for cpus in (1, 2, 3, 16)] == [0, 1, 2, 2]
    assert [loader_processes(6, cpus) for cpus in (2, 3, 4, 5, 16)] == [1, 2, 3, 3, 6]
    assert loader_processes(0, 16) == 0


def test_apply_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        share = apply_cpu_share(make_cfg(tmp_path, "launcher.threads=1"))
        assert share.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_loader_hint_names_the_setting_when_streams_leave_cpus_idle():
    from maskvlp.cpushare import CpuShare, loader_hint

    # 16 CPUs (a GPU job's cpus_per_task) but the default 2 streams: 2 workers, 13 CPUs idle
    hint = loader_hint(CpuShare(16, "slurm", 16, loader_processes(2, 16)), 2)
    assert hint is not None and "data.loader_workers=15" in hint and "2 worker(s) on 16 CPUs" in hint
    # streams that give every CPU but the main process's a worker: nothing to say
    assert loader_hint(CpuShare(16, "slurm", 16, loader_processes(15, 16)), 15) is None
    assert loader_hint(CpuShare(2, "affinity", 2, loader_processes(2, 2)), 2) is None
