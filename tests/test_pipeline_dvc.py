"""Real DVC in a temporary git repo: `dvc repro` runs, skips unchanged stages and re-runs changed ones."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def repo(tmp_path, tool_env) -> Path:
    """A copy of the project's pipeline (dvc.yaml, params.yaml, stages/, src/) in a fresh git + DVC repo,
    with a small dataset so the test stays quick."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"]["synthetic"]["num_samples"] = 300
    params["data"]["loader_workers"] = 0
    params["train"].update(samples=640, batch_size=32, warmup_samples=64, checkpoint_every_samples=320)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], tmp_path, tool_env)
    run(["git", "config", "user.email", "ci@example.com"], tmp_path, tool_env)
    run(["git", "config", "user.name", "ci"], tmp_path, tool_env)
    run(["dvc", "init", "-q"], tmp_path, tool_env)
    run(["git", "add", "-A"], tmp_path, tool_env)
    run(["git", "commit", "-qm", "init"], tmp_path, tool_env)
    return tmp_path


def _set(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_runs_skips_and_reruns_exactly_what_changed(repo, tool_env):
    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage 'shard'" in out and "Running stage 'pretrain'" in out
    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 300
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["status"] == "finished" and train["samples_seen"] == 640
    assert (repo / "runs/default/model.safetensors").is_file()
    assert (repo / "dvc.lock").is_file()

    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage" not in out and "didn't change" in out

    # a training param re-runs pretrain only
    _set(repo, "train", "lr", 0.001)
    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage 'shard'" not in out and "Running stage 'pretrain'" in out

    # a data param re-runs both
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"]["num_samples"] = 120
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage 'shard'" in out and "Running stage 'pretrain'" in out
    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 120


def test_invalid_params_fail_the_stage_before_any_work(repo, tool_env):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["val_fraction"] = 1.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=tool_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data.val_fraction must be in [0, 1)" in proc.stdout + proc.stderr
    assert not (repo / "data/shards/manifest.json").exists()
