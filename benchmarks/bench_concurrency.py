"""Two trainings at once on one machine: serial vs concurrent, before and after the CPU share.

    python benchmarks/bench_concurrency.py            # ~5 min on 2 cores (the "before" pair is slow)
    python benchmarks/bench_concurrency.py --samples 1000   # a smoke run

Each case runs `maskvlp pretrain` (tiny model, embedded data, `--samples` samples, cluster masking)
as separate processes, exactly as a user or a sweep would, and reads each run's own training wall
time (`wall_s` of its metrics file: the training loop, without Python start-up) plus the wall time
of the whole case:
- alone:           one run, the process's share = every CPU of the machine;
- serial:          two runs one after the other;
- before, 2 at once: two runs side by side, each with `launcher.threads=<all CPUs>`: what every
                   process did before the CPU share (torch's default is one thread per core);
- after, 2 at once (affinity): side by side, each started under `taskset` on its own half of the
                   CPUs: the share is derived from the affinity mask (as a local sweep runner does);
- after, 2 at once (Slurm): two Slurm jobs with `launcher.cpus_per_task=<half>` on the local cluster
                   (skipped when no cluster answers): the share comes from SLURM_CPUS_PER_TASK.
Ratios are printed against the run alone and against the serial pair.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def maskvlp(*args: str) -> list[str]:
    return [sys.executable, "-m", "maskvlp.cli", *args]


def run_args(work: Path, name: str, samples: int, *extra: str) -> list[str]:
    sets = [
        f"data.out_dir={work / 'shards'}",
        f"train.runs_dir={work / 'runs'}",
        f"train.run_name={name}",
        f"train.samples={samples}",
        f"train.warmup_samples={samples // 10}",
        f"train.checkpoint_every_samples={samples}",
        *extra,
    ]
    return [
        "pretrain",
        "--quiet",
        "--params",
        str(ROOT / "params.yaml"),
        "--metrics",
        str(work / f"{name}.json"),
        *[a for kv in sets for a in ("--set", kv)],
    ]


def run_case(work: Path, runs: list[tuple[str, list[str], list[str]]]) -> tuple[float, list[dict]]:
    """Start every (name, prefix, args) at once; wait; return (case wall time, each run's result)."""
    start = time.perf_counter()
    procs = []
    for name, prefix, args in runs:
        shutil.rmtree(work / "runs" / name, ignore_errors=True)
        procs.append((name, subprocess.Popen(prefix + maskvlp(*args), cwd=work, stdout=subprocess.PIPE, text=True)))
    for name, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"run {name} failed ({proc.returncode}):\n{out}")
    wall = time.perf_counter() - start
    return wall, [json.loads((work / f"{name}.json").read_text()) for name, _, _ in runs]


def slurm_up() -> bool:
    return bool(shutil.which("sinfo")) and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000, help="samples per run (default: %(default)s)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    half = len(cpus) // 2
    if half < 1:
        raise SystemExit("needs at least 2 CPUs")
    work = Path(tempfile.mkdtemp(prefix="bench-conc-", dir=str(ROOT)))  # under the repo: Slurm jobs see it
    try:
        env_check = subprocess.run(
            maskvlp(
                "shard", "--quiet", "--params", str(ROOT / "params.yaml"), "--set", f"data.out_dir={work / 'shards'}"
            ),
            cwd=work,
            capture_output=True,
            text=True,
        )
        if env_check.returncode:
            raise SystemExit(env_check.stderr)
        n = args.samples
        rows: list[tuple[str, float, list[dict]]] = []

        wall, res = run_case(work, [("alone", [], run_args(work, "alone", n))])
        rows.append(("alone", wall, res))
        t0 = time.perf_counter()
        res_a = run_case(work, [("serial-a", [], run_args(work, "serial-a", n))])[1]
        res_b = run_case(work, [("serial-b", [], run_args(work, "serial-b", n))])[1]
        rows.append(("serial (2 runs)", time.perf_counter() - t0, res_a + res_b))
        every = f"launcher.threads={len(cpus)}"
        rows.append(
            (
                "before: 2 at once, all-core threads each",
                *run_case(
                    work,
                    [(f"before-{i}", [], run_args(work, f"before-{i}", n, every)) for i in range(2)],
                ),
            )
        )
        halves = [cpus[:half], cpus[half : 2 * half]]
        rows.append(
            (
                "after: 2 at once, affinity halves",
                *run_case(
                    work,
                    [
                        (
                            f"affinity-{i}",
                            ["taskset", "-c", ",".join(map(str, halves[i]))],
                            run_args(work, f"affinity-{i}", n),
                        )
                        for i in range(2)
                    ],
                ),
            )
        )
        if slurm_up():
            slurm = ["launcher.executor=slurm", "launcher.partition=debug", f"launcher.cpus_per_task={half}"]
            slurm.append("launcher.mem_gb=2")
            rows.append(
                (
                    f"after: 2 Slurm jobs, cpus_per_task={half}",
                    *run_case(work, [(f"slurm-{i}", [], run_args(work, f"slurm-{i}", n, *slurm)) for i in range(2)]),
                )
            )
        else:
            print("no Slurm cluster answers: the Slurm case is skipped (scripts/slurm-local.sh start)")

        alone = rows[0][2][0]["wall_s"]
        serial_wall = rows[1][1]
        print(f"\n{len(cpus)} CPUs, {n} samples per run (tiny model, cluster masking, embedded data)\n")
        print(
            "| case | threads per run | training s per run | per run vs alone | case wall s | serial wall / case wall |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, wall, results in rows:
            per_run = [r["wall_s"] for r in results]
            mean = sum(per_run) / len(per_run)
            threads = "/".join(str(r["threads"]) for r in results)
            vs_serial = f"{serial_wall / wall:.2f}" if "at once" in name or "Slurm" in name else "-"
            print(
                f"| {name} | {threads} | {' / '.join(f'{t:.1f}' for t in per_run)} | "
                f"{mean / alone:.2f}x | {wall:.1f} | {vs_serial} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
