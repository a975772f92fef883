"""Against the real local Slurm cluster (scripts/slurm-local.sh start; .ci/run starts it).

Outside CI these tests skip when no cluster answers; in CI (CI=true) a missing cluster fails them.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskvlp.cli import main
from maskvlp.config import to_dict
from maskvlp.evaluate import EvalJob
from maskvlp.launch import LaunchError, list_jobs, submit, wait
from maskvlp.params import load_config
from maskvlp.runs import run_paths
from maskvlp.train import TrainJob, pretrain

from .conftest import as_set_args, logged_steps, make_tiny_shards, require_slurm, slurm_run

require_slurm()

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("slurm"), 400)


def overrides(shards: Path, runs: Path, *extra: str) -> list[str]:
    return slurm_run(shards, runs, "launcher.partition=debug", *extra)


_set = as_set_args


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def test_pretrain_as_a_slurm_job_equals_the_local_run(shards, tmp_path, capsys):
    # the job gets cpus_per_task=1 and so 1 torch thread: bitwise equality needs the same count here
    local = load_config(None, overrides(shards, tmp_path / "local", "launcher.threads=1"))
    local_result = pretrain(local, progress=False)
    code = main(
        [
            "pretrain",
            "--quiet",
            "--metrics",
            str(tmp_path / "train.json"),
            *_set(overrides(shards, tmp_path / "slurm", "launcher.executor=slurm")),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted pretrain job" in out and "logs in" in out
    slurm_result = json.loads((tmp_path / "train.json").read_text())
    # inside a Slurm job with cpus_per_task=1, torch uses 1 thread (no cgroups here to enforce it)
    assert slurm_result["threads"] == 1
    run_info = json.loads((tmp_path / "slurm" / "default" / "run.json").read_text())
    assert run_info["cpu_share"] == {"cpus": 1, "source": "slurm", "threads": 1, "loader_workers": 0}
    assert slurm_result["train_loss"] == pytest.approx(local_result["train_loss"], abs=1e-6)
    a, b = _weights(tmp_path / "local" / "default"), _weights(tmp_path / "slurm" / "default")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # accounting records the end a moment after the result is written
    _wait_for(lambda: [j["state"] for j in list_jobs(tmp_path / "slurm" / "default")] == ["COMPLETED"], 60, "sacct")

    # evaluation as a Slurm job gives the local evaluation's metrics
    evals = ["eval.objects_per_class=2", "eval.linear_probe_samples=64"]
    assert (
        main(
            [
                "evaluate",
                "--quiet",
                *_set(
                    overrides(
                        shards,
                        tmp_path / "local",
                        *evals,
                        "launcher.threads=1",
                        f"eval.metrics_file={tmp_path / 'local.json'}",
                    )
                ),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--quiet",
                *_set(
                    overrides(
                        shards,
                        tmp_path / "slurm",
                        *evals,
                        "launcher.executor=slurm",
                        f"eval.metrics_file={tmp_path / 'slurm.json'}",
                    )
                ),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "local.json").read_text()) == json.loads((tmp_path / "slurm.json").read_text())


def test_two_task_job_runs_two_rank_ddp(shards, tmp_path):
    cfg = load_config(None, overrides(shards, tmp_path, "launcher.executor=slurm", "launcher.tasks_per_node=2"))
    submitted = submit(cfg, TrainJob(to_dict(cfg)), run_paths(cfg).root, "pretrain")
    results = wait(submitted)
    assert results["status"] == "complete"
    info = json.loads((run_paths(cfg).root / "run.json").read_text())
    assert info["world_size"] == 2 and info["global_batch"] == 32
    ranks = sorted(r["rank"] for r in submitted.job.results())
    assert ranks == [0, 1]


def _wait_for(predicate, timeout: float = 180.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_preempted_twice_finishes_with_the_weights_of_an_uninterrupted_run(shards, tmp_path):
    extra = ("train.samples=1600",)
    whole = load_config(None, overrides(shards, tmp_path / "whole", "launcher.threads=1", *extra))  # as the job
    pretrain(whole, progress=False)

    cfg = load_config(None, overrides(shards, tmp_path / "pre", "launcher.executor=slurm", *extra))
    run_dir = run_paths(cfg).root
    submitted = submit(cfg, TrainJob(to_dict(cfg)), run_dir, "pretrain")
    job = submitted.job
    info = run_dir / "run.json"
    for attempt in range(2):
        _wait_for(lambda n=3 + 10 * attempt: len(logged_steps(run_dir)) >= n, what=f"progress of attempt {attempt}")
        before = json.loads(info.read_text())["resumed_at_step"]
        job._interrupt()  # SIGTERM + SIGUSR2, as Slurm does on preemption
        # a requeue waits for Slurm to end the old allocation and schedule again: minutes on a loaded 2-core node
        resumed = lambda b=before: json.loads(info.read_text())["resumed_at_step"] > b  # noqa: E731
        _wait_for(resumed, timeout=600.0, what="requeue + resume")
    result = wait(submitted)
    assert result["status"] == "complete" and result["steps"] == 100

    a, b = _weights(run_paths(whole).root), _weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = logged_steps(run_dir)
    assert steps == list(range(1, 101))  # continuous: no step lost, none logged twice
    sacct = subprocess.run(
        ["sacct", "-j", str(job.job_id), "-n", "-X", "-D", "-o", "State"], capture_output=True, text=True
    ).stdout.split()
    assert sacct.count("REQUEUED") + sacct.count("PREEMPTED") >= 2 or len(sacct) >= 3, sacct


def _long_job_with_a_checkpoint(shards: Path, tmp_path: Path):
    """A training job far from its end (100,000 samples, a checkpoint every 10 steps), once it has saved
    its first checkpoint: (the submitted job, its run folder)."""
    extra = ("launcher.executor=slurm", "train.samples=100000", "train.checkpoint_every_samples=160")
    cfg = load_config(None, overrides(shards, tmp_path, *extra))
    run_dir = run_paths(cfg).root
    submitted = submit(cfg, TrainJob(to_dict(cfg)), run_dir, "pretrain")
    try:
        _wait_for(lambda: any((run_dir / "checkpoints").glob("step-*.pt")), what="a checkpoint")
    except BaseException:
        submitted.job.cancel()  # no 100,000-sample job left behind on the shared cluster
        raise
    return submitted, run_dir


def test_a_job_slurm_starts_again_by_itself_resumes_its_checkpoint(shards, tmp_path):
    """Slurm requeues a job by itself when its node fails (NODE_FAIL with JobRequeue=1), or on `scontrol
    requeue`: no USR2 comes, so no checkpoint is saved at a signal and submitit does not resubmit; Slurm
    runs the job's first submission again. That attempt must resume the run's last checkpoint, not refuse
    the folder as "already holds a run" (found by test_multinode's node-death test)."""
    submitted, run_dir = _long_job_with_a_checkpoint(shards, tmp_path)
    try:
        subprocess.run(["scontrol", "requeue", str(submitted.job.job_id)], check=True, capture_output=True)
        info = run_dir / "run.json"
        _wait_for(lambda: json.loads(info.read_text()).get("resumed_at_step", 0) > 0, 300, "the restart to resume")
        restart = int(json.loads(info.read_text())["resumed_at_step"])
        _wait_for(lambda: max(logged_steps(run_dir), default=0) > restart + 2, 120, "training after the restart")
        assert restart % 10 == 0  # a checkpoint's step (one every 160 samples = 10 steps at batch 16)
    finally:
        submitted.job.cancel()


def test_failing_job_surfaces_its_traceback_and_log_path(shards, tmp_path):
    cfg = load_config(None, overrides(shards, tmp_path, "launcher.executor=slurm"))
    submitted = submit(cfg, EvalJob(to_dict(cfg), str(tmp_path / "no-such-run")), tmp_path / "x", "evaluate")
    with pytest.raises(LaunchError) as err:
        wait(submitted)
    text = str(err.value)
    assert "holds no finished run" in text and "Traceback" in text and str(submitted.log_folder) in text


def test_cancelled_job_is_reported_as_cancelled_and_resumable(shards, tmp_path, capsys):
    submitted, run_dir = _long_job_with_a_checkpoint(shards, tmp_path)
    submitted.job.cancel()
    with pytest.raises(LaunchError, match="cancelled"):
        wait(submitted)
    _wait_for(lambda: list_jobs(run_dir)[0]["state"].startswith("CANCELLED"), 30, "sacct to record it")
    assert main(["jobs", *_set(overrides(shards, tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "CANCELLED" in out and "maskvlp pretrain --resume --set launcher.executor=slurm" in out


@pytest.mark.parametrize(
    "extra, slurm_words",
    [(("launcher.partition=nonexistent",), "invalid partition"), (("launcher.cpus_per_task=64",), "")],
)
def test_bad_requests_show_slurms_message_before_anything_runs(shards, tmp_path, capsys, extra, slurm_words):
    code = main(["pretrain", *_set(overrides(shards, tmp_path, "launcher.executor=slurm", *extra))])
    err = capsys.readouterr().err
    assert code == 1
    assert "sbatch refused the job" in err and "hint:" in err
    assert slurm_words in err.lower()
    assert not (tmp_path / "default" / "jobs.jsonl").exists()
    assert not (tmp_path / "default" / "checkpoints").exists()


def test_no_wait_returns_at_once_and_ctrl_c_while_waiting_cancels(shards, tmp_path, capsys):
    import signal
    import threading

    items = overrides(shards, tmp_path, "launcher.executor=slurm", "train.samples=100000")
    start = time.time()
    assert main(["pretrain", "--quiet", "--no-wait", *_set(items)]) == 0
    assert time.time() - start < 30
    out = capsys.readouterr().out
    assert "submitted pretrain job" in out and "maskvlp jobs" in out
    job_id = list_jobs(tmp_path / "default")[0]["job_id"]
    subprocess.run(["scancel", job_id], check=True)

    # Ctrl-C while waiting, with nobody at a terminal to ask: the job is cancelled, not orphaned
    cfg = load_config(None, overrides(shards, tmp_path / "b", "launcher.executor=slurm", "train.samples=100000"))
    submitted = submit(cfg, TrainJob(to_dict(cfg)), run_paths(cfg).root, "pretrain")
    # a process started in the background by a non-interactive shell (nohup, `cmd &`) inherits SIGINT
    # ignored, and Python then raises no KeyboardInterrupt: give this test Python's own handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            wait(submitted, poll_s=0.5, interactive=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert f"cancelled job {submitted.job.job_id}" in capsys.readouterr().err
    _wait_for(lambda: list_jobs(run_paths(cfg).root)[0]["state"].startswith("CANCELLED"), 60, "the cancellation")
