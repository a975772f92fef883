"""How the sweep driver's pass, `maskvlp sweep-status` and `maskvlp sweep-report` grow with the trials a study holds.

    python benchmarks/bench_sweep_scale.py                       # 10, 100, 1,000 trials; journal and RDB; ~8 min
    python benchmarks/bench_sweep_scale.py --quick               # 10 and 100 trials, fewer passes: a smoke run
    python benchmarks/bench_sweep_scale.py --sizes 1000 --storages journal --out scale.json

For every storage (the journal file a study uses by default; the MariaDB RDB at --rdb-url, skipped when it
does not answer) and every size N, a study of the masking sweep's spec (sweeps/masking.yaml: 3 params, TPE,
median pruner) is filled through Optuna the way jobs fill it, with instant bodies: per logical trial an ask,
its params suggested, user attrs run_dir / overrides / job / launched set as the driver sets them, up to 5
intermediate values reported (as the pruning hook does, every 3,000 samples), then COMPLETE with a value or
PRUNED (every third trial, after 2 to 4 reports); every 20th trial first FAILs by a crash and its retry (same
run_dir, `retry_of`) completes. N finished logical trials, plus `parallel` (2) trials left RUNNING whose jobs
are this process (alive), as in a sweep's steady state. Then, timed separately:

  open          create_or_resume, as `maskvlp sweep` opens a study (this process, imports done)
  pass          the driver's loop body: Driver.poll(), ensure_retries(), counts() and the progress bar's
                best value (_best); "first" is the first pass on the freshly opened study, "warm" the median
                of --passes passes in the same process, another storage object (a trial's job) reporting an
                intermediate value between passes, so each pass has a change to read
  launch        what a freed slot adds to a pass: study.ask() + suggest() with the spec's sampler (TPE)
  fresh         a new process doing what `maskvlp sweep` does before its first launch: import, open, one
                pass (wall time of the subprocess, and its parts as the child measured them)
  job report    in that fresh process, a trial job's side: load_study + trial_handle, then report() +
                should_prune() of the median pruner (what every evaluation during training costs)
  status        `maskvlp sweep-status NAME --runs-dir DIR` as a subprocess (wall), and status() in-process
  report        `maskvlp sweep-report NAME` as a subprocess (wall), and report() in-process, with the time
                of its plots (drawing + saving each PNG) split out

Prints a table (N x storage x what -> seconds) and writes every number as JSON to --out.
Keep it to one thread on a shared machine: OMP_NUM_THREADS=1 is set for this process and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
RDB_URL = os.environ.get(
    "MASKVLP_TEST_RDB", "mysql+pymysql://optuna:optuna@localhost/optuna?unix_socket=/run/mysqld/mysqld.sock"
)
PARALLEL = 2
BENCH_SPEC = "bench-spec.json"  # the spec for --child, its keys in order
STEPS = (3000, 6000, 9000, 12000, 15000)


def spec_raw(name: str, n: int, runs: Path) -> dict[str, Any]:
    """sweeps/masking.yaml with another name, n_trials and runs folder."""
    return {
        "name": name,
        "base": {
            "masking.strategy": "cluster",
            "train.samples": 15000,
            "train.eval_every_samples": 3000,
            "eval.linear_probe": False,
            "train.runs_dir": str(runs),
        },
        "space": {
            "masking.ratio": {"type": "float", "low": 0.25, "high": 0.75, "step": 0.05},
            "masking.anchor_ratio": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
            "masking.threshold": {"type": "float", "low": 0.2, "high": 0.9},
        },
        "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 6, "n_warmup_steps": 6000},
        "n_trials": n + 100,  # the study is never "done": the driver would keep launching
        "parallel": PARALLEL,
        "retries": 1,
    }


def make_sweep(raw: dict[str, Any], storage: str | None):
    """The driver's Sweep, without the shards check of driver.prepare (no trial is really started)."""
    from maskvlp.params import load_config
    from maskvlp.sweep.prepare import Sweep
    from maskvlp.sweep.spec import parse
    from maskvlp.sweep.study import storage_url

    spec = parse(raw, "bench")
    cfg = load_config(None, spec.overrides({}))
    study_dir = Path(cfg.train.runs_dir) / spec.name
    url = storage_url(study_dir, storage)
    return Sweep(spec, None, cfg, study_dir, url, "local", [frozenset({0})] * PARALLEL)


def own_job() -> str:
    """A job reference the driver finds alive: this process."""
    from maskvlp.sweep.liveness import proc_start

    return f"local:{socket.gethostname()}:{os.getpid()}:{proc_start(os.getpid())}"


def fill(sw, n: int) -> tuple[float, list[int]]:
    """N finished logical trials and PARALLEL running ones; returns (seconds, running trial numbers)."""
    import optuna
    from optuna.trial import TrialState

    from maskvlp.runs import write_json_atomic
    from maskvlp.sweep.study import create_or_resume, open_storage, suggest

    spec = sw.spec
    create_or_resume(spec, sw.storage, PARALLEL, force_new=False)
    sw.study_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sw.paths.info, sw.info)
    (sw.study_dir / BENCH_SPEC).write_text(json.dumps({"spec": sw.spec.raw, "storage": sw.storage}))
    # random sampler for filling: the stored trials do not depend on it, and TPE at 1,000 trials is slow
    study = optuna.load_study(
        study_name=spec.name,
        storage=open_storage(sw.storage, PARALLEL),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    job = own_job()
    started = time.perf_counter()

    def attempt(i: int, retry_of: int | None = None) -> optuna.Trial:
        trial = study.ask()
        values = suggest(trial, spec)
        run_dir = trial.user_attrs.get("run_dir") or str(sw.study_dir / f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", run_dir)
        trial.set_user_attr("overrides", spec.overrides(values))
        trial.set_user_attr("job", job)
        trial.set_user_attr("launched", time.strftime("%Y-%m-%dT%H:%M:%S"))
        return trial

    def curve(i: int, k: int) -> float:
        return 0.2 + 0.5 * ((i * 7919) % 1000) / 1000 * (k + 1) / len(STEPS)

    for i in range(n):
        trial = attempt(i)
        if i % 20 == 19:  # a crash: FAIL, then its retry resumes in the same folder and completes
            trial.report(curve(i, 0), STEPS[0])
            trial.set_user_attr("failure", "process exited with code 1")
            trial.set_user_attr("counts_as_failure", True)
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(
                dict(trial.params),
                user_attrs={"run_dir": trial.user_attrs["run_dir"], "retry_of": trial.number, "attempt": 2},
            )
            trial = attempt(i)
        pruned_after = 2 + i % 3 if i % 3 == 1 else None
        for k, step in enumerate(STEPS[:pruned_after]):
            trial.report(curve(i, k), step)
        if pruned_after:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, curve(i, len(STEPS) - 1))
    running = []
    for i in range(PARALLEL):
        trial = attempt(n + i)
        trial.report(curve(n + i, 0), STEPS[0])
        running.append(trial.number)
    return time.perf_counter() - started, running


def one_pass(driver) -> None:
    """The body of Driver.run's loop, less launching and sleeping."""
    driver.poll()
    driver.ensure_retries()
    driver.counts()
    driver._best()


def open_driver(sw, running: list[int]):
    from maskvlp.sweep.driver import Driver
    from maskvlp.sweep.liveness import Handle
    from maskvlp.sweep.study import create_or_resume

    t0 = time.perf_counter()
    study = create_or_resume(sw.spec, sw.storage, PARALLEL, force_new=False)
    opened = time.perf_counter() - t0
    driver = Driver(sw, study, progress=False)
    for number in running:
        driver.active[number] = Handle(number, sw.study_dir / f"trial-{number:04d}", own_job(), slot=None)
    return driver, opened


def job_report(sw, number: int, step: int) -> dict[str, float]:
    """A trial job's side: open the study, a live handle on its trial, report + should_prune."""
    from maskvlp.sweep.study import load_study, trial_handle

    t0 = time.perf_counter()
    trial = trial_handle(load_study(sw.spec, sw.storage, PARALLEL), number)
    t1 = time.perf_counter()
    trial.report(0.5, step)
    trial.should_prune()
    t2 = time.perf_counter()
    trial.report(0.5, step + 1)
    trial.should_prune()
    t3 = time.perf_counter()
    return {"job_open_s": t1 - t0, "job_report_first_s": t2 - t1, "job_report_s": t3 - t2}


def child(args: argparse.Namespace) -> int:
    """--child: a fresh process, as `maskvlp sweep` starts: import, open, one pass; then a job's report."""
    t0 = time.perf_counter()
    import maskvlp.sweep.driver  # noqa: F401

    t1 = time.perf_counter()
    raw = json.loads((Path(args.child) / BENCH_SPEC).read_text())  # sweep.json sorts keys: the space's order
    sw = make_sweep(raw["spec"], raw["storage"])  # would change, and with it the fingerprint
    running = json.loads(args.running)
    driver, opened = open_driver(sw, running)
    t2 = time.perf_counter()
    one_pass(driver)
    t3 = time.perf_counter()
    out = {"import_s": t1 - t0, "open_s": opened, "first_pass_s": t3 - t2}
    out.update(job_report(sw, running[0], 100_000 + len(running)))
    print(json.dumps(out))
    return 0


def timed_run(cmd: list[str], repeat: int = 1) -> tuple[float, float, str]:
    """(median wall s, median CPU s of the child, its last stdout) over `repeat` runs. On a shared machine
    the CPU time is the steadier number; the wall time is what a user waits."""
    walls, cpus, stdout = [], [], ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        stdout = proc.stdout
    return statistics.median(walls), statistics.median(cpus), stdout


def report_in_process(name: str, runs: Path, out: Path) -> dict[str, Any]:
    """report() with its plots timed one by one (drawing, then saving the PNG)."""
    import optuna.visualization.matplotlib as vis

    import maskvlp.sweep.report as rep

    times: dict[str, float] = {}
    originals = {k: getattr(vis, k) for k in dir(vis) if k.startswith("plot_")}
    original_save = rep._save

    def wrap(key, fn):
        def inner(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                times[key] = times.get(key, 0.0) + time.perf_counter() - t0

        return inner

    def save(fig, path):
        t0 = time.perf_counter()
        try:
            return original_save(fig, path)
        finally:
            times[f"save {path.name}"] = time.perf_counter() - t0

    for k, fn in originals.items():
        setattr(vis, k, wrap(k.removeprefix("plot_"), fn))
    rep._save = save
    try:
        t0 = time.perf_counter()
        rep.report(name, out, str(runs))
        total = time.perf_counter() - t0
    finally:
        for k, fn in originals.items():
            setattr(vis, k, fn)
        rep._save = original_save
    plots = sum(times.values())
    return {"report_inproc_s": total, "report_plots_s": plots, "report_plot_parts_s": times}


def measure(storage_kind: str, n: int, passes: int, repeat: int, work: Path, report_too: bool) -> dict[str, Any]:
    import optuna

    from maskvlp.sweep.study import load_study, suggest, trial_handle

    name = f"scale-{storage_kind}-{n}-{uuid.uuid4().hex[:8]}"
    runs = work / "runs"
    raw = spec_raw(name, n, runs)
    sw = make_sweep(raw, RDB_URL if storage_kind == "rdb" else None)
    row: dict[str, Any] = {"storage": storage_kind, "n": n, "study": name}
    try:
        fill_s, running = fill(sw, n)
        row["fill_s"] = fill_s
        row["fill_per_trial_ms"] = 1000 * fill_s / n
        n_attempts = len(optuna.load_study(study_name=name, storage=_storage(sw)).get_trials(deepcopy=False))
        row["optuna_trials"] = n_attempts
        if storage_kind == "journal":
            row["journal_mb"] = Path(sw.storage).stat().st_size / 1e6

        # the driver in this process (imports done)
        driver, row["open_s"] = open_driver(sw, running)
        t0 = time.perf_counter()
        one_pass(driver)
        row["first_pass_s"] = time.perf_counter() - t0
        writer = trial_handle(load_study(sw.spec, sw.storage, PARALLEL), running[-1])  # a trial's job
        laps, cpu = [], []
        for k in range(passes):
            writer.report(0.3, 20_000 + k)  # a change for the pass to read
            t0, c0 = time.perf_counter(), time.process_time()
            one_pass(driver)
            laps.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        row["warm_pass_s"] = statistics.median(laps)
        row["warm_pass_max_s"] = max(laps)
        row["warm_pass_cpu_s"] = statistics.median(cpu)  # this process only (not the database server)
        # a freed slot: the sampler's ask + suggest (TPE over the study), as Driver.launch before the job starts
        asks = []
        for _ in range(3):
            t0 = time.perf_counter()
            trial = driver.study.ask()
            suggest(trial, sw.spec)
            asks.append(time.perf_counter() - t0)
            driver.study.tell(trial, state=optuna.trial.TrialState.FAIL)  # no run_dir: not a logical trial
        row["launch_ask_s"] = statistics.median(asks)

        # a fresh process: import, open, first pass; then a job's open + report + should_prune
        row["fresh_wall_s"], row["fresh_cpu_s"], out = timed_run(
            [sys.executable, __file__, "--child", str(sw.study_dir), "--running", json.dumps(running)], repeat
        )
        row.update({f"fresh_{k}": v for k, v in json.loads(out.strip().splitlines()[-1]).items()})

        # sweep-status
        from maskvlp.sweep.report import status

        t0 = time.perf_counter()
        status(name, str(runs))
        row["status_inproc_s"] = time.perf_counter() - t0
        cli = [sys.executable, "-m", "maskvlp.cli"]
        row["status_wall_s"], row["status_cpu_s"], _ = timed_run(
            [*cli, "sweep-status", name, "--runs-dir", str(runs)], repeat
        )

        if report_too:
            row.update(report_in_process(name, runs, work / "reports" / f"{name}-inproc"))
            row["report_wall_s"], row["report_cpu_s"], _ = timed_run(
                [*cli, "sweep-report", name, "--runs-dir", str(runs), "--out", str(work / "reports" / name)]
            )
    finally:
        if storage_kind == "rdb":
            optuna.delete_study(study_name=name, storage=RDB_URL)
    return row


def _storage(sw):
    from maskvlp.sweep.study import open_storage

    return open_storage(sw.storage, PARALLEL)


def rdb_up() -> bool:
    import optuna

    try:
        optuna.get_all_study_summaries(optuna.storages.RDBStorage(RDB_URL))
        return True
    except Exception:
        return False


COLUMNS = [
    ("fill_per_trial_ms", "fill ms/trial"),
    ("open_s", "open"),
    ("first_pass_s", "1st pass"),
    ("warm_pass_s", "warm pass"),
    ("launch_ask_s", "ask (TPE)"),
    ("fresh_wall_s", "fresh proc"),
    ("fresh_first_pass_s", "  its pass"),
    ("fresh_job_open_s", "job open"),
    ("fresh_job_report_s", "job report"),
    ("status_inproc_s", "status()"),
    ("status_wall_s", "sweep-status"),
    ("report_inproc_s", "report()"),
    ("report_plots_s", "  of it plots"),
    ("report_wall_s", "sweep-report"),
]


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'storage':8s} {'N':>5s} " + " ".join(f"{label:>13s}" for _, label in COLUMNS)
    lines = [head]
    for r in rows:
        cells = [f"{r[k]:13.3f}" if isinstance(r.get(k), float) else f"{'-':>13s}" for k, _ in COLUMNS]
        lines.append(f"{r['storage']:8s} {r['n']:5d} " + " ".join(cells))
    return "\n".join(lines)


def main() -> int:
    global RDB_URL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="numbers of trials (default: %(default)s)")
    parser.add_argument("--storages", default="journal,rdb", help="journal, rdb or both (default: %(default)s)")
    parser.add_argument("--passes", type=int, default=10, help="warm passes timed (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each subprocess, median (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="sizes 10,100, 3 passes, 1 run each: a smoke run")
    parser.add_argument("--no-report", action="store_true", help="skip sweep-report (its plots are the slow part)")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the rows as JSON here")
    parser.add_argument(
        "--rdb-url", default=RDB_URL, help="the RDB storage (default: $MASKVLP_TEST_RDB or %(default)s)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--running", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    RDB_URL = args.rdb_url
    sizes = [10, 100] if args.quick else [int(s) for s in args.sizes.split(",")]
    passes = 3 if args.quick else args.passes
    args.repeat = 1 if args.quick else args.repeat
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    import optuna

    if "rdb" in storages and not rdb_up():
        print(f"RDB at {RDB_URL} does not answer: skipped", file=sys.stderr)
        storages.remove("rdb")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-scale-") as tmp:
        for storage in storages:
            for n in sizes:
                row = measure(storage, n, passes, args.repeat, Path(tmp), not args.no_report)
                rows.append(row)
                print(f"done: {storage} N={n}", file=sys.stderr, flush=True)
    print(f"optuna {optuna.__version__}; {len(os.sched_getaffinity(0))} CPUs; seconds unless noted")
    print(table(rows))
    if args.out:
        record = {"optuna": optuna.__version__, "cpus": len(os.sched_getaffinity(0)), "rows": rows}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
