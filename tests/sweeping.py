"""Helpers for the sweep tests: a tiny sweep file over tiny shards (trials of a few seconds)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from maskvlp.data.shards import MANIFEST

from .conftest import make_tiny_shards

SHARD_SAMPLES = 300


def tiny_shards(tmp_path_factory) -> Path:
    """The sweep tests' shards, made once per test session and shared: the tests only read them (one that
    changes shards works on a copy)."""
    folder = tmp_path_factory.getbasetemp() / "sweep-data"
    if not (folder / "shards" / MANIFEST).is_file():  # the manifest is written last: a cut build is redone
        folder.mkdir(exist_ok=True)
        make_tiny_shards(folder, SHARD_SAMPLES)
    return folder / "shards"


def tiny_base(shards: Path, runs: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "data.out_dir": str(shards),
        "data.synthetic.num_samples": SHARD_SAMPLES,
        "data.image_size": 32,
        "data.num_workers": 1,
        "data.loader_workers": 0,
        "model.image_size": 32,
        "model.patch_size": 8,
        "model.embed_dim": 32,
        "model.context_length": 24,
        "train.runs_dir": str(runs),
        "train.samples": 256,
        "train.batch_size": 32,
        "train.warmup_samples": 64,
        "train.log_every_steps": 1,
        "eval.linear_probe": False,
        "eval.objects_per_class": 4,
        "eval.subset_samples": 64,
        "launcher.partition": "debug",
        "launcher.cpus_per_task": 1,
        "launcher.mem_gb": 2,
        "launcher.timeout_min": 10,
    }
    base.update(extra)
    return base


SLURM = ["--set", "launcher.executor=slurm"]  # sweep arguments: trials as Slurm jobs


def study_of(path: Path):
    """The study of the sweep file `path`, read back from its storage."""
    from maskvlp.sweep import study as st
    from maskvlp.sweep.prepare import prepare

    sw = prepare(path, params="params.yaml")
    return st.load_study(sw.spec, sw.storage)


def wait_for(condition, timeout: float, what: str, every_s: float = 0.5):
    """Poll `condition` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_driver(path: Path, tool_env: dict[str, str], *extra: str) -> subprocess.Popen:
    """`maskvlp sweep FILE --quiet ...` as a process of its own (to be killed, or to run beside another)."""
    return subprocess.Popen(
        [sys.executable, "-m", "maskvlp.cli", "sweep", str(path), "--params", "params.yaml", "--quiet", *extra],
        env=tool_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def write_sweep(path: Path, base: dict[str, Any], **fields: Any) -> Path:
    raw = {
        "name": "tiny",
        "base": base,
        "space": {
            "masking.ratio": {"type": "float", "low": 0.25, "high": 0.75, "step": 0.25},
            "masking.threshold": {"type": "float", "low": 0.2, "high": 0.9},
        },
        "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "n_trials": 2,
        "parallel": 2,
        "retries": 1,
    }
    raw.update(fields)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def hparams_of(event_dir: Path) -> dict[str, Any]:
    """The HParams session written in `event_dir`, read back from its event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    out = {}
    for key, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def check_invariants(study, n_trials: int, retries: int, crashes: int) -> None:
    """What must hold after any fault: exactly `n_trials` logical trials, all finished and none RUNNING;
    every crash counted once; no run folder written by two attempts at once or by two study instances
    (each folder's attempts.jsonl: a writer's start comes after the previous writer's end, and every
    writer belongs to the study's own instance)."""
    from optuna.trial import TrialState

    from maskvlp.runs import RunPaths, read_attempts
    from maskvlp.sweep import study as st

    groups = st.logical_trials(study)
    assert len(groups) == n_trials, [g.run_dir for g in groups]
    assert all(st.is_finished(g, retries) for g in groups), [(g.number, g.last.state) for g in groups]
    assert not [t.number for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(g.failures for g in groups) == crashes, [(t.number, t.user_attrs.get("failure")) for t in study.trials]
    instance = study.user_attrs[st.INSTANCE_ATTR]
    for g in groups:
        entries = read_attempts(RunPaths(Path(g.run_dir)))
        assert {e["instance"] for e in entries} <= {instance}, (g.run_dir, entries)
        holder = None  # (pid, host) of the writer holding the folder, per the log
        for e in sorted(entries, key=lambda e: e["t"]):
            me = (e["host"], e["pid"])
            if e["event"] == "start":
                assert holder is None or not _alive_at(holder, entries, e["t"]), (g.run_dir, entries)
                holder = me
            elif me == holder:
                holder = None


def _alive_at(holder, entries, t: float) -> bool:
    """Whether the writer `holder` could still hold the folder at time t: it logged no end by then. A
    writer killed without an end line is taken as gone once a later writer started (the kernel lock
    let that one in only after it died)."""
    ends = [e["t"] for e in entries if (e["host"], e["pid"]) == holder and e["event"] == "end"]
    return bool(ends) and min(ends) > t
