"""A short none / random / cluster comparison on the embedded data, one seed each.

    python benchmarks/compare_masking.py --out /tmp/cmp            # ~10 min on 2 cores
    python benchmarks/compare_masking.py --out /tmp/cmp --repo ../old-checkout   # the code of another checkout

Shards the default synthetic source into OUT/shards, then for each strategy runs `maskvlp pretrain`
and `maskvlp evaluate` with params.yaml's settings (only masking.strategy differs; ratio 0.5) in
OUT/runs/<strategy>, and prints a Markdown table of the evaluation metrics and the training cost.
`--repo` runs the commands with another checkout's code and params.yaml (its src/ first on
PYTHONPATH), so one script measures the code before and after a change the same way. Extra
`--set key=value` overrides apply to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STRATEGIES = ("none", "random", "cluster")
METRICS = (
    "zeroshot/objects/top1",
    "zeroshot/val/top1",
    "retrieval/val/i2t_r1",
    "retrieval/val/t2i_r1",
    "linear_probe/val/top1",
    "linear_probe/objects/top1",
    "composition/val/attribute",
    "composition/val/relation",
)


def run(repo: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "maskvlp.cli", *args], cwd=repo, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for shards, runs and metrics")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    args = parser.parse_args()
    out, repo = args.out.resolve(), args.repo.resolve()
    base = [f"--set=data.out_dir={out}/shards", f"--set=train.runs_dir={out}/runs"]
    base += [f"--set={o}" for o in args.overrides]
    if not (out / "shards" / "manifest.json").exists():
        run(repo, "shard", "--quiet", *base)
    rows = {}
    for strategy in args.strategies:
        sets = [*base, f"--set=masking.strategy={strategy}", f"--set=train.run_name={strategy}"]
        sets.append(f"--set=eval.metrics_file={out}/metrics-{strategy}.json")
        result_file = out / "runs" / strategy / "result.json"
        if not (result_file.exists() and "eval" in json.loads(result_file.read_text())):
            run(repo, "pretrain", "--quiet", *sets)
            run(repo, "evaluate", "--quiet", *sets)
        rows[strategy] = json.loads(result_file.read_text())
    print(f"| metric | {' | '.join(rows)} |")
    print(f"|---|{'---:|' * len(rows)}")
    for key in METRICS:
        if any(key in r["eval"] for r in rows.values()):
            print(f"| {key} | " + " | ".join(f"{r['eval'].get(key, float('nan')):.3f}" for r in rows.values()) + " |")
    print("| train loss | " + " | ".join(f"{r['train_loss']:.3f}" for r in rows.values()) + " |")
    print("| train TFLOPs | " + " | ".join(f"{r['train_flops'] / 1e12:.2f}" for r in rows.values()) + " |")
    print("| train wall s | " + " | ".join(f"{r['wall_s']:.0f}" for r in rows.values()) + " |")
    print("| images/s | " + " | ".join(f"{r['images_per_s']:.0f}" for r in rows.values()) + " |")
    cov = [r["masking"].get("mean_cluster_coverage", 0) for r in rows.values()]
    print("| cluster coverage | " + " | ".join(f"{c:.2f}" for c in cov) + " |")
    for key in ("coverage_objects", "coverage_background", "removed_objects", "removed_background"):
        if any(key in r["masking"] for r in rows.values()):
            vals = [r["masking"].get(key, float("nan")) for r in rows.values()]
            print(f"| {key.replace('_', ' on ')} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
