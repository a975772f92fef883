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
every seed (zero spread) gets its own verdict: no t-test can be made of it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskvlp.runs import atomic_path, finished_trials, value_at, write_text_atomic
from maskvlp.stats import (
    MAX_SEEDS,
    POWER,
    Interval,
    detectable_difference,
    mean_ci,
    paired_difference,
    seeds_needed,
    verdict,
)
from maskvlp.sweep.space import SweepSpecError, check_metric, objective_keys

# metric families reported by default (regular expressions over evaluation keys)
DEFAULT_FAMILIES = (
    r"zeroshot/[^/]+/top1",
    r"retrieval/[^/]+/(i2t|t2i)_r(1|5)",
    r"linear_probe/[^/]+/top1",
    r"composition/[^/]+/(attribute|relation|object)",
)
# run-record columns beside the metrics: key -> how to read it from result.json
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "images_per_s": ("images_per_s",),
    "train_flops": ("train_flops",),
    "samples_seen": ("samples_seen",),
    "cluster_coverage": ("masking", "mean_cluster_coverage"),
}
CLAIM = re.compile(r"^\s*([A-Za-z0-9_.+-]+)\s*>\s*([A-Za-z0-9_.+-]+)\s*$")


@dataclass(frozen=True)
class CompareSpec:
    group: str
    seeds: str
    budget: str | None = None
    claims: tuple[tuple[str, str], ...] = ()
    claim_metrics: tuple[str, ...] = ()
    metrics: tuple[str, ...] | None = None
    group_values: tuple[str, ...] = field(default=(), compare=False)  # in the sweep file's order
    target_effect: float | None = None  # the effect to detect, as a fraction of the worse arm's mean


def compare_spec(spec) -> CompareSpec:
    """The `compare:` section checked against the space (structure only; `validate_compare` checks
    the metric names against the params). Raises SweepSpecError naming the key."""
    raw = spec.compare
    unknown = set(raw) - {"group", "seeds", "budget", "claims", "claim_metrics", "metrics", "target_effect"}
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
    return CompareSpec(
        group.key, raw["seeds"], raw.get("budget"), tuple(claims), claim_metrics, lists["metrics"], values,
        None if target is None else float(target),
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
def trial_records(study_dir: Path, cs: CompareSpec) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per complete, evaluated trial: group, budget, seed, metrics (evaluation + record
    columns); and counts of the trials left out, by reason. A point run twice keeps its last run."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    trials, skipped = finished_trials(study_dir)
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
        }
        found[(row["group"], row["budget"], row["seed"])] = row
    return list(found.values()), skipped


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
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
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
    return {**head, "table": table, "claims": claims, "seeds": seeds}


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


def power_sentence(c: dict[str, Any], cs: CompareSpec) -> str:
    """What the test could have seen: the detectable difference and, with a target, the seeds it needs."""
    d = c.get("detectable", math.nan)
    if not math.isfinite(d):
        return ""
    n = c["difference"]["n"]
    text = (
        f" The smallest difference these {n} seeds detect ({POWER:.0%} power, 5% level, from the spread of the "
        f"per-seed differences, sd {c['spread']:.4f}) is {d:.4f}."
    )
    if cs.target_effect is None or "target" not in c:
        return text
    need, target = c["seeds_for_target"], c["target"]
    size = f"the target effect ({cs.target_effect:.1%} of {c['worse']}'s mean, {target:.4f})"
    if target >= d:
        return text + f" {size[0].upper() + size[1:]} is within reach of this study."
    more = f"would need {need} seeds at this spread" if need else f"would need more than {MAX_SEEDS} seeds"
    return text + f" It could not see {size}, which {more}."


def sentence(c: dict[str, Any], cs: CompareSpec) -> str:
    """One sentence per claim: whether `better > worse` holds on the metric, by how much."""
    where = f"{cs.budget} = {c['budget']}" if cs.budget else "all trials"
    head = f"{where}, {c['metric']}: "
    if c["verdict"] == "no data":
        return head + f"no seed has both {c['better']} and {c['worse']} finished, so nothing can be said."
    d = Interval(**c["difference"])
    cost = f" at {c['flops_ratio']:.2f}x its training FLOPs" if math.isfinite(c.get("flops_ratio", math.nan)) else ""
    size = f"{c['better']} - {c['worse']} = {d.mean:+.4f}"
    if not d.has_interval:
        return head + f"{size}{cost} on a single seed: no interval, so no claim."
    if c["verdict"] == "no spread":
        return head + (
            f"{size}{cost} on every one of the {d.n} seeds (zero spread): a t-interval cannot test a difference "
            "that never varies, so no claim either way."
        )
    ci = f"[{d.low:+.4f}, {d.high:+.4f}] (95% paired t-interval over {d.n} seeds)"
    if c["verdict"] == "holds":
        return head + f"{c['better']} > {c['worse']} holds: {size} {ci}{cost}." + power_sentence(c, cs)
    if c["verdict"] == "reversed":
        return head + f"{c['better']} > {c['worse']} is reversed: {size} {ci}{cost}." + power_sentence(c, cs)
    told = f"{c['better']} and {c['worse']} cannot be told apart: {size} {ci} contains 0{cost}."
    return head + told + power_sentence(c, cs)


# ------------------------------------------------------------------------------ outputs
def _cell(cell: dict[str, Any] | None, key: str) -> str:
    if not cell:
        return "-"
    scale, fmt = (1e12, "{:.2f}") if key == "train_flops" else (1.0, "{:.3f}")
    if key in ("images_per_s", "samples_seen"):
        fmt = "{:.0f}"
    mean = fmt.format(cell["mean"] / scale)
    if not math.isfinite(cell["low"]):
        return mean
    return f"{mean} ± {fmt.format((cell['high'] - cell['low']) / 2 / scale)}"


def markdown(result: dict[str, Any], cs: CompareSpec) -> str:
    n = len(result["seeds"])
    lines = [
        f"Mean ± half-width of the 95% t-interval over seeds ({n} seeds: {', '.join(result['seeds'])}); "
        "train_flops in TFLOPs (masking-aware, docs/records.md); images_per_s measured in each run.",
        "",
    ]
    for b in result["budgets"]:
        if cs.budget:
            lines += [f"### {cs.budget} = {b}", ""]
        cols = result["columns"]
        lines.append(f"| {cs.group} | seeds | " + " | ".join(cols) + " |")
        lines.append("|---|---:|" + "---:|" * len(cols))
        for g, cells in result["table"][b].items():
            seeds = max((c["n"] for c in cells.values()), default=0)
            lines.append(f"| {g} | {seeds} | " + " | ".join(_cell(cells.get(k), k) for k in cols) + " |")
        if result.get("chance"):
            chance = result["chance"]
            lines.append(
                "| chance | - | " + " | ".join(f"{chance[k]:.3f}" if k in chance else "-" for k in cols) + " |"
            )
        for label, key in (("majority class", "majority"), ("text-only floor (mean over trials)", "text_floor")):
            if result.get(key):
                level = result[key]
                lines.append(
                    f"| {label} | - | " + " | ".join(f"{level[k]:.3f}" if k in level else "-" for k in cols) + " |"
                )
        lines.append("")
    if result["claims"]:
        lines += ["### The paper's ordering, tested", ""]
        lines += claims_table(result["claims"], cs)
        lines += [f"- {c['sentence']}" for c in result["claims"]]
        lines.append("")
    return "\n".join(lines)


def claims_table(claims: list[dict[str, Any]], cs: CompareSpec) -> list[str]:
    """One row per claim: the difference with its interval, the smallest difference the seeds detect
    (80% power, 5% level) and, with a target effect, the seeds it needs; then a blank line."""

    def num(v: Any, fmt: str = "{:+.4f}") -> str:
        return fmt.format(v) if isinstance(v, int | float) and math.isfinite(v) else "-"

    target = cs.target_effect is not None
    head = "| budget | claim | metric | difference [95% CI] | detectable (80% power) |"
    head += " target | seeds for target |" * target + " verdict |"
    rows = [head, "|---|---|---|---|---:|" + "---:|---:|" * target + "---|"]
    for c in claims:
        d = c.get("difference")
        diff = "-" if d is None else num(d["mean"]) + (f" [{num(d['low'])}, {num(d['high'])}]" if d["n"] > 1 else "")
        row = f"| {c['budget']} | {c['better']} > {c['worse']} | {c['metric']} | {diff} | {num(c.get('detectable'), '{:.4f}')} |"
        if target:
            need = c.get("seeds_for_target")
            row += f" {num(c.get('target'), '{:.4f}')} | {need if need else '-'} |"
        rows.append(row + f" {c['verdict']} |")
    return [*rows, ""]


def figure(result: dict[str, Any], cs: CompareSpec, out: Path) -> Path | None:
    """Claim metric (or the first column) vs training FLOPs: one colour per group, one marker per
    budget, 95% intervals as error bars (both axes: FLOPs vary little over seeds, images do not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(cs.claim_metrics) or result["columns"][:1]
    if not metrics or not result["budgets"]:
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


def write_comparison(study_dir: Path, cs: CompareSpec, out: Path, note: str = "") -> tuple[str, dict[str, Any]]:
    """comparison.json, comparison.md and comparison.png in `out`; returns (Markdown, result). `note`: a
    line written under the table (the report says there which metrics come from a re-evaluation)."""
    rows, skipped = trial_records(study_dir, cs)
    result = compare(rows, cs)
    result["skipped"] = skipped
    text = markdown(result, cs)
    if note:
        text += f"\n{note}\n"
        result["note"] = note
    if skipped:
        text += "\nLeft out: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) + ".\n"
    out.mkdir(parents=True, exist_ok=True)
    png = figure(result, cs, out / "comparison.png")
    if png is not None:
        text += f"\n![metric vs compute]({png.name})\n"
    write_text_atomic(out / "comparison.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(out / "comparison.md", f"# Comparison: study `{study_dir.name}`\n\n" + text)
    return text, result
