"""Evaluation metrics as pure functions over tensors (no I/O, no model), and the metric names of each task."""

from __future__ import annotations

import torch

# the metrics each task writes as <task>/<set>/<metric> (what a sweep objective may name)
TASK_METRICS = {
    "zeroshot": ("top1", "top5", "mean_per_class_recall"),
    "retrieval": tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
    "linear_probe": ("top1",),
    "composition": ("attribute", "relation", "object"),
}


def chance_key(metric: str) -> str | None:
    """The key of the chance level evaluation records beside a metric, if any: `zeroshot/val/top1` ->
    `zeroshot/val/chance_top1` (1/classes), `retrieval/val/t2i_r1` -> `retrieval/val/chance_r1` (1/N; R@1
    only: none is recorded for R@5 / R@10), `linear_probe/val/top1` -> `linear_probe/val/chance_top1`."""
    parts = metric.split("/")
    if len(parts) != 3:
        return None
    family, data, name = parts
    if family in ("zeroshot", "linear_probe") and name == "top1":
        return f"{family}/{data}/chance_top1"
    if family == "retrieval" and name in ("i2t_r1", "t2i_r1"):
        return f"retrieval/{data}/chance_r1"
    return None


def majority_key(metric: str) -> str | None:
    """The key of the majority-class baseline evaluation records beside a top-1 accuracy: what always
    guessing the most frequent class of the scored samples gets (`zeroshot/val/top1` ->
    `zeroshot/val/majority_top1`; with unbalanced classes it is above 1/classes)."""
    parts = metric.split("/")
    if len(parts) == 3 and parts[0] in ("zeroshot", "linear_probe") and parts[2] == "top1":
        return f"{parts[0]}/{parts[1]}/majority_top1"
    return None


def majority_share(labels: torch.Tensor) -> float:
    """The share of the most frequent label among `labels` (N,) of class indices >= 0."""
    return float(torch.bincount(labels).max()) / len(labels) if len(labels) else float("nan")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """logits: (N, C), labels: (N,) -> fraction whose label is among the k highest scores.
    Ties are broken pessimistically: a wrong class scoring equal to the label counts as above it."""
    label_scores = logits.gather(1, labels[:, None])
    rank = (logits >= label_scores).sum(1) - 1  # other classes scoring at least as high
    return float((rank < k).float().mean())


def per_class_recall(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) recall of each class; NaN for classes without samples."""
    hits = torch.zeros(num_classes).index_add_(0, labels, (predictions == labels).float())
    counts = torch.zeros(num_classes).index_add_(0, labels, torch.ones_like(labels, dtype=torch.float))
    return torch.where(counts > 0, hits / counts.clamp_min(1), torch.full_like(counts, float("nan")))


def mean_per_class_recall(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    recall = per_class_recall(predictions, labels, num_classes)
    return float(recall[~recall.isnan()].mean())


def _rank_of_best_positive(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """scores, positive: (Q, N) -> (Q,) rank (0 = first) of the best-scoring positive among the
    negatives; negatives tied with it count as ranked above (pessimistic)."""
    best_pos = torch.where(positive, scores, torch.full_like(scores, -torch.inf)).max(1).values
    return ((scores >= best_pos[:, None]) & ~positive).sum(1)


def text_positives(image_texts: list[list[str]], texts: list[str]) -> torch.Tensor:
    """(I, T) bool: caption t is a positive of image i when its string equals one of image i's own
    captions. Identical strings are indistinguishable to any model, so a caption shared by several
    images (e.g. "a small red circle" for every such single-object scene) is a positive of each:
    counting only the row it came from would force ties that no model can win."""
    index: dict[str, list[int]] = {}
    for t, text in enumerate(texts):
        index.setdefault(text, []).append(t)
    positive = torch.zeros(len(image_texts), len(texts), dtype=torch.bool)
    for i, own in enumerate(image_texts):
        for text in set(own):
            positive[i, index.get(text, [])] = True
    return positive


def retrieval_recall(similarity: torch.Tensor, positive: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """similarity: (I, T) image-caption scores; positive: (I, T) bool (see text_positives), or (T,)
    the index of each caption's one image.

    Image->text: an image is a hit at K if any of its positive captions ranks within the top K captions.
    Text->image: a caption is a hit at K if any of its positive images ranks within the top K images.
    Negatives tied with the best positive count as ranked above it (pessimistic).
    """
    if positive.dtype != torch.bool:
        images = torch.arange(similarity.shape[0], device=similarity.device)
        positive = images[:, None] == positive[None, :]
    i2t = _rank_of_best_positive(similarity, positive)
    t2i = _rank_of_best_positive(similarity.T, positive.T)
    return {f"{d}_r{k}": float((rank < k).float().mean()) for k in ks for d, rank in (("i2t", i2t), ("t2i", t2i))}


def pairwise_choice_accuracy(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """Composition: fraction of images scoring the true caption strictly above the negative."""
    return float((positive_scores > negative_scores).float().mean())
