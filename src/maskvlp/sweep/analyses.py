"""The analyses a sweep file may ask for, behind one interface (sweep.spec asks this module; nothing below
it imports an analysis): `fit:` scaling curves over the grid (sweep.fit, `maskvlp scaling-fit`) and
`compare:` strategies over seeds (sweep.compare, `maskvlp sweep-report`). Each checks its section when
the file is parsed (`check`; at least that it is a mapping), its metric names against the params before
anything runs (`validate`), and writes its outputs from the study's finished trials (`write`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maskvlp.config import Config
from maskvlp.sweep import compare, fit
from maskvlp.sweep.space import SweepSpec, fail


@dataclass(frozen=True)
class Analysis:
    section: str  # the sweep file's key
    example: str  # a well-formed section, for the message that refuses another type
    check: Callable[[SweepSpec], Any] | None  # at parse time, returns the analysis' spec (fit: its grid waits)
    validate: Callable[[SweepSpec, Config], Any]  # against the params, before anything runs; the same spec
    write: Callable[..., Any]  # the outputs, from the study folder(s) and that spec


ANALYSES = {
    "fit": Analysis("fit", "{metric: zeroshot/objects/top1}", None, fit.validate_fit, fit.write_outputs),
    "compare": Analysis(
        "compare",
        "{group: strategy, seeds: train.seed}",
        compare.compare_spec,
        compare.validate_compare,
        compare.write_comparison,
    ),
}


def sections(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each analysis' section of the sweep file's mapping ({} when absent); refused unless a mapping."""
    out = {}
    for name, a in ANALYSES.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise fail(name, f"must be a mapping such as {a.example}")
        out[name] = dict(value)
    return out


def check(spec: SweepSpec, present: set[str]) -> None:
    """Parse time: every section the file has (even an empty one) checked against the space."""
    for name, a in ANALYSES.items():
        if name in present and a.check is not None:
            a.check(spec)


def validate(spec: SweepSpec, cfg: Config) -> None:
    """Before anything runs: every section the spec holds, checked against the base params."""
    for name, a in ANALYSES.items():
        if getattr(spec, name):
            a.validate(spec, cfg)
