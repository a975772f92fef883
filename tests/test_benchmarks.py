"""The throughput benchmark runs on CPU for a few steps (the GPU table is the same script with --device cuda)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_train_throughput_runs_on_cpu_and_writes_every_ratio(tmp_path):
    out = tmp_path / "tt.json"
    cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", "cpu", "--model", "tiny", "--steps", "2"]
    cmd += ["--warmup", "1", "--ratios", "0.5", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    keys = {(r["impl"], r["strategy"], r["ratio"]) for r in rows}
    assert keys == {
        ("maskvlp", "none", 0.0),
        ("maskvlp", "random", 0.5),
        ("maskvlp", "cluster", 0.5),
        ("open_clip", "none", 0.0),
        ("open_clip", "random", 0.5),
    }
    by = {(r["impl"], r["strategy"]): r for r in rows}
    assert all(r["images_per_s"] > 0 and len(r["step_ms_all"]) == 2 for r in rows)
    assert math.isfinite(by["maskvlp", "random"]["vs_open_clip"]) and by["maskvlp", "cluster"]["cluster_vs_random"] > 0
    # FLOPs per step follow the kept tokens: half the patches cost less than all of them
    assert by["maskvlp", "random"]["flops_per_step"] < by["maskvlp", "none"]["flops_per_step"]
    assert by["open_clip", "random"]["flops_per_step"] == by["maskvlp", "random"]["flops_per_step"]
    assert "vs oc" in proc.stdout and "measured peak" in proc.stdout


def test_train_throughput_rows_are_taken_as_given_and_a_bad_row_is_refused(tmp_path):
    out = tmp_path / "tt.json"
    cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", "cpu", "--model", "tiny", "--steps", "1"]
    cmd += ["--warmup", "1", "--threads", "1", "--json", str(out), "--rows"]
    rows = ["maskvlp:cluster:0.5:eager:image", "open_clip:random:0.75:eager:image"]
    proc = subprocess.run(cmd + rows, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = [(r["impl"], r["strategy"], r["ratio"], r["tower"]) for r in json.loads(out.read_text())["rows"]]
    assert got == [("maskvlp", "cluster", 0.5, "image"), ("open_clip", "random", 0.75, "image")]
    bad = subprocess.run(cmd + ["open_clip:cluster:0.5:eager:both"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "open_clip has no cluster masking" in bad.stdout + bad.stderr


def test_end_to_end_benchmark_reads_the_runs_tensorboard_scalars(tmp_path):
    """shard + pretrain for real (tiny, 640 samples), the run's images/s read back from its event files."""
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, "benchmarks/e2e_throughput.py", "--device", "cpu", "--model", "tiny", "--cpus", "1"]
    cmd += ["--shard-samples", "200", "--train-samples", "640", "--log-every", "2", "--bare-steps", "2"]
    cmd += ["--bare-warmup", "1", "--json", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    # 640 samples / batch 64 = 10 steps, logged every 2: five windows, the first 30% left out
    assert [s for s, _ in record["run_windows"]] == [128, 256, 384, 512, 640]
    assert record["run"]["windows"] == 5 and record["run"]["kept"] == 4
    assert record["bare_images_per_s"] > 0 and record["run"]["median"] > 0
    assert (tmp_path / "work" / "runs" / "e2e" / "model.safetensors").exists()
    assert "of bare" in proc.stdout


def test_gpu_suite_dry_run_runs_every_part_on_cpu(tmp_path):
    """benchmarks/gpu_suite.sh is what a lent GPU machine runs in its few minutes: its dry run is the same
    commands on CPU (tiny model, a few steps), so a wrong row or flag fails here instead of there."""
    out = tmp_path / "suite"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", str(out), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("gpu_suite: done"), proc.stdout[-3000:]
    assert "open_clip" in (out / "machine.txt").read_text()
    eager = json.loads((out / "tt_eager.json").read_text())["rows"]
    assert {(r["impl"], r["tower"]) for r in eager} == {
        (i, t) for i in ("maskvlp", "open_clip") for t in ("both", "image")
    }
    assert all(r["images_per_s"] > 0 for r in eager)
    compiled = json.loads((out / "tt_compiled.json").read_text())
    # the dry run's 1 s budget compiles the first row only; the other eight were parsed and are reported skipped
    assert [(r["impl"], r["strategy"], r["ratio"], r["mode"]) for r in compiled["rows"]] == [
        ("maskvlp", "random", 0.5, "compiled")
    ]
    assert len(compiled["failed"]) == 8 and all("skipped" in f["error"] for f in compiled["failed"])
    memory = json.loads((out / "memory.json").read_text())  # written row by row: what ran before the limit
    assert "tiny/0.0" in memory and memory["tiny/0.0"]["per_sample"] > 0
    e2e = json.loads((out / "e2e.json").read_text())  # eager in the dry run: its bare step is the eager row
    assert e2e["bare_source"] == str(out / "tt_eager.json")
    (bare,) = [
        r for r in eager if (r["impl"], r["strategy"], r["ratio"], r["tower"]) == ("maskvlp", "random", 0.5, "both")
    ]
    assert e2e["bare_images_per_s"] == bare["images_per_s"] and e2e["run"]["median"] > 0


def test_sweep_scale_benchmark_times_the_driver_pass_status_and_report(tmp_path):
    """benchmarks/bench_sweep_scale.py on a journal study of 5 instant trials (its RDB rows need MariaDB)."""
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "benchmarks/bench_sweep_scale.py", "--sizes", "5", "--storages", "journal"]
    cmd += ["--passes", "2", "--repeat", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["storage"], row["n"]) == ("journal", 5)
    assert row["optuna_trials"] == 5 + 2  # 5 finished and the 2 running ones (no crash below 20 trials)
    for key in ("open_s", "warm_pass_s", "fresh_wall_s", "fresh_first_pass_s", "status_wall_s", "report_wall_s"):
        assert row[key] >= 0, key
    assert row["report_plots_s"] > 0 and "intermediate_values" in row["report_plot_parts_s"]
    assert "warm pass" in proc.stdout and "sweep-report" in proc.stdout


def test_data_benchmark_in_place_section_measures_both_loaders(tmp_path):
    """bench_data.py's in-place section on a few images: both loaders and the extra crop are timed, and the
    verdict sentence is generated from the numbers printed beside it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_data
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import numpy as np

    rng = np.random.default_rng(0)
    jpegs = [bench_data.make_jpeg(rng, 480, 360) for _ in range(70)]
    rows = bench_data.bench_in_place(tmp_path, jpegs, batches=1, repeats=1, warmup=1)
    cases = [case for _, case, _, _, _ in rows]
    assert any("maskvlp shards" in c for c in cases) and any("in place (originals)" in c for c in cases)
    own, in_place, crop, verdict = (r[2] for r in rows)
    assert own > 0 and in_place > 0 and crop > 0
    slower = 1000 * (1 / in_place - 1 / own)
    assert f"{slower:.2f} ms/image slower" in rows[-1][4]


def test_bench_strategies_measures_every_strategy_beside_random(tmp_path):
    out = tmp_path / "strategies.json"
    cmd = [sys.executable, "benchmarks/bench_strategies.py", "--steps", "1", "--warmup", "1", "--threads", "1"]
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    image = ["none", "random", "grid", "block", "resize", "cluster"]
    text = [f"random+text {t} 8" for t in ("truncate", "random", "block", "frequency")]
    assert list(rows) == image + text
    assert rows["random"]["vs_random"] == 1.0 and all(r["images_per_s"] > 0 for r in rows.values())
    flops = {name: r["flops_per_step"] for name, r in rows.items()}
    # the same 16 kept tokens cost the same, but resize embeds 16 patches, not 64; short captions cost less
    assert flops["grid"] == flops["block"] == flops["random"] < flops["none"]
    assert flops["resize"] < flops["random"] and all(flops[t] < flops["random"] for t in text)
    assert rows["resize"]["mask_ms"] > 0 and rows["none"]["mask_ms"] is None
