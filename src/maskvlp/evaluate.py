"""The `evaluate` stage: zero-shot classification, retrieval, linear probe and composition.

Always on full (unmasked) images, on the sets of `eval.datasets` or `--dataset SPEC` (evalsets.py:
`val`, `objects`, a captions table, shards). Per set: retrieval always; zero-shot where samples carry
labels (synthetic: "colour shape", emoji: its name, folder/shards: label_name); a linear probe where
the set has a train split; composition where samples carry negatives (json "negatives":
{"attribute"|"relation"|"object": str}, so SugarCrepe-like data plugs in). What a set cannot support
is skipped with a note. Metric keys: <task>/<set>/<metric>, e.g. zeroshot/objects/top1.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskvlp.config import Config
from maskvlp.data.tokenizer import Tokenizer
from maskvlp.data.transforms import normalize
from maskvlp.evalsets import EvalSet, EvalSetError, resolve, val_set
from maskvlp.metrics import (
    mean_per_class_recall,
    pairwise_choice_accuracy,
    per_class_recall,
    retrieval_recall,
    text_positives,
    topk_accuracy,
)
from maskvlp.model import CLIP
from maskvlp.params import load_config
from maskvlp.progress import Progress, track
from maskvlp.resources import cpu_share_applied
from maskvlp.runs import RunPaths, update_result, weights_complete, write_json_atomic, write_text_atomic

# the metrics each task writes as <task>/<set>/<metric> (what a sweep objective may name)
TASK_METRICS = {
    "zeroshot": ("top1", "top5", "mean_per_class_recall"),
    "retrieval": tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
    "linear_probe": ("top1",),
    "composition": ("attribute", "relation", "object"),
}
TEMPLATES = ("a {}.", "a photo of a {}.", "a small {}.", "a large {}.", "a picture of a {}.")


class EvalError(RuntimeError):
    """Evaluation cannot run as asked; the message says what to do."""


@dataclass
class Encoded:
    features: torch.Tensor  # (N, D) normalised image features
    captions: list[str]
    metas: list[dict[str, Any]]
    keys: list[str] = field(default_factory=list)


def load_run(run_dir: str | Path) -> tuple[CLIP, Config]:
    """The model a pretrain run exported, with the run's own resolved config."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    weights, config = run_dir / "model.safetensors", run_dir / "config.yaml"
    if not weights.is_file() or not config.is_file():
        raise EvalError(f"{run_dir} holds no finished run (model.safetensors + config.yaml): run `maskvlp pretrain`")
    if not weights_complete(weights):
        raise EvalError(
            f"{weights} is incomplete or unreadable (a write cut short): run `maskvlp pretrain --resume` "
            "to write it again from the last checkpoint"
        )
    cfg = load_config(config)
    model = CLIP.from_config(cfg.model)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise EvalError(f"{weights} does not fit the model of {config}: {exc}") from exc
    return model.eval(), cfg


@torch.no_grad()
def encode_images(
    model: CLIP,
    batches: Iterable[dict[str, Any]],
    cfg: Config,
    device: torch.device,
    desc: str = "",
    progress: bool = False,
) -> Encoded:
    feats, captions, metas, keys = [], [], [], []
    for batch in track(batches, None, f"encode {desc}", "batch", progress):
        images = normalize(batch["images"].to(device), cfg.data.augment.mean, cfg.data.augment.std)
        feats.append(model.encode_image(images).float().cpu())
        captions += batch["captions"]
        metas += batch["metas"]
        keys += batch["keys"]
    if not feats:
        raise EvalError(f"no images to evaluate in {desc}")
    return Encoded(torch.cat(feats), captions, metas, keys)


@torch.no_grad()
def encode_texts(
    model: CLIP, texts: list[str], tokenizer: Tokenizer, device: torch.device, batch: int = 256
) -> torch.Tensor:
    out = [
        model.encode_text(tokenizer(texts[i : i + batch]).to(device)).float().cpu() for i in range(0, len(texts), batch)
    ]
    return torch.cat(out)


def classifier_weights(
    model: CLIP, classes: list[str], tokenizer: Tokenizer, device: torch.device, templates: tuple[str, ...] = TEMPLATES
) -> torch.Tensor:
    """(C, D): per class, the normalised mean of its normalised template embeddings."""
    texts = [t.format(c) for c in classes for t in templates]
    emb = encode_texts(model, texts, tokenizer, device).view(len(classes), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def zero_shot(image_features: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor) -> dict[str, Any]:
    logits = image_features @ class_weights.T
    num_classes = class_weights.shape[0]
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, min(5, num_classes)),
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(1), labels, num_classes),
        "per_class_recall": per_class_recall(logits.argmax(1), labels, num_classes).tolist(),
    }


def retrieval(model: CLIP, enc: Encoded, tokenizer: Tokenizer, device: torch.device) -> dict[str, float]:
    """Every sample's caption(s) against every image. Samples whose json lists more captions
    ("captions": [...]) contribute them all. A caption is a positive of every image that has the
    identical string among its own captions (metrics.text_positives)."""
    own = [[caption, *meta.get("captions", [])] for caption, meta in zip(enc.captions, enc.metas)]
    texts = [text for captions in own for text in captions]
    text_features = encode_texts(model, texts, tokenizer, device)
    return retrieval_recall(enc.features @ text_features.T, text_positives(own, texts))


def composition(model: CLIP, enc: Encoded, tokenizer: Tokenizer, device: torch.device) -> dict[str, float]:
    """Accuracy of preferring the true caption over each kind of hard negative."""
    out = {}
    for kind in ("attribute", "relation", "object"):
        rows = [(i, m["negatives"][kind]) for i, m in enumerate(enc.metas) if (m.get("negatives") or {}).get(kind)]
        if not rows:
            continue
        idx = torch.tensor([i for i, _ in rows])
        pos = encode_texts(model, [enc.captions[i] for i, _ in rows], tokenizer, device)
        neg = encode_texts(model, [text for _, text in rows], tokenizer, device)
        feats = enc.features[idx]
        out[kind] = pairwise_choice_accuracy((feats * pos).sum(1), (feats * neg).sum(1))
    return out


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


def labels_for(metas: list[dict[str, Any]], classes: list[str]) -> torch.Tensor:
    """(N,) class index per sample, -1 where a sample has no (known) label. The label's name decides
    (`label_name`); an integer `label` is used only for samples without a name."""

    def one(m: dict[str, Any]) -> int:
        if "label_name" in m:
            return index.get(str(m["label_name"]), -1)
        label = m.get("label")
        return label if isinstance(label, int) and 0 <= label < len(classes) else -1

    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([one(m) for m in metas], dtype=torch.long)


@dataclass
class SetResult:
    metrics: dict[str, float]
    plots: dict[str, list[dict[str, Any]]]
    notes: list[str]
    skipped: dict[str, int]


def evaluate_set(
    model: CLIP, es: EvalSet, cfg: Config, run_cfg: Config, device: torch.device, progress: bool = False
) -> SetResult:
    """Every task the set supports, as flat metrics <task>/<set name>/<metric>."""
    tokenizer = Tokenizer(run_cfg.model.context_length)
    size, batch, name = run_cfg.model.image_size, cfg.eval.batch_size, es.name
    enc = encode_images(model, es.batches(size, batch), run_cfg, device, name, progress)
    metrics: dict[str, float] = {}
    plots: dict[str, list[dict[str, Any]]] = {"per_class": [], "retrieval": []}
    notes: list[str] = []
    if es.retrieval and len(enc.captions) > 1:
        metrics.update({f"retrieval/{name}/{k}": v for k, v in retrieval(model, enc, tokenizer, device).items()})
        metrics[f"retrieval/{name}/chance_r1"] = 1.0 / len(enc.captions)
        metrics[f"retrieval/{name}/samples"] = len(enc.captions)
        plots["retrieval"] = [
            {
                "dataset": name,
                "k": k,
                "i2t": metrics[f"retrieval/{name}/i2t_r{k}"],
                "t2i": metrics[f"retrieval/{name}/t2i_r{k}"],
            }
            for k in (1, 5, 10)
        ]
    metrics.update({f"composition/{name}/{k}": v for k, v in composition(model, enc, tokenizer, device).items()})
    labels = labels_for(enc.metas, es.classes) if es.classes else None
    if labels is None or not (labels >= 0).any():
        notes.append(f"{name}: no labels, so no zero-shot classification or linear probe")
        return SetResult(metrics, plots, notes, dict(es.skipped))
    keep = labels >= 0
    weights = classifier_weights(model, es.classes, tokenizer, device, es.templates or TEMPLATES)
    res = zero_shot(enc.features[keep], labels[keep], weights)
    for k in ("top1", "top5", "mean_per_class_recall"):
        metrics[f"zeroshot/{name}/{k}"] = res[k]
    metrics[f"zeroshot/{name}/chance_top1"] = 1.0 / len(es.classes)
    metrics[f"zeroshot/{name}/samples"] = int(keep.sum())  # samples with a label (synthetic: single-object scenes)
    plots["per_class"] = [
        {"dataset": name, "class": c, "recall": r} for c, r in zip(es.classes, res["per_class_recall"]) if r == r
    ]
    if not cfg.eval.linear_probe:
        return SetResult(metrics, plots, notes, dict(es.skipped))
    if es.train_batches is None:
        notes.append(f"{name}: no train split, so no linear probe")
        return SetResult(metrics, plots, notes, dict(es.skipped))
    train = encode_images(
        model,
        _limit(es.train_batches(size, batch), cfg.eval.linear_probe_samples),
        run_cfg,
        device,
        f"{name} train",
        progress,
    )
    tr_y, te_y = labels_for(train.metas, es.classes), labels
    tr, te = tr_y >= 0, te_y >= 0
    if tr.sum() > 1 and te.any() and len(set(tr_y[tr].tolist())) > 1:
        probe = linear_probe(
            train.features[tr], tr_y[tr], enc.features[te], te_y[te], cfg.seed, f"linear probe {name}", progress
        )
        metrics[f"linear_probe/{name}/top1"] = probe["top1"]
        metrics[f"linear_probe/{name}/C"] = probe["C"]
        metrics[f"linear_probe/{name}/chance_top1"] = 1.0 / len(es.classes)
        # non-convergence is a result, not a warning: 1 = the final fit reached the gradient tolerance
        metrics[f"linear_probe/{name}/converged"] = float(probe["converged"])
        metrics[f"linear_probe/{name}/unconverged_fits"] = len(probe["unconverged"]) + (not probe["converged"])
        if probe["unconverged"] or not probe["converged"]:
            at = ", ".join(f"{c:.3g}" for c in probe["unconverged"]) or "-"
            notes.append(
                f"{name}: linear probe fits that stopped at the iteration limit ({PROBE_MAX_ITER}) before converging:"
                f" held-out C {at}; final fit (C {probe['C']:.3g}) {'converged' if probe['converged'] else 'did not'}"
            )
    else:
        notes.append(f"{name}: the train split has fewer than 2 labelled classes, so no linear probe")
    return SetResult(metrics, plots, notes, dict(es.skipped))


def evaluate(
    cfg: Config, run_dir: str | Path, specs: list[str] | None = None, progress: bool = False
) -> dict[str, SetResult]:
    """{set name: result} for each spec (default: eval.datasets). Sets are resolved before any work."""
    model, run_cfg = load_run(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    try:
        sets = [resolve(cfg, spec) for spec in specs or cfg.eval.datasets]
    except EvalSetError as exc:
        raise EvalError(str(exc)) from exc
    return {es.name: evaluate_set(model, es, cfg, run_cfg, device, progress) for es in sets}


def _merge(results: dict[str, SetResult]) -> SetResult:
    merged = SetResult({}, {"per_class": [], "retrieval": []}, [], {})
    for name, r in results.items():
        merged.metrics.update(r.metrics)
        for kind, rows in r.plots.items():
            merged.plots[kind] += rows
        merged.notes += r.notes
        merged.skipped.update({f"{name}/{k}": v for k, v in r.skipped.items()})
    return merged


def _limit(batches: Iterable[dict[str, Any]], samples: int) -> Iterable[dict[str, Any]]:
    seen = 0
    for batch in batches:
        if seen >= samples:
            return
        yield batch
        seen += len(batch["keys"])


class SubsetEvaluator:
    """The cheap evaluation during training: the first `eval.subset_samples` val pairs, decoded once;
    retrieval R@1 both ways and, where samples carry labels, zero-shot top-1. Keys
    retrieval/subset/i2t_r1, retrieval/subset/t2i_r1, zeroshot/subset/top1."""

    def __init__(self, cfg: Config, device: torch.device):
        es = val_set(cfg, "val")
        batches = _limit(es.batches(cfg.model.image_size, cfg.eval.batch_size), cfg.eval.subset_samples)
        items = [b for b in batches]
        self.images = torch.cat([b["images"] for b in items])[: cfg.eval.subset_samples]
        self.captions = [c for b in items for c in b["captions"]][: len(self.images)]
        metas = [m for b in items for m in b["metas"]][: len(self.images)]
        self.classes = es.classes
        self.labels = labels_for(metas, es.classes) if es.classes else None
        self.cfg, self.device = cfg, device
        self.tokenizer = Tokenizer(cfg.model.context_length)

    @torch.no_grad()
    def __call__(self, model: CLIP) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            enc = encode_images(
                model,
                [{"images": self.images, "captions": self.captions, "metas": [{}] * len(self.captions), "keys": []}],
                self.cfg,
                self.device,
            )
            out = retrieval(model, enc, self.tokenizer, self.device)
            metrics = {"retrieval/subset/i2t_r1": out["i2t_r1"], "retrieval/subset/t2i_r1": out["t2i_r1"]}
            if self.labels is not None and (self.labels >= 0).any():
                keep = self.labels >= 0
                weights = classifier_weights(model, self.classes, self.tokenizer, self.device)
                metrics["zeroshot/subset/top1"] = zero_shot(enc.features[keep], self.labels[keep], weights)["top1"]
            return metrics
        finally:
            model.train(was_training)


def write_tensorboard_hparams(
    run_dir: Path, metrics: dict[str, float], extra_hparams: dict[str, Any] | None = None
) -> Path:
    """One HParams session per run, in the run's own folder (runs/<name>/eval), not a timestamped one:
    the run's masking and model params as hparams (plus `extra_hparams`: a sweep trial's sampled params,
    number and state), the final metrics as its metrics. Writing again replaces the session."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    run_cfg = load_config(run_dir / "config.yaml")
    log_dir = RunPaths(run_dir).eval_dir()
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()  # re-evaluating replaces the session instead of adding a second one
    hp = {f"masking.{k}": v for k, v in vars(run_cfg.masking).items()}
    hp.update(
        {
            "model.vision": run_cfg.model.vision,
            "model.text": run_cfg.model.text,
            "train.samples": run_cfg.train.samples,
            "train.batch_size": run_cfg.train.batch_size,
            "seed": run_cfg.seed,
            "train.seed": run_cfg.train.seed,
        }
    )
    hp.update(extra_hparams or {})
    hp = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hp.items()}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
    exp, ssi, sei = hparams(hp, scalars)
    writer = SummaryWriter(str(log_dir))
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)
    for k, v in scalars.items():
        writer.add_scalar(k, v, run_cfg.train.samples)
    writer.close()
    return log_dir


def _round(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in sorted(metrics.items())}


def evaluate_and_write(cfg: Config, run_dir: str | Path, progress: bool = False) -> dict[str, float]:
    """The stage: evaluate eval.datasets, write eval.metrics_file and its plot files, the run's
    eval/metrics.json, its HParams session and its result record."""
    paths = RunPaths(Path(run_dir))
    with cpu_share_applied(cfg):
        result = _merge(evaluate(cfg, paths.root, progress=progress))
    metrics = _round(result.metrics)
    path = Path(cfg.eval.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(path.parent / "eval_per_class.json", json.dumps(result.plots["per_class"], indent=1) + "\n")
    write_text_atomic(path.parent / "eval_retrieval.json", json.dumps(result.plots["retrieval"], indent=1) + "\n")
    write_json_atomic(paths.eval_dir() / "metrics.json", metrics)
    write_tensorboard_hparams(paths.root, metrics)
    update_result(paths, eval=metrics, eval_notes=result.notes, eval_skipped=result.skipped)
    for note in result.notes:
        print(f"note: {note}")
    return metrics


def evaluate_datasets(
    cfg: Config, run_dir: str | Path, specs: list[str], progress: bool = False
) -> dict[str, SetResult]:
    """`maskvlp evaluate --dataset SPEC`: each set's metrics in eval/<set>/metrics.json (skips and notes
    in eval/<set>/notes.json) and in the run's result record; the stage's own files stay untouched."""
    paths = RunPaths(Path(run_dir))
    with cpu_share_applied(cfg):
        results = evaluate(cfg, paths.root, specs, progress)
    for name, r in results.items():
        write_json_atomic(paths.eval_dir(name) / "metrics.json", _round(r.metrics))
        write_json_atomic(paths.eval_dir(name) / "notes.json", {"skipped": r.skipped, "notes": r.notes})
        update_result(paths, eval=_round(r.metrics))
    return results
