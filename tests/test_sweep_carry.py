"""A study carried between machines (maskvlp.sweep.carry): packed while it runs, the machine lost
(driver and trial killed, runs/ deleted), unpacked on the "next machine" and continued to exactly
n_trials, with no failure counted for the trial that was moved and the same weights as an
uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from maskvlp.runs import RunPaths
from maskvlp.sweep import study as st
from maskvlp.sweep.carry import PACK_FILE, pack, unpack
from maskvlp.sweep.prepare import prepare
from maskvlp.sweep.space import SweepSpecError

from .sweeping import check_invariants, start_driver, tiny_base, tiny_shards, wait_for, write_sweep


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory)


def _kill(pid: int) -> None:
    """SIGKILL `pid` and wait until it is gone (a dying trial must not write into a deleted folder)."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 30, f"process {pid} to die")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_study_packed_while_it_runs_continues_on_a_fresh_machine_to_exactly_n_trials(shards, tmp_path, tool_env):
    from maskvlp.cli import main

    runs = tmp_path / "runs"
    base = tiny_base(shards, runs, **{"train.samples": 1024, "train.checkpoint_every_samples": 128})
    path = write_sweep(tmp_path / "c.yaml", base, name="carried", n_trials=3, parallel=1, retries=0)
    spec = prepare(path, params="params.yaml").spec
    journal = runs / "carried" / "study.journal"

    def second_trial_checkpointed():
        try:
            trials = st.load_study(spec, str(journal)).trials
        except (FileNotFoundError, KeyError):  # no journal, or the study not yet created in it
            return None
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        live = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("job")]
        if done and live and list((Path(live[0].user_attrs["run_dir"]) / "checkpoints").glob("step-*.pt")):
            return done[0], live[0]
        return None

    driver = start_driver(path, tool_env)
    try:
        done, live = wait_for(second_trial_checkpointed, 240, "one finished trial and one checkpointed")
        first = pack("carried", tmp_path / "pack", runs)  # while the driver and a trial run
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    _kill(int(live.user_attrs["job"].split(":")[2]))
    assert done.number in first["finished"] and live.number in first["unfinished"], first

    # a write cut by the machine's end: half a journal line; the pack keeps only complete lines
    with open(journal, "ab") as fh:
        fh.write(b'{"op_code": 5, "worker_id": "cut-')
    record = pack("carried", tmp_path / "pack", runs)  # replaces the first pack whole
    packed = tmp_path / "pack"
    assert json.loads((packed / PACK_FILE).read_text()) == record
    assert not list(packed.rglob("*.pt")) and not list(packed.rglob("model.safetensors"))
    assert (packed / "trial-0000" / "result.json").is_file()  # a finished trial's record is kept
    moved = packed / Path(live.user_attrs["run_dir"]).name
    assert sorted(p.name for p in moved.iterdir()) == sorted(
        ["attempts.jsonl", "config.yaml", "stopped.json", "trial.json"]
    )

    # the machine is gone; on the next one the pack goes back where the study was, and the study finishes
    shutil.rmtree(runs)
    cwd = os.getcwd()
    assert unpack(packed) == runs / "carried"
    with pytest.raises(SweepSpecError, match="not empty"):
        unpack(packed)  # never over a study: two studies' trials are not mixed
    assert os.getcwd() == cwd
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet"]) == 0
    study = st.load_study(spec, str(journal))
    check_invariants(study, n_trials=3, retries=0, crashes=0)  # the moved trial counted no failure
    assert study.trials[done.number].values == done.values  # the finished trial was kept, not run again
    run_dir = Path(live.user_attrs["run_dir"])
    assert json.loads(RunPaths(run_dir).info.read_text())["resumed_at_step"] == 0  # no checkpoint travelled

    # the moved trial, trained again from its first step, equals an uninterrupted run of its params on
    # as many cores as it had (its thread count)
    threads = json.loads(RunPaths(run_dir).info.read_text())["cpu_share"]["threads"]
    again = subprocess.run(
        [sys.executable, "-m", "maskvlp.cli", "pretrain", "--params", str(run_dir / "config.yaml"),
         "--set", f"train.runs_dir={tmp_path / 'again'}", "--set", f"eval.metrics_file={tmp_path / 'again.json'}"],
        env=tool_env, capture_output=True, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads])),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    whole = RunPaths(run_dir).model.read_bytes()
    assert (tmp_path / "again" / run_dir.name / "model.safetensors").read_bytes() == whole


def test_a_pack_is_refused_for_a_folder_that_is_not_one_and_unpack_names_the_fix(tmp_path):
    (tmp_path / "notapack").mkdir()
    with pytest.raises(SweepSpecError, match="not a study pack"):
        unpack(tmp_path / "notapack")
    with pytest.raises(SweepSpecError, match="no study 'absent'"):
        pack("absent", tmp_path / "p", tmp_path / "runs")
    assert not (tmp_path / "p").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["notapack"]  # nothing left beside it either
