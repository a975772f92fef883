"""The words and tables of a comparison (sweep.compare computes the numbers; this module only writes
them): one sentence per claim with its power, one per masked group on the change between budgets,
the Markdown tables, and the body of comparison.md with its links. Split out of sweep.compare so that
each stays under ~450 lines: every sentence with a result number in it is generated here, from the
numbers, never written by hand (docs/sweeps.md, "Reports regenerated from the numbers").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from maskvlp.stats import LEVEL, MAX_SEEDS, POWER, Interval
from maskvlp.sweep.comparetrend import TRENDS

if TYPE_CHECKING:
    from maskvlp.sweep.comparespec import CompareSpec

# how the tables head the run-record columns (sweep.compare.RECORD_COLUMNS), and what they measure
RECORD_LABELS = {
    "images_per_s": "images/s",
    "samples_seen": "samples seen",
    "train_flops": "TFLOPs",
    "wall_s": "train time (s)",
    "mask_ratio": "mask ratio",
    "cluster_coverage": "coverage",
}
RECORD_CAPTION = (
    "TFLOPs: training FLOPs, masking-aware (docs/records.md); images/s and train time (s): measured in each run "
    "(training only, wall clock); mask ratio: the mean fraction of image patches removed (achieved); coverage: "
    "the mean fraction of patches in a cluster."
)


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


def _pair(a: float, b: float) -> str:
    """`a -> b` with the fewest decimals (3 to 6) that show them apart; one number when they are equal."""
    if a == b:
        return f"{a:.3f}"
    for places in range(3, 7):
        left, right = f"{a:.{places}f}", f"{b:.{places}f}"
        if left != right:
            break
    return f"{left} -> {right}"


def budget_sentence(change: dict[str, Any]) -> str:
    """One masked group between two budgets: how many of its metrics have a higher mean at the second,
    and every metric that does not, with both means (e.g. "cluster: 5 of 7 metrics higher at compute than
    at samples; lower: linear_probe/val/top1 (0.064 -> 0.059)")."""
    n = len(change["higher"]) + len(change["lower"]) + len(change["equal"])
    text = (
        f"{change['group']}: {len(change['higher'])} of {n} metrics higher at {change['to']} than at {change['from']}"
    )
    for kind in ("lower", "equal"):
        if change[kind]:
            text += f"; {kind}: " + ", ".join(f"{m['metric']} ({_pair(m['from'], m['to'])})" for m in change[kind])
    return text + "."


# ------------------------------------------------------------------------------ tables
EQUAL_FLOPS = 0.02  # a FLOPs ratio within 2% of 1 counts as equal compute


def equal_compute_sentence(budget: str, groups: dict[str, dict[str, Any]], cs: CompareSpec) -> str:
    """Which groups trained for the unmasked arm's FLOPs at `budget` (mean ratio within EQUAL_FLOPS)."""
    ratios = {g: r["flops_ratio"]["mean"] for g, r in groups.items() if "flops_ratio" in r}
    base = next(iter(groups.values()))["against"]
    equal = [g for g, x in ratios.items() if abs(x - 1) <= EQUAL_FLOPS]
    other = [f"{g} ({x:.2f}x)" for g, x in ratios.items() if abs(x - 1) > EQUAL_FLOPS]
    said = f"{cs.budget or 'all'} = {budget}: training FLOPs within {EQUAL_FLOPS:.0%} of {base}'s: "
    said += ", ".join(equal) or "no arm"
    if other:
        said += "; not: " + ", ".join(other) + f" (compared with {base} at this budget, not at equal compute)"
    return said + "."


def _ratio(ci: dict[str, Any]) -> str:
    if ci["n"] < 2:
        return f"{ci['mean']:.2f} (one seed)"
    return f"{ci['mean']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def _cell(cell: dict[str, Any] | None, key: str) -> str:
    if not cell:
        return "-"
    scale, fmt = (1e12, "{:.2f}") if key == "train_flops" else (1.0, "{:.3f}")
    if key in ("images_per_s", "samples_seen", "wall_s"):
        fmt = "{:.0f}"
    mean = fmt.format(cell["mean"] / scale)
    if not math.isfinite(cell["low"]):
        return mean
    return f"{mean} ± {fmt.format((cell['high'] - cell['low']) / 2 / scale)}"


def markdown(result: dict[str, Any], cs: CompareSpec) -> str:
    """The tables (one per budget, with the chance, majority-class and text-only floor rows), the change
    between budgets per masked group, and the claims: a table, then one sentence each."""
    n = len(result["seeds"])
    lines = [
        f"Mean ± half-width of the 95% t-interval over seeds ({n} seeds: {', '.join(result['seeds'])}). "
        + RECORD_CAPTION,
        "",
    ]
    for b in result["budgets"]:
        if cs.budget:
            lines += [f"### {cs.budget} = {b}", ""]
        cols = result["columns"]
        lines.append(f"| {cs.group} | seeds | " + " | ".join(RECORD_LABELS.get(c, c) for c in cols) + " |")
        lines.append("|---|---:|" + "---:|" * len(cols))
        for g, cells in result["table"][b].items():
            seeds = max((c["n"] for c in cells.values()), default=0)
            lines.append(f"| {g} | {seeds} | " + " | ".join(_cell(cells.get(k), k) for k in cols) + " |")
        for label, key in (
            ("chance", "chance"),
            ("majority class", "majority"),
            ("text-only floor (mean over trials)", "text_floor"),
        ):
            if result.get(key):
                level = result[key]
                lines.append(
                    f"| {label} | - | " + " | ".join(f"{level[k]:.3f}" if k in level else "-" for k in cols) + " |"
                )
        lines.append("")
    if result.get("budget_changes"):
        lines += [f"### From one {cs.budget} to the next", ""]
        lines.append(
            "Per masked group, its metrics' means over seeds at one budget against the next (a count of means, "
            "not a test: the claims below are the tests)."
        )
        lines += ["", *(f"- {budget_sentence(c)}" for c in result["budget_changes"]), ""]
    if result.get("speedups"):
        lines += ["### Measured speed and time against the unmasked arm", ""]
        lines.append(
            "Paired by seed, mean ratio [95% interval]: images/s over the unmasked arm's (the value for "
            "`train.compute_speedup` in a time-matched budget, `train.compute_basis: time`, on this machine) and "
            "training wall time over its (above 1: slower for the same budget)."
        )
        lines.append("")
        for b, groups in result["speedups"].items():
            for g, r in groups.items():
                pairs = (("speedup", "images/s x"), ("time_ratio", "time x"), ("flops_ratio", "TFLOPs x"))
                parts = [f"{label} {_ratio(r[k])}" for k, label in pairs if k in r]
                lines.append(f"- {cs.budget or 'all'} = {b}, {g} against {r['against']}: " + "; ".join(parts))
        lines += ["", *(f"- {equal_compute_sentence(b, groups, cs)}" for b, groups in result["speedups"].items())]
        lines.append("")
    if result["claims"]:
        lines += ["### The study's claims, tested", ""]
        lines += claims_table(result["claims"], cs)
        if result.get("family", {}).get("tests"):
            lines += [family_sentence(result["family"], result["claims"]), ""]
        lines += [f"- {c['sentence']}" for c in result["claims"]]
        lines.append("")
    if result.get("trends"):
        lines += [f"### How each difference changes along {cs.budget}", ""]
        lines.append(
            f"Paired by seed: each claim's difference at every {cs.budget} (in the sweep file's order), and its "
            f"change from the first to the last, against the direction the study expects ({cs.trend})."
        )
        lines += ["", trend_summary(result["trends"], cs), ""]
        lines += [f"- {trend_sentence(t, cs)}" for t in result["trends"]]
        lines.append("")
    return "\n".join(lines)


def _change(t: dict[str, Any]) -> str:
    d = Interval(**t["change"])
    return (
        f"{t['metric']}, {t['better']} - {t['worse']} {t['direction']} by {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
    )


def trend_summary(trends: list[dict[str, Any]], cs: CompareSpec) -> str:
    """What the trend rows say together: how many changes can be told from none, in which direction
    against the study's expectation, and how small a change the others could have shown."""
    told = [t for t in trends if t["direction"] in TRENDS]
    unclear = [t for t in trends if t["direction"] == "overlap"]
    tested = told + unclear
    expected = cs.trend
    said = f"Of the {len(trends)} trend rows, {len(told)} can be told apart from no change at the {1 - LEVEL:.0%} level"
    if told:
        agree = sum(t["direction"] == expected for t in told)
        said += f" ({agree} as the study expects, '{expected}', and {len(told) - agree} against it): "
        said += "; ".join(_change(t) for t in told)
    said += ". "
    if unclear:
        sizes = [t["detectable"] for t in unclear if math.isfinite(t.get("detectable", math.nan))]
        span = f"{min(sizes):.4f}-{max(sizes):.4f}" if len(sizes) > 1 else (f"{sizes[0]:.4f}" if sizes else "")
        said += f"{len(unclear)} cannot be told apart" + (
            f"; the smallest changes their seeds detect with {POWER:.0%} power are {span}. " if span else ". "
        )
    if len(trends) > len(tested):
        said += f"{len(trends) - len(tested)} could not be tested (a single seed, no spread or no data). "
    if tested:
        said += (
            f"Each row is its own paired t-test, not corrected for the {len(tested)}: with no change anywhere, "
            f"about {len(tested) * (1 - LEVEL):.2f} of them would be told apart by chance alone."
        )
    return said.rstrip()


def trend_sentence(t: dict[str, Any], cs: CompareSpec) -> str:
    """One sentence per claim and metric on how its difference changes along the budget axis."""
    pair, key = f"{t['better']} - {t['worse']}", cs.budget
    head = f"{t['metric']}, {pair} from {key} = {t['first']} to {t['last']}: "
    if t["direction"] == "no data":
        return head + "no seed has all four trials finished, so nothing can be said."
    per = t["per_budget"]
    at = "; ".join(f"{b}: {per[b]['mean']:+.4f}" for b in per)
    d = Interval(**t["change"])
    size = f"it changes by {d.mean:+.4f}"
    if not d.has_interval:
        return head + f"{at}; {size} on a single seed: no interval, so no claim."
    if t["direction"] == "no spread":
        return head + f"{at}; {size} on every one of the {d.n} seeds (zero spread): no claim either way."
    ci = f"[{d.low:+.4f}, {d.high:+.4f}] (95% paired t-interval over {d.n} seeds)"
    expected = t["expected"]
    if t["direction"] in ("rises", "falls"):
        agrees = (
            "as the study expects" if t["direction"] == expected else f"against the study's expectation ({expected})"
        )
        return head + f"{at}; {size} {ci}: the difference {t['direction']}, {agrees}."
    detect = t.get("detectable", math.nan)
    seen = (
        f" (the smallest change these seeds detect with {POWER:.0%} power: {detect:.4f})"
        if math.isfinite(detect)
        else ""
    )
    return head + f"{at}; {size} {ci} contains 0: no change can be told apart{seen}, so '{expected}' is not shown."


def claims_table(claims: list[dict[str, Any]], cs: CompareSpec) -> list[str]:
    """One row per claim: the difference with its interval, the smallest difference the seeds detect
    (80% power, 5% level) and, with a target effect, the seeds it needs; then a blank line."""

    def num(v: Any, fmt: str = "{:+.4f}") -> str:
        return fmt.format(v) if isinstance(v, int | float) and math.isfinite(v) else "-"

    target = cs.target_effect is not None
    head = "| budget | claim | metric | difference [95% CI] | detectable (80% power) |"
    head += " target | seeds for target |" * target + " p | after Holm | verdict |"
    rows = [head, "|---|---|---|---|---:|" + "---:|---:|" * target + "---:|---|---|"]
    for c in claims:
        d = c.get("difference")
        diff = "-" if d is None else num(d["mean"]) + (f" [{num(d['low'])}, {num(d['high'])}]" if d["n"] > 1 else "")
        row = f"| {c['budget']} | {c['better']} > {c['worse']} | {c['metric']} | {diff} | {num(c.get('detectable'), '{:.4f}')} |"
        if target:
            need = c.get("seeds_for_target")
            row += f" {num(c.get('target'), '{:.4f}')} | {need if need else '-'} |"
        holm = {True: "rejects 0", False: "does not"}.get(c.get("holm"), "-")
        rows.append(row + f" {num(c.get('p'), '{:.3f}')} | {holm} | {c['verdict']} |")
    return [*rows, ""]


def family_sentence(family: dict[str, Any], claims: list[dict[str, Any]]) -> str:
    """What the claims say as one family of tests: the verdicts found against those chance alone would
    give, and which claims survive Holm's correction (computed by sweep.compare.family_of)."""
    m, alpha = family["tests"], 1 - family["level"]
    said = (
        f"The {m} tested rows are one family of paired t-tests at the {alpha:.0%} level: if no arm differed from "
        f'another, about {family["by_chance"]:.2f} of them would read "holds" or "reversed" by chance alone; '
        f"here {family['holds']} {'holds' if family['holds'] == 1 else 'hold'} and {family['reversed']} "
        f"{'is' if family['reversed'] == 1 else 'are'} reversed. "
    )
    kept = [c for c in claims if c.get("holm")]
    holm = f"Under Holm's correction over the {m} tests (a {alpha:.0%} chance of any false verdict in the family), "
    if not kept:
        return said + holm + 'none rejects "no difference".'
    named = "; ".join(
        f"{c['budget']}, {c['metric']}: {c['better']} {'>' if c['verdict'] == 'holds' else '<'} {c['worse']}"
        f" ({'the claim' if c['verdict'] == 'holds' else 'the claim reversed'}, p = {c['p']:.2g})"
        for c in kept
    )
    return said + holm + f'{len(kept)} {"rejects" if len(kept) == 1 else "reject"} "no difference": {named}.'


def body(
    result: dict[str, Any],
    cs: CompareSpec,
    figure: str | None,
    masks: dict[str, str],
    links: str = "",
    trend: str | None = None,
) -> str:
    """comparison.md without its title: the tables and sentences, the re-evaluation note, the trials left
    out, the figure and the mask pictures (file names in the comparison's folder; `links`: the path from
    the Markdown file that shows this text to that folder, "" beside it)."""
    text = markdown(result, cs)
    if result.get("note"):
        text += f"\n{result['note']}\n"
    if result.get("skipped"):
        text += "\nLeft out: " + ", ".join(f"{n} {why}" for why, n in sorted(result["skipped"].items())) + ".\n"
    if figure is not None:
        text += f"\n![metric vs compute]({links}{figure})\n"
    if trend is not None:
        text += f"\n![each claim's difference along {cs.budget}]({links}{trend})\n"
    if masks:
        text += (
            "\nMasks of each cluster arm, as `maskvlp masks` draws them with the settings of the arm's first "
            "trial (calibrated as that run calibrated, on its training images): images, clusters, and the "
            "patches each strategy keeps.\n\n"
        )
        text += "\n".join(f"![masks: {g}]({links}{name})" for g, name in masks.items()) + "\n"
    return text
