"""The mask picture of a configuration, as `maskvlp masks` draws it and a comparison report shows it for
each cluster arm: images as training sees them, the masking calibrated as the run calibrates it, the
clusters and the patches each strategy keeps (viz.mask_figure)."""

from __future__ import annotations

from pathlib import Path

from maskvlp.config import Config


def mask_picture(cfg: Config, out: str | Path, count: int, images_from: str | None = None) -> tuple[Path, dict, str]:
    """Draw `count` images' masks under `cfg` into `out`. Images from `images_from` (a folder or shard
    set) or else the run's data: the first training shard read in place, or the shard folder. The
    masking is calibrated as the run calibrates it (seeded by train.seed, on its training images where
    its shards exist, else on the images shown). Returns (the PNG written, images skipped by reason,
    the calibration's line or "")."""
    import torch

    from maskvlp.data.loader import read_images
    from maskvlp.data.shards import MANIFEST
    from maskvlp.data.transforms import normalize
    from maskvlp.masking import calibrate
    from maskvlp.session import calibration_images
    from maskvlp.viz import mask_figure, save_figure

    m, d = cfg.model, cfg.data
    in_place = d.shards.in_place  # (params refuse in_place without data.source: shards)
    if in_place and not images_from:  # the first train shard of the data read in place, cropped as training sees it
        from maskvlp.data.trainset import training_data

        first = training_data(cfg).train[0]
        images, skipped = read_images(first, count, m.image_size, d.min_image_side, d.image_size, d.shards.retries)
    else:
        images, skipped = read_images(images_from or d.out_dir, count, m.image_size, d.min_image_side)
    if not len(images):
        raise FileNotFoundError(f"no usable image in {images_from or d.out_dir}")
    norm = normalize(images, d.augment.mean, d.augment.std)
    shards = in_place or (Path(d.out_dir) / MANIFEST).is_file()
    looked_at = (lambda: calibration_images(cfg)) if shards else (lambda: norm)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    k, line = calibrate(cfg.masking, looked_at, m.patch_size, gen, cfg.train.batch_size)
    return save_figure(mask_figure(images, norm, m.patch_size, k, cfg.seed), out), skipped, line
