"""Real DVC in a temporary git repo: `dvc repro` runs, skips unchanged stages and re-runs changed ones."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, subprocess_env

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def new_repo(path: Path, env: dict[str, str]) -> Path:
    """A copy of the project's pipeline (dvc.yaml, params.yaml, stages/, src/) in a fresh git + DVC repo
    at `path`, with a small dataset so the tests stay quick."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, path / name)
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["data"]["synthetic"]["num_samples"] = 300
    params["data"]["loader_workers"] = 0
    params["train"].update(samples=640, batch_size=32, warmup_samples=64, checkpoint_every_samples=320)
    params["eval"].update(objects_per_class=3, linear_probe_samples=200)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path, env)
    run(["git", "config", "user.email", "ci@example.com"], path, env)
    run(["git", "config", "user.name", "ci"], path, env)
    run(["dvc", "init", "-q"], path, env)
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "init"], path, env)
    return path


@pytest.fixture
def repo(tmp_path, tool_env) -> Path:
    return new_repo(tmp_path, tool_env)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, str]:
    """A new repo after its first `dvc repro` (shard, pretrain, evaluate), committed, and that repro's
    output: built once for the tests that start from it, each of which works on its own copy."""
    env = subprocess_env()
    path = new_repo(tmp_path_factory.mktemp("reproduced") / "repo", env)
    out = run(["dvc", "repro"], path, env)
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "baseline"], path, env)
    return path, out


def copy_of(reproduced: tuple[Path, str], tmp_path: Path) -> Path:
    return Path(shutil.copytree(reproduced[0], tmp_path / "repo", symlinks=True))


def _set(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_runs_skips_and_reruns_exactly_what_changed(reproduced, tmp_path, tool_env):
    repo, out = copy_of(reproduced, tmp_path), reproduced[1]  # the first `dvc repro`'s output
    for stage in ("shard", "pretrain", "evaluate"):
        assert f"Running stage '{stage}'" in out
    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 300
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["status"] == "complete" and train["samples_seen"] == 640
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert {
        "zeroshot/val/top1",
        "zeroshot/objects/top1",
        "retrieval/val/i2t_r1",
        "linear_probe/val/top1",
        "composition/val/relation",
    } <= set(metrics)
    assert (repo / "runs/default/eval/metrics.json").is_file()

    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage" not in out

    _set(repo, "eval", "objects_per_class", 4)  # an eval param: evaluate only
    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage 'evaluate'" in out and "Running stage 'pretrain'" not in out
    assert "Running stage 'shard'" not in out

    with open(repo / "src/maskvlp/linearprobe.py", "a") as fh:  # code only evaluation runs: evaluate alone
        fh.write("\n# an edit\n")
    status = json.loads(run(["dvc", "status", "--json"], repo, tool_env).strip().splitlines()[-1])
    assert set(status) == {"evaluate"}, status

    _set(repo, "train", "lr", 0.001)  # a training param: pretrain and evaluate
    out = run(["dvc", "repro"], repo, tool_env)
    assert "Running stage 'shard'" not in out
    assert "Running stage 'pretrain'" in out and "Running stage 'evaluate'" in out

    # an edit of the shard cleaning code changes model inputs: pretrain and evaluate must re-run too
    with open(repo / "src/maskvlp/data/clean.py", "a") as fh:
        fh.write("\n# an edit\n")
    status = json.loads(run(["dvc", "status", "--json"], repo, tool_env).strip().splitlines()[-1])
    for stage in ("shard", "pretrain", "evaluate"):
        changed = [e["changed deps"] for e in status.get(stage, []) if isinstance(e, dict) and "changed deps" in e]
        assert changed and "src/maskvlp/data" in str(changed[0]), (stage, status)  # the data package

    params = yaml.safe_load((repo / "params.yaml").read_text())  # a data param: everything
    params["data"]["synthetic"]["num_samples"] = 200
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo, tool_env)
    assert all(f"Running stage '{s}'" in out for s in ("shard", "pretrain", "evaluate"))

    shown = run(["dvc", "metrics", "show"], repo, tool_env)
    assert "zeroshot/objects/top1" in shown and "train_loss" in shown
    diff = run(["dvc", "params", "diff"], repo, tool_env)
    assert "train.lr" in diff and "data.synthetic.num_samples" in diff
    run(["dvc", "plots", "show", "-o", str(repo / "plots")], repo, tool_env)
    assert (repo / "plots" / "index.html").is_file()


def test_dvc_exp_run_with_a_param_override(reproduced, tmp_path, tool_env):
    repo = copy_of(reproduced, tmp_path)  # reproduced and committed
    out = run(["dvc", "exp", "run", "-S", "masking.ratio=0.75", "-S", "masking.strategy=random"], repo, tool_env)
    assert "Running stage 'pretrain'" in out and "Running stage 'shard'" not in out
    shown = run(["dvc", "exp", "show", "--no-pager", "--md"], repo, tool_env)
    assert "0.75" in shown and "zeroshot/objects/top1" in shown
    # params.yaml stays free of interpolations after dvc rewrote it
    assert "${" not in (repo / "params.yaml").read_text()


def test_invalid_params_fail_the_stage_before_any_work(repo, tool_env):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["val_fraction"] = 1.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=tool_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data.val_fraction must be in [0, 1)" in proc.stdout + proc.stderr
    assert not (repo / "data/shards/manifest.json").exists()


def test_committed_dvc_lock_is_in_step_with_the_code_and_params(tool_env):
    """`dvc status` in the repository itself: no stage may see a modified code dependency or a changed
    param. (Outputs that a fresh clone has not produced yet, "deleted" / "not in cache", are expected.)
    When this fails after an edit: run `dvc repro` and commit dvc.lock with the change."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    # the root pipeline only: sweeps/dvc.yaml holds hour-long studies, re-run on purpose, not per commit
    status = json.loads(run(["dvc", "status", "--json", "dvc.yaml"], ROOT, tool_env).strip().splitlines()[-1] or "{}")
    stale = {}
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # params.yaml: {key: new | modified | deleted}
                    stale[f"{stage}: params {path}"] = change
                elif not (change == "deleted" and path.split("/")[0] in ("data", "runs", "metrics")):
                    stale[f"{stage}: {path}"] = change  # a deleted output of another stage is fine
    assert not stale, f"dvc.lock is out of step with the code (run `dvc repro`, commit dvc.lock): {stale}"


def test_a_sweep_is_a_dvc_stage_of_its_own_pipeline(repo, tool_env):
    """sweeps/dvc.yaml: `dvc repro sweeps/dvc.yaml` runs the shard stage it needs and the sweep, writes
    the report as the stage's outputs, and skips it when nothing changed; the root pipeline is untouched."""
    (repo / "sweeps").mkdir()
    shutil.copy(ROOT / "sweeps" / "dvc.yaml", repo / "sweeps" / "dvc.yaml")
    sweep = yaml.safe_load((ROOT / "sweeps" / "masking.yaml").read_text())
    sweep["base"].update({"train.samples": 320, "train.batch_size": 32, "train.warmup_samples": 64})
    sweep["base"].update({"train.eval_every_samples": 0, "eval.linear_probe": False})
    sweep.update(n_trials=2, parallel=2, pruner={"name": "none"})
    (repo / "sweeps" / "masking.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    run(["git", "add", "-A"], repo, tool_env)
    run(["git", "commit", "-qm", "sweep"], repo, tool_env)
    out = run(["dvc", "repro", "sweeps/dvc.yaml:sweep@masking"], repo, tool_env)
    assert "Running stage 'shard'" in out and "Running stage 'sweeps/dvc.yaml:sweep@masking'" in out
    assert "Running stage 'pretrain'" not in out  # the quick default pipeline is not part of it
    summary = json.loads((repo / "reports/sweeps/masking/summary.json").read_text())
    assert summary["states"] == {"COMPLETE": 2} and summary["best"]["params"]
    assert (repo / "reports/sweeps/masking/best_params.yaml").is_file()
    again = run(["dvc", "repro", "sweeps/dvc.yaml:sweep@masking"], repo, tool_env)
    assert "Running stage" not in again  # nothing changed: nothing re-runs


def test_dvc_exp_run_selects_the_real_preset(repo, tool_env, tmp_path_factory):
    """`dvc exp run -S data.preset=real`: the same pipeline shards the clip-art + emoji mix and evaluates
    on OpenClipart val, emoji and Fashion-MNIST (small copies the test writes, in place of the packages)."""
    from .test_idx import _fake_fashion
    from .test_paper_study import clipart_tree

    data = tmp_path_factory.mktemp("real-data")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["openclipart"].update(root=str(clipart_tree(data / "svg", per_class=10)), min_per_class=5)
    params["data"]["emoji"].update(max_emoji=20, samples_per_emoji=2)
    params["data"]["val_fraction"] = 0.3
    params["eval"].update(fashion_mnist_dir=str(_fake_fashion(data / "fm", n=30)), fashion_mnist_samples=20)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "small real data"], repo, tool_env)
    out = run(["dvc", "exp", "run", "-S", "data.preset=real"], repo, tool_env)
    assert all(f"Running stage '{s}'" in out for s in ("shard", "pretrain", "evaluate"))
    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    assert manifest["source"]["kind"] == "mix" and manifest["source"]["classes"] == ["birds", "fruit", "flowers"]
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert {
        "retrieval/val/t2i_r1",
        "zeroshot/val/top1",
        "zeroshot/emoji/top1",
        "composition/emoji/relation",
        "zeroshot/fashion-mnist/top1",
        "linear_probe/fashion-mnist/top1",
    } <= set(metrics)
    assert not any(k.startswith("zeroshot/objects") for k in metrics)  # the synthetic preset's set is gone
