"""`maskvlp report runs/*`: key metrics of several runs side by side, as a table and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskvlp.runs import atomic_path

KEY_METRICS = (
    "zeroshot/objects/top1",
    "zeroshot/val/top1",
    "retrieval/val/i2t_r1",
    "retrieval/val/t2i_r1",
    "linear_probe/val/top1",
    "composition/val/attribute",
    "composition/val/relation",
    "composition/val/object",
)


def collect(locations: list[str | Path]) -> list[dict[str, Any]]:
    """One row per evaluated run found in `locations` (run folders or folders of runs): name, masking
    label (from the masking registry) and the evaluation metrics of its result record."""
    from maskvlp.masking import describe, strategy_config
    from maskvlp.runs import list_runs

    rows = []
    for run in list_runs(locations):
        if not run.metrics:
            continue
        masking = describe(strategy_config(**run.config.get("masking", {})))
        rows.append({"run": run.name, "masking": masking, "metrics": run.metrics})
    return rows


def chance_level(key: str, metrics: dict[str, float]) -> float | None:
    """What a model that knows nothing scores on `key`, from the chance keys evaluation writes
    (metrics.chance_key: 1/classes for top-1, 1/N for R@1) and 0.5 for a two-way composition choice."""
    from maskvlp.metrics import chance_key

    if key.split("/")[0] == "composition":
        return 0.5
    found = chance_key(key)
    return metrics.get(found) if found else None


def short_name(key: str) -> str:
    for old, new in (("zeroshot/", "zs/"), ("retrieval/", "ret/"), ("composition/", "comp/"), ("linear_probe/", "lp/")):
        key = key.replace(old, new)
    return key.replace("/val/", "/").replace("/objects/", "/obj/")


def table(rows: list[dict[str, Any]]) -> str:
    """Runs as rows, key metrics as columns (headers as wide as their column), and a chance row."""
    keys = [k for k in KEY_METRICS if any(k in r["metrics"] for r in rows)]
    cols = [max(6, len(short_name(k))) for k in keys]
    run_w = max(3, *(len(r["run"]) for r in rows))
    mask_w = max(7, *(len(r["masking"]) for r in rows))
    names = "  ".join(f"{short_name(k):>{w}s}" for k, w in zip(keys, cols))
    head = f"{'run':{run_w}s}  {'masking':{mask_w}s}  {names}"
    lines = [head, "-" * len(head)]
    for r in rows:
        vals = "  ".join(
            f"{r['metrics'][k]:{w}.3f}" if k in r["metrics"] else f"{'-':>{w}s}" for k, w in zip(keys, cols)
        )
        lines.append(f"{r['run']:{run_w}s}  {r['masking']:{mask_w}s}  {vals}")
    chance = [next((c for r in rows if (c := chance_level(k, r["metrics"])) is not None), None) for k in keys]
    vals = "  ".join(f"{c:{w}.3f}" if c is not None else f"{'-':>{w}s}" for c, w in zip(chance, cols))
    lines.append(f"{'chance':{run_w}s}  {'':{mask_w}s}  {vals}")
    return "\n".join(lines)


def bar_chart(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Grouped bars, one group per key metric, with each metric's chance level drawn across its group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [k for k in KEY_METRICS if any(k in r["metrics"] for r in rows)]
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(keys)), 4))
    for i, r in enumerate(rows):
        ax.bar(x + i * width, [r["metrics"].get(k, 0) for k in keys], width, label=f"{r['run']} ({r['masking']})")
    for j, k in enumerate(keys):
        level = next((c for r in rows if (c := chance_level(k, r["metrics"])) is not None), None)
        if level is not None:
            ax.hlines(level, x[j] - width / 2, x[j] + width * (len(rows) - 0.5), colors="black", linestyles="--")
    ax.plot([], [], "k--", label="chance")
    ax.set_xticks(x + width * (len(rows) - 1) / 2, [k.replace("/", "\n", 1) for k in keys], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    ax.set_title("maskvlp runs: key metrics (full images)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out
