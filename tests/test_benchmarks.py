"""The throughput benchmark runs on CPU for a few steps (the GPU table is the same script with --device cuda)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

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
