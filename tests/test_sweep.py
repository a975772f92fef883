"""Sweeps without Slurm: real Optuna storage (a journal file, the local MariaDB), local trial processes,
the report, refusals before anything runs, optuna-dashboard over a study's storage."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from maskvlp.cli import main
from maskvlp.sweep import study as st
from maskvlp.sweep.prepare import prepare
from maskvlp.sweep.space import SweepSpecError
from maskvlp.sweep.spec import parse

from .sweeping import hparams_of, tiny_base, tiny_shards, write_sweep

RDB_URL = os.environ.get(
    "MASKVLP_TEST_RDB", "mysql+pymysql://optuna:optuna@localhost/optuna?unix_socket=/run/mysqld/mysqld.sock"
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


def _rdb_up() -> bool:
    try:
        optuna.get_all_study_summaries(optuna.storages.RDBStorage(RDB_URL))
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------------- refusals
def test_invalid_sweep_is_refused_before_any_study_or_job_exists(shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    path = write_sweep(tmp_path / "bad.yaml", tiny_base(shards, runs), objectives=[{"metric": "zeroshot/objects/top2"}])
    assert main(["sweep", str(path), "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "invalid sweep" in err and "objectives[0].metric" in err
    assert not runs.exists()  # nothing was created, let alone submitted
    assert main(["sweep", str(path), "--params", "params.yaml", "--parallel", "0"]) == 2
    assert "parallel: must be an integer >= 1" in capsys.readouterr().err


def test_missing_shards_are_refused_with_the_command_that_makes_them(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", tiny_base(tmp_path / "no-shards", tmp_path / "runs"))
    with pytest.raises(SweepSpecError, match="maskvlp shard"):
        prepare(path, params="params.yaml")


def test_a_reused_study_name_with_another_space_is_refused_unless_force_new(shards, tmp_path):
    base = tiny_base(shards, tmp_path / "runs")
    first = prepare(write_sweep(tmp_path / "a.yaml", base), params="params.yaml")
    study = st.create_or_resume(first.spec, first.storage, 2, force_new=False)
    study.enqueue_trial({"masking.ratio": 0.5, "masking.threshold": 0.5})
    # the same spec resumes the same study (another n_trials or parallel does not change it)
    again = prepare(write_sweep(tmp_path / "a2.yaml", base, n_trials=9), params="params.yaml")
    assert len(st.create_or_resume(again.spec, again.storage, 2, False).trials) == 1
    # where trials run is not what the study is: launcher keys may change between runs
    moved = prepare(write_sweep(tmp_path / "a3.yaml", base), ["launcher.executor=slurm"], params="params.yaml")
    assert len(st.create_or_resume(moved.spec, moved.storage, 2, False).trials) == 1
    other_space = {"masking.ratio": {"type": "float", "low": 0.25, "high": 0.5, "step": 0.25}}
    other = prepare(write_sweep(tmp_path / "b.yaml", base, space=other_space), params="params.yaml")
    with pytest.raises(SweepSpecError, match="--force-new"):
        st.create_or_resume(other.spec, other.storage, 2, force_new=False)
    fresh = st.create_or_resume(other.spec, other.storage, 2, force_new=True)
    assert fresh.trials == [] and fresh.user_attrs[st.SPEC_ATTR] == other.spec.fingerprint()


def test_sqlite_is_refused_for_parallel_workers_and_bad_pruner_options_are_named(tmp_path):
    with pytest.raises(SweepSpecError, match="SQLite cannot take parallel workers"):
        st.open_storage(f"sqlite:///{tmp_path}/s.db", parallel=2)
    spec = parse(
        {
            "name": "x",
            "base": {"train.eval_every_samples": 100},
            "space": {"masking.ratio": {"low": 0.2, "high": 0.8}},
            "objectives": [{"metric": "zeroshot/val/top1"}],
            "pruner": {"name": "median", "n_startup": 3},
        }
    )
    with pytest.raises(SweepSpecError, match="pruner: .*n_startup"):
        st.create_or_resume(spec, str(tmp_path / "j.journal"), 1, False)


def test_suggest_respects_steps_logs_and_conditions():
    spec = parse(
        {
            "name": "c",
            "base": {"masking.strategy": "random"},
            "space": {
                "masking.ratio": {"low": 0.25, "high": 0.75, "step": 0.05},
                "masking.anchor_ratio": {"low": 0.01, "high": 0.2, "log": True},
                "masking.threshold": {"low": 0.2, "high": 0.9, "when": {"masking.strategy": "cluster"}},
                "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
            },
            "objectives": [{"metric": "zeroshot/val/top1"}],
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        values = st.suggest(study.ask(), spec)
        assert "masking.threshold" not in values  # its condition (strategy cluster) does not hold
        assert round(values["masking.ratio"] / 0.05, 6) == round(values["masking.ratio"] / 0.05)
        assert values["masking.ratio"] == round(values["masking.ratio"], 10)
        assert 0.01 <= values["masking.anchor_ratio"] <= 0.2 and values["train.batch_size"] in (16, 32, 48, 64)


def test_cpu_slots_split_the_cores_between_parallel_trials():
    from maskvlp.sweep.prepare import cpu_slots

    slots = cpu_slots(list(range(8)), 3)
    assert [len(s) for s in slots] == [3, 3, 2] and frozenset().union(*slots) == frozenset(range(8))
    assert all(not (a & b) for i, a in enumerate(slots) for b in slots[i + 1 :])
    assert cpu_slots([0, 1], 2) == [frozenset({0}), frozenset({1})]
    assert cpu_slots([0, 1], 3) == [frozenset({0}), frozenset({1}), frozenset({0})]  # more trials than CPUs
    assert cpu_slots([4, 5, 6, 7], 1) == [frozenset({4, 5, 6, 7})]


# ----------------------------------------------------------------------------- shared storage
def _worker(url: str, spec_raw: dict, trials: int, tag: str) -> None:
    spec = parse(spec_raw)
    study = st.load_study(spec, url, parallel=4)
    for i in range(trials):
        trial = study.ask()
        values = st.suggest(trial, spec)
        trial.set_user_attr("run_dir", f"{tag}-{i}")
        study.tell(trial, values["masking.ratio"])


@pytest.mark.parametrize("backend", ["journal", "rdb"])
def test_many_workers_on_one_storage_lose_and_duplicate_no_trial(backend, tmp_path):
    if backend == "rdb" and not _rdb_up():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide the MariaDB of scripts/slurm-local.sh ({RDB_URL})")
        pytest.skip("no MariaDB answers: scripts/slurm-local.sh start")
    raw = {
        "name": f"many-{uuid.uuid4().hex[:8]}",
        "space": {"masking.ratio": {"low": 0.2, "high": 0.8}},
        "objectives": [{"metric": "zeroshot/val/top1"}],
        "pruner": {"name": "none"},
        "sampler": {"name": "random"},
    }
    spec = parse(raw)
    url = str(tmp_path / "study.journal") if backend == "journal" else RDB_URL
    st.create_or_resume(spec, url, 4, force_new=False)
    workers, per_worker = 4, 6
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(url, raw, per_worker, f"w{w}")) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    trials = st.load_study(spec, url).trials
    try:
        assert sorted(t.number for t in trials) == list(range(workers * per_worker))
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert len({t.user_attrs["run_dir"] for t in trials}) == workers * per_worker
        assert all(t.values[0] == t.params["masking.ratio"] for t in trials)
    finally:
        if backend == "rdb":
            optuna.delete_study(study_name=spec.name, storage=RDB_URL)


# --------------------------------------------------------------------------- local executor
@pytest.mark.slow
def test_two_objective_sweep_with_local_processes_reports_only_the_pareto_front(shards, tmp_path, capsys):
    runs, report_dir = tmp_path / "runs", tmp_path / "report"
    path = write_sweep(
        tmp_path / "two.yaml",
        # evaluations during training on: a two-objective trial must not report to a pruner
        tiny_base(shards, runs, **{"masking.strategy": "random", "train.eval_every_samples": 128}),
        name="two",
        space={"masking.ratio": {"type": "float", "low": 0.0, "high": 0.75, "step": 0.25}},
        objectives=[
            {"metric": "retrieval/val/i2t_r1", "direction": "maximize"},
            {"metric": "train_flops", "direction": "minimize"},
        ],
        sampler={"name": "nsga2", "seed": 0},
        n_trials=4,
        parallel=2,
    )
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet", "--report", str(report_dir)]) == 0
    rows = list(csv.DictReader(open(report_dir / "trials.csv")))
    front = list(csv.DictReader(open(report_dir / "pareto.csv")))
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(done) == 4 and front

    def point(r):
        return float(r["retrieval/val/i2t_r1"]), -float(r["train_flops"])  # both to maximise

    def dominated(a, b):  # b dominates a
        return all(y >= x for x, y in zip(point(a), point(b))) and point(a) != point(b)

    front_numbers = {r["number"] for r in front}
    for r in done:
        is_dominated = any(dominated(r, other) for other in done)
        assert (r["number"] in front_numbers) == (not is_dominated), r
    # the masking-aware cost: more masking, fewer FLOPs
    by_ratio = sorted(done, key=lambda r: float(r["masking.ratio"]))
    flops = [float(r["train_flops"]) for r in by_ratio]
    assert flops == sorted(flops, reverse=True) or len({r["masking.ratio"] for r in done}) == 1
    assert (report_dir / "pareto.png").stat().st_size > 10_000
    # each local trial ran pinned to its share of the cores: one of two CPUs at parallel 2
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for trial in (runs / "two").glob("trial-*"):
        info = json.loads((trial / "run.json").read_text())
        assert info["cpu_share"]["source"] == "affinity"
        assert info["cpu_share"]["cpus"] == share and info["cpu_share"]["threads"] == share


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study_from_its_journal(tmp_path, tool_env):
    spec = parse(
        {
            "name": "dash",
            "space": {"masking.ratio": {"low": 0.2, "high": 0.8}},
            "objectives": [{"metric": "zeroshot/val/top1"}],
            "pruner": {"name": "none"},
        }
    )
    journal = tmp_path / "dash" / "study.journal"
    study = st.create_or_resume(spec, str(journal), 1, False)
    trial = study.ask()
    study.tell(trial, st.suggest(trial, spec)["masking.ratio"])
    port = _free_port()
    server = subprocess.Popen(
        [Path(sys.executable).parent / "optuna-dashboard", str(journal), "--port", str(port), "--quiet"],
        env=tool_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read())
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer within 60 s"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["dash"]
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_local_trial_process_writes_one_hparams_session_with_its_params(shards, tmp_path):
    runs = tmp_path / "runs"
    grid = {"masking.ratio": {"type": "float", "low": 0.25, "high": 0.5, "step": 0.25}}
    path = write_sweep(
        tmp_path / "one.yaml",
        tiny_base(shards, runs),
        name="one",
        n_trials=2,
        parallel=1,
        space=grid,
        sampler={"name": "grid"},
    )
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet"]) == 0
    trials = sorted(runs.glob("one/trial-*"))
    assert [yaml.safe_load((t / "config.yaml").read_text())["masking"]["ratio"] for t in trials] in (
        [0.25, 0.5],
        [0.5, 0.25],
    )
    assert all("Traceback" not in (t / "trial.log").read_text() for t in trials)  # the last grid point tells cleanly
    trial_dir = runs / "one" / "trial-0000"
    hp = hparams_of(trial_dir / "eval")
    cfg = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert hp["sweep.trial"] == 0 and hp["sweep.state"] == "COMPLETE"
    assert hp["masking.ratio"] == cfg["masking"]["ratio"]
    assert len(list((trial_dir / "eval").glob("events.out.tfevents.*"))) == 1
    assert cfg["train"]["run_name"] == "trial-0000" and cfg["eval"]["metrics_file"].startswith(str(trial_dir))


def test_a_failed_attempt_gets_exactly_one_retry_until_its_retries_are_used(shards, tmp_path):
    """ensure_retries runs every pass: a FAIL left without its retry (driver killed in between) gets one,
    a second pass adds none, and a trial whose crashes exceed `retries` is finished, not retried."""
    from optuna.trial import TrialState

    from maskvlp.sweep.driver import Driver

    sw = prepare(
        write_sweep(tmp_path / "r.yaml", tiny_base(shards, tmp_path / "runs"), retries=1), params="params.yaml"
    )
    study = st.create_or_resume(sw.spec, sw.storage, 2, False)
    driver = Driver(sw, study, progress=False)

    def crash(run_dir: str) -> None:
        trial = study.ask()
        st.suggest(trial, sw.spec)
        trial.set_user_attr("run_dir", run_dir)
        trial.set_user_attr("job", "slurm:0")
        driver._fail(trial, "job ended FAILED", crash=True)

    crash("a")
    driver.ensure_retries()
    driver.ensure_retries()
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["run_dir"] == "a" and waiting[0].user_attrs["retry_of"] == 0
    retry = study.ask()  # the retry is taken first, and samples the same params
    assert retry.number == waiting[0].number and st.suggest(retry, sw.spec) == study.trials[0].params
    driver._fail(retry, "job ended FAILED", crash=True)
    driver.ensure_retries()
    (group,) = st.logical_trials(study)
    assert group.failures == 2 and st.is_finished(group, sw.spec.retries)
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


def test_editing_params_yaml_while_a_sweep_runs_changes_none_of_its_trials(shards, tmp_path):
    """The fault: a driver re-read params.yaml for every trial, so a key added to the file (by a newer
    checkout) while a 50-trial study ran made its other 48 trials fail as 'unknown key', and an edited
    value would have mixed two configurations in one study. The driver keeps the file as it was."""
    from maskvlp.sweep.prepare import trial_config

    params = tmp_path / "params.yaml"
    params.write_text(Path("params.yaml").read_text())
    base = tiny_base(shards, tmp_path / "runs")
    sw = prepare(write_sweep(tmp_path / "a.yaml", base), params=str(params))
    values = {"masking.ratio": 0.5, "masking.threshold": 0.5}
    before = trial_config(sw, values, tmp_path / "runs" / "trial-0000")
    text = params.read_text().replace("  lr: ", "  lr: 0.5 #", 1)
    params.write_text(text + "\ntrain_new_section: {a: 1}\n")  # a changed value and a key this code lacks
    after = trial_config(sw, values, tmp_path / "runs" / "trial-0001")
    assert after.train.lr == before.train.lr != 0.5


def test_resuming_a_study_after_its_params_file_changed_is_refused_naming_the_key(shards, tmp_path):
    from maskvlp.sweep.driver import run_sweep
    from maskvlp.sweep.prepare import params_changes

    params = tmp_path / "params.yaml"
    params.write_text(Path("params.yaml").read_text())
    base = tiny_base(shards, tmp_path / "runs")
    path = write_sweep(tmp_path / "a.yaml", base, n_trials=1)
    sw = prepare(path, params=str(params))
    run_sweep(sw, progress=False)  # one trial: the study records the params it ran with
    recorded = json.loads(sw.paths.info.read_text())["params_data"]
    assert params_changes(prepare(path, params=str(params)), recorded) == []  # unchanged: resumes
    params.write_text(params.read_text().replace("  lr: ", "  lr: 0.5 #", 1))
    changed = prepare(path, params=str(params))
    assert params_changes(changed, recorded) == ["train.lr: 0.0005 -> 0.5"]  # resolved: the recipe's value
    with pytest.raises(
        SweepSpecError, match=r"changed since study 'tiny' started \(train\.lr: 0\.0005 -> 0\.5\).*--force-new"
    ):
        run_sweep(changed, progress=False)
    # a key the file gained since, at its default, is no change (a newer checkout's params.yaml)
    params.write_text(params.read_text().replace("  lr: 0.5 #", "  lr: ", 1))
    older = {**recorded, "train": {k: v for k, v in recorded["train"].items() if k != "compute_basis"}}
    assert params_changes(prepare(path, params=str(params)), older) == []


def test_trials_failing_for_good_in_a_row_stop_the_sweep_instead_of_failing_all_of_it(shards, tmp_path):
    """The fault behind the 48 failed trials (twice) of the paper study: every trial failed the same way at
    its start, and the driver went on until the whole study was spent. After GIVE_UP_AFTER trials fail
    for good in a row it stops, saying why and how to go on."""
    import shutil

    from maskvlp.sweep.driver import GIVE_UP_AFTER, SweepStopped, run_sweep

    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    path = write_sweep(tmp_path / "a.yaml", tiny_base(data, tmp_path / "runs"), n_trials=8, parallel=1, retries=0)
    sw = prepare(path, params="params.yaml")
    (data / "manifest.json").unlink()  # every trial's job now fails the same way
    with pytest.raises(SweepStopped, match=rf"{GIVE_UP_AFTER} trials in a row failed for good.*raise `retries:`"):
        run_sweep(sw, progress=False, poll_s=0.2)
    states = [t.state for t in st.load_study(sw.spec, sw.storage, 1).trials]
    assert states == [optuna.trial.TrialState.FAIL] * GIVE_UP_AFTER  # not all 8
