"""The `evaluate` stage: zero-shot classification, retrieval, linear probe and composition.

Always on full (unmasked) images. Datasets (`eval.datasets`):
- `val`: the shard stage's val split: retrieval over its captions; zero-shot and linear probe where
  samples carry a label (synthetic: "colour shape", emoji: its name, folder/shards: label_name);
  composition where samples carry negatives (json "negatives": {"attribute"|"relation"|"object": str}).
- `objects`: single-object synthetic scenes generated in memory (32 "colour shape" classes), for a
  zero-shot test without the ambiguity of multi-object scenes.
Composition negatives follow a documented format, so a SugarCrepe-like JSON can be plugged in
through the `folder` or `shards` sources: each sample's json holds {"negatives": {type: caption}}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskvlp.config import Config, load_config
from maskvlp.data import synthetic
from maskvlp.data.loader import eval_loader
from maskvlp.data.shards import load_manifest, shard_paths
from maskvlp.data.tokenizer import Tokenizer
from maskvlp.data.transforms import normalize, to_uint8_tensor
from maskvlp.metrics import (
    mean_per_class_recall,
    pairwise_choice_accuracy,
    per_class_recall,
    retrieval_recall,
    topk_accuracy,
)
from maskvlp.model import CLIP
from maskvlp.progress import track
from maskvlp.resources import cpu_share_applied

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
    ("captions": [...]) contribute them all, each counted as a positive of its image."""
    texts, owner = [], []
    for i, (caption, meta) in enumerate(zip(enc.captions, enc.metas)):
        for text in [caption, *meta.get("captions", [])]:
            texts.append(text)
            owner.append(i)
    text_features = encode_texts(model, texts, tokenizer, device)
    return retrieval_recall(enc.features @ text_features.T, torch.tensor(owner))


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


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, seed: int = 0
) -> dict[str, float]:
    """Logistic regression on frozen features; C chosen on a held-out 20% of the TRAIN features."""
    from sklearn.linear_model import LogisticRegression

    x, y = train_x.numpy(), train_y.numpy()
    order = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, int(0.8 * len(y)))
    fit_idx, hold_idx = order[:cut], order[cut:]
    best_c, best_acc = 1.0, -1.0
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(x[fit_idx], y[fit_idx])
        acc = clf.score(x[hold_idx], y[hold_idx]) if len(hold_idx) else 0.0
        if acc > best_acc:
            best_c, best_acc = c, acc
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(x, y)
    return {"top1": float(clf.score(test_x.numpy(), test_y.numpy())), "C": best_c, "heldout_top1": float(best_acc)}


def dataset_classes(manifest: dict[str, Any], metas: list[dict[str, Any]]) -> list[str] | None:
    classes = manifest["source"].get("classes")
    if classes:
        return list(classes)
    names = sorted({m["label_name"] for m in metas if "label_name" in m})
    return names or None


def labels_for(metas: list[dict[str, Any]], classes: list[str]) -> torch.Tensor:
    """(N,) class index per sample, -1 where a sample has no (known) label."""
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor(
        [m["label"] if isinstance(m.get("label"), int) else index.get(m.get("label_name"), -1) for m in metas]
    )


def objects_batches(cfg: Config, per_class: int, batch_size: int) -> Iterable[dict[str, Any]]:
    """Single-object synthetic scenes, `per_class` per class, generated in memory (seeded apart from
    the training data)."""
    size = cfg.model.image_size
    items = []
    index = 0
    counts = dict.fromkeys(range(len(synthetic.CLASS_NAMES)), 0)
    while min(counts.values()) < per_class:
        image, caption, meta = synthetic.generate_scene(cfg.seed + 7_000_003, index, size, 1, 1)
        index += 1
        if counts[meta["label"]] >= per_class:
            continue
        counts[meta["label"]] += 1
        items.append((to_uint8_tensor(image), caption, meta))
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        yield {
            "images": torch.stack([c[0] for c in chunk]),
            "captions": [c[1] for c in chunk],
            "metas": [c[2] for c in chunk],
            "keys": [f"obj{i + j}" for j in range(len(chunk))],
        }


def evaluate(cfg: Config, run_dir: str | Path, progress: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Returns (flat metrics, plot data). Metrics keys: zeroshot/<ds>/top1, retrieval/<ds>/i2t_r1, ..."""
    model, run_cfg = load_run(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    tokenizer = Tokenizer(run_cfg.model.context_length)
    e = cfg.eval
    size = run_cfg.model.image_size
    metrics: dict[str, float] = {}
    plots: dict[str, Any] = {"per_class": [], "retrieval": []}
    manifest = load_manifest(cfg.data.out_dir)

    def add_zero_shot(name: str, enc: Encoded, classes: list[str]) -> None:
        labels = labels_for(enc.metas, classes)
        keep = labels >= 0
        if not keep.any():
            return
        res = zero_shot(enc.features[keep], labels[keep], classifier_weights(model, classes, tokenizer, device))
        for k in ("top1", "top5", "mean_per_class_recall"):
            metrics[f"zeroshot/{name}/{k}"] = res[k]
        metrics[f"zeroshot/{name}/chance_top1"] = 1.0 / len(classes)
        plots["per_class"] += [
            {"dataset": name, "class": c, "recall": r} for c, r in zip(classes, res["per_class_recall"]) if r == r
        ]

    for name in e.datasets:
        if name == "val":
            urls = shard_paths(cfg.data.out_dir, "val")
            if not urls:
                raise EvalError(
                    f"no val split in {cfg.data.out_dir}: set data.val_fraction > 0 and re-run the shard stage"
                )
            enc = encode_images(model, eval_loader(urls, size, e.batch_size), run_cfg, device, "val", progress)
            for k, v in retrieval(model, enc, tokenizer, device).items():
                metrics[f"retrieval/val/{k}"] = v
            n = len(enc.captions)
            metrics["retrieval/val/chance_r1"] = 1.0 / n
            plots["retrieval"] += [
                {"k": k, "i2t": metrics[f"retrieval/val/i2t_r{k}"], "t2i": metrics[f"retrieval/val/t2i_r{k}"]}
                for k in (1, 5, 10)
            ]
            for k, v in composition(model, enc, tokenizer, device).items():
                metrics[f"composition/val/{k}"] = v
            classes = dataset_classes(manifest, enc.metas)
            if classes:
                add_zero_shot("val", enc, classes)
                if e.linear_probe:
                    train_urls = shard_paths(cfg.data.out_dir, "train")
                    train_enc = encode_images(
                        model,
                        _limit(eval_loader(train_urls, size, e.batch_size), e.linear_probe_samples),
                        run_cfg,
                        device,
                        "train (probe)",
                        progress,
                    )
                    tr_y, te_y = labels_for(train_enc.metas, classes), labels_for(enc.metas, classes)
                    tr, te = tr_y >= 0, te_y >= 0
                    if tr.sum() > 1 and te.any() and len(set(tr_y[tr].tolist())) > 1:
                        res = linear_probe(train_enc.features[tr], tr_y[tr], enc.features[te], te_y[te], cfg.seed)
                        metrics["linear_probe/val/top1"] = res["top1"]
                        metrics["linear_probe/val/C"] = res["C"]
                        metrics["linear_probe/val/chance_top1"] = 1.0 / len(classes)
        elif name == "objects":
            enc = encode_images(
                model, objects_batches(cfg, e.objects_per_class, e.batch_size), run_cfg, device, "objects", progress
            )
            add_zero_shot("objects", enc, synthetic.CLASS_NAMES)
        else:  # config validation names the choices; this guards direct calls
            raise EvalError(f"eval.datasets: unknown dataset {name!r} (val | objects)")
    return metrics, plots


def _limit(batches: Iterable[dict[str, Any]], samples: int) -> Iterable[dict[str, Any]]:
    seen = 0
    for batch in batches:
        if seen >= samples:
            return
        yield batch
        seen += len(batch["keys"])


def write_tensorboard_hparams(run_dir: Path, metrics: dict[str, float]) -> Path:
    """One HParams session per run, in the run's own folder (runs/<name>/eval), not a timestamped one:
    the run's masking and model params as hparams, the final metrics as its metrics."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    run_cfg = load_config(run_dir / "config.yaml")
    log_dir = run_dir / "eval"
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
        }
    )
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
    exp, ssi, sei = hparams(hp, scalars)
    writer = SummaryWriter(str(log_dir))
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)
    for k, v in scalars.items():
        writer.add_scalar(k, v, run_cfg.train.samples)
    writer.close()
    return log_dir


def write_outputs(metrics: dict[str, float], plots: dict[str, Any], metrics_file: str | Path, run_dir: Path) -> None:
    path = Path(metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = {k: round(v, 6) for k, v in sorted(metrics.items())}
    path.write_text(json.dumps(rounded, indent=2) + "\n")
    plot_dir = path.parent
    (plot_dir / "eval_per_class.json").write_text(json.dumps(plots["per_class"], indent=1) + "\n")
    (plot_dir / "eval_retrieval.json").write_text(json.dumps(plots["retrieval"], indent=1) + "\n")
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(rounded, indent=2) + "\n")


def evaluate_and_write(cfg: Config, run_dir: str | Path, progress: bool = False) -> dict[str, float]:
    """The whole stage: evaluate, write the metrics and plot files and the run's HParams session."""
    run_dir = Path(run_dir)
    with cpu_share_applied(cfg):
        metrics, plots = evaluate(cfg, run_dir, progress)
    write_outputs(metrics, plots, cfg.eval.metrics_file, run_dir)
    write_tensorboard_hparams(run_dir, metrics)
    return metrics
