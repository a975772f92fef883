"""The mask pictures of a comparison: for each group whose trials use cluster masking, the picture
`maskvlp masks` draws (viz.mask_figure: images, clusters, the patches each strategy keeps), with the
settings of the group's first trial, as masks-<group>.png beside comparison.md. Only where the trials'
run folders exist (a comparison regenerated from trial-metrics.csv keeps the pictures already drawn).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CLUSTER = "cluster"  # the strategy whose arms get a picture
PICTURE_IMAGES = 6  # images per picture (`maskvlp masks --count`'s default)


def picture_name(group: str) -> str:
    """masks-<group>.png, the group's value made file-safe."""
    return f"masks-{re.sub(r'[^A-Za-z0-9_.-]', '_', group)}.png"


def draw(run: Path, out: Path, count: int = PICTURE_IMAGES) -> Path | None:
    """The picture of the run in `run` (its config.yaml, read with the project's loaders) when it
    trains with cluster masking, else None: its images as `maskvlp masks` reads them (the first
    training shard in place, else the shard folder's val split), its masking calibrated as the run
    calibrated it (seeded by train.seed, on its training images)."""
    from maskvlp.maskpicture import mask_picture
    from maskvlp.params import config_from_dict
    from maskvlp.runs import load_run_record

    record = load_run_record(run)
    if record is None:
        raise FileNotFoundError(f"{run}: no config.yaml (not a run folder)")
    if (record.config.get("masking") or {}).get("strategy") != CLUSTER:
        return None
    return mask_picture(config_from_dict(record.config), out, count)[0]


def draw_masks(rows: list[dict[str, Any]], groups: list[str], out: Path) -> dict[str, str]:
    """masks-<group>.png in `out` for every group of `groups` whose first trial (in `rows`, any budget)
    uses cluster masking; returns {group: why not drawn} for the cluster arms that could not be drawn
    (data gone, a config this version refuses), which the report prints instead."""
    first: dict[str, Path] = {}
    for r in rows:
        first.setdefault(r["group"], Path(r["run"]))
    failed = {}
    for g in [g for g in groups if g in first]:
        try:
            draw(first[g], out / picture_name(g))
        except (OSError, ValueError, RuntimeError) as exc:  # FileNotFoundError, ConfigError among them
            failed[g] = f"{type(exc).__name__}: {exc}"
    return failed
