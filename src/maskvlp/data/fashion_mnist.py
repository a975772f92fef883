"""Fashion-MNIST from Debian's `dataset-fashion-mnist`: 70,000 28x28 grayscale photos of clothes in
10 classes (60,000 train, 10,000 test), read from its IDX files. Evaluation only (evalsets.py
registers it as `fashion-mnist`): zero-shot classification with its class names and templates, and
the linear probe fitted on its train split and scored on its test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGE = "dataset-fashion-mnist"
# The dataset's own label names (Zalando's README), written as a caption would name them.
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
# Grayscale product photos on a black background: templates that say so, next to the generic ones.
TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a grayscale photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}, a type of clothing.",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMnistMissing(FileNotFoundError):
    """The package's files are not there; the message says how to install them."""


def load_split(directory: str | Path, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of a split, the first `limit` (0 = all). The files
    are the package's; a truncated or mismatched pair is refused naming the file (data.idx)."""
    from maskvlp.data.idx import IdxError, read_idx

    directory = Path(directory)
    images_file, labels_file = (directory / name for name in FILES[split])
    missing = [str(p) for p in (images_file, labels_file) if not p.is_file()]
    if missing:
        raise FashionMnistMissing(
            f"Fashion-MNIST not found ({', '.join(missing)}): install it with `apt-get install {PACKAGE}` "
            f"(or set the directory that holds its IDX files)"
        )
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IdxError(f"{images_file} / {labels_file}: {images.shape} images and {labels.shape} labels do not pair up")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise IdxError(f"{labels_file}: labels outside 0..{len(CLASSES) - 1}")
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)
