"""The sweep file's `rules:`: params derived per trial from its point (warmup, checkpoint cadence, lr by
width, samples from unique pairs). Pure; it raises ValueError, which sweep.spec gives the key to as a
SweepSpecError (this module sits below the space, which derives its trials' params through it)."""

from __future__ import annotations

import math
from typing import Any

# rule -> (the params key it derives, what it needs, a one-line description for errors and docs)
RULES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "warmup_fraction": ("train.warmup_samples", ("train.samples",), "warmup = fraction x samples"),
    "checkpoints": ("train.checkpoint_every_samples", ("train.samples",), "checkpoint every samples / n"),
    "evaluations": ("train.eval_every_samples", ("train.samples",), "evaluate a val subset every samples / n"),
    "lr": ("train.lr", ("model.vision",), "lr per 256 samples at width 128, x (width / 128)^lr_width_exponent"),
    "samples_per_pair": ("train.samples", ("train.unique_pairs",), "samples seen = n x unique pairs (fixed epochs)"),
}
VALUES = {  # rule -> (whether a value is accepted, what is, for the message)
    "warmup_fraction": (lambda v: isinstance(v, int | float) and 0 <= v < 1, "a fraction in [0, 1)"),
    "checkpoints": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "evaluations": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: isinstance(v, int | float) and v > 0, "a positive number"),
    "samples_per_pair": (lambda v: isinstance(v, int | float) and v > 0, "a positive number"),
}
RULE_OPTIONS = ("lr_width_exponent",)
REFERENCE_WIDTH = 128


def check_rules(rules: Any, base: dict[str, Any], space) -> None:
    """Refuse unknown rules, bad values, a derived key that base or space also sets (which one would
    win is not obvious), and a rule whose input no trial sets."""
    if not isinstance(rules, dict):
        raise ValueError("rules: must be a mapping such as {warmup_fraction: 0.1, checkpoints: 2}")
    unknown = set(rules) - set(RULES) - set(RULE_OPTIONS)
    if unknown:
        known = ", ".join(f"{k} ({v[2]})" for k, v in RULES.items())
        raise ValueError(f"rules: unknown rule(s) {', '.join(sorted(unknown))}; known: {known}")
    # the params keys base and space set (a label: every key its choices expand into)
    given = set(base) | {k for p in space for choice in (p.choices or (None,)) for k in p.expand(choice)}
    for name, value in rules.items():
        if name in RULE_OPTIONS:
            if "lr" not in rules:
                raise ValueError(f"rules.{name}: needs rules.lr (the lr per 256 samples at width 128)")
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"rules.{name}: must be a number, got {value!r}")
            continue
        target, needs, _ = RULES[name]
        accepts, want = VALUES[name]
        if isinstance(value, bool) or not accepts(value):
            raise ValueError(f"rules.{name}: must be {want}, got {value!r}")
        if target in given:
            raise ValueError(f"rules.{name}: derives {target}, which base or space also sets; drop one of the two")
        derived = {RULES[r][0] for r in rules if r in RULES}
        missing = [k for k in needs if k not in given and k not in derived]
        if missing:
            raise ValueError(f"rules.{name}: needs {', '.join(missing)} in base or space to derive {target}")


def derive(merged: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
    """The params the rules derive from one trial's base + sampled values (pure). A rule whose input is
    not in `merged` (the base alone, before a point is sampled) derives nothing."""
    out: dict[str, Any] = {}
    if "samples_per_pair" in rules and "train.unique_pairs" in merged:
        out["train.samples"] = int(round(rules["samples_per_pair"] * merged["train.unique_pairs"]))
    samples = out.get("train.samples", merged.get("train.samples"))
    if samples is not None:
        if "warmup_fraction" in rules:
            out["train.warmup_samples"] = int(round(rules["warmup_fraction"] * samples))
        if "checkpoints" in rules:
            out["train.checkpoint_every_samples"] = max(1, math.ceil(samples / rules["checkpoints"]))
        if "evaluations" in rules:
            out["train.eval_every_samples"] = samples // rules["evaluations"] if rules["evaluations"] else 0
    if "lr" in rules and "model.vision" in merged:
        from maskvlp.model import VISION_PRESETS

        width = VISION_PRESETS[merged["model.vision"]].width
        out["train.lr"] = float(rules["lr"] * (width / REFERENCE_WIDTH) ** rules.get("lr_width_exponent", 0.0))
    return out
