"""Against the namespaced multi-node cluster (scripts/slurm-local.sh start --nodes 2; .ci/run starts it):
partition `multi` of node1 and node2, each a slurmd in its own network and UTS namespace with 1 CPU.

Training across the two nodes (torch.distributed, gloo, over the bridge) is bitwise equal to 2 tasks on
one node and to torchrun; a 2-node job preempted, or one whose second node dies, finishes with the
weights of an uninterrupted run; sweeps whose trials use 2 nodes or are spread over the nodes finish
with exactly n_trials. Outside CI the module skips when the partition is absent; in CI that fails.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskvlp.cli import main
from maskvlp.config import to_dict
from maskvlp.launch import list_jobs, submit, wait
from maskvlp.params import load_config
from maskvlp.runs import run_paths
from maskvlp.train import TrainJob

from .conftest import ROOT, as_set_args, logged_steps, make_tiny_shards, require_slurm, slurm_run
from .sweeping import check_invariants, study_of, tiny_base, wait_for, write_sweep

require_slurm()

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = ROOT / "scripts" / "slurm-local.sh"


def _multi_nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N"], capture_output=True, text=True)
    return sorted(set(out.stdout.split())) if out.returncode == 0 else []


if len(_multi_nodes()) < 2:
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must start the namespaced nodes first: scripts/slurm-local.sh start --nodes 2")
    pytest.skip("no partition `multi` of >= 2 nodes: scripts/slurm-local.sh start --nodes 2", allow_module_level=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("multinode"), 400)


overrides = slurm_run  # the tiny 1-CPU run of the Slurm tests; the partition is each test's


TWO_NODES = ("launcher.executor=slurm", "launcher.partition=multi", "launcher.nodes=2", "launcher.tasks_per_node=1")
FAULT_RUN = ("train.samples=1600", "train.checkpoint_every_samples=320")  # 50 steps, a checkpoint every 10


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> Path:
    """The 2-node run that both fault tests must end bitwise equal to, trained once for both."""
    runs = tmp_path_factory.mktemp("uninterrupted")
    assert main(["pretrain", "--quiet", *as_set_args(overrides(shards, runs, *TWO_NODES, *FAULT_RUN))]) == 0
    return runs / "default"


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _hosts(run_dir: Path) -> list[str]:
    return [r["host"] for r in json.loads((run_dir / "run.json").read_text())["ranks"]]


def _node_states() -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())


def test_the_cluster_has_two_idle_nodes_each_with_its_own_name_address_and_core():
    assert _node_states() == {"node1": "idle", "node2": "idle"}
    out = subprocess.run(
        ["srun", "-p", "multi", "-N", "2", "sh", "-c", 'echo "$(hostname) $(getent hosts $(hostname))"; nproc'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    names = sorted(line.split()[0] for line in lines if line.startswith("node"))
    assert names == ["node1", "node2"], out.stdout
    assert "10.199.77.11 " in out.stdout and "10.199.77.12 " in out.stdout  # each its own address
    assert [line for line in lines if line.strip().isdigit()] == ["1", "1"]  # one core each


def test_two_node_training_is_bitwise_equal_to_two_tasks_on_one_node_and_to_torchrun(shards, tmp_path, tool_env):
    runs = {k: tmp_path / k for k in ("nodes", "tasks", "torchrun")}
    assert main(["pretrain", "--quiet", *as_set_args(overrides(shards, runs["nodes"], *TWO_NODES))]) == 0
    one_node = ("launcher.executor=slurm", "launcher.partition=debug", "launcher.tasks_per_node=2")
    assert main(["pretrain", "--quiet", *as_set_args(overrides(shards, runs["tasks"], *one_node))]) == 0
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "maskvlp.cli", "pretrain",
         "--quiet", *as_set_args(overrides(shards, runs["torchrun"], "launcher.threads=1"))],
        env={**tool_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    dirs = {k: v / "default" for k, v in runs.items()}
    assert _same(dirs["nodes"], dirs["tasks"]) and _same(dirs["nodes"], dirs["torchrun"])
    # the records say which nodes and ranks ran, and where they met
    info = json.loads((dirs["nodes"] / "run.json").read_text())
    assert info["ranks"] == [
        {"rank": 0, "local_rank": 0, "host": "node1"},
        {"rank": 1, "local_rank": 0, "host": "node2"},
    ]
    assert info["master"].startswith("node1:") and info["world_size"] == 2
    assert info["cpu_share"]["threads"] == 1
    assert _hosts(dirs["tasks"]) == [os.uname().nodename] * 2


def test_a_two_node_job_preempted_resumes_on_the_nodes_it_gets_and_ends_bitwise_equal(shards, tmp_path, uninterrupted):
    cfg = load_config(None, overrides(shards, tmp_path / "pre", *TWO_NODES, *FAULT_RUN))
    run_dir = run_paths(cfg).root
    submitted = submit(cfg, TrainJob(to_dict(cfg)), run_dir, "pretrain")
    info = run_dir / "run.json"
    wait_for(lambda: len(logged_steps(run_dir)) >= 5, 300, "training")
    submitted.job._interrupt()  # USR2 to every task on both nodes, as Slurm's preemption warning does
    wait_for(lambda: json.loads(info.read_text())["resumed_at_step"] > 0, 600, "requeue + resume")
    result = wait(submitted)
    assert result["status"] == "complete" and result["steps"] == 50  # 1,600 samples at a global batch of 32
    assert logged_steps(run_dir) == list(range(1, 51))  # continuous: no step lost, none logged twice
    assert _same(uninterrupted, run_dir)
    assert sorted(_hosts(run_dir)) == ["node1", "node2"]
    states = subprocess.run(
        ["sacct", "-j", str(submitted.job.job_id), "-n", "-X", "-D", "-o", "State"], capture_output=True, text=True
    ).stdout.split()
    assert "REQUEUED" in states or len(states) >= 2, states


def test_a_two_node_job_whose_second_node_dies_is_resumed_from_its_checkpoint_with_equal_weights(
    shards, tmp_path, uninterrupted
):
    cfg = load_config(None, overrides(shards, tmp_path / "dies", *TWO_NODES, *FAULT_RUN))
    run_dir = run_paths(cfg).root
    submitted = submit(cfg, TrainJob(to_dict(cfg)), run_dir, "pretrain")
    wait_for(lambda: list((run_dir / "checkpoints").glob("step-*.pt")), 300, "the first checkpoint")
    try:
        subprocess.run(["bash", str(SCRIPT), "kill-node", "node2"], check=True, capture_output=True)
        # the job ends: its own error (rank 0 loses its peer) or NODE_FAIL once node2 is silent for SlurmdTimeout
        wait_for(lambda: _job_over(submitted.job.job_id), 240, "the job to end after its node died")
    finally:
        subprocess.run(["bash", str(SCRIPT), "revive-node", "node2"], check=True, capture_output=True)
        subprocess.run(["scontrol", "update", "nodename=node2", "state=resume"], capture_output=True)
    wait_for(lambda: _node_states().get("node2") in ("idle", "mixed", "allocated"), 120, "node2 back")
    jobs = list_jobs(run_dir)
    assert jobs[-1]["state"] in ("FAILED", "NODE_FAIL", "REQUEUED", "PENDING", "RUNNING", "COMPLETED"), jobs
    if not str(jobs[-1]["state"]).startswith(("PENDING", "RUNNING", "COMPLETED", "REQUEUED")):
        # the job failed: resume by hand from the checkpoint, as `maskvlp jobs` says
        code = main(
            [
                "pretrain",
                "--quiet",
                "--resume",
                *as_set_args(overrides(shards, tmp_path / "dies", *TWO_NODES, *FAULT_RUN)),
            ]
        )
        assert code == 0
    else:  # Slurm requeued it (NODE_FAIL): it runs again once node2 is back
        assert wait(submitted)["status"] == "complete"
    assert json.loads((run_dir / "run.json").read_text())["resumed_at_step"] > 0
    assert _same(uninterrupted, run_dir)


def _job_over(job_id: str) -> bool:
    out = subprocess.run(["sacct", "-j", str(job_id), "-n", "-X", "-o", "State"], capture_output=True, text=True)
    states = out.stdout.split()
    return bool(states) and states[-1] not in ("RUNNING", "COMPLETING")


def test_a_sweep_of_two_node_trials_and_one_spread_over_the_nodes_finish_with_exactly_n_trials(shards, tmp_path):
    slurm = ["--set", "launcher.executor=slurm"]
    base = tiny_base(shards, tmp_path / "runs", **{"launcher.partition": "multi", "data.synthetic.num_samples": 400})
    # trials of 2 nodes each, one at a time: rank 0 alone evaluates and tells
    wide = write_sweep(tmp_path / "wide.yaml", {**base, "launcher.nodes": 2}, name="wide", n_trials=2, parallel=1)
    assert main(["sweep", str(wide), "--params", "params.yaml", "--quiet", *slurm]) == 0
    study = study_of(wide)
    check_invariants(study, n_trials=2, retries=1, crashes=0)
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert sorted(_hosts(run_dir)) == ["node1", "node2"]
        # rank 0 alone evaluated (one event file, written on node1) and told; rank 1 returned its rank
        assert [p.name.split(".")[4] for p in (run_dir / "eval").glob("events.out.tfevents.*")] == ["node1"]
        results = sorted((run_dir / "slurm").glob("*/*_result.pkl"))
        outcomes = [pickle.loads(p.read_bytes())[1] for p in results]
        assert [o["state"] for o in outcomes] == ["COMPLETE", "RANK"] and outcomes[0]["values"] == t.values
    # trials of 1 node, 2 at a time: spread over the two nodes
    spread = write_sweep(tmp_path / "spread.yaml", base, name="spread", n_trials=2, parallel=2)
    assert main(["sweep", str(spread), "--params", "params.yaml", "--quiet", *slurm]) == 0
    study = study_of(spread)
    check_invariants(study, n_trials=2, retries=1, crashes=0)
    hosts = sorted(_hosts(Path(t.user_attrs["run_dir"]))[0] for t in study.trials)
    assert hosts == ["node1", "node2"], hosts
