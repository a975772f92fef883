"""The `evaluate` stage: zero-shot classification, retrieval, linear probe and composition.
(Over 450 lines: the stage, `--dataset` on one run and the re-evaluation of several runs share the model
loading, the per-set evaluation and the writing of results; apart, each would import the others.)

Always on full (unmasked) images, on the sets of `eval.datasets` or `--dataset SPEC` (evalsets.py:
`val`, `objects`, a captions table, shards). Per set: retrieval always; zero-shot where samples carry
labels (synthetic: "colour shape", emoji: its name, folder/shards: label_name); a linear probe where
the set has a train split; composition where samples carry negatives (json "negatives":
{"attribute"|"relation"|"object": str}, so SugarCrepe-like data plugs in). What a set cannot support
is skipped with a note. Metric keys: <task>/<set>/<metric>, e.g. zeroshot/objects/top1. The tasks
themselves are evaltasks.py's and linearprobe.py's; this module runs them per set and writes the results.

`maskvlp evaluate --run 'runs/<study>/trial-*' --dataset SPEC` evaluates several runs (`evaluate_runs`):
each set resolved once, its decoded batches read once and replayed from memory for every run
(`CachedBatches`, within `--cache-mb`), one model load per run, one tokenizer per context length.
"""

from __future__ import annotations

import functools
import glob
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskvlp.config import Config
from maskvlp.cpushare import cpu_share_applied
from maskvlp.data.tokenizer import Tokenizer as BPETokenizer
from maskvlp.evalsets import Batches, EvalSet, EvalSetError, resolve
from maskvlp.evaltasks import (
    TEMPLATES,
    EvalError,
    blank_features,
    classifier_weights,
    composition,
    encode_images,
    labels_for,
    limit_samples,
    retrieval,
    zero_shot,
)
from maskvlp.linearprobe import PROBE_MAX_ITER, linear_probe
from maskvlp.metrics import majority_share
from maskvlp.model import CLIP
from maskvlp.params import config_from_dict, load_config
from maskvlp.runs import RunPaths, read_result, update_result, weights_complete, write_json_atomic, write_text_atomic

TOKEN_MEMO_BYTES = 64 << 20  # token rows kept per tokenizer; past this, texts are tokenised again


class SharedTokenizer:
    """CLIP's BPE tokenizer (data/tokenizer.py), built once per context length for the process and
    remembering the token rows of the text lists it was given (up to TOKEN_MEMO_BYTES): runs evaluated
    one after another on the same set tokenise its captions and class prompts once. Same rows as a new
    tokenizer's."""

    def __init__(self, context_length: int):
        self.context_length = context_length
        self._bpe = BPETokenizer(context_length)
        self._rows: dict[tuple[str, ...], torch.Tensor] = {}
        self._bytes = 0

    def __call__(self, texts: list[str]) -> torch.Tensor:
        key = tuple(texts)
        rows = self._rows.get(key)
        if rows is None:
            rows = self._bpe(list(texts))
            if self._bytes + rows.nbytes <= TOKEN_MEMO_BYTES:
                self._rows[key], self._bytes = rows, self._bytes + rows.nbytes
        return rows.clone()  # a caller may change its tensor; the memory keeps its own


@functools.cache
def Tokenizer(context_length: int) -> SharedTokenizer:  # the name evaluate_set calls
    """The process's tokenizer for a context length (building one reads the BPE vocabulary: seconds)."""
    return SharedTokenizer(context_length)


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
    blank = blank_features(model, size, run_cfg, device)  # the text-only floor of each composition score
    scores = composition(model, enc, tokenizer, device, blank)
    metrics.update({f"composition/{name}/{k}": v for k, v in scores.items()})
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
    metrics[f"zeroshot/{name}/majority_top1"] = majority_share(labels[keep])  # always guessing the largest class
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
        metrics[f"linear_probe/{name}/majority_top1"] = majority_share(te_y[te])
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
    _write_extra(paths, results)
    return results


def _write_extra(paths: RunPaths, results: dict[str, SetResult]) -> None:
    """Each set's eval-extra/<set>/metrics.json and notes.json; its metrics merged into result.json's
    `eval` (keys of other sets, and of the run's own evaluation, kept)."""
    merged: dict[str, float] = {}
    for name, r in results.items():
        write_json_atomic(paths.extra_eval_dir(name) / "metrics.json", _round(r.metrics))
        write_json_atomic(paths.extra_eval_dir(name) / "notes.json", {"skipped": r.skipped, "notes": r.notes})
        merged |= _round(r.metrics)
    update_result(paths, eval=merged)


# ------------------------------------------------------------------------ several runs (a finished sweep)
CACHE_MB = 2048  # default of `maskvlp evaluate --cache-mb`: decoded batches kept in memory across runs
_GLOB = re.compile(r"[*?\[]")


def run_folders(patterns: list[str], datasets: list[str], eval_datasets: list[str]) -> tuple[list[Path], bool]:
    """`--run` values as run folders, in order without repeats: a glob pattern (quoted on the command line,
    so that maskvlp expands it) gives the folders it matches, sorted; a plain path is taken as it is. And
    whether they are several runs to evaluate with `evaluate_runs` (a pattern, or more than one folder,
    with --dataset). EvalError: a pattern that matches no folder; several runs without --dataset (the
    stage's evaluation writes eval.metrics_file, one file per run)."""
    out: dict[Path, None] = {}
    for pattern in patterns:
        if not _GLOB.search(pattern):
            out[Path(pattern)] = None
            continue
        found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        if not found:
            raise EvalError(f"--run {pattern!r} matches no folder (a sweep's trials: --run 'runs/<study>/trial-*')")
        out |= dict.fromkeys(found)
    if len(out) > 1 and not datasets:
        raise EvalError(
            f"{len(out)} runs need --dataset: the stage's evaluation writes eval.metrics_file, one file per run (a "
            "sweep's trials were evaluated on eval.datasets by their own jobs). To evaluate them again on those "
            "sets: " + " ".join(f"--dataset {d}" for d in eval_datasets)
        )
    return list(out), bool(datasets) and (len(out) > 1 or any(_GLOB.search(p) for p in patterns))


def _nbytes(batch: dict[str, Any]) -> int:
    """About what a decoded batch holds in memory: its uint8 images and the text of its captions, keys, metas."""
    text = sum(len(str(v)) for k in ("captions", "keys", "metas") for v in batch.get(k, ()))
    return batch["images"].nbytes + text


@dataclass
class CacheBudget:
    """Bytes of decoded batches that the CachedBatches sharing it may keep (--cache-mb), and how many they keep."""

    limit: int
    used: int = 0


@dataclass
class _Memo:
    source: Iterator[dict[str, Any]]  # the set's own stream, read once and kept open between passes
    batches: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False


class CachedBatches:
    """An EvalSet's batches function, (image size, batch size) -> batches, read from the set once: the
    first pass keeps every batch it decodes (uint8 images, captions, metas, keys) and the next passes
    replay them from memory, so runs evaluated one after another read, decode and crop the set once
    (per image size). A pass stopped early (the linear probe's sample limit) leaves the stream open:
    the next pass replays what was read and reads on. When the budget shared by all sets is spent, this
    set's memory is dropped and every later pass streams it again (`streaming`). A stream that fails is
    dropped too, so that the next pass starts it anew rather than replaying half a set."""

    def __init__(self, make: Callable[[int, int], Batches], budget: CacheBudget):
        self.make, self.budget = make, budget
        self.memos: dict[tuple[int, int], _Memo] = {}
        self.bytes = 0  # decoded batches held
        self.reads = 0  # passes that read the set itself (a pass that replays memory is not one)
        self.streaming = False  # over the limit: no memory, every pass reads the set

    def __call__(self, size: int, batch_size: int) -> Batches:
        key = (size, batch_size)
        if self.streaming:
            self.reads += 1
            return self.make(size, batch_size)
        if key not in self.memos:
            self.reads += 1
            self.memos[key] = _Memo(iter(self.make(size, batch_size)))
        return self._replay(key, self.memos[key])

    def _replay(self, key: tuple[int, int], memo: _Memo) -> Iterator[dict[str, Any]]:
        i = 0
        while True:
            if i < len(memo.batches):
                yield memo.batches[i]
                i += 1
                continue
            if memo.complete:
                return
            try:
                batch = next(memo.source)
            except StopIteration:
                memo.complete = True
                return
            except BaseException:
                self.memos.pop(key, None)
                self._free(sum(map(_nbytes, memo.batches)))
                raise
            n = _nbytes(batch)
            self.bytes, self.budget.used = self.bytes + n, self.budget.used + n
            if self.budget.used > self.budget.limit:  # too big to keep: drop it all and read the rest of this pass
                self.streaming, self.memos = True, {}
                self._free(self.bytes)
                yield batch
                yield from memo.source
                return
            memo.batches.append(batch)

    def _free(self, n: int) -> None:
        self.bytes, self.budget.used = self.bytes - n, self.budget.used - n

    @property
    def how(self) -> str:
        """How the set was read, for the summary."""
        if not self.reads:
            return "not read"
        times = "once" if self.reads == 1 else f"{self.reads} times"
        if self.streaming:
            return f"read {times}: it did not fit in --cache-mb beside the sets before it, so streamed again per run"
        return f"read {times} ({self.bytes / 2**20:.1f} MB of decoded batches kept in memory)"


def cache_set(es: EvalSet, budget: CacheBudget) -> EvalSet:
    """`es` with its batches (and its train split's) read once for all runs, within `budget`."""
    es.batches = CachedBatches(es.batches, budget)
    if es.train_batches is not None:
        es.train_batches = CachedBatches(es.train_batches, budget)
    return es


HEADLINE = re.compile(r"^(zeroshot/[^/]+/top1|retrieval/[^/]+/(i2t|t2i)_r1|linear_probe/[^/]+/top1|composition/.+)$")


@dataclass
class RunsOutcome:
    """What `evaluate_runs` did: metrics per evaluated run, runs left out and failed (with why), how each
    set was read, and the notes and skipped samples of each set (the same for every run)."""

    evaluated: dict[Path, dict[str, float]] = field(default_factory=dict)
    left_out: dict[Path, str] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)
    reads: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        """How each set was read, its skips and notes; runs evaluated, left out and failed, with why."""
        lines = [f"{name}: {how}" for name, how in self.reads.items()]
        lines += [
            f"{name}: skipped {sum(n.values())}: " + ", ".join(f"{k}={v}" for k, v in n.items())
            for name, n in self.skipped.items()
        ]
        lines += [f"note: {note}" for note in self.notes]
        total = len(self.evaluated) + len(self.left_out) + len(self.failed)
        line = f"evaluated {len(self.evaluated)} of {total} runs on {', '.join(self.reads)}"
        if self.left_out:
            why = Counter(self.left_out.values())
            line += f"; left out {len(self.left_out)}: " + "; ".join(f"{n} {reason}" for reason, n in why.items())
        if self.failed:
            line += f"; failed {len(self.failed)}: " + ", ".join(map(str, self.failed))
        if self.evaluated:
            line += "\nwrote <run>/eval-extra/<set>/metrics.json and the metrics into each run's result.json (eval)"
        return "\n".join([*lines, line])


def why_left_out(paths: RunPaths) -> str | None:
    """Why a run folder cannot be evaluated again (None: it can): not complete, or no whole weights."""
    if not paths.config.is_file():
        return "not a run (no config.yaml)"
    status = read_result(paths).get("status", "no result.json")
    if status != "complete":
        return f"not complete (status {status})"
    if not weights_complete(paths.model):
        return "no weights (model.safetensors absent or incomplete)"
    return None


def evaluate_runs(
    cfg: Config,
    run_dirs: list[Path],
    specs: list[str],
    progress: bool = False,
    cache_mb: float | None = None,
    say: Callable[[str], None] = print,
) -> RunsOutcome:
    """`maskvlp evaluate --run PATTERN --dataset SPEC...`: every complete run with weights evaluated on
    every set, one model load per run, each set resolved once and its batches read once for all runs
    (cache_set). Each run's results are written as `--dataset` writes them for one run (eval-extra/<set>/,
    result.json's `eval` merged). A run that fails is reported and the others go on. One line per run
    through `say`: its headline metrics, or why it was left out or failed. `cache_mb`: None = CACHE_MB."""
    budget = CacheBudget(int((CACHE_MB if cache_mb is None else cache_mb) * 2**20))
    try:
        sets = [cache_set(resolve(cfg, spec), budget) for spec in specs]
    except EvalSetError as exc:
        raise EvalError(str(exc)) from exc
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out, n = RunsOutcome(), len(run_dirs)
    first_skips: dict[str, dict[str, int]] = {}  # per set: the skips of its first evaluation (each run reads the same)
    with cpu_share_applied(cfg):
        for i, run_dir in enumerate(run_dirs, 1):
            paths, head = RunPaths(run_dir), f"[{i}/{n}] {run_dir}"
            reason = why_left_out(paths)
            if reason:
                out.left_out[run_dir] = reason
                say(f"{head}: left out: {reason}")
                continue
            try:
                model, run_cfg = load_run(run_dir)
                model.to(device)
                results = {es.name: evaluate_set(model, es, cfg, run_cfg, device, progress) for es in sets}
                for name, r in results.items():  # a set streamed again may add its skips up: its first count holds
                    r.skipped = first_skips.setdefault(name, r.skipped)
                _write_extra(paths, results)
            except Exception as exc:  # one run's failure is reported; the others go on
                out.failed[run_dir] = f"{type(exc).__name__}: {exc}"
                say(f"{head}: failed: {out.failed[run_dir]}")
                continue
            metrics = _merge(results).metrics
            out.evaluated[run_dir] = _round(metrics)
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if HEADLINE.match(k))
            say(f"{head}: {shown or 'evaluated (no headline metric)'}")
            for r in results.values():
                out.notes += [note for note in r.notes if note not in out.notes]
            out.skipped |= {name: r.skipped for name, r in results.items() if r.skipped}
    for es in sets:
        how = es.batches.how
        if es.train_batches is not None and es.train_batches.reads:
            how += f"; its train split {es.train_batches.how}"
        out.reads[es.name] = how
    return out


class EvalJob:
    """The `evaluate` stage as a Slurm job (launch.submit pickles it). Not checkpointable: submitit
    requeues a preempted evaluation, which then starts over; one that reaches its time limit ends."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str):
        self.cfg_dict, self.run_dir = cfg_dict, run_dir

    def __call__(self) -> dict[str, float]:
        return evaluate_and_write(config_from_dict(self.cfg_dict), self.run_dir, progress=True)
