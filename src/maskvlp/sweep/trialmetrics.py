"""trial-metrics.csv, the committed per-trial table of a comparison (sweep.compare): one row per trial
used, with its group, budget, seed, run folder, the value keys that come from a re-evaluation, and every
value column at full precision; one row per trial left out, with only its reason. runs/ is not
committed: this table is what anyone recomputes an interval from, and what `maskvlp sweep-report NAME
--from-metrics` writes the comparison again from (sweep.compare.trial_records reads it into the rows it
reads from a study folder)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maskvlp.runs import write_text_atomic

if TYPE_CHECKING:
    from maskvlp.sweep.comparespec import CompareSpec

METRICS_FILE = "trial-metrics.csv"  # beside comparison.md
KEY_COLUMNS = ("group", "budget", "seed", "run", "left_out", "reevaluated")  # then one column per value


def write_trial_metrics(path: Path, rows: list[dict[str, Any]], skipped: dict[str, int]) -> Path:
    """trial-metrics.csv: the key columns, then every value column (sorted by name) at full precision
    (Python's shortest round-trip repr: reading it back gives the same floats); a missing value is an
    empty cell. A trial left out is a row with only its reason (`left_out`), one per trial."""
    keys = sorted({k for r in rows for k in r["values"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*KEY_COLUMNS, *keys])
    for r in rows:
        head = [r["group"], r["budget"], r["seed"], r["run"], "", " ".join(r.get("reevaluated", ()))]
        writer.writerow(head + [repr(r["values"][k]) if k in r["values"] else "" for k in keys])
    for why, n in sorted(skipped.items()):
        writer.writerows([["", "", "", "", why, ""] + [""] * len(keys)] * n)
    write_text_atomic(path, buffer.getvalue())
    return path


def read_trial_metrics(path: Path, cs: CompareSpec) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows and left-out counts of a trial-metrics.csv, as `trial_records` returns them from the
    study folder it was written from. A table of another shape, a value that is not a number or a group
    the compare: section does not name is a ValueError saying what to do."""
    rows, skipped = [], {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header[: len(KEY_COLUMNS)]) != KEY_COLUMNS:
            raise ValueError(
                f"{path}: not a trial-metrics table (its first columns must be {', '.join(KEY_COLUMNS)}); "
                f"it is written by `maskvlp sweep-report NAME` beside comparison.md"
            )
        keys = header[len(KEY_COLUMNS) :]
        for line, cells in enumerate(reader, start=2):
            if len(cells) != len(header):
                raise ValueError(f"{path}, line {line}: {len(cells)} cells, the header has {len(header)}")
            group, budget, seed, run, left_out, reevaluated = cells[: len(KEY_COLUMNS)]
            if left_out:
                skipped[left_out] = skipped.get(left_out, 0) + 1
                continue
            if group not in cs.group_values:
                raise ValueError(
                    f"{path}, line {line}: group {group!r} is not a value of {cs.group} in the compare: section "
                    f"({', '.join(cs.group_values)}): is this the study's own sweep file?"
                )
            values = {}
            for key, cell in zip(keys, cells[len(KEY_COLUMNS) :]):
                if cell:
                    try:
                        values[key] = float(cell)
                    except ValueError:
                        raise ValueError(f"{path}, line {line}: {key} = {cell!r} is not a number") from None
            row = {"group": group, "budget": budget, "seed": seed, "run": run, "values": values}
            rows.append(row | {"reevaluated": reevaluated.split()})
    return rows, skipped
