"""The linear probe: logistic regression on frozen image features, with its C chosen on held-out
train features (CLIP / CLIP_benchmark's protocol), solved deterministically in torch float64.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maskvlp.progress import Progress

PROBE_GRID = tuple(10.0**e for e in range(-6, 7))  # C: 1e-6 .. 1e6, a decade apart (CLIP's sweep range)
PROBE_REFINE = (-0.5, -0.25, 0.25, 0.5)  # then a quarter decade around the best, in decades
PROBE_MAX_ITER = 1000  # L-BFGS iterations per fit; a fit that reaches it is reported as not converged
PROBE_TOL = 1e-6  # converged: the largest gradient entry of the (mean, preconditioned) objective at most this


@dataclass
class LogisticFit:
    """A multinomial logistic regression: logits = x @ weight + bias."""

    weight: torch.Tensor  # (D, K) float64
    bias: torch.Tensor  # (K,) float64
    iterations: int
    converged: bool

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight + self.bias).argmax(1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y).double().mean())


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    c: float,
    init: LogisticFit | None = None,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = PROBE_TOL,
    history: int = 20,
) -> LogisticFit:
    """scikit-learn's LogisticRegression(C=c) objective (multinomial, L2 on the weights, bias free),
    divided by C*N as scikit-learn's lbfgs solver does: mean cross-entropy + |W|^2 / (2 C N). Full-batch
    L-BFGS (two-loop recursion, `history` pairs, backtracking Armijo line search) with an analytic
    gradient, in float64 on `x` (float64, (N, D)), from `init` (a warm start) or zeros. Strictly convex:
    the start changes the iterations, not the optimum. Stops when the largest gradient entry (in the
    preconditioned variables) is at most `tol`, or after `max_iter` iterations or a line search that
    finds no decrease (then `converged` is False): no warning, the caller reports it. Written out
    rather than torch.optim.LBFGS: the same arithmetic in every torch version, and no 2-5 s start-up."""
    n, d = x.shape
    # Preconditioning: the penalty's curvature 1/(C N) dwarfs the data's (about 1/K per feature of
    # unit RMS, as linear_probe passes them) at small C, and the bias is not penalised; L-BFGS crawls on such a scale gap (1000
    # iterations at C = 1e-6). So it works on V = W / scale, whose curvature matches the bias's.
    scale = (1.0 + classes / (c * n)) ** -0.5
    penalty = scale * scale / (2.0 * c * n)
    xs = x * scale
    onehot = torch.nn.functional.one_hot(y, classes).double()

    def value_grad(p: torch.Tensor) -> tuple[float, torch.Tensor]:
        v, b = p[: d * classes].view(d, classes), p[d * classes :]
        z = xs @ v + b
        loss = (torch.logsumexp(z, 1) - (z * onehot).sum(1)).mean() + penalty * (v * v).sum()
        g = (torch.softmax(z, 1) - onehot) / n
        return float(loss), torch.cat([(xs.T @ g + 2.0 * penalty * v).reshape(-1), g.sum(0)])

    p = torch.zeros(d * classes + classes, dtype=torch.float64)
    if init is not None:
        p = torch.cat([init.weight.reshape(-1) / scale, init.bias])
    f, g = value_grad(p)
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    iterations = 0
    while float(g.abs().max()) > tol and iterations < max_iter:
        q, alphas = g.clone(), []
        for s, yv, rho in reversed(pairs):
            alpha = rho * float(s.dot(q))
            q -= alpha * yv
            alphas.append(alpha)
        if pairs:
            s, yv, _ = pairs[-1]
            q *= float(s.dot(yv)) / float(yv.dot(yv))
        else:
            q *= min(1.0, 1.0 / float(g.abs().sum()))
        for (s, yv, rho), alpha in zip(pairs, reversed(alphas)):
            q += s * (alpha - rho * float(yv.dot(q)))
        slope = -float(g.dot(q))
        if slope >= 0:  # not a descent direction (positive curvature pairs rule it out): steepest descent
            pairs.clear()
            q = g * min(1.0, 1.0 / float(g.abs().sum()))
            slope = -float(g.dot(q))
        step = 1.0
        while True:
            p_new = p - step * q
            f_new, g_new = value_grad(p_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return _logistic_fit(p, d, classes, scale, iterations, float(g.abs().max()) <= tol)
        s, yv = p_new - p, g_new - g
        sy = float(s.dot(yv))
        if sy > 1e-12 * float(yv.dot(yv)):
            pairs.append((s, yv, 1.0 / sy))
            if len(pairs) > history:
                pairs.pop(0)
        p, f, g = p_new, f_new, g_new
        iterations += 1
    return _logistic_fit(p, d, classes, scale, iterations, float(g.abs().max()) <= tol)


def _logistic_fit(p: torch.Tensor, d: int, classes: int, scale: float, iterations: int, converged: bool):
    return LogisticFit((scale * p[: d * classes]).view(d, classes), p[d * classes :].clone(), iterations, converged)


@contextlib.contextmanager
def _single_thread():
    """torch's CPU kernels split reductions between threads, so the last bits of a sum depend on the
    thread count; on one thread the probe's every sum has one order, whatever the caller's share."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _best(scores: dict[float, float], fits: dict[float, LogisticFit]) -> float:
    """The C of the best held-out accuracy (ties: the stronger regularisation) among the fits that
    converged: an unconverged fit is wherever its iterations stopped, not the probe at that C, and
    where held-out accuracy keeps rising towards no regularisation (separable features) that spot
    decided the chosen C (issue 28: 5,623 on one machine, 10,000 on another). All, if none converged."""
    pool = [c for c in scores if fits[c].converged] or list(scores)
    return max(pool, key=lambda c: (scores[c], -c))


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    seed: int = 0,
    desc: str = "linear probe",
    progress: bool = False,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = PROBE_TOL,
) -> dict[str, Any]:
    """Logistic regression on frozen features, as CLIP / CLIP_benchmark: the inverse regularisation C
    is chosen on a held-out 20% of the TRAIN features over a wide log grid (1e-6 .. 1e6), refined to a
    quarter decade around the best (ties: the stronger regularisation; converged fits only), then the
    probe is refit on all train features with that C and scored once on the test features.

    Deterministic: float64, full-batch L-BFGS to a gradient tolerance (fit_logistic), warm-started
    along the grid from strong to weak regularisation, one thread. Returns top1, the chosen C, the held-out accuracy, whether the final fit converged, its
    iterations, the C values whose held-out fit stopped at the iteration limit (`unconverged`) and the
    predicted class of every test sample (`predictions`)."""
    with _single_thread():
        # Centred and scaled by one number (the features' RMS per dimension): with the bias free and C
        # scaled to match (fit on x / s with C s^2), this is the very objective on the raw features,
        # better conditioned. (Standardising each dimension instead changes the probe: small
        # directions of a contrastive embedding, mostly noise, get as much weight as the large ones.)
        x = train_x.detach().cpu().double()
        mean = x.mean(0)
        x = x - mean
        rms = float(x.pow(2).mean().sqrt()) or 1.0
        x = x / rms
        tx = (test_x.detach().cpu().double() - mean) / rms
        y, ty = train_y.detach().cpu().long(), test_y.detach().cpu().long()
        classes = int(max(int(y.max()), int(ty.max()))) + 1
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
        cut = max(1, int(0.8 * len(y)))
        fit_idx, hold_idx = order[:cut], order[cut:]
        if not len(hold_idx):
            fit_idx, hold_idx = order, order
        fx, fy, hx, hy = x[fit_idx], y[fit_idx], x[hold_idx], y[hold_idx]

        bar = Progress(len(PROBE_GRID) + len(PROBE_REFINE) + 1, desc, "fit", progress)
        fits: dict[float, LogisticFit] = {}
        scores: dict[float, float] = {}

        def heldout(c: float, init: LogisticFit | None) -> None:
            fits[c] = fit_logistic(fx, fy, classes, c * rms * rms, init, max_iter, tol)
            scores[c] = fits[c].accuracy(hx, hy)
            bar.set_postfix(C=f"{c:.3g}", heldout=f"{scores[c]:.3f}", iters=fits[c].iterations)
            bar.update(1)

        try:
            prev = None
            for c in PROBE_GRID:  # strong to weak regularisation, each fit starting from the last
                heldout(c, prev)
                prev = fits[c]
            coarse = _best(scores, fits)
            for step in PROBE_REFINE:
                heldout(coarse * 10.0**step, fits[coarse])
            best = _best(scores, fits)
            final = fit_logistic(x, y, classes, best * rms * rms, fits[best], max_iter, tol)
            bar.set_postfix(C=f"{best:.3g}", heldout=f"{scores[best]:.3f}", iters=final.iterations)
            bar.update(1)  # the last line: the chosen C and the final fit
        finally:
            bar.close()
    return {
        "top1": final.accuracy(tx, ty),
        "C": best,
        "heldout_top1": scores[best],
        "converged": final.converged,
        "iterations": final.iterations,
        "unconverged": sorted(c for c, f in fits.items() if not f.converged),  # held-out fits
        "predictions": final.predict(tx),
    }
