"""The `maskvlp` command: the argument parser and one handler per subcommand. A handler gets the
validated params (the sweep commands load their own), imports what it runs lazily and prints the outcome.
Over 450 lines on purpose: most of it is the --help text of eleven commands, kept beside their flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from maskvlp.config import Config, ConfigError, to_dict, to_yaml
from maskvlp.params import load_config

EPILOG = """\
Every stage reads params.yaml (sections: seed, data, model, masking, train, eval, launcher) and
takes repeatable overrides, validated before any work starts:
  maskvlp shard --set data.source=emoji --set data.image_size=96
  maskvlp shard --set data.preset=real       (Debian's clip art and emoji: README "Real data")
Run the whole pipeline with `dvc repro`; see README.md."""


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's default formatter, which wraps descriptions and epilogs to the terminal width, but
    keeping their line breaks: each line is wrapped on its own, at its own indentation, so example
    commands stay one per line and a long paragraph does not print as one unwrapped line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        lines = []
        for line in text.splitlines():
            lead = indent + line[: len(line) - len(line.lstrip())]
            lines.append(textwrap.fill(line.strip(), width, initial_indent=lead, subsequent_indent=lead) or "")
        return "\n".join(lines)


def version() -> str:
    """The installed distribution's version (importlib.metadata); the package's own when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("maskvlp")
    except PackageNotFoundError:  # the source tree on PYTHONPATH
        from maskvlp import __version__

        return __version__


def _common(parser: argparse.ArgumentParser, *flags: str) -> None:
    """--params and --set, and the named flags of those a command takes: quiet, no-wait."""
    if "no-wait" in flags:
        parser.add_argument("--no-wait", action="store_true", help="with a Slurm executor: submit and return at once")
    if "quiet" in flags:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="parameters file (default: %(default)s)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. --set masking.ratio=0.75 (repeatable)",
    )


def cmd_shard(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.data.shards import shard, summary

    manifest = shard(cfg, progress=not args.quiet)
    print(summary(manifest))
    print(f"wrote {cfg.data.out_dir}/manifest.json")
    return 0


def _report_training(cfg: Config, result: dict, metrics_file: str) -> int:
    import json

    from maskvlp.runs import run_paths, write_text_atomic

    paths = run_paths(cfg)
    if result["rank"] != 0:  # one report per job, from rank 0
        return 3 if result["status"] == "stopped" else 0
    if metrics_file and result["status"] == "complete":
        write_text_atomic(metrics_file, json.dumps(result, indent=2) + "\n")
    if result["status"] == "stopped":
        print(
            f"stopped at step {result['steps']}/{result['total_steps']}; checkpoint saved in {paths.checkpoints}. "
            f"Continue with: maskvlp pretrain --resume (same params)"
        )
        return 3
    print(
        f"finished {result['steps']} steps ({result['samples_seen']} samples) in {result['wall_s']} s; "
        f"final loss {result.get('train_loss') or float('nan'):.3f} (chance {result['chance_loss']:.3f})"
    )
    print(f"wrote {paths.model} and {paths.result}; TensorBoard: tensorboard --logdir {cfg.train.runs_dir}")
    return 0


def _submit_and_maybe_wait(cfg: Config, args: argparse.Namespace, job, kind: str, run_dir=None):
    """Submit to Slurm (or submitit's debug executor); print the job id and logs; wait unless --no-wait.
    Returns the job's result, or None when not waiting."""
    from maskvlp.launch import submit, wait
    from maskvlp.runs import run_paths

    submitted = submit(cfg, job, run_dir or run_paths(cfg).root, kind)
    print(f"submitted {kind} job {submitted.job.job_id} ({cfg.launcher.executor}); logs in {submitted.log_folder}")
    if args.no_wait or not cfg.launcher.wait:
        print(f"not waiting: follow it with `maskvlp jobs --set train.run_name={cfg.train.run_name}`")
        return None
    return wait(submitted)


def cmd_pretrain(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.session import preflight
    from maskvlp.train import pretrain

    if cfg.launcher.executor == "local":
        result = pretrain(cfg, resume=args.resume, progress=not args.quiet)
        return _report_training(cfg, result, args.metrics)
    from maskvlp.train import TrainJob

    preflight(cfg, args.resume, cfg.launcher.nodes * cfg.launcher.tasks_per_node)  # before anything is submitted
    result = _submit_and_maybe_wait(cfg, args, TrainJob(to_dict(cfg), resume=args.resume), "pretrain")
    return 0 if result is None else _report_training(cfg, result, args.metrics)


def cmd_jobs(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.launch import list_jobs
    from maskvlp.runs import run_paths

    paths = run_paths(cfg)
    jobs = list_jobs(paths.root)
    if not jobs:
        print(f"no Slurm jobs recorded for run {paths.root}")
        return 0
    print(f"{'job':>10s}  {'kind':9s} {'state':14s} submitted")
    for j in jobs:
        print(f"{j['job_id']:>10s}  {j['kind']:9s} {j['state']:14s} {j['submitted']}")
    last = [j for j in jobs if j["kind"] == "pretrain"][-1:]
    unfinished = last and last[0]["state"] not in ("COMPLETED", "RUNNING", "PENDING", "REQUEUED")
    if unfinished and not paths.model.exists():
        print(
            f"run {cfg.train.run_name} did not finish (last training job {last[0]['state']}); resume it with:\n"
            f"  maskvlp pretrain --resume --set launcher.executor=slurm --set train.run_name={cfg.train.run_name}"
        )
    return 0


def _print_metrics(metrics: dict[str, float]) -> None:
    width = max(map(len, metrics), default=10)
    for key, value in sorted(metrics.items()):
        print(f"{key:{width}s} {value:.4f}")


def cmd_evaluate(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.evaluate import EvalJob, evaluate_and_write, evaluate_datasets, evaluate_runs, load_run, run_folders
    from maskvlp.runs import RunPaths, run_paths

    default = [str(run_paths(cfg).root)]
    folders, several = run_folders(args.run or default, args.dataset, cfg.eval.datasets)
    if several:  # a line per run as it ends, then the summary
        out = evaluate_runs(cfg, folders, args.dataset, not args.quiet, args.cache_mb, lambda x: print(x, flush=True))
        print(out.summary())
        return 1 if out.failed or not out.evaluated else 0
    run_dir = folders[0]
    if args.dataset:
        results = evaluate_datasets(cfg, run_dir, args.dataset, progress=not args.quiet)
        for name, r in results.items():
            _print_metrics(r.metrics)
            if r.skipped:
                print(
                    f"{name}: skipped {sum(r.skipped.values())}: " + ", ".join(f"{k}={n}" for k, n in r.skipped.items())
                )
            for note in r.notes:
                print(f"note: {note}")
            print(f"wrote {RunPaths(run_dir).extra_eval_dir(name) / 'metrics.json'}")
        return 0
    if cfg.launcher.executor != "local":
        load_run(run_dir)  # fail before submitting when the run is not there
        metrics = _submit_and_maybe_wait(cfg, args, EvalJob(to_dict(cfg), str(run_dir)), "evaluate", run_dir)
        if metrics is not None:
            print(f"wrote {cfg.eval.metrics_file} and {run_dir}/eval/")
        return 0
    _print_metrics(evaluate_and_write(cfg, run_dir, progress=not args.quiet))
    print(f"wrote {cfg.eval.metrics_file} and {run_dir}/eval/ (TensorBoard HParams session)")
    return 0


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.report import bar_chart, collect, table

    rows = collect(args.runs)
    if not rows:
        print(
            "maskvlp report: none of these folders holds an evaluated run (eval metrics in result.json): "
            "run `maskvlp evaluate` first",
            file=sys.stderr,
        )
        return 1
    print(table(rows))
    print(f"wrote {bar_chart(rows, args.out)}")
    return 0


def cmd_masks(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.maskpicture import mask_picture

    written, skipped, calibrated = mask_picture(cfg, args.out, args.count, args.images)
    if skipped:
        print(
            f"skipped {sum(skipped.values())} unusable image(s): " + ", ".join(f"{k}={n}" for k, n in skipped.items())
        )
    if calibrated:
        print(calibrated)
    print(f"wrote {written}")
    return 0


def _sweep_command(name: str) -> Callable[[argparse.Namespace], int]:
    """A sweep command: its body is maskvlp.sweep.commands.<name>, imported only when it runs."""

    def command(args: argparse.Namespace) -> int:
        from maskvlp.sweep import commands

        return commands.run(getattr(commands, name), args)

    return command


def cmd_config(cfg: Config, args: argparse.Namespace) -> int:
    print(to_yaml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskvlp",
        description="Masked CLIP pre-training workflow: shard data, pre-train with FLIP or cluster masking, evaluate.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"maskvlp {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "shard",
        help="write image-caption pairs into webdataset shards (DVC stage `shard`)",
        description="Read the source named by data.source (synthetic | emoji | openclipart | mix | folder | "
        "shards; null = from data.preset: synthetic, or real = Debian's clip art + emoji), skip and count "
        "unusable inputs, resize and re-encode images, split train/val by seed, and write "
        "data.out_dir/{train,val}-NNNNNN.tar plus manifest.json.",
    )
    _common(p, "quiet")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser(
        "pretrain",
        help="masked CLIP pre-training on the shards (DVC stage `pretrain`)",
        description="Train the CLIP model of model.* with the masking of masking.* for train.samples samples. "
        "Writes runs/<train.run_name>/ (resolved config, run.json with git commit and shard manifest hash, "
        "checkpoints, TensorBoard logs, model.safetensors). SIGTERM or SIGUSR1 saves a checkpoint and exits "
        "with code 3; --resume continues from the latest checkpoint with identical results. With "
        "launcher.executor=slurm the run is submitted through submitit (preemption-safe, requeued on SIGUSR2) and "
        "waited for unless --no-wait.",
    )
    _common(p, "no-wait", "quiet")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--metrics", default="", metavar="JSON", help="also write the final training metrics here")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "evaluate",
        help="zero-shot, retrieval, linear probe and composition on full images (DVC stage `evaluate`)",
        description="Evaluate a finished run (default runs/<train.run_name>) on eval.datasets: zero-shot "
        "classification (template ensemble; top-1, top-5, mean per-class recall), image<->text retrieval "
        "(R@1/5/10), a linear probe (C chosen on held-out train features) and composition (true caption vs "
        "swapped attribute / relation / replaced object). Writes eval.metrics_file, per-class and retrieval "
        "plot data beside it, and an HParams session in <run>/eval for TensorBoard. --dataset with several runs "
        "(a sweep's trials): each set read once for all, a line per run, a summary (docs/own-data.md).",
    )
    _common(p, "no-wait", "quiet")
    text = "run folder (default: runs/<train.run_name>), several, or a quoted glob: 'runs/STUDY/trial-*'"
    p.add_argument("--run", nargs="+", action="extend", default=[], metavar="DIR", help=text)
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="SPEC",
        help="evaluate on another set instead (repeatable): val, objects, a captions table "
        "(.csv/.tsv/.jsonl/.parquet with data.folder.* columns) or shards (folder, brace pattern or glob); "
        "results in <run>/eval-extra/<set>/metrics.json and the run's result.json (the stage's files stay untouched)",
    )
    text = "several runs: decoded batches kept in memory, so that each set is read once (default: evaluate.CACHE_MB)"
    p.add_argument("--cache-mb", type=float, default=None, metavar="MB", help=text)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "jobs",
        help="list a run's Slurm jobs and their states; say how to resume a run whose job died",
        description="Read runs/<train.run_name>/jobs.jsonl and ask Slurm accounting (sacct) for each job's state.",
    )
    _common(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "report",
        help="compare evaluated runs: a table and a PNG bar chart",
        description="Print the key metrics of each evaluated run (folders of runs are searched) with its masking "
        "params and a chance row, and draw a bar chart with chance levels.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. runs/*")
    p.add_argument("--out", default="reports/report.png", metavar="PNG", help="bar chart (default: %(default)s)")
    p.set_defaults(func=cmd_report, params=None, overrides=[])

    p = sub.add_parser(
        "masks",
        help="draw masks for some images: clusters and kept patches per strategy (PNG)",
        description="Draw a grid like the cluster-masking paper's Figure 3: each image, its clusters (anchors "
        "outlined, clusters in colours) and the patches kept by random (FLIP), cluster and official cluster "
        "masking, with the masking.* and model.* parameters. Images are resized to model.image_size.",
    )
    _common(p)
    p.add_argument(
        "--images", default="", metavar="PATH", help="image folder, .tar shard, or shard folder (default: data.out_dir)"
    )
    p.add_argument("--out", default="masks.png", metavar="PNG", help="output picture (default: %(default)s)")
    p.add_argument("--count", type=int, default=6, metavar="N", help="images to draw (default: %(default)s)")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser(
        "sweep",
        help='run an Optuna sweep from a sweep file: one full pretrain + evaluate per trial (README "Sweeps")',
        description="Sample the search space of FILE (e.g. sweeps/masking.yaml) with its sampler and run each trial "
        "as its own run in runs/<study>/trial-NNNN/ (config.yaml holds its complete params), `parallel` at a time: "
        "local processes or, with launcher.executor=slurm, Slurm jobs. Stop it any time and run the same command "
        "again: it continues to n_trials finished trials, following jobs still running and retrying trials whose "
        "job died from their checkpoint. Everything is checked before anything is submitted.",
        epilog="example: maskvlp sweep sweeps/masking.yaml --set launcher.executor=slurm --parallel 2\n"
        "then: maskvlp sweep-status masking; maskvlp sweep-report masking",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="sweep file (name, base, space, objectives, sampler, pruner, ...)")
    _common(p, "quiet")
    p.add_argument("--n-trials", type=int, default=None, metavar="N", help="finished trials to reach (default: file's)")
    p.add_argument("--parallel", type=int, default=None, metavar="N", help="trials at a time (default: the file's)")
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage: an RDB URL such as mysql+pymysql://user:pw@host/db (big sweeps), or a journal file "
        "path (default: runs/<study>/study.journal)",
    )
    p.add_argument("--detach", action="store_true", help="submit the driver itself as a small Slurm job and return")
    p.add_argument("--force-new", action="store_true", help="set aside an existing study of this name, start anew")
    p.add_argument("--report", default="", metavar="DIR", help="when done, also write the sweep report here")
    p.set_defaults(func=_sweep_command("sweep"), raw=True)

    p = sub.add_parser(
        "sweep-status",
        help="a sweep's trials by state, best so far, running trials and time left",
        description="Read the study of runs/<NAME> from its storage (while it runs or after).",
    )
    p.add_argument("name", metavar="NAME", help="the study name (the sweep file's name:)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where the study folder is (default: %(default)s)")
    p.set_defaults(func=_sweep_command("sweep_status"), raw=True)

    p = sub.add_parser(
        "sweep-pack",
        help="copy a study's state into a folder to commit or carry to another machine (docs/sweeps.md)",
        description="Copy the study of runs/<NAME> into DIR: its journal, sweep.json, every finished trial's run "
        "folder without checkpoints (and without weights unless --weights), and each unfinished trial's records "
        "with a clean-stop marker. DIR is replaced whole. On the next machine `maskvlp sweep-unpack DIR` puts "
        "it back and the same `maskvlp sweep FILE` continues: finished trials are kept, unfinished ones train "
        "again from their first step without counting a failure. The study may be running while it is packed.",
        epilog="example: maskvlp sweep-pack paper studies/paper && git add studies/paper\n"
        "then, on a fresh clone: maskvlp sweep-unpack studies/paper && maskvlp sweep sweeps/paper.yaml",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="the study name (the sweep file's name:)")
    p.add_argument("dest", metavar="DIR", help="the pack folder to write (replaced)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where the study folder is (default: %(default)s)")
    p.add_argument("--weights", action="store_true", help="also pack finished trials' model.safetensors")
    p.set_defaults(func=_sweep_command("sweep_pack"), raw=True)

    p = sub.add_parser(
        "sweep-unpack",
        help="put a packed study back where it ran, to continue it with `maskvlp sweep FILE`",
        description="Copy the pack DIR (written by `maskvlp sweep-pack`) to the study folder it was packed from "
        "(runs/<NAME> for a study in runs/). Refused when that folder is not empty: two studies' trials are never "
        "mixed.",
        epilog="example: maskvlp sweep-unpack studies/paper && maskvlp sweep sweeps/paper.yaml",
    )
    p.add_argument("source", metavar="DIR", help="the pack folder")
    p.set_defaults(func=_sweep_command("sweep_unpack"), raw=True)

    p = sub.add_parser(
        "sweep-report",
        help="a sweep's report: table, CSV, Markdown, best params file, plots; comparison over seeds",
        description="One row per trial (number, state, params, objectives, duration, job) to the console, "
        "trials.csv and trials.md; best_params.yaml; Optuna's plots (history, importances, slice, contour, "
        "intermediate values, Pareto front for two objectives) as PNG. With a `compare:` section in the "
        "sweep file (sweeps/paper.yaml): comparison.md / .json / .png, the mean and 95% t-interval over "
        "seeds of every metric per strategy and budget, images/s and FLOPs, and one sentence per claim "
        "saying whether its ordering holds, is reversed, or cannot be told apart (docs/paper-study.md). "
        "--metric KEY: the trials ranked by it too (rankings.csv); a claim metric of compare: (docs/own-data.md). "
        "The comparison's per-trial values go to trial-metrics.csv, from which --from-metrics writes it again "
        "without runs/; --into puts it into a report's generated block (docs/sweeps.md).",
        epilog="example: maskvlp sweep-report paper --from-metrics reports/sweeps/paper/trial-metrics.csv "
        "--sweep-file sweeps/paper.yaml --into reports/paper-study.md",
    )
    p.add_argument("name", metavar="NAME", help="the study name")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where the study folder is (default: %(default)s)")
    text = "report folder (default: reports/sweeps/NAME; with --from-metrics: the table's folder)"
    p.add_argument("--out", default=None, metavar="DIR", help=text)
    text = "rank the finished trials by this key of their result.json eval too, e.g. of a re-evaluation (repeatable)"
    p.add_argument("--metric", action="append", default=[], metavar="KEY", help=text)
    text = "write only comparison.md/.json/.png (and the table) again from this committed trial-metrics.csv: no runs/ or storage needed"
    p.add_argument("--from-metrics", default=None, metavar="CSV", help=text)
    text = "the study's sweep file: its compare: section is used (default: the study folder's sweep.json)"
    p.add_argument("--sweep-file", default=None, metavar="FILE", help=text)
    text = "replace the block between a report's generated-block markers with the comparison (needs --sweep-file)"
    p.add_argument("--into", default=None, metavar="REPORT", help=text)
    p.set_defaults(func=_sweep_command("sweep_report"), raw=True)

    p = sub.add_parser(
        "scaling-fit",
        help="fit scaling curves to a scaling study's trials (docs/scaling.md)",
        description="Read the evaluated trials of runs/<NAME> (a study run by `maskvlp sweep sweeps/scaling.yaml`) "
        "and fit, per strategy, error = E + A (C/C0)^-alpha on the compute frontier and, where the grid varies "
        "both, E + A/N^a + B/D^b over model size N and data size D; bootstrap 95% intervals, a held-out check "
        "(fit the cheaper half, predict the dearest points) and a sentence per pair of strategies. A fit that "
        "does not converge is reported as such, never as a number. Writes fits.json, summary.md, PNG plots, "
        "and the figures to TensorBoard (runs/<NAME>/scaling-fit).",
        epilog="example: maskvlp sweep sweeps/scaling.yaml && maskvlp scaling-fit scaling",
    )
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="the study name (the scaling file's name:); several are fitted together (e.g. a study and its "
        "extension to another samples budget), with the first one's fit section",
    )
    p.add_argument(
        "--runs-dir", default="runs", metavar="DIR", help="where the study folders are (default: %(default)s)"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: reports/scaling/<first NAME>)")
    p.add_argument("--metric", default="", help="fit this metric instead of the file's fit.metric")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    p.set_defaults(func=_sweep_command("scaling_fit"), raw=True)

    p = sub.add_parser(
        "config",
        help="print the resolved, validated parameters",
        description="Load params.yaml with overrides, validate, and print the result as YAML.",
    )
    _common(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[Config, argparse.Namespace], int] = args.func
    try:
        if getattr(args, "raw", False):  # the sweep commands load their own params and report an invalid sweep
            return args.func(args)
        cfg = load_config(args.params, args.overrides)
        return func(cfg, args)
    except ConfigError as exc:
        print(f"maskvlp {args.command}: invalid parameters: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"maskvlp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
