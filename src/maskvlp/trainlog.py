"""What the training loop reports: TensorBoard scalars and mask pictures, progress lines, all on the
samples-seen axis. One host sync per logging interval, none per step."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maskvlp import flops
from maskvlp.distributed import any_rank
from maskvlp.masking import MaskResult
from maskvlp.progress import Progress

if TYPE_CHECKING:
    from maskvlp.train import Session, StepOut


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run diverged and stops at once (status failed)."""

    def __init__(self, step: int, samples_seen: int, loss: float):
        self.step, self.samples_seen, self.loss = step, samples_seen, loss
        super().__init__(
            f"the training loss became {loss} by step {step} ({samples_seen} samples): the run diverged. "
            "Lower train.lr (or raise train.warmup_samples), or use train.precision fp32"
        )


class TrainLog:
    def __init__(self, s: Session, progress: bool):
        self.log_every = s.cfg.train.log_every_steps
        self.image_every = s.cfg.train.mask_image_every_steps
        self.patch = s.cfg.model.patch_size
        self.global_batch = s.budget.global_batch
        self.last_loss: float | None = None
        self.samples_this_attempt = 0
        self.writer = None
        if s.env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops what a killed attempt logged after the checkpoint (the checkpoint step's own
            # point stays): one continuous curve, each point once
            purge = s.samples_seen + 1 if s.step else None
            self.writer = SummaryWriter(str(s.paths.tensorboard), purge_step=purge)
        self.bar = Progress(
            s.budget.total_steps, f"pretrain {s.cfg.train.run_name}", "step", progress and s.env.is_main, s.step
        )
        self.peak_flops = flops.peak_flops(s.device)
        self.world_size = s.env.world_size
        self._reset()

    def _reset(self) -> None:
        self.window: dict[str, Any] = {"loss": 0.0, "ratio": 0.0, "coverage": 0.0, "micro": 0, "steps": 0}
        self.t0 = time.perf_counter()

    def after_step(self, s: Session, out: StepOut) -> None:
        w = self.window
        w["loss"] += out.loss
        w["ratio"] += out.mask_ratio
        w["coverage"] += out.coverage
        w["micro"] += s.cfg.train.accum_steps
        w["steps"] += 1
        self.samples_this_attempt += self.global_batch
        self.bar.update(1)
        if s.step % self.log_every == 0 or s.step == s.budget.total_steps:
            self._scalars(s, out.mask)
        if self.writer is not None and self.image_every and (s.step - 1) % self.image_every == 0:
            self._mask_image(out.mask, out.images_uint8, s.samples_seen)

    def check_finite(self, s: Session) -> None:
        """Raise NonFiniteLoss when a step since the last log line had a non-finite loss (a host sync:
        called before a checkpoint is written, so no diverged state is ever saved)."""
        loss = float(self.window["loss"]) if self.window["steps"] else 0.0
        if any_rank(not math.isfinite(loss), s.device):  # every rank stops together (no collective left waiting)
            raise NonFiniteLoss(s.step, s.samples_seen, loss)

    def _scalars(self, s: Session, mask: MaskResult) -> None:
        w = self.window
        loss = float(w["loss"]) / w["steps"]  # the one host sync of the interval
        if any_rank(not math.isfinite(loss), s.device):  # every rank stops together (no collective left waiting)
            raise NonFiniteLoss(s.step, s.samples_seen, loss)
        self.last_loss = loss
        s.totals["coverage_sum"] += float(w["coverage"])
        images_per_s = w["steps"] * self.global_batch / max(time.perf_counter() - self.t0, 1e-9)
        samples = s.samples_seen
        self.bar.set_postfix(samples=samples, loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}")
        if self.writer is not None:
            add = self.writer.add_scalar
            add("train/loss", loss, samples)
            add("train/lr", s.optimizer.param_groups[0]["lr"], samples)
            add("train/logit_scale", float(s.model.logit_scale.detach().exp()), samples)
            add("perf/images_per_s", images_per_s, samples)
            add("mask/ratio", w["ratio"] / w["micro"], samples)
            add("mask/cluster_coverage", float(w["coverage"]) / w["micro"], samples)
            add("train/step", s.step, samples)
            from maskvlp.train import measure_probe

            for key, value in measure_probe(s).items():
                add(f"mask/{key}", value, samples)
            if self.peak_flops:
                per_sample = flops.model_flops(s.model, mask.keep_idx.shape[1])
                add("perf/mfu", flops.mfu(per_sample, images_per_s, self.world_size, self.peak_flops), samples)
        self._reset()

    def evaluation(self, s: Session, metrics: dict[str, float]) -> None:
        """An evaluation during training: TensorBoard `eval_subset/<key>` and the run's result record."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"eval_subset/{key}", value, s.samples_seen)
        self.writer.flush()
        from maskvlp.runs import read_result, update_result

        points = [p for p in read_result(s.paths).get("evals", []) if p["samples_seen"] < s.samples_seen]
        update_result(s.paths, evals=[*points, {"samples_seen": s.samples_seen, "step": s.step, **metrics}])

    def _mask_image(self, result: MaskResult, images_uint8: torch.Tensor, samples: int) -> None:
        from maskvlp.viz import clusters_picture, kept_picture

        rows = []
        for i in range(min(4, images_uint8.shape[0])):
            img = images_uint8[i].permute(1, 2, 0).cpu().numpy()
            rows.append(
                np.concatenate(
                    [img, clusters_picture(img, result, i, self.patch), kept_picture(img, result, i, self.patch)], 1
                )
            )
        self.writer.add_image("mask/image_clusters_kept", np.concatenate(rows, 0), samples, dataformats="HWC")

    def close(self, s: Session | None = None) -> None:
        """Flush and close; with the session, the unlogged part of the window joins the run's totals."""
        if s is not None and self.window["micro"]:
            s.totals["coverage_sum"] += float(self.window["coverage"])
            self.window["micro"] = 0
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
