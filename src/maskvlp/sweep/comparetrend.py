"""How each claim's difference changes along the budget axis (`compare.trend`), e.g. CLIPA's inverse
scaling law: the accuracy lost to a shorter image sequence falls as the encoder grows. The budget key
is then any ordered label of the space (model width, data size, ...), its values in the sweep file's
order. Per claim `A > B` and claim metric, paired by seed: the difference A - B at every value, and its
change from the first value to the last, (A - B)[last] - (A - B)[first], with its 95% t-interval over
the seeds that have all four trials, the smallest change those seeds detect (80% power, 5% level), and
whether it rises, falls or cannot be told from no change, against the direction the study expects.
The words are comparetext's; the numbers and trend.png are made here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from maskvlp.runs import atomic_path
from maskvlp.stats import detectable_difference, mean_ci, paired_difference, verdict
from maskvlp.sweep.comparespec import CompareSpec

TRENDS = ("rises", "falls")
TREND_FIGURE = "trend.png"


def trends(per_seed: dict[tuple[str, str, str], dict[str, float]], cs: CompareSpec, budgets: list[str]) -> list:
    """One record per claim and claim metric: `per_budget` {value: interval of A - B}, and from the
    first value to the last `change` (an interval), `direction` (rises | falls | overlap | no spread |
    no interval | no data), `detectable` and the study's `expected` direction."""
    if len(budgets) < 2:  # (in the sweep file's order: compare.compare orders them)
        return []
    first, last = budgets[0], budgets[-1]
    out = []
    for better, worse in cs.claims:
        for metric in cs.claim_metrics:
            diffs = {}
            for b in budgets:
                a, z = per_seed.get((b, better, metric), {}), per_seed.get((b, worse, metric), {})
                diffs[b] = {s: a[s] - z[s] for s in sorted(set(a) & set(z), key=str)}
            record: dict[str, Any] = {"better": better, "worse": worse, "metric": metric, "first": first}
            record |= {"last": last, "expected": cs.trend}
            record["per_budget"] = {b: mean_ci(list(d.values())).to_dict() for b, d in diffs.items() if d}
            common = sorted(set(diffs[first]) & set(diffs[last]), key=str)
            if not common:
                out.append(record | {"direction": "no data"})
                continue
            change = paired_difference(diffs[last], diffs[first])
            steps = [diffs[last][s] - diffs[first][s] for s in common]
            spread = math.sqrt(sum((x - change.mean) ** 2 for x in steps) / (len(steps) - 1)) if len(steps) > 1 else 0
            v = verdict(change)
            record |= {
                "change": change.to_dict(),
                "direction": {"holds": "rises", "reversed": "falls"}.get(v, v),
                "detectable": detectable_difference(spread, len(steps)) if len(steps) > 1 else math.nan,
            }
            out.append(record)
    return out


def trend_figure(result: dict[str, Any], cs: CompareSpec, out: Path) -> Path | None:
    """trend.png: per claim metric, each claim's A - B (mean, 95% interval over seeds) at every budget
    value in order, a line per claim, 0 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = result.get("trends") or []
    metrics = list(dict.fromkeys(r["metric"] for r in records))
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, r in enumerate(x for x in records if x["metric"] == metric):
            values = list(r["per_budget"])  # in the sweep file's order, as trends made them
            means = [r["per_budget"][b]["mean"] for b in values]
            errs = [
                0.0 if not math.isfinite(r["per_budget"][b]["low"]) else (r["per_budget"][b]["high"] - means[j])
                for j, b in enumerate(values)
            ]
            ax.errorbar(range(len(values)), means, yerr=errs, fmt="-o", color=f"C{i}", capsize=3,
                        label=f"{r['better']} - {r['worse']}")  # fmt: skip
            ax.set_xticks(range(len(values)), values)
        ax.axhline(0, color="0.4", linestyle="--", linewidth=1)
        ax.set_xlabel(cs.budget or "")
        ax.set_ylabel(f"difference in {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"each claim's difference along {cs.budget}: mean and 95% interval over seeds", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
