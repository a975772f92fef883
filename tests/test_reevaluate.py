"""Re-evaluating a finished sweep (issue 30, point 3): a real tiny sweep of local trial processes, every
trial evaluated again on a captions table made here from the embedded synthetic scenes (and on the
registered `objects` set), the results merged into each trial's record, and `sweep-report --metric`
ranking and comparing the trials on the new keys. Plus CachedBatches on its own (read once, early
stops, the memory limit, a failing stream)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from maskvlp import evalsets
from maskvlp.cli import main
from maskvlp.evaluate import CacheBudget, CachedBatches
from maskvlp.runs import RunPaths, update_result

from .sweeping import tiny_base, tiny_shards, write_sweep

NEW = "retrieval/mybench/t2i_r1"  # a key the trials' own evaluation never produced


# ------------------------------------------------------------------------------ CachedBatches alone
def _counted_source(n_batches: int, calls: list[int], fail_at: int | None = None):
    def make(size: int, batch_size: int):
        calls.append(size)
        for i in range(n_batches):
            if i == fail_at and len(calls) == 1:
                raise OSError("shard cut short")
            yield {
                "images": torch.full((batch_size, 3, size, size), i, dtype=torch.uint8),
                "captions": [f"caption {i}.{j}" for j in range(batch_size)],
                "metas": [{}] * batch_size,
                "keys": [f"k{i}.{j}" for j in range(batch_size)],
            }

    return make


def _firsts(batches) -> list[int]:
    return [int(b["images"][0, 0, 0, 0]) for b in batches]


def test_cached_batches_read_the_set_once_and_resume_a_pass_stopped_early():
    calls: list[int] = []
    cached = CachedBatches(_counted_source(5, calls), CacheBudget(1 << 20))
    early = iter(cached(8, 2))
    assert [int(next(early)["images"][0, 0, 0, 0]) for _ in range(2)] == [0, 1]  # the probe's sample limit
    early.close()
    assert _firsts(cached(8, 2)) == [0, 1, 2, 3, 4]  # replayed, then read on from where the first stopped
    assert _firsts(cached(8, 2)) == [0, 1, 2, 3, 4]
    assert calls == [8] and cached.reads == 1 and "read once" in cached.how
    assert _firsts(cached(16, 2)) == [0, 1, 2, 3, 4] and calls == [8, 16]  # another image size: its own read


def test_cached_batches_over_the_budget_stream_again_and_say_so():
    calls: list[int] = []
    one_batch = 2 * 3 * 8 * 8 + 100  # a batch's images and about its text
    budget = CacheBudget(2 * one_batch)
    cached = CachedBatches(_counted_source(5, calls), budget)
    assert _firsts(cached(8, 2)) == [0, 1, 2, 3, 4]  # the pass that ran over still yields every batch
    assert cached.streaming and budget.used == 0 and cached.bytes == 0
    assert _firsts(cached(8, 2)) == [0, 1, 2, 3, 4]
    assert calls == [8, 8] and "streamed again per run" in cached.how


def test_a_stream_that_fails_is_read_anew_not_replayed_half():
    calls: list[int] = []
    budget = CacheBudget(1 << 20)
    cached = CachedBatches(_counted_source(4, calls, fail_at=2), budget)
    with pytest.raises(OSError, match="cut short"):
        list(cached(8, 2))
    assert budget.used == 0
    assert _firsts(cached(8, 2)) == [0, 1, 2, 3] and calls == [8, 8]


# ------------------------------------------------------------------------------ a real sweep, re-evaluated
def benchmark_table(root: Path, n: int = 36) -> Path:
    """A captions table of single-object synthetic scenes (seeded apart from training): path, caption, label."""
    from maskvlp.data import synthetic

    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        image, caption, meta = synthetic.generate_scene(4242, i, 40, 1, 1)
        image.save(root / f"scene{i:03d}.png")
        rows.append({"path": f"scene{i:03d}.png", "caption": caption, "label": meta["label_name"]})
    with open(root / "mybench.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "mybench.csv"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished 4-trial study with a compare: section (2 strategies x 2 seeds, grid, local processes)."""
    tmp = tmp_path_factory.mktemp("reeval")
    shards = tiny_shards(tmp_path_factory)
    runs = tmp / "runs"
    space = {
        "strategy": {"choices": {"none": {"masking.strategy": "none"}, "random": {"masking.strategy": "random"}}},
        "train.seed": {"type": "categorical", "choices": [0, 1]},
    }
    compare = {
        "group": "strategy",
        "seeds": "train.seed",
        "claims": ["random > none"],
        "claim_metrics": ["zeroshot/objects/top1"],
    }
    path = write_sweep(
        tmp / "cmp.yaml",
        tiny_base(shards, runs, **{"train.samples": 128}),
        name="cmp",
        space=space,
        sampler={"name": "grid"},
        n_trials=4,
        parallel=2,
        compare=compare,
    )
    assert main(["sweep", str(path), "--params", "params.yaml", "--quiet"]) == 0
    trials = sorted((runs / "cmp").glob("trial-*"))
    assert len(trials) == 4
    return tmp, runs, trials


def _eval(trial: Path) -> dict:
    return json.loads((trial / "result.json").read_text())["eval"]


COMMON = ["--params", "params.yaml", "--quiet", "--set", "data.folder.label_column=label"]
COMMON += ["--set", "eval.objects_per_class=2", "--set", "eval.linear_probe=false"]


@pytest.fixture(scope="module")
def reevaluated(sweep):
    """`maskvlp evaluate --run 'runs/cmp/trial-*'` on the table and `objects`, with three more folders the
    pattern matches: copies of a trial whose weights do not fit its config (fails), whose training stopped
    and without weights (both left out); counting the passes over each set's own batches (an observation:
    the sets run as they always do)."""
    tmp, runs, trials = sweep
    table = benchmark_table(tmp / "bench")
    extra = [runs / "cmp" / f"trial-00{n}" for n in (97, 98, 99)]
    broken, unfinished, no_weights = extra
    for copy in extra:
        shutil.copytree(trials[0], copy)
    cfg = yaml.safe_load((broken / "config.yaml").read_text())
    cfg["model"]["embed_dim"] = 48
    (broken / "config.yaml").write_text(yaml.safe_dump(cfg))
    update_result(RunPaths(unfinished), status="stopped")
    (no_weights / "model.safetensors").unlink()
    before = {t: _eval(t) for t in trials}
    reads: dict[str, int] = {}
    resolve = evalsets.resolve

    def counting_resolve(cfg, spec):
        es = resolve(cfg, spec)
        batches = es.batches

        def counted(size, batch):
            reads[es.name] = reads.get(es.name, 0) + 1
            return batches(size, batch)

        es.batches = counted
        return es

    sets = ["--dataset", str(table), "--dataset", "objects"]
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(io.StringIO()) as out:
        mp.setattr("maskvlp.evaluate.resolve", counting_resolve)
        code = main(["evaluate", "--run", str(runs / "cmp" / "trial-*"), *sets, *COMMON])
    left = {p: _eval(p) for p in extra}
    for copy in extra:
        shutil.rmtree(copy)  # (out of the study before the report reads it)
    return {"code": code, "out": out.getvalue(), "reads": reads, "before": before, "left": left, "sets": sets}


def test_a_whole_sweep_is_evaluated_again_reading_each_set_once(sweep, reevaluated, capsys):
    tmp, runs, trials = sweep
    out = reevaluated["out"]
    assert reevaluated["code"] == 1, out  # one run failed: the others went on, and the exit status says so
    assert reevaluated["reads"] == {"mybench": 1, "objects": 1}  # once for all four trials
    assert "mybench: read once" in out and "objects: read once" in out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 7 and lines[0].startswith(f"[1/7] {trials[0]}: ") and f"{NEW}=" in lines[0]
    assert (
        lines[4].startswith(f"[5/7] {runs / 'cmp' / 'trial-0097'}: failed: EvalError: ") and "does not fit" in lines[4]
    )
    assert f"[6/7] {runs / 'cmp' / 'trial-0098'}: left out: not complete (status stopped)" in lines
    assert lines[6].startswith(f"[7/7] {runs / 'cmp' / 'trial-0099'}: left out: no weights")
    summary = "evaluated 4 of 7 runs on mybench, objects; left out 2: 1 not complete (status stopped); 1 no weights"
    assert f"{summary} (model.safetensors absent or incomplete); failed 1: {runs / 'cmp' / 'trial-0097'}" in out
    assert all(NEW not in merged for merged in reevaluated["left"].values())

    for trial in trials:  # the new keys merged into result.json's eval; the old ones kept
        merged, extra = _eval(trial), json.loads((trial / "eval-extra" / "mybench" / "metrics.json").read_text())
        assert NEW in extra and "zeroshot/mybench/top1" in extra and extra.items() <= merged.items()
        kept = {k: v for k, v in reevaluated["before"][trial].items() if "/objects/" not in k}  # objects: again
        assert kept and kept.items() <= merged.items()
        assert "zeroshot/objects/top1" in json.loads((trial / "eval-extra" / "objects" / "metrics.json").read_text())

    # the same numbers as evaluating one trial alone
    one = trials[2]
    together = json.loads((one / "eval-extra" / "mybench" / "metrics.json").read_text())
    shutil.rmtree(one / "eval-extra")
    assert main(["evaluate", "--run", str(one), *reevaluated["sets"], *COMMON]) == 0
    assert json.loads((one / "eval-extra" / "mybench" / "metrics.json").read_text()) == together
    capsys.readouterr()

    # a pattern matching nothing, and several runs without --dataset, are refused with what to do
    assert main(["evaluate", "--run", str(runs / "cmp" / "trial-9*"), *reevaluated["sets"], *COMMON]) == 1
    assert "matches no folder" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(trials[0]), str(trials[1]), *COMMON]) == 1
    assert "2 runs need --dataset" in capsys.readouterr().err


def test_sweep_report_ranks_and_compares_the_trials_on_the_new_metric(sweep, reevaluated, tmp_path, capsys):
    tmp, runs, trials = sweep
    out_dir = tmp_path / "report"
    args = ["sweep-report", "cmp", "--runs-dir", str(runs), "--out", str(out_dir), "--metric", NEW]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"Trials ranked by {NEW} (higher is better; from re-evaluation" in text
    rows = [r for r in csv.DictReader(open(out_dir / "rankings.csv")) if r["metric"] == NEW]
    values = {t.name: _eval(t)[NEW] for t in trials}
    assert [r["trial"] for r in rows] == sorted(values, key=lambda t: (-values[t], t))  # best first
    assert [float(r["value"]) for r in rows] == sorted(values.values(), reverse=True)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4] and {r["source"] for r in rows} == {"re-evaluation"}
    # beside it, the objective Optuna was told, as it was (the trial's own evaluation)
    own = {t.name: json.loads((t / "eval" / "metrics.json").read_text())["zeroshot/objects/top1"] for t in trials}
    assert {r["trial"]: float(r["zeroshot/objects/top1 (Optuna)"]) for r in rows} == pytest.approx(own)
    # the compare: section gets a claim on the new metric, and says where its numbers come from
    comparison = json.loads((out_dir / "comparison.json").read_text())
    claims = [c for c in comparison["claims"] if c["metric"] == NEW]
    assert len(claims) == 1 and claims[0]["verdict"] in ("holds", "reversed", "overlap", "no spread")
    assert NEW in comparison["columns"] and NEW in comparison["note"]
    md = (out_dir / "comparison.md").read_text()
    assert f"all trials, {NEW}: " in md and "From re-evaluation after the sweep" in md
    summary = json.loads((out_dir / "summary.json").read_text())
    assert [t["trial"] for t in summary["rankings"][NEW]["trials"]] == [r["trial"] for r in rows]
    assert any(c["metric"] == NEW for c in summary["comparison"]["claims"])
    # a key no trial has is refused, naming the command that adds it
    assert main([*args[:-1], "retrieval/other/t2i_r1"]) == 1
    err = capsys.readouterr().err
    assert "no finished trial of study cmp has it" in err and "maskvlp evaluate --run" in err
