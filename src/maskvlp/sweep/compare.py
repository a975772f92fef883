"""Comparisons of strategies over seeds: the sweep file's `compare:` section (sweeps/paper.yaml).

    compare:
      group: strategy                  # a space key (usually a label): one row / colour per value
      seeds: train.seed                # the replicates: means with 95% t-intervals over them
      budget: budget                   # optional space key: each of its values is its own comparison
      claims: [cluster > random, cluster > none, none > random]   # orderings to test (group values)
      claim_metrics: [zeroshot/val/top1, retrieval/val/t2i_r1]    # what the sentences are about
      metrics: [...]                   # optional: table columns (default: every key of the families
                                       # below that some trial's evaluation wrote)
      target_effect: 0.064             # optional: the effect the study is sized to detect, as a fraction
                                       # of the worse arm's mean (the paper's cluster vs FLIP: 2.2 / 34.4)

`maskvlp sweep-report NAME` writes comparison.md, comparison.json and comparison.png next to the
trials table (one reporting path for every study). Metrics are "higher is better" scores; each claim
"a > b" is tested per budget and claim metric on the per-seed differences a - b (same seed: same split,
data order and initialisation), and gets one sentence: the ordering holds, is reversed, or the
interval contains 0 (cannot be told apart here), with the size of the difference. Each claim also
states its power: the smallest difference the paired t-test over these seeds detects with 80% power
at the 5% level, from the observed spread of the per-seed differences, and (with `target_effect`) how
many seeds an effect of the target size would need at that spread. A difference that is the same on
every seed (zero spread) gets its own verdict: no t-test can be made of it. The claims are one family
of tests: each gets its p-value and whether it survives Holm's correction over the family, and the
report says how many "holds" or "reversed" the family would show by chance alone. With two budgets or more,
each masked group gets a sentence counting its metrics that are higher at one budget than at the one
before (sweep.comparetext writes every sentence and table; this module computes their numbers).

Beside them, trial-metrics.csv: one row per trial used (group, budget, seed, run, then every value
column at full precision), and one per trial left out with its reason. It is the committed table
(runs/ is not committed) from which anyone recomputes an interval, and from which `maskvlp sweep-report
NAME --from-metrics trial-metrics.csv` writes comparison.md again, byte for byte (sweep.regenerate):
`trial_records` reads either a study folder or that table, into the same rows. From a study folder,
each cluster arm also gets its mask picture, masks-<group>.png (sweep.comparemasks).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from maskvlp.runs import RunPaths, atomic_path, finished_trials, value_at, write_text_atomic
from maskvlp.stats import (
    LEVEL,
    REJECTS,
    TESTED,
    detectable_difference,
    holm,
    mean_ci,
    paired_difference,
    paired_p_value,
    seeds_needed,
    verdict,
)
from maskvlp.sweep.comparespec import CompareSpec  # noqa: F401 (part of this module's face)
from maskvlp.sweep.comparetext import body, markdown, sentence  # noqa: F401 (markdown: part of this module's face)
from maskvlp.sweep.comparetrend import TREND_FIGURE, TRENDS, trend_figure, trends
from maskvlp.sweep.space import SweepSpecError, check_metric, objective_keys
from maskvlp.sweep.trialmetrics import METRICS_FILE, read_trial_metrics, write_trial_metrics

# metric families reported by default (regular expressions over evaluation keys)
DEFAULT_FAMILIES = (
    r"zeroshot/[^/]+/top1",
    r"retrieval/[^/]+/(i2t|t2i)_r(1|5)",
    r"linear_probe/[^/]+/top1",
    r"composition/[^/]+/(attribute|relation|object)",
)
# run-record columns beside the metrics: key -> how to read it from result.json
# (measured time beside FLOPs; the achieved mask ratio beside cluster coverage)
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "images_per_s": ("images_per_s",),
    "samples_seen": ("samples_seen",),
    "train_flops": ("train_flops",),
    "wall_s": ("wall_s",),
    "mask_ratio": ("masking", "mean_mask_ratio"),
    "cluster_coverage": ("masking", "mean_cluster_coverage"),
}
CLAIM = re.compile(r"^\s*([A-Za-z0-9_.+-]+)\s*>\s*([A-Za-z0-9_.+-]+)\s*$")


def compare_spec(spec) -> CompareSpec:
    """The `compare:` section checked against the space (structure only; `validate_compare` checks
    the metric names against the params). Raises SweepSpecError naming the key."""
    raw = spec.compare
    unknown = set(raw) - {"group", "seeds", "budget", "claims", "claim_metrics", "metrics", "target_effect", "trend"}
    if unknown:
        raise SweepSpecError(f"compare: unknown key(s) {', '.join(sorted(unknown))}")
    by_key = {p.key: p for p in spec.space}
    for key in ("group", "seeds", "budget"):
        value = raw.get(key)
        if value is None and key != "budget":
            raise SweepSpecError(f"compare.{key}: required (a key of space)")
        if value is not None and value not in by_key:
            raise SweepSpecError(f"compare.{key}: {value!r} is not a key of space ({', '.join(by_key)})")
    named = [raw[k] for k in ("group", "seeds", "budget") if raw.get(k) is not None]
    if len(set(named)) < len(named):
        raise SweepSpecError("compare: group, seeds and budget must be three different space keys")
    group = by_key[raw["group"]]
    values = tuple(str(v) for v in group.choices)
    if not values:
        raise SweepSpecError(f"compare.group: space.{group.key} must be categorical (a label or choices)")
    claims = []
    for i, text in enumerate(raw.get("claims") or []):
        m = CLAIM.match(str(text))
        if not m:
            raise SweepSpecError(f"compare.claims[{i}]: {text!r} must read 'A > B' with A, B values of {group.key}")
        for side in m.groups():
            if side not in values:
                raise SweepSpecError(
                    f"compare.claims[{i}]: {side!r} is not a value of {group.key} ({', '.join(values)})"
                )
        if m.group(1) == m.group(2):
            raise SweepSpecError(f"compare.claims[{i}]: compares {m.group(1)!r} with itself")
        claims.append((m.group(1), m.group(2)))
    lists = {}
    for key in ("claim_metrics", "metrics"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise SweepSpecError(f"compare.{key}: must be a list of metric keys, got {value!r}")
        lists[key] = tuple(value) if value is not None else None
    if claims and not lists["claim_metrics"]:
        raise SweepSpecError("compare.claim_metrics: list the metrics the claims are tested on")
    claim_metrics = lists["claim_metrics"] or ()
    target = raw.get("target_effect")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1):
        raise SweepSpecError(
            f"compare.target_effect: must be a fraction in (0, 1] of the worse arm's mean (e.g. 0.064), got {target!r}"
        )
    trend = raw.get("trend")
    if trend is not None and (trend not in TRENDS or raw.get("budget") is None or not claims):
        raise SweepSpecError(
            f"compare.trend: must be one of {', '.join(TRENDS)} (how each claim's difference is expected to change "
            f"from the budget's first value to its last), with compare.budget and claims set, got {trend!r}"
        )
    budget_values = tuple(str(v) for v in by_key[raw["budget"]].choices) if raw.get("budget") else ()
    return CompareSpec(
        group.key, raw["seeds"], raw.get("budget"), tuple(claims), claim_metrics, lists["metrics"], values,
        None if target is None else float(target), trend, budget_values,
    )  # fmt: skip


def validate_compare(spec, cfg) -> CompareSpec:
    """compare_spec + every named metric is one evaluation of cfg.eval.datasets produces."""
    cs = compare_spec(spec)
    known = objective_keys(cfg) | set(RECORD_COLUMNS)
    for key in ("claim_metrics", "metrics"):
        for metric in getattr(cs, key) or ():
            check_metric(f"compare.{key}", metric, cfg, known, records=False)
    return cs


# ------------------------------------------------------------------------------ reading trials
def trial_records(source: Path, cs: CompareSpec) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per complete, evaluated trial: group, budget, seed, run, values (evaluation + record
    columns) and `reevaluated` (the value keys that come from a re-evaluation, `maskvlp evaluate
    --dataset`); and counts of the trials left out, by reason. A point run twice keeps its last run.
    `source`: a study folder, or a trial-metrics.csv written from one (the same rows, read back)."""
    source = Path(source)
    if source.is_file():
        return read_trial_metrics(source, cs)
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    trials, skipped = finished_trials(source)
    for t in trials:
        r, params = t.result, t.params
        values = {k: float(v) for k, v in r["eval"].items() if isinstance(v, int | float)}
        values |= {k: v for k, path in RECORD_COLUMNS.items() if (v := value_at(r, path)) is not None}
        row = {
            "group": str(params.get(cs.group)),
            "budget": str(params.get(cs.budget)) if cs.budget else "all",
            "seed": str(params.get(cs.seeds)),
            "run": str(t.root),
            "values": values,
            "reevaluated": reevaluated_keys(t.root, values),
        }
        found[(row["group"], row["budget"], row["seed"])] = row
    return list(found.values()), skipped


def reevaluated_keys(root: Path, values: dict[str, float]) -> list[str]:
    """The keys of `values` whose value is the one a re-evaluation wrote to the run's
    eval-extra/<set>/metrics.json (`maskvlp evaluate --dataset` after the trial), sorted."""
    extra: dict[str, dict[str, Any]] = {}
    out = []
    for key, value in values.items():
        parts = key.split("/")
        if len(parts) != 3:
            continue
        if parts[1] not in extra:
            path = RunPaths(Path(root)).extra_eval_dir(parts[1]) / "metrics.json"
            extra[parts[1]] = json.loads(path.read_text()) if path.is_file() else {}
        recorded = extra[parts[1]].get(key)
        if isinstance(recorded, int | float) and abs(recorded - value) <= 1e-9 * max(1.0, abs(value)):
            out.append(key)
    return sorted(out)


def with_metrics(cs: CompareSpec, metrics: list[str] | tuple[str, ...]) -> CompareSpec:
    """The section with `metrics` (`sweep-report --metric KEY`) added to its claim metrics and, where it
    lists its columns, to those."""
    claim = (*cs.claim_metrics, *(m for m in metrics if m not in cs.claim_metrics))
    shown = None if cs.metrics is None else (*cs.metrics, *(m for m in metrics if m not in cs.metrics))
    return replace(cs, claim_metrics=claim, metrics=shown)


def metric_columns(rows: list[dict[str, Any]], cs: CompareSpec) -> list[str]:
    if cs.metrics is not None:
        return list(cs.metrics)
    keys = {k for r in rows for k in r["values"]}
    ordered = []
    for family in DEFAULT_FAMILIES:
        ordered += sorted(k for k in keys if re.fullmatch(family, k))
    return list(dict.fromkeys([*cs.claim_metrics, *ordered]))


# ------------------------------------------------------------------------------ the comparison
def compare(rows: list[dict[str, Any]], cs: CompareSpec) -> dict[str, Any]:
    """Means with intervals per (budget, group, column), and every claim tested per budget and claim
    metric (pure: rows in, plain data out)."""
    from maskvlp.metrics import chance_key, majority_key  # (it imports torch: not at this module's top)

    metrics = metric_columns(rows, cs)
    columns = [*metrics, *(k for k in RECORD_COLUMNS if k not in metrics)]
    seen = list(dict.fromkeys(r["budget"] for r in rows))
    budgets = [b for b in cs.budget_values if b in seen] + [b for b in seen if b not in cs.budget_values]  # file order
    table: dict[str, dict[str, dict[str, Any]]] = {}
    per_seed: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        for key, value in r["values"].items():
            per_seed.setdefault((r["budget"], r["group"], key), {})[r["seed"]] = value
    for b in budgets:
        table[b] = {}
        for g in [g for g in cs.group_values if any(r["group"] == g and r["budget"] == b for r in rows)]:
            cells = {}
            for key in columns:
                seeds = per_seed.get((b, g, key), {})
                if seeds:
                    cells[key] = mean_ci(list(seeds.values())).to_dict()
            table[b][g] = cells
    claims = []
    for b in budgets:
        for better, worse in cs.claims:
            for metric in cs.claim_metrics:
                a, z = per_seed.get((b, better, metric), {}), per_seed.get((b, worse, metric), {})
                claim = {"budget": b, "better": better, "worse": worse, "metric": metric}
                if not set(a) & set(z):
                    claims.append({**claim, "verdict": "no data"})
                    continue
                diff = paired_difference(a, z)
                fa = per_seed.get((b, better, "train_flops"), {})
                fz = per_seed.get((b, worse, "train_flops"), {})
                flops_ratio = (sum(fa.values()) / len(fa)) / (sum(fz.values()) / len(fz)) if fa and fz else math.nan
                claim |= {"difference": diff.to_dict(), "verdict": verdict(diff), "flops_ratio": flops_ratio}
                claims.append(claim | power_of(a, z, cs.target_effect))
    family = family_of(claims)
    for c in claims:
        c["sentence"] = sentence(c, cs)
    chance = {}  # what a model that learned nothing scores, so that a reader can tell signal from noise
    for key in columns:
        level = next((r["values"][k] for r in rows if (k := chance_key(key)) and k in r["values"]), None)
        if level is not None:
            chance[key] = level
    floor = {}  # composition: the same choice against a blank image, what the text alone scores
    for key in columns:
        if re.fullmatch(r"composition/[^/]+/(attribute|relation|object)", key):
            scores = [r["values"][f"{key}_text_floor"] for r in rows if f"{key}_text_floor" in r["values"]]
            if scores:
                floor[key] = sum(scores) / len(scores)
    majority = {}  # always guessing the largest class: above 1/classes when the classes are unbalanced
    for key in columns:
        shares = [r["values"][k] for r in rows if (k := majority_key(key)) and k in r["values"]]
        if shares:
            majority[key] = max(shares)
    seeds = sorted({r["seed"] for r in rows})
    head = {"group": cs.group, "budget_key": cs.budget, "seeds_key": cs.seeds, "budgets": budgets, "columns": columns}
    head |= {"chance": chance, "majority": majority, "text_floor": floor}
    changes = budget_changes(table, budgets, [k for k in metrics if k not in RECORD_COLUMNS])
    speed = speedups(per_seed, table, budgets)
    return {
        **head,
        "table": table,
        "claims": claims,
        "family": family,
        "budget_changes": changes,
        "speedups": speed,
        "seeds": seeds,
    } | ({"trends": trends(per_seed, cs, budgets)} if cs.trend else {})


def speedups(per_seed: dict[tuple[str, str, str], dict[str, float]], table: dict, budgets: list[str]) -> dict:
    """Per budget, each group's measured speed and time against the unmasked group's (the one whose
    recorded mask ratio is 0), paired by seed: images/s ratio (what `train.compute_speedup` takes for a
    time-matched budget), training wall-time ratio (equal FLOPs are not equal time) and training FLOPs
    ratio (a compute-matched arm whose masking missed the ratio its budget planned with is not at 1)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b in budgets:
        unmasked = [g for g, cells in table[b].items() if cells.get("mask_ratio", {}).get("mean") == 0]
        if not unmasked:
            continue
        base = unmasked[0]
        for g in table[b]:
            if g == base:
                continue
            ratios = {}
            for key, name in (("images_per_s", "speedup"), ("wall_s", "time_ratio"), ("train_flops", "flops_ratio")):
                mine, theirs = per_seed.get((b, g, key), {}), per_seed.get((b, base, key), {})
                paired = [mine[s] / theirs[s] for s in sorted(set(mine) & set(theirs)) if theirs[s]]
                if paired:
                    ratios[name] = mean_ci(paired).to_dict()
            if ratios:
                out.setdefault(b, {})[g] = {"against": base, **ratios}
    return out


def budget_changes(table: dict[str, dict[str, dict[str, Any]]], budgets: list[str], metrics: list[str]) -> list:
    """Per pair of consecutive budgets and masked group (a measured mask ratio above 0 at either budget;
    every group where no ratio was recorded): its metrics with a mean at both, split into higher, lower
    and equal at the second budget, each with both means (a count of means, not a test)."""
    out = []
    for first, second in zip(budgets, budgets[1:]):
        for g in [g for g in table[first] if g in table[second]]:
            a, b = table[first][g], table[second][g]
            ratios = [c["mask_ratio"]["mean"] for c in (a, b) if "mask_ratio" in c]
            if ratios and max(ratios) <= 0:
                continue  # unmasked: the budgets are the same samples for it
            change: dict[str, Any] = {"group": g, "from": first, "to": second, "higher": [], "lower": [], "equal": []}
            for m in [m for m in metrics if m in a and m in b]:
                x, y = a[m]["mean"], b[m]["mean"]
                kind = "higher" if y > x else "lower" if y < x else "equal"
                change[kind].append({"metric": m, "from": x, "to": y})
            if change["higher"] or change["lower"] or change["equal"]:
                out.append(change)
    return out


def family_of(claims: list[dict[str, Any]]) -> dict[str, Any]:
    """The claims as one family of tests: each tested claim gets `p` (its paired t-test's two-sided
    p-value) and `holm` (whether it rejects under Holm's correction over the family, at a family-wise
    error of 5%); returned: the family's size, the count of "holds" and "reversed" verdicts, and how many
    of those the family would show by chance alone if no arm differed from another (size x 5%)."""
    tested = [c for c in claims if c["verdict"] in TESTED]
    for c in tested:
        c["p"] = paired_p_value(c["difference"]["mean"], c["spread"], c["difference"]["n"])
    for c, rejects in zip(tested, holm([c["p"] for c in tested]), strict=True):
        c["holm"] = rejects
    found = {v: sum(c["verdict"] == v for c in tested) for v in REJECTS}
    return {"tests": len(tested), "level": LEVEL, "by_chance": len(tested) * (1 - LEVEL), **found}


def power_of(a: dict[str, float], z: dict[str, float], target_effect: float | None) -> dict[str, Any]:
    """The power of one claim's paired test: `spread` (standard deviation of the per-seed differences),
    `detectable` (the smallest difference detected with 80% power at the 5% level over these seeds; nan
    without a spread), and with a target, `target` (target_effect x |mean of the worse arm|) and
    `seeds_for_target` (the seeds that effect needs at this spread; None beyond stats.MAX_SEEDS)."""
    common = sorted(set(a) & set(z), key=str)
    diffs = [a[k] - z[k] for k in common]
    n = len(diffs)
    mean = sum(diffs) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    out: dict[str, Any] = {"spread": spread, "detectable": detectable_difference(spread, n) if n > 1 else math.nan}
    if target_effect is not None:
        target = target_effect * abs(sum(z[k] for k in common) / n)
        out |= {"target": target, "seeds_for_target": seeds_needed(target, spread) if n > 1 and spread > 0 else None}
    return out


def figure(result: dict[str, Any], cs: CompareSpec, out: Path) -> Path | None:
    """Claim metric (or the first column) vs training FLOPs: one colour per group, one marker per
    budget, 95% intervals as error bars (both axes: FLOPs vary little over seeds, images do not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = figure_metrics(result, cs)
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    colours = {g: f"C{i}" for i, g in enumerate(cs.group_values)}
    markers = dict(zip(result["budgets"], "osD^v<>"))
    for ax, metric in zip(axes[0], metrics):
        for b in result["budgets"]:
            for g, cells in result["table"][b].items():
                y, x = cells.get(metric), cells.get("train_flops")
                if not y or not x:
                    continue

                def err(c):
                    return 0.0 if not math.isfinite(c["low"]) else (c["high"] - c["low"]) / 2

                label = f"{g}" + (f" ({b})" if cs.budget else "")
                style = dict(fmt=markers[b], color=colours[g], capsize=3, label=label)
                ax.errorbar(x["mean"], y["mean"], yerr=err(y), xerr=err(x), **style)
        if metric in result.get("chance", {}):
            ax.axhline(result["chance"][metric], color="0.4", linestyle="--", linewidth=1, label="chance")
        if metric in result.get("majority", {}):
            ax.axhline(result["majority"][metric], color="0.4", linestyle=":", linewidth=1, label="majority class")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (masking-aware)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside, not over, the data
    fig.suptitle(f"{cs.group} vs compute: mean and 95% interval over {len(result['seeds'])} seeds", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def comparison(source: Path, cs: CompareSpec) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, Any]]:
    """The rows (`trial_records` of a study folder or a trial-metrics.csv), the trials left out and the
    result: compare() with the left-out counts and, when some column's values come from a
    re-evaluation, the note that says so (pure: no file written)."""
    rows, skipped = trial_records(source, cs)
    result = compare(rows, cs)
    result["skipped"] = skipped
    again = [k for k in result["columns"] if any(k in r.get("reevaluated", ()) for r in rows)]
    if again:
        result["note"] = (
            "From re-evaluation after the sweep (`maskvlp evaluate --dataset`; not the values Optuna was told): "
            f"{', '.join(again)}."
        )
    return rows, skipped, result


def figure_metrics(result: dict[str, Any], cs: CompareSpec) -> list[str]:
    """The metrics comparison.png plots (none: no figure): the claim metrics, else the first column."""
    return (list(cs.claim_metrics) or result["columns"][:1]) if result["budgets"] else []


def mask_pictures(folder: Path, result: dict[str, Any], cs: CompareSpec) -> dict[str, str]:
    """{group: masks-<group>.png} for the compared groups whose picture is in `folder`."""
    from maskvlp.sweep.comparemasks import picture_name

    shown = {g for b in result["budgets"] for g in result["table"][b]}
    names = {g: picture_name(g) for g in cs.group_values if g in shown}
    return {g: name for g, name in names.items() if (folder / name).is_file()}


def comparison_text(result: dict[str, Any], cs: CompareSpec, folder: Path, links: str = "") -> str:
    """comparison.md's text without its title, for the comparison written to `folder` (its figure and
    the mask pictures there); `links`: the path from the Markdown file showing it to `folder`."""
    png = "comparison.png" if figure_metrics(result, cs) else None
    trend_png = TREND_FIGURE if result.get("trends") and (folder / TREND_FIGURE).is_file() else None
    return body(result, cs, png, mask_pictures(folder, result, cs), links, trend_png)


def write_comparison(source: Path, cs: CompareSpec, out: Path, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """comparison.json, comparison.md, comparison.png and trial-metrics.csv in `out`, and, from a study
    folder, masks-<group>.png per cluster arm; returns (Markdown, result). `source`: a study folder or a
    trial-metrics.csv (then `name`, the study's name, heads comparison.md; a study folder's name does)."""
    source = Path(source)
    rows, skipped, result = comparison(source, cs)
    out.mkdir(parents=True, exist_ok=True)
    write_trial_metrics(out / METRICS_FILE, rows, skipped)
    figure(result, cs, out / "comparison.png")
    if result.get("trends"):
        trend_figure(result, cs, out / TREND_FIGURE)
    if source.is_dir():  # the trials' run folders: their mask pictures
        from maskvlp.sweep.comparemasks import draw_masks

        shown = [g for g in cs.group_values if any(g in result["table"][b] for b in result["budgets"])]
        failed = draw_masks(rows, shown, out)
        if failed:
            result["masks_not_drawn"] = failed
    text = comparison_text(result, cs, out)
    result["masks"] = mask_pictures(out, result, cs)
    write_text_atomic(out / "comparison.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(out / "comparison.md", f"# Comparison: study `{name or source.name}`\n\n" + text)
    return text, result
