"""The sweep driver's cost, and how a sweep's wall time changes with `parallel`.

    python benchmarks/bench_sweep.py                  # ~5 min on 2 cores
    python benchmarks/bench_sweep.py --trials 2 --samples 1000   # a smoke run

Runs the same small sweep (default tiny model on the embedded data, `--samples` per trial, random
sampler seed 0, so both cases train the same points) four ways, side by side in one run:
  slurm, parallel 1 / 2   every trial a job on the local Slurm cluster (launcher.cpus_per_task =
                          CPUs // parallel), skipped when no cluster answers
  local, parallel 1 / 2   every trial a local process (launcher.threads = CPUs // parallel)
and prints, per case: the sweep's wall time, the mean trial duration (ask -> tell), and the driver
overhead per trial: the time from a trial's end (its job tells the study) to the next trial's
process start (Slurm: sacct's job Start; local: the trial's ask time, the process starting at once),
over consecutive trials of the parallel-1 case. Ratios are against slurm / local parallel 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except OSError:
        return False


def sacct_start(job_id: str) -> datetime | None:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "Start", "-j", job_id], capture_output=True, text=True
    ).stdout
    line = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        return datetime.strptime(line, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def run_case(work: Path, shards: Path, executor: str, parallel: int, trials: int, samples: int) -> dict:
    from maskvlp.sweep import study as st
    from maskvlp.sweep.prepare import prepare

    cpus = len(os.sched_getaffinity(0))
    name = f"{executor}-p{parallel}"
    sweep = {
        "name": name,
        "base": {
            "data.out_dir": str(shards),
            "train.runs_dir": str(work / "runs"),
            "train.samples": samples,
            "train.warmup_samples": min(1000, samples // 4),
            "eval.linear_probe": False,
            "launcher.executor": executor,
            "launcher.partition": "debug" if executor == "slurm" else "",
            "launcher.cpus_per_task": max(1, cpus // parallel),
            "launcher.mem_gb": 4,
        },
        "space": {
            "masking.ratio": {"type": "float", "low": 0.25, "high": 0.75, "step": 0.05},
            "masking.threshold": {"type": "float", "low": 0.2, "high": 0.9},
        },
        "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "n_trials": trials,
        "parallel": parallel,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "maskvlp.cli", "sweep", str(path), "--params", str(ROOT / "params.yaml"), "--quiet"],
        check=True,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    sw = prepare(path, params=str(ROOT / "params.yaml"))
    done = sorted(st.load_study(sw.spec, sw.storage).trials, key=lambda t: t.number)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    gaps = []
    if parallel == 1:
        for prev, nxt in zip(done, done[1:]):
            start = nxt.datetime_start
            if executor == "slurm":
                start = sacct_start(nxt.user_attrs["job"].split(":", 1)[1]) or start
            gaps.append((start - prev.datetime_complete).total_seconds())
    return {
        "case": name,
        "wall_s": wall,
        "trial_s": sum(durations) / len(durations),
        "overhead_s": sum(gaps) / len(gaps) if gaps else None,
        "states": sorted({t.state.name for t in done}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials per case (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4000, help="training samples per trial (default: %(default)s)")
    args = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        shards = work / "shards"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "maskvlp.cli",
                "shard",
                "--params",
                str(ROOT / "params.yaml"),
                "--quiet",
                "--set",
                f"data.out_dir={shards}",
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        executors = (["slurm"] if slurm_up() else []) + ["local"]
        rows = [run_case(work, shards, ex, p, args.trials, args.samples) for ex in executors for p in (1, 2)]
    print(f"{len(os.sched_getaffinity(0))} CPUs, {args.trials} trials of {args.samples} samples per case")
    print(f"{'case':10s} {'wall s':>8s} {'vs p1':>6s} {'trial s':>8s} {'overhead/trial s':>17s}  states")
    base = {}
    for r in rows:
        ex = r["case"].split("-")[0]
        base.setdefault(ex, r["wall_s"])
        overhead = f"{r['overhead_s']:.2f}" if r["overhead_s"] is not None else "-"
        print(
            f"{r['case']:10s} {r['wall_s']:8.1f} {r['wall_s'] / base[ex]:6.2f} {r['trial_s']:8.1f} "
            f"{overhead:>17s}  {','.join(r['states'])}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
