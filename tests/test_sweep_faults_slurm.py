"""Faults only a real Slurm cluster throws at a sweep: a node going DOWN under running trials (Slurm then
requeues their jobs by itself) and a trial pending for a reason that never clears. The local Slurm of
scripts/slurm-local.sh is changed for the test and restored after it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from maskvlp.cli import main
from maskvlp.sweep import study as st

from .conftest import require_slurm
from .sweeping import SLURM, check_invariants, start_driver, study_of, tiny_base, tiny_shards, wait_for, write_sweep

require_slurm()
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


def _scontrol(*args: str, check: bool = True) -> None:
    subprocess.run(["scontrol", "update", *args], check=check, capture_output=True, text=True)


def _files(folder: Path) -> dict[str, int]:
    """Every file of a run folder but its Slurm logs, with its modification time."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and "slurm" not in p.relative_to(folder).parts
    }


def _node() -> str:
    return subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%N"], capture_output=True, text=True, check=True
    ).stdout.split()[0]


def test_a_node_going_down_under_two_trials_never_lets_two_attempts_write_one_folder(shards, tmp_path, tool_env):
    """The node is set DOWN under two running trials: their jobs end NODE_FAIL and Slurm requeues them by
    itself. Whether the driver fails and retries them or follows the requeued jobs, each folder has one
    writer at a time, a requeued job of a trial already settled stops without writing, and the study ends
    with exactly its two trials, each crash counted once."""
    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.samples": 4096, "train.checkpoint_every_samples": 256})
    path = write_sweep(tmp_path / "down.yaml", base, name="down", n_trials=2, parallel=2, retries=2)
    driver = start_driver(path, tool_env, *SLURM)
    node = _node()
    try:
        for i in range(2):
            trial_dir = runs / "down" / f"trial-{i:04d}"
            wait_for(lambda d=trial_dir: list((d / "checkpoints").glob("step-*.pt")), 240, f"trial {i}'s checkpoint")
        _scontrol(f"nodename={node}", "state=down", "reason=maskvlp-fault-test")
        time.sleep(5)
    finally:  # (slurmd registers again by itself: ReturnToService=2; resume in case it has not)
        _scontrol(f"nodename={node}", "state=resume", check=False)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    study = study_of(path)
    groups = st.logical_trials(study)
    assert all(g.failures <= 1 for g in groups), output  # one node failure, at most one crash per trial
    check_invariants(study, n_trials=2, retries=2, crashes=sum(g.failures for g in groups))
    assert all(g.last.state == TrialState.COMPLETE for g in groups), output
    # the jobs Slurm requeued by itself run again later: each must stop without writing a byte
    from maskvlp.launch import sacct_states

    jobs = {
        json.loads(line)["job_id"]: Path(g.run_dir)
        for g in groups
        for line in (Path(g.run_dir) / "jobs.jsonl").read_text().splitlines()
    }
    before = {d: _files(d) for d in set(jobs.values())}
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
    wait_for(lambda: all(v in final for v in sacct_states(list(jobs)).values()), 300, "the requeued jobs")
    assert {d: _files(d) for d in before} == before  # not a file added or rewritten (their Slurm logs aside)
    stale = [
        job
        for job, d in jobs.items()
        for log in (d / "slurm" / job).glob("*.err")
        if "stops without writing" in log.read_text()
    ]
    retried = [g for g in groups if len(g.attempts) > 1]
    assert len(stale) == len(retried), (stale, output)  # each settled attempt's requeued job refused to run
    check_invariants(study_of(path), n_trials=2, retries=2, crashes=sum(g.failures for g in groups))


def test_a_trial_pending_for_a_reason_that_never_clears_is_failed_with_it(shards, tmp_path, tool_env, capsys):
    """A trial waits behind a job that fills the node (reason Resources: it waits, and sweep-status says
    why); then the partition's time limit drops below the trial's (reason PartitionTimeLimit, which no
    waiting clears): the driver cancels the job and fails the trial with Slurm's reason, without a retry."""
    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"launcher.timeout_min": 10})
    path = write_sweep(tmp_path / "pend.yaml", base, name="pend", n_trials=1, parallel=1, retries=2)
    cpus = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    blocker = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "-c", cpus, "-o", str(tmp_path / "blocker.out"), "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    driver = start_driver(path, tool_env, *SLURM)
    try:
        journal = runs / "pend" / "study.journal"
        wait_for(lambda: journal.exists() and any(t.user_attrs.get("job") for t in study_of(path).trials), 120, "job")
        time.sleep(3)
        assert main(["sweep-status", "pend", "--runs-dir", str(runs)]) == 0
        text = capsys.readouterr().out
        assert "pending: trial 0" in text and "Slurm's reason" in text, text
        _scontrol("partitionname=debug", "MaxTime=1")
        output, _ = driver.communicate(timeout=180)
    finally:
        _scontrol("partitionname=debug", "MaxTime=UNLIMITED")
        subprocess.run(["scancel", blocker])
        driver.kill()
    assert driver.returncode == 0, output
    (trial,) = study_of(path).trials
    assert trial.state == TrialState.FAIL and "PartitionTimeLimit" in trial.user_attrs["failure"], output
    assert trial.user_attrs["no_retry"] and "not retried" in output
