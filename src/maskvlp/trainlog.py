"""What the training loop reports: TensorBoard scalars and mask pictures, the progress bar, all on the
samples-seen axis. The loop (train.py) owns the run's numbers and hands them over at its log lines;
this module only writes them, and times the interval for images/s and MFU."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskvlp import flops
from maskvlp.masking import MaskResult
from maskvlp.progress import Progress


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run diverged and stops at once (status failed)."""

    def __init__(self, step: int, samples_seen: int, loss: float):
        self.step, self.samples_seen, self.loss = step, samples_seen, loss
        super().__init__(
            f"the training loss became {loss} by step {step} ({samples_seen} samples): the run diverged. "
            "Lower train.lr (or raise train.warmup_samples), or use train.precision fp32"
        )


@dataclass(kw_only=True)
class TrainLog:
    """TensorBoard (where `tensorboard` names its folder: rank 0) and the progress bar from `step` on."""

    title: str
    total_steps: int
    step: int
    global_batch: int
    patch_size: int
    world_size: int
    peak_flops: float
    progress: bool
    tensorboard: Path | None
    purge_step: int | None

    def __post_init__(self) -> None:
        self.writer = None
        if self.tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.tensorboard), purge_step=self.purge_step)
        self.bar = Progress(self.total_steps, self.title, "step", self.progress, self.step)
        self.steps, self.t0 = 0, time.perf_counter()  # the interval's steps and start

    @property
    def writing(self) -> bool:
        """Whether TensorBoard is written (rank 0): what the scalars and pictures are for."""
        return self.writer is not None

    def step_done(self) -> None:
        self.steps += 1
        self.bar.update(1)

    def line(
        self, samples: int, loss: float, scalars: dict[str, float], flops_per_sample: float, skipped: int | None = None
    ) -> None:
        """The log line of an interval: its mean loss, the scalars the loop measured (TensorBoard tag ->
        value), this process's images/s since the last line with the MFU they make, and (data read in
        place) the unusable samples this process skipped so far."""
        images_per_s = self.steps * self.global_batch / max(time.perf_counter() - self.t0, 1e-9)
        extra = {} if skipped is None else {"skipped": skipped}
        self.bar.set_postfix(samples=samples, loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}", **extra)
        if self.writer is not None:
            add = self.writer.add_scalar
            add("train/loss", loss, samples)
            add("perf/images_per_s", images_per_s, samples)
            for tag, value in scalars.items():
                add(tag, value, samples)
            if self.peak_flops:
                add("perf/mfu", flops.mfu(flops_per_sample, images_per_s, self.world_size, self.peak_flops), samples)
        self.steps, self.t0 = 0, time.perf_counter()

    def evaluation(self, samples: int, metrics: dict[str, float]) -> None:
        """An evaluation during training: TensorBoard `eval_subset/<key>`."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"eval_subset/{key}", value, samples)
        self.writer.flush()

    def mask_image(self, result: MaskResult, images_uint8: torch.Tensor, samples: int) -> None:
        """Up to four of the step's images beside their clusters and their kept patches."""
        from maskvlp.viz import clusters_picture, kept_picture

        rows, p = [], self.patch_size
        for i, img in enumerate(images_uint8[:4].permute(0, 2, 3, 1).cpu().numpy()):
            rows.append(np.concatenate([img, clusters_picture(img, result, i, p), kept_picture(img, result, i, p)], 1))
        self.writer.add_image("mask/image_clusters_kept", np.concatenate(rows, 0), samples, dataformats="HWC")

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
