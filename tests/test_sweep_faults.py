"""Faults a cluster throws at the sweep engine, each reproduced for real (processes killed, two writers,
two drivers at one instant, a full filesystem, a diverging trial, a study replaced under its jobs),
with the engine's invariants checked after each. Slurm-only faults are in test_sweep_faults_slurm.py."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from maskvlp.runs import (
    FolderBusy,
    RunPaths,
    folder_writer,
    read_result,
    update_result,
    weights_complete,
    write_json_atomic,
)
from maskvlp.sweep import study as st
from maskvlp.sweep.driver import Driver
from maskvlp.sweep.prepare import prepare
from maskvlp.sweep.space import SweepSpecError

from .sweeping import check_invariants, start_driver, tiny_base, tiny_shards, wait_for, write_sweep

CTX = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


# ------------------------------------------------------------------------- records, two writers
def _hammer_json(path: str, tag: int, n: int, out) -> None:
    errors = 0
    for i in range(n):
        try:
            write_json_atomic(Path(path), {"tag": tag, "i": i, "pad": "x" * 2000})
        except OSError:
            errors += 1
    out.put(errors)


def test_two_processes_writing_one_record_600_times_never_fail_nor_tear_it(tmp_path):
    path, out = tmp_path / "run.json", CTX.Queue()
    procs = [CTX.Process(target=_hammer_json, args=(str(path), t, 300, out)) for t in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [out.get(timeout=5), out.get(timeout=5)] == [0, 0]  # a fixed temp name failed 12 of 600 here
    assert json.loads(path.read_text())["i"] == 299
    assert not [p for p in tmp_path.iterdir() if p.name != "run.json"]  # no temp file left behind


def _update_fields(root: str, tag: int, n: int, barrier) -> None:
    barrier.wait()
    for i in range(n):
        update_result(RunPaths(Path(root)), **{f"w{tag}_{i}": i})


def test_two_processes_updating_result_json_lose_no_field(tmp_path):
    barrier = CTX.Barrier(2)
    procs = [CTX.Process(target=_update_fields, args=(str(tmp_path), t, 150, barrier)) for t in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    record = read_result(RunPaths(tmp_path))
    assert len(record) == 300  # an unlocked read-modify-write dropped the other writer's fields


# ------------------------------------------------------------------------------ final weights
def test_a_truncated_weights_file_is_no_weights_and_evaluation_says_what_to_do(tmp_path):
    from maskvlp.checkpoint import save_weights
    from maskvlp.evaluate import EvalError, load_run

    path = tmp_path / "model.safetensors"
    save_weights({"w": torch.arange(1000.0)}, path)
    assert weights_complete(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    assert not weights_complete(path)
    path.write_bytes(b"")
    assert not weights_complete(path)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(EvalError, match="incomplete or unreadable.*--resume"):
        load_run(tmp_path)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs the test mounts (root only): a disk that fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root and must be able to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_disk_filling_while_weights_are_written_leaves_no_weights_file(small_fs):
    from maskvlp.checkpoint import save_weights

    path = small_fs / "model.safetensors"
    with pytest.raises(OSError) as info:
        save_weights({"w": torch.zeros(600_000)}, path)  # 2.4 MB on a 1 MiB disk
    assert info.value.errno == errno.ENOSPC
    assert not path.exists() and not list(small_fs.iterdir())  # neither a truncated file nor a temp file
    save_weights({"w": torch.zeros(1000)}, path)  # the space came back: the same call works
    assert weights_complete(path)


def test_a_truncated_weights_file_is_rewritten_whole_by_resuming(shards, tmp_path):
    from maskvlp.params import load_config
    from maskvlp.train import pretrain

    from .conftest import tiny_run

    cfg = load_config("params.yaml", tiny_run(shards, 300, tmp_path / "runs", "train.samples=128"))
    pretrain(cfg, progress=False)
    paths = RunPaths(tmp_path / "runs" / cfg.train.run_name)
    whole = paths.model.read_bytes()
    paths.model.write_bytes(whole[: len(whole) // 2])  # a job killed mid-write, before writes were atomic
    update_result(paths, status="failed", failure="non_finite_loss", error="NonFiniteLoss: ...")  # an attempt's
    pretrain(cfg, resume=True, progress=False)
    assert paths.model.read_bytes() == whole
    result = read_result(paths)  # the earlier attempt's failure does not outlive the attempt that mended it
    assert result["status"] == "complete" and "failure" not in result and "error" not in result


# --------------------------------------------------------------------------- diverging training
def test_a_non_finite_loss_stops_training_at_once_with_the_reason(shards, tmp_path):
    from maskvlp.params import load_config
    from maskvlp.train import pretrain
    from maskvlp.trainlog import NonFiniteLoss

    from .conftest import tiny_run

    overrides = ["train.samples=1024", "train.lr=1000", "train.warmup_samples=0", "train.log_every_steps=1"]
    cfg = load_config("params.yaml", tiny_run(shards, 300, tmp_path / "runs", *overrides))
    with pytest.raises(NonFiniteLoss) as info:
        pretrain(cfg, progress=False)
    result = read_result(RunPaths(tmp_path / "runs" / cfg.train.run_name))
    assert result["status"] == "failed" and result["failure"] == "non_finite_loss"
    assert result["steps"] == info.value.step < result["total_steps"]  # it did not train on


def _nan_trial(driver: Driver, run_dir: Path) -> optuna.trial.FrozenTrial:
    """A RUNNING trial whose job is gone after writing whole weights and a NaN objective."""
    from maskvlp.checkpoint import save_weights

    trial = driver.study.ask()
    st.suggest(trial, driver.sw.spec)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("job", "slurm:1")
    save_weights({"w": torch.zeros(4)}, RunPaths(run_dir).model)
    write_json_atomic(RunPaths(run_dir).result, {"status": "complete", "eval": {"zeroshot/objects/top1": float("nan")}})
    return driver.study.get_trials(deepcopy=False)[trial.number]


def test_a_nan_objective_is_a_counted_failure_retried_then_finished_not_forever(shards, tmp_path):
    sw = prepare(
        write_sweep(tmp_path / "n.yaml", tiny_base(shards, tmp_path / "runs"), retries=1), params="params.yaml"
    )
    driver = Driver(sw, st.create_or_resume(sw.spec, sw.storage, 2, False), progress=False)
    run_dir = tmp_path / "runs" / "tiny" / "trial-0000"
    outcome = driver.settle_dead(_nan_trial(driver, run_dir), "job ended COMPLETED")
    assert outcome.startswith("FAIL (non-finite objective (zeroshot/objects/top1=nan)")
    driver.ensure_retries()
    retry = driver.study.ask()  # the one retry, in the same folder
    assert retry.user_attrs["run_dir"] == str(run_dir)
    driver.settle_dead(driver.study.get_trials(deepcopy=False)[retry.number], "job ended COMPLETED")
    for _ in range(3):
        driver.ensure_retries()
    (group,) = st.logical_trials(driver.study)
    assert group.failures == 2 and st.is_finished(group, sw.spec.retries)
    assert [t.state for t in driver.study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "non-finite" in group.last.user_attrs["failure"] and group.last.user_attrs["counts_as_failure"]


def test_a_driver_killed_between_asking_a_grid_point_and_launching_it_loses_no_point(shards, tmp_path):
    """The window the chaos test's driver kills can land in: a trial asked and sampled, no run folder
    recorded yet. The next driver settles it as never launched (no trial, no failure counted) and the
    grid gets its point back, so the study still visits every point exactly once."""
    space = {"masking.ratio": {"type": "categorical", "choices": [0.25, 0.5]}}
    path = write_sweep(
        tmp_path / "g.yaml", tiny_base(shards, tmp_path / "runs"), space=space, sampler={"name": "grid", "seed": 0}
    )
    sw = prepare(path, params="params.yaml")
    first = Driver(sw, st.create_or_resume(sw.spec, sw.storage, 2, False), progress=False)
    orphan = first.study.ask()
    lost = st.suggest(orphan, sw.spec)  # ... and here the driver is SIGKILLed, before run_dir is set
    again = Driver(sw, st.create_or_resume(sw.spec, sw.storage, 2, False), progress=False)
    again.adopt_orphans()
    settled, *queued = again.study.trials
    assert [t.state for t in queued] == [TrialState.WAITING]  # the grid point, back in the queue
    assert settled.state == TrialState.FAIL and settled.user_attrs["failure"].startswith("never launched")
    assert not settled.user_attrs["counts_as_failure"] and st.logical_trials(again.study) == []
    asked = [again.study.ask() for _ in range(2)]
    points = [st.suggest(t, sw.spec)["masking.ratio"] for t in asked]
    assert points[0] == lost["masking.ratio"] and sorted(points) == [0.25, 0.5]


@pytest.mark.slow
def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_ends(shards, tmp_path):
    from maskvlp.cli import main

    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.lr": 1000, "train.warmup_samples": 0})
    space = {  # not in alphabetical order: sweep.json must keep the spec's order (its fingerprint depends on it)
        "masking.threshold": {"type": "float", "low": 0.2, "high": 0.9},
        "masking.ratio": {"type": "float", "low": 0.25, "high": 0.75, "step": 0.25},
    }
    path = write_sweep(tmp_path / "d.yaml", base, name="div", n_trials=1, parallel=1, retries=1, space=space)
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet"]) == 0
    study = st.load_study(prepare(path, params="params.yaml").spec, str(runs / "div" / "study.journal"))
    from maskvlp.sweep.spec import parse

    stored = json.loads((runs / "div" / "sweep.json").read_text())["spec"]
    assert parse(stored).fingerprint() == study.user_attrs[st.SPEC_ATTR]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # one retry, then given up
    assert all(t.user_attrs["failure"].startswith("diverged: the training loss became nan") for t in study.trials)
    result = read_result(RunPaths(runs / "div" / "trial-0000"))
    assert result["status"] == "failed" and result["failure"] == "non_finite_loss"
    check_invariants(study, n_trials=1, retries=1, crashes=2)


# --------------------------------------------------------------------- one driver, one writer
def _take_driver_lock(study_dir: str, barrier, out, answered) -> None:
    from maskvlp.sweep.liveness import driver_lock

    barrier.wait()
    try:
        with driver_lock(Path(study_dir)):
            out.put("ran")
            answered.wait(60)  # hold the lock until every other driver has had its answer
    except SweepSpecError as exc:
        out.put(f"refused: {exc}")


def test_of_five_drivers_started_at_once_exactly_one_runs(tmp_path):
    barrier, out, answered = CTX.Barrier(5), CTX.Queue(), CTX.Event()
    args = (str(tmp_path / "s"), barrier, out, answered)
    procs = [CTX.Process(target=_take_driver_lock, args=args) for _ in range(5)]
    for p in procs:
        p.start()
    answers = sorted(out.get(timeout=60) for _ in range(5))
    answered.set()
    for p in procs:
        p.join(60)
    assert answers.count("ran") == 1, answers  # check-then-write let two run, or crashed one
    assert all("already runs" in a for a in answers if a != "ran")


def test_a_driver_record_naming_its_own_job_or_a_dead_driver_does_not_block(tmp_path):
    from maskvlp.runs import StudyPaths
    from maskvlp.sweep.liveness import driver_alive, driver_lock

    study_dir = tmp_path / "s"
    study_dir.mkdir()
    # what a --detach driver requeued after its node died finds: driver.json naming its own Slurm job
    write_json_atomic(
        StudyPaths(study_dir).driver_record, {"host": "gone-node", "pid": 1, "slurm_job": os.environ.get("X", "7")}
    )
    assert driver_alive(study_dir) is None
    with driver_lock(study_dir) as record:
        assert record["pid"] == os.getpid()
        assert driver_alive(study_dir) is not None


def _hold_folder(root: str, ready) -> None:
    with folder_writer(RunPaths(Path(root)), {"trial": 0}):
        ready.set()
        time.sleep(60)


def test_a_run_folder_has_one_writer_and_a_killed_holder_frees_it(tmp_path):
    ready = CTX.Event()
    holder = CTX.Process(target=_hold_folder, args=(str(tmp_path), ready))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
        with folder_writer(RunPaths(tmp_path), {"trial": 1}, wait_s=0.5, poll_s=0.1):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # a stale holder: the kernel dropped its lock with it
    holder.join(10)
    with folder_writer(RunPaths(tmp_path), {"trial": 1}, wait_s=5, poll_s=0.1):
        pass


# --------------------------------------------------------------------------- the live attempt
def _task(sw, study, trial, run_dir: Path, instance: str):
    from maskvlp.config import to_dict
    from maskvlp.sweep.job import TrialTask
    from maskvlp.sweep.prepare import trial_config

    values = st.suggest(trial, sw.spec)
    trial.set_user_attr("run_dir", str(run_dir))
    return TrialTask(
        to_dict(trial_config(sw, values, run_dir)), sw.spec.raw, sw.storage, trial.number, values, instance
    )


def test_a_job_that_is_not_its_trials_live_attempt_writes_and_tells_nothing(shards, tmp_path):
    from maskvlp.sweep.job import NotLive, run_trial

    sw = prepare(write_sweep(tmp_path / "l.yaml", tiny_base(shards, tmp_path / "runs")), params="params.yaml")
    study = st.create_or_resume(sw.spec, sw.storage, 2, False)
    instance = study.user_attrs[st.INSTANCE_ATTR]
    # a job Slurm requeued by itself after the driver failed its trial (and started its retry)
    trial = study.ask()
    task = _task(sw, study, trial, tmp_path / "runs" / "tiny" / "trial-0000", instance)
    study.tell(trial.number, state=TrialState.FAIL)
    with pytest.raises(NotLive, match="already FAIL"):
        run_trial(task, progress=False)
    assert not (tmp_path / "runs" / "tiny" / "trial-0000").exists()  # not a file written
    # a job of a study that --force-new replaced: the same name, storage and trial number
    trial = study.ask()
    task = _task(sw, study, trial, tmp_path / "runs" / "tiny" / "trial-0001", "an-old-instance")
    with pytest.raises(NotLive, match="study was replaced"):
        run_trial(task, progress=False)
    assert (
        study.trials[trial.number].state == TrialState.RUNNING
        and not (tmp_path / "runs" / "tiny" / "trial-0001").exists()
    )


def _gone(pid: int) -> bool:
    """Whether the process has ended (gone, or a zombie nobody reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_force_new_is_refused_while_a_trial_of_the_old_study_runs(shards, tmp_path, tool_env):
    from maskvlp.cli import main

    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.samples": 8192, "train.checkpoint_every_samples": 256})
    path = write_sweep(tmp_path / "f.yaml", base, name="fn", n_trials=1, parallel=1)
    driver = start_driver(path, tool_env)
    trial_dir = runs / "fn" / "trial-0000"
    try:
        wait_for(lambda: list((trial_dir / "checkpoints").glob("step-*.pt")), 120, "the trial's first checkpoint")
    finally:
        driver.kill()  # SIGKILL: its local trial process runs on in its own session
        driver.wait()
    old = st.load_study(prepare(path, params="params.yaml").spec, str(runs / "fn" / "study.journal"))
    pid = int(old.trials[0].user_attrs["job"].split(":")[2])
    refused = start_driver(path, tool_env, "--force-new")
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2, output
    assert "still run" in output and f"kill {pid}" in output and not list(runs.glob("fn.replaced-*"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _gone(pid), 30, "the trial's end")
    short = write_sweep(tmp_path / "f.yaml", tiny_base(shards, runs), name="fn", n_trials=1, parallel=1)
    assert main(["sweep", str(short), "--params", "params.yaml", "--quiet", "--force-new"]) == 0
    new = st.load_study(prepare(short, params="params.yaml").spec, str(runs / "fn" / "study.journal"))
    assert [t.state for t in new.trials] == [TrialState.COMPLETE]
    assert new.user_attrs[st.INSTANCE_ATTR] != old.user_attrs[st.INSTANCE_ATTR]
    check_invariants(new, n_trials=1, retries=1, crashes=0)


# ------------------------------------------------------------------------------- chaos, locally
@pytest.mark.slow
def test_driver_and_trial_processes_killed_at_random_moments_still_give_exactly_n_trials(shards, tmp_path, tool_env):
    """The driver SIGKILLed three times at seeded random moments and one trial process SIGKILLed after
    its first checkpoint; then the same command finishes the study. The killed trial, retried from its
    checkpoint, ends with the weights of an uninterrupted run of its params, bit for bit."""
    from maskvlp.cli import main

    rng = random.Random(28)
    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.samples": 1024, "train.checkpoint_every_samples": 128})
    path = write_sweep(tmp_path / "c.yaml", base, name="chaos", n_trials=3, parallel=2, retries=2)
    spec = prepare(path, params="params.yaml").spec
    journal = runs / "chaos" / "study.journal"
    killed_trial = None
    for round_ in range(3):
        driver = start_driver(path, tool_env)
        time.sleep(rng.uniform(2.0, 8.0))
        # the last round waits for a trial's checkpoint if none came yet: a driver's start (torch's import
        # alone takes ~3 s here) can outlast the random windows, and the trial kill must happen
        deadline = time.time() + (60 if round_ == 2 else 0)
        while killed_trial is None:
            trials = st.load_study(spec, str(journal)).trials if journal.exists() else []
            # a trial is RUNNING from the moment it is asked; its run_dir comes a moment later
            for t in [t for t in trials if t.state == TrialState.RUNNING and "run_dir" in t.user_attrs]:
                ckpts = list((Path(t.user_attrs["run_dir"]) / "checkpoints").glob("step-*.pt"))
                if ckpts and t.user_attrs.get("job", "").startswith("local:"):
                    os.kill(int(t.user_attrs["job"].split(":")[2]), signal.SIGKILL)
                    killed_trial = t
                    break
            if killed_trial is not None or time.time() >= deadline:
                break
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert killed_trial is not None, "no trial had a checkpoint to be killed after"
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet"]) == 0
    study = st.load_study(spec, str(journal))
    check_invariants(study, n_trials=3, retries=2, crashes=1)
    # the killed trial was retried from its checkpoint and equals an uninterrupted run of its params
    run_dir = Path(killed_trial.user_attrs["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["resumed_at_step"] > 0
    # the same params in another folder, uninterrupted, on one CPU as the trial had (its thread count)
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskvlp.cli",
            "pretrain",
            "--params",
            str(run_dir / "config.yaml"),
            "--set",
            f"train.runs_dir={tmp_path / 'again'}",
            "--set",
            f"eval.metrics_file={tmp_path / 'again.json'}",
        ],
        env=tool_env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}),
    )
    assert again.returncode == 0, again.stderr[-2000:]
    whole = (run_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / run_dir.name / "model.safetensors").read_bytes() == whole


# ------------------------------------------------------------------------------------ secrets
SECRET = "m4skvlp-pw-28"  # the password of the MariaDB user optuna_pw (scripts/slurm-local.sh)
SECRET_URL = f"mysql+pymysql://optuna_pw:{SECRET}@localhost/optuna?unix_socket=/run/mysqld/mysqld.sock"


def test_a_storage_password_is_never_printed_nor_stored(shards, tmp_path, capsys):
    from maskvlp.cli import main

    assert st.public_url("mysql+pymysql://u:s3cret@db.example/optuna?charset=utf8") == (
        "mysql+pymysql://u@db.example/optuna?charset=utf8"
    )
    try:
        optuna.get_all_study_summaries(optuna.storages.RDBStorage(SECRET_URL))
    except Exception:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide the MariaDB user optuna_pw of scripts/slurm-local.sh")
        pytest.skip("no MariaDB user optuna_pw: scripts/slurm-local.sh start")
    name = f"secret-{os.getpid()}"
    runs, report = tmp_path / "runs", tmp_path / "report"
    path = write_sweep(tmp_path / "s.yaml", tiny_base(shards, runs), name=name, n_trials=1, parallel=1)
    os.environ.pop(st.PASSWORD_ENV, None)
    try:
        args = [
            "sweep",
            str(path),
            "--params",
            "params.yaml",
            "--quiet",
            "--storage",
            SECRET_URL,
            "--report",
            str(report),
        ]
        assert main(args) == 0
        assert main(["sweep-status", name, "--runs-dir", str(runs)]) == 0
        printed = capsys.readouterr()
        assert SECRET not in printed.out + printed.err
        assert "optuna_pw@localhost" in printed.out  # the URL is shown, without its password
        written = [p for p in [*runs.rglob("*"), *report.rglob("*")] if p.is_file()]
        assert any(p.name == "trials.md" for p in written) and any(p.name == "trial.json" for p in written)
        assert not [p for p in written if SECRET.encode() in p.read_bytes()]
        # without the password, the storage says where it goes
        os.environ.pop(st.PASSWORD_ENV, None)
        with pytest.raises(SweepSpecError, match=st.PASSWORD_ENV) as info:
            st.open_storage(st.public_url(SECRET_URL)).get_all_studies()
        assert SECRET not in str(info.value)
    finally:
        os.environ.pop(st.PASSWORD_ENV, None)
        optuna.delete_study(study_name=name, storage=SECRET_URL)


@pytest.mark.slow
def test_a_trial_abandoned_during_training_stops_within_seconds_writing_nothing_more(shards, tmp_path, tool_env):
    """The driver gives up on a local trial while it trains (its trial told FAIL, as after a node
    failure): the process notices at its next liveness check, stops without a checkpoint or a result,
    and exits with EXIT_NOT_LIVE."""
    from maskvlp.runs import RunPaths
    from maskvlp.sweep.job import EXIT_NOT_LIVE, LIVE_CHECK_S

    base = tiny_base(shards, tmp_path / "runs", **{"train.samples": 65536, "train.checkpoint_every_samples": 256})
    sw = prepare(write_sweep(tmp_path / "a.yaml", base), params="params.yaml")
    study = st.create_or_resume(sw.spec, sw.storage, 2, False)
    run_dir = tmp_path / "runs" / "tiny" / "trial-0000"
    trial = study.ask()
    task = _task(sw, study, trial, run_dir, study.user_attrs[st.INSTANCE_ATTR])
    run_dir.mkdir(parents=True)
    RunPaths(run_dir).trial.write_text(task.to_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskvlp.sweep.job", str(RunPaths(run_dir).trial)],
        env=tool_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: list((run_dir / "checkpoints").glob("step-*.pt")), 120, "the first checkpoint")
        study.tell(trial.number, state=TrialState.FAIL)
        told = time.time()
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_NOT_LIVE, output
    assert time.time() - told < LIVE_CHECK_S + 30 and "without writing" in output
    assert read_result(RunPaths(run_dir))["status"] == "running"  # not "stopped": no result written
    assert not (run_dir / "stopped.json").exists() and not (run_dir / "model.safetensors").exists()


def test_a_local_trial_on_another_host_is_alive_while_it_holds_its_folder(tmp_path):
    """A trial process recorded on another host cannot be asked through this host's process table; it
    counts as alive while it holds its run folder's writer lock (was: taken as gone at once, and its
    retry started in the same folder while it might still run)."""
    from maskvlp.sweep.liveness import job_alive

    job = "local:another-host:4242:12345"
    ready = CTX.Event()
    holder = CTX.Process(target=_hold_folder, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(60)
        assert job_alive(job, time.time(), {}, tmp_path)
    finally:
        holder.kill()
        holder.join(10)
    assert not job_alive(job, time.time(), {}, tmp_path)
