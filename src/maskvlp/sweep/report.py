"""`maskvlp sweep-status NAME` and `maskvlp sweep-report NAME`: read a study back from its storage.

The report writes into its folder (default reports/sweeps/<name>/):
  trials.csv, trials.md    one row per trial attempt: number, state, params, objectives, duration,
                           job, run folder, retry_of, failure
  best_params.yaml         a complete params file of the best trial (first objective), ready for
                           `maskvlp pretrain --params` or to copy into params.yaml
  pareto.csv               two objectives: the non-dominated trials
  *.png                    Optuna's matplotlib plots: history, importances, slice, contour, Pareto front
  summary.json             counts by state, best values and params (JSON: `dvc metrics show` reads it)
  comparison.md/.json/.png with a `compare:` section (sweep.spec.ANALYSES, sweep.compare): mean and 95% interval
                           over seeds per strategy and metric, each claim tested in one sentence
  trial-metrics.csv        with it: the per-trial values behind the comparison (sweep.trialmetrics), from which
                           `--from-metrics` writes the comparison again without runs/ (sweep.regenerate)
  masks-<group>.png        with it: the masks of each cluster arm, as `maskvlp masks` draws them
  rankings.csv             with `--metric KEY` (repeatable): the finished trials ranked by each key of their
                           result.json `eval` (e.g. after `maskvlp evaluate --run 'runs/<name>/trial-*' --dataset
                           SET`), each value marked as the trial's own evaluation or a re-evaluation; the keys
                           are added to the comparison's columns and claim metrics too
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from maskvlp.launch import pending_reasons
from maskvlp.progress import format_duration
from maskvlp.runs import atomic_path, finished_trials, metric_value, write_text_atomic
from maskvlp.sweep.compare import reevaluated_keys
from maskvlp.sweep.liveness import driver_alive, driver_text
from maskvlp.sweep.regenerate import compare_section
from maskvlp.sweep.space import SweepSpec
from maskvlp.sweep.spec import ANALYSES, open_study
from maskvlp.sweep.study import Logical, is_finished, load_study, logical_trials, quiet_optuna


def open_study_folder(name: str, runs_dir: str = "runs") -> tuple[dict[str, Any], SweepSpec, optuna.Study]:
    """The study started in <runs_dir>/<name> (its sweep.json says where the storage is)."""
    info, spec = open_study(name, runs_dir)
    return info, spec, load_study(spec, info["storage"])


def _duration(t: optuna.trial.FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def trial_rows(study: optuna.Study, spec: SweepSpec) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "run_dir" not in t.user_attrs:
            continue  # asked but never launched
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for p in spec.space:
            row[p.key] = t.params.get(p.key, "")
        for i, o in enumerate(spec.objectives):  # Optuna gives a PRUNED trial its last intermediate value:
            row[o.metric] = t.values[i] if t.state == TrialState.COMPLETE else ""  # not the objective
        last = max(t.intermediate_values) if t.intermediate_values else None
        row["last_intermediate"] = t.intermediate_values[last] if last is not None else ""
        row["at_samples"] = last if last is not None else ""
        d = _duration(t)
        row["duration_s"] = round(d, 1) if d is not None else ""
        for column, attr in (("job", "job"), ("run", "run_dir"), ("retry_of", "retry_of"), ("failure", "failure")):
            row[column] = t.user_attrs.get(attr, "")
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def console_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def best_trial(study: optuna.Study, spec: SweepSpec) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial on the first objective (for two objectives: among the Pareto front)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    pool = study.best_trials if len(spec.objectives) > 1 else done
    sign = 1 if spec.objectives[0].direction == "maximize" else -1
    return max(pool, key=lambda t: sign * t.values[0])


def counts(groups: list[Logical], retries: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in groups:
        state = g.last.state.name
        if state == "FAIL" and not is_finished(g, retries):
            state = "FAIL (retrying)"
        out[state] = out.get(state, 0) + 1
    return out


def status(name: str, runs_dir: str = "runs") -> str:
    """Trials by state, best so far, running trials and an estimate of the time left."""
    info, spec, study = open_study_folder(name, runs_dir)
    groups = logical_trials(study)
    by_state = counts(groups, spec.retries)
    finished = sum(is_finished(g, spec.retries) for g in groups)
    lines = [
        f"study {name} ({info['storage']}): {finished}/{spec.n_trials} trials finished, parallel {spec.parallel}",
        "  " + ", ".join(f"{state} {n}" for state, n in sorted(by_state.items())),
    ]
    best = best_trial(study, spec)
    if best is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        values = ", ".join(f"{o.metric}={v:.4f}" for o, v in zip(spec.objectives, best.values))
        lines.append(f"  best so far: trial {best.number}: {values} ({params})")
    now = time.time()
    running = [g.last for g in groups if g.last.state == TrialState.RUNNING]
    slurm = [t.user_attrs["job"] for t in running if t.user_attrs.get("job", "").startswith("slurm:")]
    reasons = pending_reasons([job.split(":", 1)[1] for job in slurm])  # Slurm's, of the pending ones (one squeue)
    for t in running:
        since = now - t.datetime_start.timestamp() if t.datetime_start else 0
        step = max(t.intermediate_values) if t.intermediate_values else None
        at = f", last report at {step} samples" if step is not None else ""
        job = t.user_attrs.get("job", "?")
        reason = reasons.get(job.split(":", 1)[-1])
        if reason is not None:
            lines.append(f"  pending: trial {t.number} ({job}) for {format_duration(since)}: Slurm's reason {reason}")
        else:
            lines.append(f"  running: trial {t.number} ({job}) for {format_duration(since)}{at}")
    durations = [d for g in groups if is_finished(g, spec.retries) for d in [_duration(g.last)] if d]
    left = max(0, spec.n_trials - finished)
    if left and durations:
        mean = sum(durations) / len(durations)
        elapsed = sum(now - t.datetime_start.timestamp() for t in running if t.datetime_start)
        estimate = max(0.0, (left * mean - elapsed) / spec.parallel)
        mean_s = format_duration(mean)
        lines.append(f"  time left: about {format_duration(estimate)} ({left} trials, mean {mean_s} each)")
    elif left:
        lines.append(f"  time left: unknown until a trial finishes ({left} trials to go)")
    driver = driver_alive(Path(runs_dir) / name)
    idle = "not running (run the same `maskvlp sweep` command to continue)"
    lines.append(f"  driver: {f'running ({driver_text(driver)})' if driver else idle}")
    return "\n".join(lines)


def _save(fig_or_ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") and not hasattr(fig_or_ax, "savefig") else fig_or_ax
    if not hasattr(fig, "savefig"):  # an array of axes (slice, contour)
        import numpy as np

        fig = np.asarray(fig).ravel()[0].figure
    fig.set_size_inches(max(6.0, fig.get_figwidth()), max(4.0, fig.get_figheight()))
    fig.tight_layout()
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


LEGEND_MAX = 20  # more trials than this: no per-trial legend (seconds to lay out at 1,000, and cut off anyway)


def _no_big_legend(ax):
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) > LEGEND_MAX:
        legend.remove()
    return ax


def plots(study: optuna.Study, spec: SweepSpec, out: Path) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib plots; a plot the data cannot support (too few trials) is noted, not fatal."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    first = spec.objectives[0].metric
    multi = len(spec.objectives) > 1
    target = {"target": (lambda t: t.values[0]), "target_name": first} if multi else {"target_name": first}
    wanted = {
        "history.png": lambda: vis.plot_optimization_history(study, **target),
        "importances.png": lambda: vis.plot_param_importances(study, **target),
        "slice.png": lambda: vis.plot_slice(study, **target),
    }
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        wanted["intermediate.png"] = lambda: _no_big_legend(vis.plot_intermediate_values(study))
    if len(spec.space) >= 2:
        keys = [p.key for p in spec.space][:2]
        wanted["contour.png"] = lambda: vis.plot_contour(study, params=keys, **target)
    if multi:
        names = [o.metric for o in spec.objectives]
        wanted["pareto.png"] = lambda: vis.plot_pareto_front(study, target_names=names)
    written, notes = [], []
    for filename, draw in wanted.items():
        try:
            with quiet_optuna():
                written.append(_save(draw(), out / filename))
        except Exception as exc:  # e.g. importances need 2+ complete trials with varying params
            notes.append(f"{filename}: not drawn ({type(exc).__name__}: {exc})")
    return written, notes


def best_params_file(info: dict[str, Any], spec: SweepSpec, trial: optuna.trial.FrozenTrial, path: Path) -> Path:
    """The best trial's params as a complete params file (params.yaml + base + its values)."""
    from maskvlp.config import to_yaml
    from maskvlp.params import ParamsFile, load_config

    params = info.get("params")  # the file as the sweep read it, where sweep.json holds it
    if info.get("params_data") is not None:
        params = ParamsFile(f"{params} (as the sweep read it)", info["params_data"])
    cfg = load_config(params, trial.user_attrs.get("overrides") or spec.overrides(trial.params))
    header = (
        f"# Best trial {trial.number} of sweep '{spec.name}' "
        f"({', '.join(f'{o.metric}={v:.4f}' for o, v in zip(spec.objectives, trial.values))}).\n"
        f"# Its values: {', '.join(f'{k}={_fmt(v)}' for k, v in trial.params.items())}\n"
        "# Train it: maskvlp pretrain --params THIS_FILE --set train.run_name=NAME\n"
    )
    write_text_atomic(path, header + to_yaml(cfg))
    return path


LOWER_IS_BETTER = ("train_flops", "wall_s", "train_loss")  # run-record keys; every evaluation metric is a score


def value_source(root: Path, metric: str, value: float) -> str:
    """Where a trial's metric comes from: `re-evaluation` when eval-extra/<set>/metrics.json (written by
    `maskvlp evaluate --dataset` after the trial) holds this value, else `trial` (its own job's evaluation
    or run record: what Optuna was told)."""
    return "re-evaluation" if reevaluated_keys(root, {metric: value}) else "trial"


def rankings(study_dir: Path, metrics: list[str], study: optuna.Study, spec: SweepSpec) -> dict[str, Any]:
    """Per metric: the finished trials (runs.finished_trials) ranked best first by their result.json
    value, each with its sampled params, the value's source (value_source) and the objective values
    Optuna holds for it (untouched by any re-evaluation); and the trials left out, by reason. A metric no
    trial has is a ValueError naming the command that adds it."""
    objectives = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "run_dir" in t.user_attrs:
            objectives[Path(t.user_attrs["run_dir"]).name] = dict(zip((o.metric for o in spec.objectives), t.values))
    out: dict[str, Any] = {}
    for metric in metrics:
        trials, skipped = finished_trials(study_dir, needs=metric)
        if not trials:
            everything, _ = finished_trials(study_dir)
            keys = sorted({k for t in everything for k in t.result.get("eval", {})})
            near = [k for k in keys if k.split("/")[-1] == metric.split("/")[-1]][:6]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(
                f"--metric {metric}: no finished trial of study {study_dir.name} has it{hint}; evaluate the trials "
                f"on the set first: maskvlp evaluate --run '{study_dir}/trial-*' --dataset SET"
            )
        direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
        sign = -1 if direction == "minimize" else 1
        rows = []
        for t in trials:
            value = metric_value(t.result, metric)
            rows.append(
                {
                    "trial": t.root.name,
                    "value": value,
                    "source": value_source(t.root, metric, value),
                    **{f"{k} (Optuna)": v for k, v in objectives.get(t.root.name, {}).items()},
                    **t.params,
                }
            )
        rows.sort(key=lambda r: (-sign * r["value"], r["trial"]))
        ranked = [{"rank": rank, **row} for rank, row in enumerate(rows, 1)]
        out[metric] = {"direction": direction, "trials": ranked, "left_out": skipped}
    return out


def ranking_text(metric: str, ranking: dict[str, Any], table=markdown_table) -> str:
    """One ranking as a table (markdown_table or console_table) under a line saying what it is."""
    rows = ranking["trials"]
    extra = [c for c in rows[0] if c not in ("rank", "trial", "value", "source")]
    sources = sorted({r["source"] for r in rows})
    better = "lower" if ranking["direction"] == "minimize" else "higher"
    head = f"Trials ranked by {metric} ({better} is better; from {' and '.join(sources)}"
    head += "; the (Optuna) columns are the objective values the study was told, unchanged)"
    if ranking["left_out"]:
        head += "; left out: " + ", ".join(f"{n} {why}" for why, n in sorted(ranking["left_out"].items()))
    cols = ["rank", "trial", "value", "source", *extra]
    return head + "\n\n" + table(rows, cols)


def _write_rankings(ranked: dict[str, Any], path: Path) -> None:
    rows = [{"metric": m, **r} for m, ranking in ranked.items() for r in ranking["trials"]]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def report(
    name: str,
    out: str | Path | None = None,
    runs_dir: str = "runs",
    metrics: list[str] | tuple[str, ...] = (),
    sweep_file: str | Path | None = None,
) -> tuple[str, Path]:
    """Write the report folder; returns (console text, folder). `metrics`: evaluation keys (e.g. of a
    re-evaluation on a new set) to rank the trials by, and to add to the comparison. `sweep_file`: the
    study's sweep file, whose compare: section the comparison then follows (else the study folder's)."""
    info, spec, study = open_study_folder(name, runs_dir)
    study_dir = Path(runs_dir) / name
    metrics = list(dict.fromkeys(metrics))
    ranked = rankings(study_dir, metrics, study, spec) if metrics else {}  # refused before anything is written
    out = Path(out or Path("reports") / "sweeps" / name)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, spec)
    params = [p.key for p in spec.space]
    objectives = [o.metric for o in spec.objectives]
    columns = ["number", "state", *params, *objectives, "duration_s", "job", "retry_of"]
    with atomic_path(out / "trials.csv") as tmp, open(tmp, "w", newline="") as fh:
        all_columns = list(rows[0]) if rows else columns
        writer = csv.DictWriter(fh, fieldnames=all_columns)
        writer.writeheader()
        writer.writerows(rows)
    groups = logical_trials(study)
    best = best_trial(study, spec)
    summary: dict[str, Any] = {"study": name, "n_trials": spec.n_trials, "states": counts(groups, spec.retries)}
    summary["objectives"] = [vars(o) for o in spec.objectives]
    md = [f"# Sweep `{name}`", "", f"Storage `{info['storage']}`; written {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    md.append("States: " + ", ".join(f"{s} {n}" for s, n in sorted(summary["states"].items())) + ".")
    if best is not None:
        best_params_file(info, spec, best, out / "best_params.yaml")
        summary["best"] = {"trial": best.number, "values": dict(zip(objectives, best.values)), "params": best.params}
        values = ", ".join(f"{k} = {v:.4f}" for k, v in zip(objectives, best.values))
        md += ["", f"Best trial: **{best.number}**, {values}"]
        md.append("with " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in best.params.items()) + " (best_params.yaml).")
    if len(spec.objectives) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        summary["pareto"] = [t.number for t in front]
        front_rows = [r for r in rows if r["number"] in set(summary["pareto"])]
        with atomic_path(out / "pareto.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(front_rows)
        md += ["", "## Pareto front", "", markdown_table(front_rows, ["number", *params, *objectives])]
    written, notes = plots(study, spec, out)
    compared = None
    if ranked:
        _write_rankings(ranked, out / "rankings.csv")
        summary["rankings"] = ranked
        md += ["", "## Trials ranked by the metrics asked for (rankings.csv)"]
        md += ["", *(ranking_text(m, r) + "\n" for m, r in ranked.items())]
    if spec.compare or sweep_file is not None:
        # the asked metrics become claim metrics and columns too; the section from the sweep file if named
        cs = compare_section(name, sweep_file, runs_dir, metrics)
        compared, result = ANALYSES["compare"].write(study_dir, cs, out)
        for group, why in result.get("masks_not_drawn", {}).items():
            notes.append(f"masks-{group}.png: not drawn ({why})")
        summary["comparison"] = {
            "claims": [{k: c[k] for k in ("budget", "better", "worse", "metric", "verdict")} for c in result["claims"]]
        }
        md += ["", "## Comparison over seeds (comparison.md, comparison.json)", "", compared]
    md += ["", "## Trials", "", markdown_table(rows, columns), ""]
    md += [f"![{p.stem}]({p.name})" for p in written]
    md += [f"- {n}" for n in notes]
    write_text_atomic(out / "trials.md", "\n".join(md) + "\n")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    text = console_table(rows, columns)
    for m, r in ranked.items():
        text += "\n\n" + ranking_text(m, r, console_table)
    if compared is not None:
        text += "\n\n" + compared
        text += "".join(f"\n{n}" for n in notes if n.startswith("masks-"))
    if best is not None:
        text += f"\nbest: trial {best.number} " + " ".join(f"{k}={v:.4f}" for k, v in zip(objectives, best.values))
    return text, out
