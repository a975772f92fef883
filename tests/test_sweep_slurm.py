"""Sweeps on the real local Slurm cluster: async trials as jobs, the driver killed and re-run, a trial's
job cancelled and retried from its checkpoint, pruning decided inside a job through the shared storage."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from maskvlp.cli import main
from maskvlp.sweep import study as st
from maskvlp.sweep.prepare import prepare

from .conftest import require_slurm
from .sweeping import SLURM, hparams_of, start_driver, study_of, tiny_base, tiny_shards, wait_for, write_sweep

require_slurm()
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


def test_six_trials_two_at_a_time_as_slurm_jobs_with_report_and_hparams(shards, tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "report"
    path = write_sweep(tmp_path / "six.yaml", tiny_base(shards, runs), name="six", n_trials=6, parallel=2)
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet", *SLURM, "--report", str(out)]) == 0
    trials = study_of(path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert all(t.user_attrs["job"].startswith("slurm:") for t in trials)
    # asynchronous and parallel: two trials overlapped in time
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        hp = hparams_of(run / "eval")  # one HParams session per trial, read back from its event file
        assert hp["sweep.trial"] == t.number and hp["masking.ratio"] == t.params["masking.ratio"]
        assert json.loads((run / "result.json").read_text())["eval"]["zeroshot/objects/top1"] == t.values[0]
        assert len((run / "jobs.jsonl").read_text().splitlines()) == 1  # one job per trial
    for name in ("trials.csv", "trials.md", "best_params.yaml", "history.png", "slice.png", "contour.png"):
        assert (out / name).stat().st_size > 0, name
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    best_trial = max(trials, key=lambda t: t.values[0])
    assert best["masking"]["ratio"] == best_trial.params["masking.ratio"]
    text = capsys.readouterr().out
    assert "6 COMPLETE" in text
    assert main(["sweep-status", "six", "--runs-dir", str(runs)]) == 0
    assert "6/6 trials finished" in capsys.readouterr().out


def test_driver_killed_mid_sweep_and_run_again_finishes_exactly_n_trials(shards, tmp_path, tool_env):
    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.samples": 512})
    path = write_sweep(tmp_path / "kill.yaml", base, name="kill", n_trials=4, parallel=2)
    driver = start_driver(path, tool_env, *SLURM)
    journal = runs / "kill" / "study.journal"

    def running_and_done():
        if not journal.exists():
            return False
        states = [t.state for t in study_of(path).trials]
        return TrialState.RUNNING in states and (TrialState.COMPLETE in states or len(states) >= 2)

    try:
        wait_for(running_and_done, 180, "a trial in flight")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert any(t.state == TrialState.RUNNING for t in study_of(path).trials)  # jobs outlive the driver
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet", *SLURM]) == 0
    trials = study_of(path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # followed, not failed nor repeated
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    for t in trials:  # every trial trained by exactly one job
        assert len((Path(t.user_attrs["run_dir"]) / "jobs.jsonl").read_text().splitlines()) == 1


def test_a_cancelled_trial_job_is_retried_from_its_checkpoint(shards, tmp_path, tool_env):
    runs = tmp_path / "runs"
    # The job must still be training when the cancel lands: the first checkpoint comes at 256 samples, the
    # cancel stopped it by 768 (~8 s) beside a study on both cores, and the rest (~5,400) leave a margin
    # several times that. 16,384 samples cost ~200 s more of CI on this machine for no more proof.
    base = tiny_base(shards, runs, **{"train.samples": 6144, "train.checkpoint_every_samples": 256})
    path = write_sweep(tmp_path / "cancel.yaml", base, name="cancel", n_trials=1, parallel=1)
    driver = start_driver(path, tool_env, *SLURM)
    trial_dir = runs / "cancel" / "trial-0000"
    try:
        wait_for(lambda: list((trial_dir / "checkpoints").glob("step-*.pt")), 180, "the trial's first checkpoint")
        job_id = json.loads((trial_dir / "jobs.jsonl").read_text().splitlines()[0])["job_id"]
        subprocess.run(["scancel", job_id], check=True)
        output, _ = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, output
    trials = study_of(path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], output
    assert "CANCELLED" in trials[0].user_attrs["failure"] and trials[0].user_attrs["counts_as_failure"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert trials[1].user_attrs["run_dir"] == str(trial_dir)
    info = json.loads((trial_dir / "run.json").read_text())
    assert info["resumed_at_step"] > 0  # the retry continued from the checkpoint
    assert "retry enqueued" in output


def test_a_clearly_worse_trial_is_pruned_from_inside_its_slurm_job(shards, tmp_path):
    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.samples": 1024, "train.eval_every_samples": 128})
    path = write_sweep(
        tmp_path / "prune.yaml",
        base,
        name="prune",
        n_trials=3,
        parallel=1,
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    )
    sw = prepare(path, params="params.yaml")
    study = st.create_or_resume(sw.spec, sw.storage, 1, False)
    distributions = {
        "masking.ratio": optuna.distributions.FloatDistribution(0.25, 0.75, step=0.25),
        "masking.threshold": optuna.distributions.FloatDistribution(0.2, 0.9),
    }
    for i in range(2):  # two constructed trials that were perfect at every evaluation
        study.add_trial(
            optuna.trial.create_trial(
                params={"masking.ratio": 0.5, "masking.threshold": 0.5},
                distributions=distributions,
                values=[1.0],
                intermediate_values={s: 1.0 for s in range(128, 1024, 128)},
                user_attrs={"run_dir": f"constructed-{i}"},
            )
        )
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet", *SLURM]) == 0
    trial = study_of(path).trials[2]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["job"].startswith("slurm:")
    assert list(trial.intermediate_values) == [128]  # reported by the job, pruned at its first evaluation
    run = Path(trial.user_attrs["run_dir"])
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "pruned" and result["pruned_at_samples"] == 128
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "model.safetensors").exists()
    assert hparams_of(run / "eval")["sweep.state"] == "PRUNED"
    # the report never shows a pruned trial's intermediate value as its objective
    from maskvlp.sweep.report import report

    report("prune", tmp_path / "report", str(runs))
    row = [r for r in csv.DictReader(open(tmp_path / "report" / "trials.csv")) if r["number"] == "2"][0]
    assert row["state"] == "PRUNED" and row["zeroshot/objects/top1"] == "" and float(row["last_intermediate"]) < 1


def test_detach_submits_the_driver_as_a_slurm_job_that_runs_the_sweep(shards, tmp_path, capsys):
    from maskvlp.launch import sacct_states

    runs = tmp_path / "runs"
    path = write_sweep(tmp_path / "det.yaml", tiny_base(shards, runs), name="det", n_trials=1, parallel=1)
    assert main(["sweep", str(path), "--params", "params.yaml", *SLURM, "--detach"]) == 0
    out = capsys.readouterr().out
    job_id = out.split("Slurm job ")[1].split(";")[0]
    assert "sweep-status det" in out
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    state = wait_for(
        lambda: sacct_states([job_id]).get(job_id) in done and sacct_states([job_id])[job_id], 240, "the driver job"
    )
    assert state == "COMPLETED", (runs / "det" / "driver").rglob("*.err")
    assert [t.state for t in study_of(path).trials] == [TrialState.COMPLETE]
    assert main(["sweep-status", "det", "--runs-dir", str(runs)]) == 0
    assert "1/1 trials finished" in capsys.readouterr().out
