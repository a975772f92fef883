"""The bodies of `maskvlp sweep`, `sweep-status`, `sweep-pack`, `sweep-unpack`, `sweep-report` and `scaling-fit` (maskvlp.cli keeps
their arguments and imports this module only when one of them runs)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from maskvlp.runs import StudyPaths
from maskvlp.sweep.space import SweepSpecError


def run(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A sweep command; an invalid sweep is a message and exit code 2 (other errors are cli.main's)."""
    try:
        return body(args)
    except SweepSpecError as exc:
        print(f"maskvlp {args.command}: invalid sweep: {exc}", file=sys.stderr)
        return 2


def sweep(args: argparse.Namespace) -> int:
    from maskvlp.sweep.driver import check_detach, detach, run_sweep, summary_line
    from maskvlp.sweep.prepare import prepare
    from maskvlp.sweep.study import is_rdb, open_storage

    sw = prepare(args.file, args.overrides, args.params, args.n_trials, args.parallel, args.storage)
    spec = sw.spec
    # the refusals before the plan, so that no plan is printed for a sweep that does not run
    if args.detach:
        check_detach(sw)
    if is_rdb(sw.storage):
        open_storage(sw.storage, spec.parallel)  # raises for SQLite with parallel trials, or an unreachable database
    print(
        f"sweep {spec.name}: {spec.n_trials} trials, {spec.parallel} at a time ({sw.executor}), "
        f"sampler {spec.sampler}, pruner {spec.pruner}; storage {sw.storage}; trials in {sw.study_dir}/"
    )
    if args.detach:
        job_id = detach(sw, args.force_new)
        print(
            f"submitted the sweep driver as Slurm job {job_id}; log off freely. "
            f"Follow it with `maskvlp sweep-status {spec.name}`"
        )
        return 0
    started = time.time()
    groups = run_sweep(sw, args.force_new, progress=not args.quiet)
    print(summary_line(sw, groups, time.time() - started))
    if args.report:
        from maskvlp.sweep.report import report

        text, out = report(spec.name, args.report, sw.base_cfg.train.runs_dir)
        print(text)
        print(f"wrote {out}/")
    return 0


def sweep_status(args: argparse.Namespace) -> int:
    from maskvlp.sweep.report import status

    print(status(args.name, args.runs_dir))
    return 0


def sweep_pack(args: argparse.Namespace) -> int:
    from maskvlp.sweep.carry import pack

    record = pack(args.name, args.dest, args.runs_dir, args.weights)
    print(
        f"packed study {args.name} into {args.dest}/: {len(record['finished'])} finished trial(s) kept whole, "
        f"{len(record['unfinished'])} unfinished (they train again from their first step), "
        f"{record['bytes'] / 1e6:.1f} MB{'' if record['weights'] else ', weights left out'}. "
        f"Continue elsewhere: maskvlp sweep-unpack {args.dest} && maskvlp sweep FILE"
    )
    return 0


def sweep_unpack(args: argparse.Namespace) -> int:
    from maskvlp.sweep.carry import unpack

    target = unpack(args.source)
    print(f"unpacked {args.source} into {target}/; continue it with `maskvlp sweep FILE` (its sweep file)")
    return 0


def sweep_report(args: argparse.Namespace) -> int:
    from maskvlp.sweep import regenerate as regen

    if args.into:  # refused before anything is written
        regen.check_into(args.into, args.sweep_file)
    if args.from_metrics:  # the comparison again from the committed table: no runs/, no storage
        text, out = regen.regenerate(
            args.name, args.from_metrics, args.out, args.sweep_file, args.runs_dir, args.metric
        )  # fmt: skip
        print(text)
        print(
            f"wrote {out}/ (comparison.md, comparison.json, comparison.png, trial-metrics.csv) from {args.from_metrics}"
        )
    else:
        from maskvlp.sweep.report import report

        text, out = report(args.name, args.out, args.runs_dir, args.metric, args.sweep_file)
        print(text)
        ranked = ", rankings.csv" if args.metric else ""
        print(f"wrote {out}/ (trials.csv, trials.md, best_params.yaml, plots{ranked})")
    if args.into:
        table = Path(out) / regen.METRICS_FILE
        if not table.is_file():
            raise ValueError(f"--into {args.into}: no comparison was written (the study has no compare: section)")
        regen.write_block(args.name, table, args.sweep_file, args.metric, args.into)
        print(f"wrote the generated block of {args.into} (from {table} and {args.sweep_file})")
    return 0


def scaling_fit(args: argparse.Namespace) -> int:
    from maskvlp.sweep.fit import fit_spec
    from maskvlp.sweep.spec import ANALYSES, open_study

    specs = []
    for name in args.names:
        _, spec = open_study(name, args.runs_dir)
        if args.metric:
            spec = replace(spec, fit={**spec.fit, "metric": args.metric})
        specs.append(fit_spec(spec))
    fs = specs[0]
    for name, other in zip(args.names[1:], specs[1:]):
        if (other.metric, other.error, other.group) != (fs.metric, fs.error, fs.group):
            raise SweepSpecError(
                f"{name}: its fit (metric {other.metric}, error {other.error}, group {other.group}) differs from "
                f"{args.names[0]}'s ({fs.metric}, {fs.error}, {fs.group}): studies fitted together must agree"
            )
    study_dirs = [Path(args.runs_dir) / n for n in args.names]
    out = Path(args.out or f"reports/scaling/{args.names[0]}")
    ANALYSES["fit"].write("+".join(args.names), study_dirs, out, fs, quiet=args.quiet)
    tensorboard = StudyPaths(study_dirs[0]).fit_tensorboard
    print(f"wrote {out}/ (fits.json, summary.md, *.png) and TensorBoard figures in {tensorboard}")
    return 0
