"""Scaling-law fits with honest uncertainty (pure functions over arrays; scipy does the fitting).

Forms (FORMS, one `register` each: err = E + a sum of saturating power laws, one per input):
    compute  err(C)    = E + A * (C / C0)^-alpha             (saturating power law; C0 = geometric mean of C)
    joint    err(N, D) = E + A * (N / N0)^-a + B * (D / D0)^-b   (model size N, data size D)
Normalising by the geometric mean keeps A of order one whatever the units (FLOPs are ~1e12).

Every fit reports whether it converged. It fails when the optimiser fails, when a parameter sits on a
bound (the data did not determine it), or when there are no more points than parameters. A fit that
did not converge carries no numbers, only its message. Intervals come from a bootstrap over points
(seeded): percentile 95% intervals of every parameter and of predictions, plus the share of resamples
whose refit failed. `frontier` keeps the compute-efficient points (no cheaper point has lower error),
`held_out` fits the cheaper half and checks the dearest points against that fit's 95% band, and
`compare` says whether one strategy's curve lies below another's and whether their intervals separate.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALPHA_MAX = 3.0  # exponents beyond this are not a power law in any data we fit: treated as a bound
MIN_DROP = 1e-3  # a fitted curve that falls less than this over the measured points has no scaling to report
# Intervals need resamples that can be refitted: with few distinct points most resamples hold too few
# of them (4 points, 3 parameters: only 9% of resamples hold all 4), and the few that succeed are all
# the same point set, which would give a zero-width "interval". Below this share, none is reported.
MIN_BOOTSTRAP_OK = 0.5


@dataclass(frozen=True)
class FitForm:
    """err = E + sum over inputs i of amplitude_i * (x_i / scale_i)^-exponent_i."""

    name: str
    terms: tuple[tuple[str, str], ...]  # per input: (amplitude, exponent) parameter names
    scales: tuple[str, ...]  # per input: its normaliser (the geometric mean of the input)
    inputs: tuple[str, ...]  # per input: the sweep.fit.Point attribute it is fitted on
    exponent_starts: tuple[float, ...]  # the optimiser starts from each of these exponents
    formula: str  # for the summary
    grid_problem: Callable[[list[dict[str, Any]], str], str | None]  # why a group's grid points cannot fix it
    required: bool = False  # the study fails without it (else it is left out with a note)

    @property
    def params(self) -> tuple[str, ...]:
        return ("E", *(name for term in self.terms for name in term))


FORMS: dict[str, FitForm] = {}  # by name; a new form is one `register(FitForm(...))`


def register(form: FitForm) -> None:
    FORMS[form.name] = form


def distinct(points: list[dict[str, Any]], *keys: str) -> int:
    """How many different values the params `keys` take together over the grid points."""
    return len({json.dumps([p.get(k) for k in keys], default=str) for p in points})


def _compute_problem(points: list[dict[str, Any]], group: str) -> str | None:
    computes, n = distinct(points, "model.vision", "model.text", "train.samples"), len(FORMS["compute"].params)
    if computes <= n:
        return (
            f"the grid has {computes} compute values per {group} (model sizes x samples), fewer "
            f"than the compute fit's {n} parameters + 1: add model sizes or samples values"
        )


def _joint_problem(points: list[dict[str, Any]], group: str) -> str | None:
    models, datas = distinct(points, "model.vision", "model.text"), distinct(points, "train.unique_pairs")
    n = len(FORMS["joint"].params)
    if models < 2 or datas < 2 or len(points) <= n:
        return (
            f"the joint fit E + A/N^a + B/D^b needs >= 2 model sizes and >= 2 data sizes and more than "
            f"{n} points per {group}; the grid has {models} x {datas}, {len(points)} points"
        )


register(FitForm("compute", (("A", "alpha"),), ("C0",), ("compute",), (0.1, 0.5, 1.5), "E + A (C / C0)^-alpha",
                 _compute_problem, required=True))  # fmt: skip
register(FitForm("joint", (("A", "a"), ("B", "b")), ("N0", "D0"), ("model_size", "data_size"), (0.2, 0.7),
                 "E + A (N/N0)^-a + B (D/D0)^-b", _joint_problem))  # fmt: skip


@dataclass
class Fit:
    form: str
    converged: bool
    message: str
    n_points: int
    params: dict[str, float] = field(default_factory=dict)  # empty unless converged
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)  # C0 (compute) or N0, D0 (joint)
    rmse: float = math.nan
    bootstrap_failed: float = math.nan  # share of bootstrap refits that did not converge

    @property
    def has_intervals(self) -> bool:
        return self.converged and bool(getattr(self, "_samples", None))

    @property
    def interval_note(self) -> str:
        if self.has_intervals:
            return ""
        return (
            f"no intervals: {self.bootstrap_failed:.0%} of bootstrap resamples could not be refitted "
            f"(too few distinct points for {len(FORMS[self.form].params)} parameters)"
        )

    def predict(self, *x: np.ndarray | float) -> np.ndarray:
        if not self.converged:
            raise ValueError(f"the {self.form} fit did not converge ({self.message}): it predicts nothing")
        return _model(self.form, self.params, self.scale, *x)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"form": self.form, "converged": self.converged, "message": self.message}
        out["n_points"] = self.n_points
        if self.converged:
            out.update(params=self.params, scale=self.scale, rmse=self.rmse, bootstrap_failed=self.bootstrap_failed)
            if self.has_intervals:
                out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
            else:
                out["intervals_note"] = self.interval_note
        return out


def _model(form: str, p: dict[str, float], scale: dict[str, float], *x) -> np.ndarray:
    f = FORMS[form]
    out = p["E"]
    for (amplitude, exponent), s, v in zip(f.terms, f.scales, x):
        out = out + p[amplitude] * (np.asarray(v, float) / scale[s]) ** -p[exponent]
    return out


def _fit_once(form: str, xs: list[np.ndarray], y: np.ndarray, scale: dict[str, float]) -> tuple[dict, str]:
    """Least squares from several starts; ({} , why) when it fails."""
    from scipy.optimize import least_squares

    fm = FORMS[form]
    names, n_terms = fm.params, len(fm.terms)
    if len(y) <= len(names):
        return {}, f"{len(y)} points cannot determine {len(names)} parameters"
    normed = [x / scale[k] for x, k in zip(xs, fm.scales)]
    lo_e, hi_e = 0.0, float(np.min(y))
    span = max(float(np.max(y) - np.min(y)), 1e-6)

    def resid(theta: np.ndarray) -> np.ndarray:
        out = theta[0]
        for i, x in enumerate(normed):
            out = out + theta[1 + 2 * i] * x ** -theta[2 + 2 * i]
        return out - y

    lower, upper = [lo_e, *[0.0, 0.0] * n_terms], [hi_e, *[np.inf, ALPHA_MAX] * n_terms]
    starts = [[hi_e * f, *[span / n_terms, al] * n_terms] for f in (0.0, 0.5, 0.9) for al in fm.exponent_starts]
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in starts:
            s = np.clip(s, lower, [u if np.isfinite(u) else 1e9 for u in upper])
            try:
                r = least_squares(resid, s, bounds=(lower, upper), max_nfev=2000)
            except (ValueError, FloatingPointError):
                continue
            if r.success and np.all(np.isfinite(r.x)) and (best is None or r.cost < best.cost):
                best = r
    if best is None:
        return {}, "the optimiser did not converge from any start"
    params = dict(zip(names, map(float, best.x)))
    for name, value in params.items():  # a parameter on its bound was not determined by the data
        if name in {e for _, e in fm.terms} and (value >= ALPHA_MAX * 0.999 or value <= 1e-6):
            return {}, f"{name} = {value:.3g} sits on its bound [0, {ALPHA_MAX}]: the points do not fix it"
        if name in {a for a, _ in fm.terms} and value <= 1e-9:
            return {}, f"{name} = 0: no decrease with scale in these points"
    drop = float(np.max(-resid(best.x) + y) - np.min(-resid(best.x) + y))
    if drop < MIN_DROP:
        return {}, f"the fitted error changes by {drop:.2g} over the points: no decrease with scale to fit"
    return params, "converged"


def fit(form: str, y: np.ndarray, *xs: np.ndarray, bootstrap: int = 500, seed: int = 0) -> Fit:
    """Fit `form` to error values y at its inputs x (compute: C; joint: N, D), with bootstrap intervals."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    y = np.asarray(y, float)
    xs_ = [np.asarray(x, float) for x in xs]
    if any(np.any(x <= 0) for x in xs_):
        raise ValueError("scales (compute, model size, data size) must be positive")
    scale = {s: float(np.exp(np.mean(np.log(x)))) for s, x in zip(FORMS[form].scales, xs_)}
    params, message = _fit_once(form, xs_, y, scale)
    if not params:
        return Fit(form, False, message, len(y))
    result = Fit(form, True, message, len(y), params, scale=scale)
    result.rmse = float(np.sqrt(np.mean((result.predict(*xs_) - y) ** 2)))
    samples, failed = [], 0
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if len({tuple(float(x[i]) for x in xs_) for i in idx}) <= len(FORMS[form].params):
            failed += 1
            continue
        p, _ = _fit_once(form, [x[idx] for x in xs_], y[idx], scale)
        if p:
            samples.append(p)
        else:
            failed += 1
    result.bootstrap_failed = failed / bootstrap if bootstrap else math.nan
    if not bootstrap or 1 - result.bootstrap_failed < MIN_BOOTSTRAP_OK:
        result._samples = []  # type: ignore[attr-defined]  # no intervals (interval_note says why)
        return result
    result._samples = samples  # type: ignore[attr-defined]  # for prediction bands
    for name in FORMS[form].params:
        values = [s[name] for s in samples]  # not empty: at least MIN_BOOTSTRAP_OK of the resamples
        result.intervals[name] = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
    return result


def band(f: Fit, *x: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The 95% bootstrap band of the fit's prediction at x."""
    if not f.has_intervals:
        raise ValueError(f"no prediction band: {f.interval_note or 'the fit did not converge'}")
    samples = f._samples  # type: ignore[attr-defined]
    preds = np.stack([_model(f.form, s, f.scale, *x) for s in samples])
    return np.percentile(preds, 2.5, axis=0), np.percentile(preds, 97.5, axis=0)


def frontier(compute: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Indices of the compute-efficient points: sorted by compute, each with lower error than every
    cheaper point (the lower envelope a scaling curve is fitted on)."""
    order = np.lexsort((error, compute))  # by compute, then error: at equal compute the better point first
    keep, best = [], math.inf
    for i in order:
        if error[i] < best:
            keep.append(int(i))
            best = error[i]
    return np.array(keep, dtype=int)


@dataclass
class HeldOut:
    flagged: bool
    message: str
    mean_abs_error: float = math.nan
    outside_band: int = 0
    n_held: int = 0


def held_out(compute: np.ndarray, error: np.ndarray, held: int | None = None, seed: int = 0) -> HeldOut:
    """Fit the compute form on the cheaper points and predict the `held` dearest (default: the dearer
    half). Flagged when the fit does not converge or a held-out point falls outside its 95% band."""
    compute, error = np.asarray(compute, float), np.asarray(error, float)
    order = np.argsort(compute)
    held = held or len(order) // 2
    train, test = order[:-held], order[-held:]
    f = fit("compute", error[train], compute[train], bootstrap=300, seed=seed)
    if not f.converged:
        return HeldOut(True, f"the fit on the cheaper {len(train)} points did not converge: {f.message}", n_held=held)
    if not f.has_intervals:
        return HeldOut(True, f"the fit on the cheaper {len(train)} points has no band: {f.interval_note}", n_held=held)
    pred = f.predict(compute[test])
    lo, hi = band(f, compute[test])
    outside = int(np.sum((error[test] < lo) | (error[test] > hi)))
    mae = float(np.mean(np.abs(pred - error[test])))
    message = (
        f"fit on the cheaper {len(train)} points predicts the {held} dearest with mean absolute error "
        f"{mae:.4f}; {outside} of {held} outside its 95% band"
    )
    return HeldOut(outside > 0, message, mae, outside, held)


def compare(name_a: str, fa: Fit, name_b: str, fb: Fit, c_range: tuple[float, float], target: float) -> str:
    """One sentence: does a's curve lie below b's over the compute range, and do their 95% bands at the
    target compute separate?"""
    if not (fa.converged and fb.converged):
        missing = [n for n, f in ((name_a, fa), (name_b, fb)) if not f.converged]
        return f"{name_a} vs {name_b}: cannot compare, the fit of {' and '.join(missing)} did not converge"
    grid = np.geomspace(c_range[0], c_range[1], 50)
    below = float(np.mean(fa.predict(grid) < fb.predict(grid)))
    side = {1.0: "lies below", 0.0: "lies above"}.get(below)
    where = f"{side} {name_b} over the whole" if side else f"is below {name_b} over {below:.0%} of the"
    where += " measured compute range" + ("" if side else " (the curves cross)")
    pa, pb = float(fa.predict(target)), float(fb.predict(target))
    at = f"at compute {target:.3g}"
    if target > c_range[1] * (1 + 1e-9):  # a prediction past the measured runs: say how far
        at += f" (extrapolated {target / c_range[1]:.2g}x past the compared range)"
    if not (fa.has_intervals and fb.has_intervals):
        missing = [n for n, f in ((name_a, fa), (name_b, fb)) if not f.has_intervals]
        return (
            f"{name_a} {where}; {at} the predicted errors are {pa:.4f} vs {pb:.4f}, but the "
            f"fit of {' and '.join(missing)} has no interval (too few distinct points to bootstrap), so the two "
            "cannot be told apart with any stated confidence."
        )
    (la, ha), (lb, hb) = (tuple(float(v) for v in band(f, target)) for f in (fa, fb))
    separate = ha < lb or hb < la
    return (
        f"{name_a} {where}; {at} the predicted errors are {pa:.4f} "
        f"[{la:.4f}, {ha:.4f}] vs {pb:.4f} [{lb:.4f}, {hb:.4f}]: the intervals "
        + ("separate." if separate else "overlap, so the two cannot be told apart there.")
    )
