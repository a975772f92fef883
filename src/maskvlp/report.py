"""`maskvlp report runs/*`: key metrics of several runs side by side, as a table and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

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


def collect(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per evaluated run: name, masking params, metrics (runs without eval/metrics.json are skipped)."""
    rows = []
    for d in map(Path, run_dirs):
        metrics_file, config_file = d / "eval" / "metrics.json", d / "config.yaml"
        if not metrics_file.is_file() or not config_file.is_file():
            continue
        cfg = yaml.safe_load(config_file.read_text())
        m = cfg["masking"]
        masking = m["strategy"] if m["strategy"] != "cluster" else f"cluster a={m['anchor_ratio']} t={m['threshold']}"
        if m["strategy"] != "none":
            masking += f" r={m['ratio']}"
        rows.append({"run": d.name, "masking": masking, "metrics": json.loads(metrics_file.read_text())})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in KEY_METRICS if any(k in r["metrics"] for r in rows)]
    short = [
        k.replace("zeroshot/", "zs/")
        .replace("retrieval/", "ret/")
        .replace("composition/", "comp/")
        .replace("linear_probe/", "lp/")
        .replace("/val/", "/")
        .replace("/objects/", "/obj/")
        for k in keys
    ]
    head = f"{'run':16s} {'masking':32s} " + " ".join(f"{s:>12s}" for s in short)
    lines = [head, "-" * len(head)]
    for r in rows:
        vals = " ".join(f"{r['metrics'][k]:12.3f}" if k in r["metrics"] else f"{'-':>12s}" for k in keys)
        lines.append(f"{r['run'][:16]:16s} {r['masking'][:32]:32s} {vals}")
    return "\n".join(lines)


def bar_chart(rows: list[dict[str, Any]], out: str | Path) -> Path:
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
    ax.set_xticks(x + width * (len(rows) - 1) / 2, [k.replace("/", "\n", 1) for k in keys], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    ax.set_title("maskvlp runs: key metrics (full images)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
