"""Scaling studies: a sweep whose grid crosses model size, data size and samples seen with masking
strategies and seeds (sweeps/scaling.yaml), plus `maskvlp scaling-fit NAME` (docs/scaling.md).

This module owns the analysis (no optuna here; the trials run through maskvlp.sweep, their params are
derived by sweep.rules):
    FitSpec    the sweep file's `fit:` section, checked against the grid before anything runs
    points     the finished trials read back from their run records (runs.finished_trials)
    fit_study  the fits (sweep.fitforms) per strategy: compute frontier, the other forms (joint N/D),
               held-out check, bootstrap intervals, pairwise comparisons; JSON, Markdown, PNG and TensorBoard
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskvlp.runs import StudyPaths, atomic_path, finished_trials, metric_value, write_text_atomic
from maskvlp.sweep.fitforms import FORMS
from maskvlp.sweep.space import SweepSpecError, check_metric, grid_points, grid_size, objective_keys


class ScalingError(ValueError):
    """A scaling study's results cannot be used; the message says why and what to do."""


# ------------------------------------------------------------------------------- fit spec
@dataclass(frozen=True)
class FitSpec:
    metric: str  # an evaluation metric key (or a run-record key)
    error: str  # "one_minus" (error = 1 - metric, for accuracies and recalls) | "value" (a loss)
    group: str  # the space key whose value names a curve (e.g. the label `strategy`)
    forms: tuple[str, ...]  # of sweep.fitforms.FORMS: compute, and joint where the grid varies model and data size
    target_compute: float | None  # where strategies are compared; None = the largest measured compute
    bootstrap: int = 500
    seed: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)  # the forms left out and why

    def error_of(self, value: float) -> float:
        return 1.0 - value if self.error == "one_minus" else value


def _per_group(spec, group: str | None) -> dict[str, list[dict[str, Any]]]:
    """The grid's resolved points (params after labels and rules) by the value of the group key."""
    out: dict[str, list[dict[str, Any]]] = {}
    for values in grid_points(spec):
        out.setdefault(str(values.get(group, "all")), []).append(spec.resolve(values))
    return out


def fit_spec(spec) -> FitSpec:
    """The sweep's `fit:` section, checked against its grid (without the params; see `validate_fit`)."""
    raw = dict(spec.fit)
    unknown = set(raw) - {"metric", "error", "group", "forms", "target_compute", "bootstrap", "seed"}
    if unknown:
        raise SweepSpecError(f"fit: unknown key(s) {', '.join(sorted(unknown))}")
    metric = str(raw.get("metric", spec.objectives[0].metric))
    default_error = "one_minus" if spec.objectives[0].direction == "maximize" else "value"
    error = raw.get("error", default_error)
    if error not in ("one_minus", "value"):
        raise SweepSpecError(f"fit.error: must be one_minus (1 - metric) or value, got {error!r}")
    keys = [p.key for p in spec.space]
    group = raw.get("group", "strategy" if "strategy" in keys else None)
    if group is not None and group not in keys:
        raise SweepSpecError(f"fit.group: {group!r} is not a key of space ({', '.join(keys)})")
    if not math.isfinite(grid_size(spec)) or spec.sampler != "grid":
        raise SweepSpecError("fit: a scaling study is a grid: set sampler: {name: grid} with categorical axes")
    pts = min(_per_group(spec, group).values(), key=len)
    notes = []
    asked = raw.get("forms")
    forms = tuple(asked) if asked else tuple(FORMS)
    for form in forms:
        if form not in FORMS:
            raise SweepSpecError(f"fit.forms: unknown form {form!r}; one of {', '.join(FORMS)}")
    for form in FORMS.values():
        why = form.grid_problem(pts, group or "study") if form.required or form.name in forms else None
        if why and (form.required or asked):
            raise SweepSpecError(f"fit: {why}" if form.required else f"fit.forms: {why}")
        if why:
            forms = tuple(f for f in forms if f != form.name)
            notes.append(f"{form.name} form left out: {why}")
    target = raw.get("target_compute")
    if target is not None and (not isinstance(target, int | float) or target <= 0):
        raise SweepSpecError(f"fit.target_compute: must be a positive number of FLOPs, got {target!r}")
    bootstrap = raw.get("bootstrap", 500)
    if not isinstance(bootstrap, int) or bootstrap < 20:
        raise SweepSpecError(f"fit.bootstrap: must be an integer >= 20 (resamples), got {bootstrap!r}")
    return FitSpec(
        metric, error, group, forms, None if target is None else float(target), bootstrap, int(raw.get("seed", 0)),
        tuple(notes),
    )  # fmt: skip


def validate_fit(spec, cfg) -> FitSpec:
    """fit_spec, plus the metric checked against what evaluation produces for the base params."""
    fs = fit_spec(spec)
    check_metric("fit.metric", fs.metric, cfg, objective_keys(cfg))
    return fs


# ---------------------------------------------------------------------------------- points
@dataclass
class Point:
    run: str  # the trial's run folder
    group: str  # its curve (the value of fit.group)
    params: dict[str, Any]  # the sampled values
    compute: float  # training FLOPs (masking-aware, mask computation included)
    model_size: int  # non-embedding parameters, both towers
    data_size: int  # unique training pairs
    samples: int  # samples seen
    value: float  # the metric
    error: float
    wall_s: float
    images_per_s: float
    coverage: float | None = None  # cluster masking: the run's mean fraction of patches in a cluster

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def points(study_dir: Path, fs: FitSpec) -> tuple[list[Point], dict[str, int]]:
    """The finished, evaluated trials of a study folder, and counts of the trials left out by reason."""
    trials, skipped = finished_trials(study_dir, needs=fs.metric)
    out = []
    for t in trials:
        r, value = t.result, metric_value(t.result, fs.metric)
        group = str(t.params.get(fs.group, r.get("masking", {}).get("label", "?"))) if fs.group else "all"
        compute, n, d = float(r["train_flops"]), int(sum(r["params_nonembedding"].values())), int(r["unique_pairs"])
        wall_s, speed = float(r.get("wall_s", math.nan)), float(r.get("images_per_s", math.nan))
        samples, masking = int(r["samples_seen"]), r.get("masking", {})
        coverage = masking.get("mean_cluster_coverage") if masking.get("strategy") == "cluster" else None
        out.append(
            Point(
                str(t.root), group, t.params, compute, n, d, samples, value, fs.error_of(value), wall_s, speed, coverage
            )
        )
    return out, skipped


# ------------------------------------------------------------------------------------ fits
def _fit_group(pts: list[Point], fs: FitSpec, target: float) -> dict[str, Any]:
    import numpy as np

    from maskvlp.sweep.fitforms import band, fit, frontier, held_out

    c, e = np.array([p.compute for p in pts]), np.array([p.error for p in pts])
    front = frontier(c, e)
    out: dict[str, Any] = {"points": len(pts), "frontier": [pts[i].run for i in front]}
    f = fit("compute", e[front], c[front], bootstrap=fs.bootstrap, seed=fs.seed)
    out |= {"compute": f.to_dict(), "_fit": f}
    if f.converged:
        # how far past the group's dearest run the prediction reaches (> 1: an extrapolation)
        out["at_target"] = {"compute": target, "error": float(f.predict(target)), "beyond": target / float(c.max())}
        if f.has_intervals:
            lo, hi = band(f, target)
            out["at_target"] |= {"lo": float(lo), "hi": float(hi)}
    if len(front) >= 2:
        out["held_out"] = {**vars(held_out(c[front], e[front], seed=fs.seed))}
    else:
        out["held_out"] = {"flagged": True, "message": f"{len(front)} frontier point(s): nothing to hold out"}
    for name in fs.forms:  # the other forms, on every point of the group (e.g. joint: N and D)
        if name != "compute":
            xs = [np.array([getattr(p, x) for p in pts], float) for x in FORMS[name].inputs]
            other = fit(name, e, *xs, bootstrap=fs.bootstrap, seed=fs.seed)
            out |= {name: other.to_dict(), f"_{name}": other}
    return out


def fit_study(pts: list[Point], fs: FitSpec) -> dict[str, Any]:
    """Every fit of a study's points, per group (strategy), and a sentence per pair of groups."""
    from maskvlp.sweep.fitforms import compare

    if not pts:
        raise ScalingError("no finished, evaluated trial to fit: run the study first (maskvlp sweep FILE)")
    target = fs.target_compute or max(p.compute for p in pts)
    groups = sorted({p.group for p in pts})
    fits = {g: _fit_group([p for p in pts if p.group == g], fs, target) for g in groups}
    comparisons = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            ca = [p.compute for p in pts if p.group == a]
            cb = [p.compute for p in pts if p.group == b]
            lo, hi = max(min(ca), min(cb)), min(max(ca), max(cb))
            if lo >= hi:  # no shared compute range: compare over the union
                lo, hi = min(ca + cb), max(ca + cb)
            comparisons.append(compare(a, fits[a]["_fit"], b, fits[b]["_fit"], (lo, hi), target))
    return dict(metric=fs.metric, error=fs.error, target_compute=target, groups=fits, comparisons=comparisons)


def _fmt_fit(f: dict[str, Any]) -> str:
    if not f["converged"]:
        return f"did not converge ({f['message']}; {f['n_points']} points)"
    if "intervals" not in f:
        parts = [f"{k} = {v:.4g}" for k, v in f["params"].items()]
        return ", ".join(parts) + f"; rmse {f['rmse']:.4f}, {f['n_points']} points; {f['intervals_note']}"
    parts = [f"{k} = {v:.4g} [{f['intervals'][k][0]:.4g}, {f['intervals'][k][1]:.4g}]" for k, v in f["params"].items()]
    return ", ".join(parts) + f"; rmse {f['rmse']:.4f}, {f['n_points']} points"


def _frontier_note(pts: list[Point]) -> str:
    """Whether the frontier stands on single runs: one seed per point lets noise pick it."""
    seeds = {}
    for p in pts:
        key = (p.group, p.data_size, p.model_size, p.samples)
        seeds[key] = seeds.get(key, 0) + 1
    repeated = sum(n > 1 for n in seeds.values())
    if repeated == 0:
        return (
            "Every point is a single run (one seed): the frontier is picked from single-seed values, so a lucky "
            "or unlucky seed can put a point on it or off it; fits and intervals do not include that choice."
        )
    return f"{repeated} of {len(seeds)} configurations ran more than once; each run is its own point."


def summary_markdown(name: str, result: dict[str, Any], pts: list[Point], skipped: dict[str, int], fs: FitSpec) -> str:
    err = f"1 - {fs.metric}" if fs.error == "one_minus" else fs.metric
    lines = [
        f"# Scaling study `{name}`: {err} against training compute",
        "",
        f"{len(pts)} evaluated trials"
        + (f"; left out: {', '.join(f'{n} {k}' for k, n in sorted(skipped.items()))}" if skipped else "")
        + ". Compute = masking-aware training FLOPs from the run records (kept tokens, both towers, the mask "
        "computation included); model size = non-embedding parameters of both towers; data size = unique training pairs.",
        "",
        "| group | model | data | samples | compute (FLOPs) | N (non-emb.) | metric | error | img/s | coverage |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    front = {r for g in result["groups"].values() for r in g["frontier"]}
    for p in sorted(pts, key=lambda p: (p.group, p.compute, p.data_size)):
        model = p.params.get("model", p.params.get("model.vision", ""))
        star = " *" if p.run in front else ""
        lines.append(
            f"| {p.group} | {model} | {p.data_size} | {p.samples} | {p.compute:.3g}{star} | {p.model_size:,} | "
            f"{p.value:.4f} | {p.error:.4f} | {p.images_per_s:.0f} | "
            + ("-" if p.coverage is None else f"{p.coverage:.3f}")
            + " |"
        )
    lines += ["", "`*`: on the group's compute frontier (no cheaper point of the group has lower error)."]
    lines += ["Coverage: the mean fraction of patches in a cluster during training (cluster masking only)."]
    lines += [_frontier_note(pts), ""]
    fits = f"Compute form `err = {FORMS['compute'].formula}` on each group's frontier; 95% bootstrap intervals."
    lines += ["## Fits", "", fits, ""]
    for g, r in result["groups"].items():
        lines.append(f"- **{g}**, compute: {_fmt_fit(r['compute'])}")
        if r["compute"]["converged"]:
            lines.append(f"  (C0 = {r['compute']['scale']['C0']:.3g})")
        if "at_target" in r:
            t = r["at_target"]
            within = f" [{t['lo']:.4f}, {t['hi']:.4f}]" if "lo" in t else " (no interval)"
            beyond = t.get("beyond", 1.0)
            where = f" (extrapolated {beyond:.2g}x past the group's dearest run)" if beyond > 1.0 + 1e-9 else ""
            lines.append(f"  predicted error at {t['compute']:.3g} FLOPs{where}: {t['error']:.4f}{within}")
        flag = "FLAGGED: " if r["held_out"]["flagged"] else "ok: "
        lines.append(f"  held-out check: {flag}{r['held_out']['message']}")
        for name in fs.forms:
            if name != "compute" and name in r:
                lines.append(f"- **{g}**, {name} `{FORMS[name].formula}`: {_fmt_fit(r[name])}")
    lines += [f"- {note}" for note in fs.notes]
    lines += ["", "## Strategies compared", ""]
    lines += [f"- {s}" for s in result["comparisons"]] or ["- one group only: nothing to compare"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- plots
def figures(result: dict[str, Any], pts: list[Point], fs: FitSpec) -> dict[str, Any]:
    """matplotlib figures: error vs compute (log-log: points, frontier, fit and 95% band per group),
    error vs model size at the largest data size, and error vs data size at the largest model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    from maskvlp.sweep.fitforms import band

    groups = sorted(result["groups"])
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    ylabel = f"error (1 - {fs.metric})" if fs.error == "one_minus" else fs.metric
    figs = {}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in groups:
        gp = [p for p in pts if p.group == g]
        front = set(result["groups"][g]["frontier"])
        ax.scatter([p.compute for p in gp], [p.error for p in gp], color=colours[g], alpha=0.35, s=18)
        fp = sorted((p for p in gp if p.run in front), key=lambda p: p.compute)
        ax.scatter([p.compute for p in fp], [p.error for p in fp], color=colours[g], s=36, edgecolor="k", lw=0.5)
        f = result["groups"][g]["_fit"]
        label = g
        if f.converged:
            grid = np.geomspace(min(p.compute for p in gp) / 1.5, max(p.compute for p in gp) * 1.5, 80)
            ax.plot(grid, f.predict(grid), color=colours[g])
            if f.has_intervals:
                lo, hi = band(f, grid)
                ax.fill_between(grid, lo, hi, color=colours[g], alpha=0.15)
            label += f" (alpha {f.params['alpha']:.2f}" + (")" if f.has_intervals else ", no interval)")
        else:
            label += " (fit did not converge)"
        ax.plot([], [], color=colours[g], label=label)
    ax.set(xscale="log", yscale="log", xlabel="training compute (FLOPs, masking-aware)", ylabel=ylabel)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2f"))
    ax.set_title("error vs compute: points (faint), frontier (outlined), fit + 95% band", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    figs["compute"] = fig

    for axis, fixed, xlabel in (
        ("model_size", "data_size", "non-embedding parameters (both towers)"),
        ("data_size", "model_size", "unique training pairs"),
    ):
        at = max(getattr(p, fixed) for p in pts)
        sel = [p for p in pts if getattr(p, fixed) == at]
        if len({getattr(p, axis) for p in sel}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for g in groups:
            gp = sorted((p for p in sel if p.group == g), key=lambda p: (getattr(p, axis), p.samples))
            if not gp:
                continue
            ax.plot([getattr(p, axis) for p in gp], [p.error for p in gp], "o", color=colours[g], label=g)
            joint = result["groups"][g].get("_joint")
            if joint is not None and joint.converged:
                xs = np.geomspace(min(getattr(p, axis) for p in gp), max(getattr(p, axis) for p in gp), 50)
                n, d = (xs, np.full_like(xs, at)) if axis == "model_size" else (np.full_like(xs, at), xs)
                ax.plot(xs, joint.predict(n, d), color=colours[g], lw=1)
        fixed_name = "data size" if fixed == "data_size" else "model size"
        ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel)
        ax.set_title(f"at the largest {fixed_name} ({at:,}); lines: joint fit, where it converged", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        figs[axis] = fig
    return figs


def write_outputs(name: str, study_dirs: Path | list[Path], out_dir: Path, fs: FitSpec, quiet: bool = False) -> dict:
    """Fit the points of one study, or of several fitted together (a study extended by another, e.g.
    a second samples budget), and write fits.json, summary.md and PNGs to out_dir, and the figures to
    TensorBoard in the first study's folder (<study>/scaling-fit, beside its trials)."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    dirs = [study_dirs] if isinstance(study_dirs, Path) else list(study_dirs)
    pts, skipped = [], Counter()
    for d in dirs:
        more, left = points(d, fs)
        pts += more
        skipped.update(left)
    if not pts:
        why = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())) or "no trial folders"
        raise ScalingError(f"{', '.join(map(str, dirs))}: no finished, evaluated trial with {fs.metric} to fit ({why})")
    result = fit_study(pts, fs)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = {g: {k: v for k, v in r.items() if not k.startswith("_")} for g, r in result["groups"].items()}
    public = {k: v for k, v in result.items() if k != "groups"} | {"groups": groups, "name": name}
    public |= {"points": [p.to_dict() for p in pts], "skipped": skipped, "notes": list(fs.notes)}
    write_text_atomic(out_dir / "fits.json", json.dumps(public, indent=2, default=float) + "\n")
    write_text_atomic(out_dir / "summary.md", summary_markdown(name, result, pts, skipped, fs))
    writer = SummaryWriter(str(StudyPaths(dirs[0]).fit_tensorboard))
    try:
        for key, fig in figures(result, pts, fs).items():
            with atomic_path(out_dir / f"{key}.png", suffix=".png") as tmp:
                fig.savefig(tmp, dpi=120)
            writer.add_figure(f"scaling/{key}", fig, global_step=0)
            plt.close(fig)
    finally:
        writer.close()
    if not quiet:
        print((out_dir / "summary.md").read_text())
    return public
