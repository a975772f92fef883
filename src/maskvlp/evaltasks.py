"""What an evaluation computes on one encoded set, without files: image and text encoding, zero-shot
classification with a template ensemble, retrieval, composition, and the cheap evaluation that
training runs in its loop (SubsetEvaluator). evaluate.py builds the `evaluate` stage on these;
training imports only this module, so a change to the stage or the linear probe leaves `pretrain` be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from maskvlp.config import Config
from maskvlp.data.tokenizer import Tokenizer
from maskvlp.data.transforms import normalize
from maskvlp.evalsets import Batches, val_set
from maskvlp.metrics import (
    mean_per_class_recall,
    pairwise_choice_accuracy,
    per_class_recall,
    retrieval_recall,
    text_positives,
    topk_accuracy,
)
from maskvlp.model import CLIP
from maskvlp.progress import track

TEMPLATES = ("a {}.", "a photo of a {}.", "a small {}.", "a large {}.", "a picture of a {}.")


class EvalError(RuntimeError):
    """Evaluation cannot run as asked; the message says what to do."""


@dataclass
class Encoded:
    features: torch.Tensor  # (N, D) normalised image features
    captions: list[str]
    metas: list[dict[str, Any]]
    keys: list[str] = field(default_factory=list)


@torch.no_grad()
def encode_images(
    model: CLIP, batches: Batches, cfg: Config, device: torch.device, desc: str = "", progress: bool = False
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


def caption_lists(enc: Encoded) -> list[list[str]]:
    """Per sample, every caption retrieval scores: its caption, then those its json lists ("captions")."""
    return [[caption, *meta.get("captions", [])] for caption, meta in zip(enc.captions, enc.metas)]


def retrieval(model: CLIP, enc: Encoded, tokenizer: Tokenizer, device: torch.device) -> dict[str, float]:
    """Every sample's caption(s) against every image. Samples whose json lists more captions
    ("captions": [...]) contribute them all. A caption is a positive of every image that has the
    identical string among its own captions (metrics.text_positives)."""
    own = caption_lists(enc)
    texts = [text for captions in own for text in captions]
    text_features = encode_texts(model, texts, tokenizer, device)
    return retrieval_recall(enc.features @ text_features.T, text_positives(own, texts))


def composition(
    model: CLIP, enc: Encoded, tokenizer: Tokenizer, device: torch.device, blank: torch.Tensor | None = None
) -> dict[str, float]:
    """Accuracy of preferring the true caption over each kind of hard negative. With `blank` (the image
    features (1, D) of a blank image), also `<kind>_text_floor`: the same choice made against the blank
    image's features, what the text tower's preferences alone score. A composition score near its floor
    says nothing about the image; negatives that share the caption's words keep the floor near 0.5."""
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
        if blank is not None:
            out[f"{kind}_text_floor"] = pairwise_choice_accuracy((blank * pos).sum(1), (blank * neg).sum(1))
    return out


@torch.no_grad()
def blank_features(model: CLIP, size: int, cfg: Config, device: torch.device) -> torch.Tensor:
    """The image features (1, D) of a uniform mid-grey image: the text-only floor's image."""
    blank = torch.full((1, 3, size, size), 128, dtype=torch.uint8, device=device)
    images = normalize(blank, cfg.data.augment.mean, cfg.data.augment.std)
    return model.encode_image(images).float().cpu()


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


def limit_samples(batches: Batches, samples: int) -> Batches:
    """The batches until at least `samples` samples have been yielded (the last batch whole)."""
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
        batches = limit_samples(es.batches(cfg.model.image_size, cfg.eval.batch_size), cfg.eval.subset_samples)
        items = list(batches)
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
            batch = {"images": self.images, "captions": self.captions, "metas": [{}] * len(self.captions), "keys": []}
            enc = encode_images(model, [batch], self.cfg, self.device)
            out = retrieval(model, enc, self.tokenizer, self.device)
            metrics = {"retrieval/subset/i2t_r1": out["i2t_r1"], "retrieval/subset/t2i_r1": out["t2i_r1"]}
            if self.labels is not None and (self.labels >= 0).any():
                keep = self.labels >= 0
                weights = classifier_weights(model, self.classes, self.tokenizer, self.device)
                metrics["zeroshot/subset/top1"] = zero_shot(enc.features[keep], self.labels[keep], weights)["top1"]
            return metrics
        finally:
            model.train(was_training)
