"""The `evaluate` stage: zero-shot classification, retrieval, linear probe and composition.

Always on full (unmasked) images, on the sets of `eval.datasets` or `--dataset SPEC` (evalsets.py:
`val`, `objects`, a captions table, shards). Per set: retrieval always; zero-shot where samples carry
labels (synthetic: "colour shape", emoji: its name, folder/shards: label_name); a linear probe where
the set has a train split; composition where samples carry negatives (json "negatives":
{"attribute"|"relation"|"object": str}, so SugarCrepe-like data plugs in). What a set cannot support
is skipped with a note. Metric keys: <task>/<set>/<metric>, e.g. zeroshot/objects/top1. The tasks
themselves are evaltasks.py's and linearprobe.py's; this module runs them per set and writes the results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskvlp.config import Config
from maskvlp.cpushare import cpu_share_applied
from maskvlp.data.tokenizer import Tokenizer
from maskvlp.evalsets import EvalSet, EvalSetError, resolve
from maskvlp.evaltasks import (
    TEMPLATES,
    EvalError,
    classifier_weights,
    composition,
    encode_images,
    labels_for,
    limit_samples,
    retrieval,
    zero_shot,
)
from maskvlp.linearprobe import PROBE_MAX_ITER, linear_probe
from maskvlp.model import CLIP
from maskvlp.params import config_from_dict, load_config
from maskvlp.runs import RunPaths, update_result, weights_complete, write_json_atomic, write_text_atomic


def load_run(run_dir: str | Path) -> tuple[CLIP, Config]:
    """The model a pretrain run exported, with the run's own resolved config."""
    from safetensors.torch import load_file

    paths = RunPaths(Path(run_dir))
    weights, config = paths.model, paths.config
    if not weights.is_file() or not config.is_file():
        raise EvalError(f"{paths.root} holds no finished run (model.safetensors + config.yaml): run `maskvlp pretrain`")
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
    notes: list[str] = list(es.notes)
    if es.retrieval and len(enc.captions) > 1:
        res = retrieval(model, enc, tokenizer, device)
        metrics.update({f"retrieval/{name}/{k}": v for k, v in res.items()})
        metrics[f"retrieval/{name}/chance_r1"] = 1.0 / len(enc.captions)
        metrics[f"retrieval/{name}/samples"] = len(enc.captions)
        from maskvlp.evaltasks import caption_lists

        texts = sum(map(len, caption_lists(enc)))
        if es.multi_caption or texts != len(enc.captions):  # say that every caption (.txt line) was scored
            metrics[f"retrieval/{name}/captions"] = texts
            notes.append(
                f"{name}: retrieval over {texts} captions of {len(enc.captions)} images: every caption of a sample"
                " (each line of a CLIP_benchmark .txt) is its own text and a positive of its image"
            )
        plots["retrieval"] = [
            {"dataset": name, "k": k, "i2t": res[f"i2t_r{k}"], "t2i": res[f"t2i_r{k}"]} for k in (1, 5, 10)
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
    train_batches = limit_samples(es.train_batches(size, batch), cfg.eval.linear_probe_samples)
    train = encode_images(model, train_batches, run_cfg, device, f"{name} train", progress)
    tr_y, te_y = labels_for(train.metas, es.classes), labels
    tr, te = tr_y >= 0, te_y >= 0
    if len(set(tr_y[tr].tolist())) < len(set(te_y[te].tolist())):  # e.g. a train split sorted by class
        notes.append(
            f"{name}: the linear probe's {int(tr.sum())} train samples (the first eval.linear_probe_samples) hold "
            f"{len(set(tr_y[tr].tolist()))} of the {len(set(te_y[te].tolist()))} classes scored: raise "
            "eval.linear_probe_samples"
        )
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


def write_tensorboard_hparams(
    run_dir: Path, metrics: dict[str, float], extra_hparams: dict[str, Any] | None = None
) -> Path:
    """One HParams session per run, in the run's own folder (runs/<name>/eval), not a timestamped one:
    the run's masking and model params as hparams (plus `extra_hparams`: a sweep trial's sampled params,
    number and state), the final metrics as its metrics. Writing again replaces the session."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    paths = RunPaths(Path(run_dir))
    run_cfg = load_config(paths.config)
    log_dir = paths.eval_dir()
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()  # re-evaluating replaces the session instead of adding a second one
    hp = {f"masking.{k}": v for k, v in vars(run_cfg.masking).items()}
    m, t = run_cfg.model, run_cfg.train
    hp |= {"model.vision": m.vision, "model.text": m.text, "train.samples": t.samples, "train.batch_size": t.batch_size}
    hp |= {"seed": run_cfg.seed, "train.seed": t.seed, **(extra_hparams or {})}
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
    """`maskvlp evaluate --dataset SPEC`: each set's metrics in eval-extra/<set>/metrics.json (skips and
    notes in eval-extra/<set>/notes.json) and in the run's result record. The stage's own files, eval/
    (a DVC output) and eval.metrics_file, stay untouched, so an extra evaluation leaves `dvc repro` be."""
    paths = RunPaths(Path(run_dir))
    with cpu_share_applied(cfg):
        results = evaluate(cfg, paths.root, specs, progress)
    for name, r in results.items():
        write_json_atomic(paths.extra_eval_dir(name) / "metrics.json", _round(r.metrics))
        write_json_atomic(paths.extra_eval_dir(name) / "notes.json", {"skipped": r.skipped, "notes": r.notes})
        update_result(paths, eval=_round(r.metrics))
    return results


class EvalJob:
    """The `evaluate` stage as a Slurm job (launch.submit pickles it). Not checkpointable: submitit
    requeues a preempted evaluation, which then starts over; one that reaches its time limit ends."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str):
        self.cfg_dict, self.run_dir = cfg_dict, run_dir

    def __call__(self) -> dict[str, float]:
        return evaluate_and_write(config_from_dict(self.cfg_dict), self.run_dir, progress=True)
