"""The `pretrain` stage: masked CLIP training that resumes exactly and logs to TensorBoard.

Progress is counted in samples seen (TensorBoard's x-axis, the schedule, checkpoints). Randomness
that the loop draws is a pure function of (seed, rank, step): the data stream by construction
(loader.py), the mask generator re-seeded every step, so a run stopped and resumed from a
checkpoint ends with the same weights as an uninterrupted one. session.py starts, resumes and
checkpoints the run; this module is the loop: a step, its log line, evaluation, checkpoints, the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from maskvlp import flops, textmask
from maskvlp.accumulate import ACCUMULATORS
from maskvlp.checkpoint import list_checkpoints, save_weights
from maskvlp.config import Config
from maskvlp.cpushare import CpuShare, cpu_share_applied
from maskvlp.data.transforms import normalize
from maskvlp.distributed import any_rank, close_distributed
from maskvlp.evaltasks import SubsetEvaluator
from maskvlp.launch import CooperativeStop, PreemptibleJob, restarted_by_slurm
from maskvlp.masking import MaskContext, MaskResult, describe, get_strategy, make_mask
from maskvlp.model import CLIP
from maskvlp.params import config_from_dict
from maskvlp.probe import STATS as PROBE_STATS
from maskvlp.probe import split_stats
from maskvlp.runs import read_result, run_paths, update_result
from maskvlp.schedule import lr_at
from maskvlp.session import Session, Window, enter_tuning, note_batch, per_rank, save, start_or_resume
from maskvlp.trainlog import NonFiniteLoss, TrainLog

LOGIT_SCALE_MAX = math.log(100.0)


class Abandoned(RuntimeError):
    """The run's attempt is no longer wanted (a sweep trial the driver settled, a study replaced): the
    loop ends at once and writes nothing more into the run folder, which may belong to another attempt."""


class StopRequest:
    """SIGTERM / SIGUSR1 ask the loop to checkpoint and exit cleanly at the next step boundary."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.requested = False
        self._previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
            for sig in signals:
                self._previous[sig] = signal.signal(sig, lambda signum, frame: setattr(self, "requested", True))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------ one step
TEXT_SEED = 0x7E47  # the text generator's seed: the image mask's, xor this (another stream, as reproducible)


def mask_seed(seed: int, rank: int, step: int, micro: int) -> int:
    digest = hashlib.blake2b(f"mask/{seed}/{rank}/{step}/{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def choose_mask(
    cfg: Config, model: CLIP, images: torch.Tensor, step: int, micro: int, rank: int, k: Any, samples_seen: int
) -> MaskResult:
    """The kept tokens for one micro-batch under masking config `k` (no gradient flows through the
    choice): the run's calibrated masking in the masked phase, strategy none in the unmasked one."""
    gen = torch.Generator(device=images.device).manual_seed(mask_seed(cfg.train.seed, rank, step, micro))
    # fp32 whatever autocast the caller runs under: clusters must not depend on the device's precision
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        weight = get_strategy(k.strategy).embed_weight(k, samples_seen)
        embed_tokens = model.visual.patch_tokens(images) if weight > 0 else None
        return make_mask(images, k, MaskContext(cfg.model.patch_size, gen, embed_tokens, weight))


def choose_text(cfg: Config, s: Session, tokens: torch.Tensor, micro: int) -> torch.Tensor:
    """The caption tokens one micro-batch trains on under text_masking (the input where it reduces
    nothing), drawn from a generator of its own, seeded as the image mask's."""
    if not textmask.reduces(cfg.text_masking, tokens.shape[1]):
        return tokens
    seed = mask_seed(cfg.train.seed, s.env.rank, s.step, micro) ^ TEXT_SEED
    gen = torch.Generator(device=tokens.device).manual_seed(seed)
    return textmask.reduce_text(tokens, cfg.text_masking, textmask.TextContext(gen, s.text_state))


def train_step(s: Session) -> tuple[MaskResult, torch.Tensor]:
    """One optimizer step over `accum_steps` micro-batches at the schedule's learning rate: one
    contrastive batch of accum_steps x batch_size (accum_mode cache) or a loss per micro-batch
    (accum_mode micro; accumulate.py). The step joins the run's totals and the window; returns the
    last micro-batch's mask and images (uint8) for the log line and the mask pictures."""
    cfg, t = s.cfg, s.cfg.train
    masked = s.step < s.budget.masked_steps
    if not masked and not s.tuning:
        enter_tuning(s)
    for group in s.optimizer.param_groups:
        group["lr"] = lr_at(s.step, s.budget)
    micros, ratio_sum, coverage_sum = [], 0.0, torch.zeros((), device=s.device)
    k = s.masking if masked else replace(s.masking, strategy="none")  # the phase's masking, whose FLOPs count
    cached = t.accum_mode == "cache" and t.accum_steps > 1  # each micro-batch forwarded twice (accumulate.py)
    for micro in range(t.accum_steps):
        batch = next(s.batches)
        note_batch(s, batch)
        images_uint8 = batch["images"].to(s.device, non_blocking=True)
        tokens = batch["tokens"].to(s.device, non_blocking=True)
        if masked:  # the phase's text reduction (the unmasked tuning phase sees whole captions, as whole images)
            tokens = choose_text(cfg, s, tokens, micro)
        images = normalize(images_uint8, cfg.data.augment.mean, cfg.data.augment.std)
        mask = choose_mask(cfg, s.model, images, s.step, micro, s.env.rank, k, s.samples_seen)
        kept = mask.keep_idx.shape[1]
        tower_images = images if mask.images is None else mask.images  # resize: the smaller images, all kept
        # every patch kept (no masking, unmasked tuning, resize): no gather, and no scatter in backward
        every = mask.images is not None or kept == s.model.visual.num_patches
        micros.append((tower_images, tokens, None if every else mask.keep_idx))
        ratio_sum += mask.mask_ratio
        coverage_sum += mask.cluster_coverage.mean()
        text = tokens.shape[1]
        s.totals["train_flops"] += flops.sample_flops(s.model, k, kept, s.samples_seen, cached, text) * images.shape[0]
    no_sync = s.ddp.no_sync if s.ddp is not None else None
    loss = ACCUMULATORS[t.accum_mode](s.forward, micros, t.local_loss, s.autocast, no_sync)
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), t.grad_clip)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        s.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    s.step += 1
    s.totals["mask_ratio_sum"] += ratio_sum
    s.totals["micro_batches"] += t.accum_steps
    s.window.add(loss, ratio_sum, coverage_sum, t.accum_steps)  # the loss detached, summed without a host sync
    return mask, images_uint8


# ------------------------------------------------------------------------------- the log line
def log_line(s: Session, log: TrainLog, kept: int, embedded: int | None = None) -> None:
    """The window's mean loss (the one host sync of the interval), its coverage added to the run's
    totals, the probe measured where TensorBoard is written, all handed to the log; then a new window.
    `kept`, `embedded`: the last step's tokens through the tower and patches embedded (None: all)."""
    w = s.window
    loss = s.last_loss = window_loss(s)
    s.totals["coverage_sum"] += float(w.coverage)
    scalars = {}
    if log.writing:
        scalars = {
            "train/lr": s.optimizer.param_groups[0]["lr"],
            "train/logit_scale": float(s.model.logit_scale.detach().exp()),
            "mask/ratio": w.ratio / w.micro,
            "mask/cluster_coverage": float(w.coverage) / w.micro,
            "train/step": s.step,
            **{f"mask/{key}": value for key, value in measure_probe(s).items()},
        }
    if s.data.in_place and log.writing:
        scalars["data/skipped"] = sum(s.data_skipped.values())
    skipped = sum(s.data_skipped.values()) if s.data.in_place else None
    text = None if s.tuning else textmask.text_tokens(s.cfg.text_masking, s.model.text.positional_embedding.shape[0])
    towers = s.model.train_flops_per_sample(kept, embedded, text)  # MFU: the towers alone
    log.line(s.samples_seen, loss, scalars, towers, skipped)
    s.window = Window()


def window_loss(s: Session) -> float:
    """The mean loss of the steps since the last log line (0 for none; a host sync). A non-finite one
    raises NonFiniteLoss, on every rank together (no collective left waiting): asked at each log line
    and before each checkpoint, so no diverged state is ever saved."""
    w = s.window
    loss = float(w.loss) / w.steps if w.steps else 0.0
    if any_rank(not math.isfinite(loss), s.device):
        raise NonFiniteLoss(s.step, s.samples_seen, loss)
    return loss


def measure_probe(s: Session) -> dict[str, float]:
    """The masking's object / background split on the probe scenes at this step (masked phase only);
    added to the run's totals. Empty when the data has no object boxes."""
    if s.probe is None or s.tuning:
        return {}
    mask = choose_mask(s.cfg, s.model, s.probe.images, s.step, -1, 0, s.masking, s.samples_seen)
    stats = split_stats(mask, s.probe.objects)
    if all(v == v for v in stats.values()):  # no NaN: the probe has object and background patches
        s.totals["probe_count"] += 1
        for key, value in stats.items():
            s.totals[f"probe_{key}"] += value
    return stats


def record_evaluation(s: Session, log: TrainLog, metrics: dict[str, float]) -> None:
    """An evaluation during training (rank 0): TensorBoard and the result record's `evals`."""
    log.evaluation(s.samples_seen, metrics)
    points = [p for p in read_result(s.paths).get("evals", []) if p["samples_seen"] < s.samples_seen]
    update_result(s.paths, evals=[*points, {"samples_seen": s.samples_seen, "step": s.step, **metrics}])


# ----------------------------------------------------------------------------------- the loop
# (samples seen, subset metrics) -> True to stop the run (a resumable checkpoint is saved first)
TrainHook = Callable[[int, dict[str, float]], bool]


def pretrain(
    cfg: Config,
    resume: bool = False,
    progress: bool = True,
    stop: StopRequest | None = None,
    hooks: Sequence[TrainHook] = (),
) -> dict[str, Any]:
    """Train per cfg; returns the run's result record (also in runs/<name>/result.json). Stops early with
    status "stopped" after saving a checkpoint when a stop is requested (SIGTERM/SIGUSR1) or a hook asks
    to (hooks are called after each evaluation during training, every train.eval_every_samples). A stop
    whose `abandoned` attribute is set raises Abandoned instead, writing nothing. A non-finite loss raises
    NonFiniteLoss at the next log line or checkpoint (result.json: status failed, failure non_finite_loss).
    Uses this process's CPU share (cpushare.py)."""
    with cpu_share_applied(cfg) as share:
        s = start_or_resume(cfg, share, resume)
        # TensorBoard on rank 0, where purge_step drops what a killed attempt logged after the checkpoint
        # (the checkpoint step's own point stays): one continuous curve, each point once
        log = TrainLog(
            title=f"pretrain {cfg.train.run_name}",
            total_steps=s.budget.total_steps,
            step=s.step,
            global_batch=s.budget.global_batch,
            patch_size=cfg.model.patch_size,
            world_size=s.env.world_size,
            peak_flops=flops.peak_flops(s.device),
            progress=progress and s.env.is_main,
            tensorboard=s.paths.tensorboard if s.env.is_main else None,
            purge_step=s.samples_seen + 1 if s.step else None,
        )
        t = cfg.train
        evaluator = SubsetEvaluator(cfg, s.device) if t.eval_every_samples and s.env.is_main else None
        # every rank counts the evaluation steps: the hooks' decision is agreed on by all ranks (any_rank)
        eval_every = math.ceil(t.eval_every_samples / s.budget.global_batch) if t.eval_every_samples else 0
        own_stop, stop = stop is None, stop or StopRequest()
        status, started, first_step = "complete", time.perf_counter(), s.step
        try:
            while s.step < s.budget.total_steps:
                # a stop request (SIGTERM, preemption) is agreed on by all ranks; with several ranks that
                # is an all-reduce + host sync, so it is asked every log_every_steps steps, not every step
                check = s.env.world_size == 1 or s.step % t.log_every_steps == 0
                if check and any_rank(stop.requested, s.device):
                    abandoned = getattr(stop, "abandoned", None)  # asked on rank 0 alone; all ranks agree
                    if any_rank(bool(abandoned), s.device):
                        raise Abandoned(abandoned or "rank 0 found the attempt no longer live")
                    status = "stopped"
                    break
                mask, images_uint8 = train_step(s)
                log.step_done()
                if s.step % t.log_every_steps == 0 or s.step == s.budget.total_steps:
                    log_line(s, log, mask.keep_idx.shape[1], None if mask.images is None else mask.keep_idx.shape[1])
                if log.writing and t.mask_image_every_steps and (s.step - 1) % t.mask_image_every_steps == 0:
                    log.mask_image(mask, images_uint8, s.samples_seen)
                if eval_every and s.step % eval_every == 0 and s.step < s.budget.total_steps:
                    metrics = evaluator(s.model) if evaluator is not None else {}  # rank 0 evaluates
                    if metrics:
                        record_evaluation(s, log, metrics)
                    if any_rank(any(hook(s.samples_seen, metrics) for hook in hooks), s.device):
                        status = "stopped"
                        break
                if s.step % s.budget.checkpoint_every == 0 and s.step < s.budget.total_steps:
                    window_loss(s)
                    save(s)
            window_loss(s)  # before finish() saves the last checkpoint and the weights
        except BaseException as exc:
            if s.env.is_main and not isinstance(exc, Abandoned):
                extra = {"failure": "non_finite_loss", "loss": str(exc.loss)} if isinstance(exc, NonFiniteLoss) else {}
                update_result(s.paths, status="failed", error=f"{type(exc).__name__}: {exc}", steps=s.step, **extra)
            log.close()
            if isinstance(exc, (Abandoned, NonFiniteLoss)):  # agreed on by every rank (any_rank): all end here
                close_distributed()
            raise
        finally:
            if own_stop:
                stop.restore()
        attempt_s = time.perf_counter() - started
        s.totals["wall_s"] += attempt_s
        log.close()
        record = finish(s, status, share, attempt_s, s.budget.global_batch * (s.step - first_step))
        close_distributed()  # finish() held the last collective; nothing after a run needs the group
        return record


def finish(s: Session, status: str, share: CpuShare, attempt_s: float, attempt_samples: int) -> dict[str, Any]:
    """Save the checkpoint (and, when complete, the weights) and write result.json. A stopped run's
    record counts the steps since its last log line too (their window waits in the checkpoint)."""
    save(s)
    if status == "complete" and s.env.is_main:
        save_weights(s.model.state_dict(), s.paths.model)
    n, t, probes = max(1.0, s.totals["micro_batches"]), s.cfg.train, s.totals["probe_count"]
    skipped = Counter()
    for counts in per_rank(s, dict(s.data_skipped)):  # a collective: before any rank-0-only work
        skipped.update(counts)
    if s.spec.limits:
        pairs = sum(s.spec.limits)
    else:  # in place without sizes.json / _stats.json: counted once (rank 0), cached in the run folder
        pairs = sum(s.data.train_counts(s.paths.shard_counts)) if s.env.is_main else None
    record = {
        "status": status,
        "steps": s.step,
        "total_steps": s.budget.total_steps,
        "samples_seen": s.samples_seen,
        "global_batch": s.budget.global_batch,
        "world_size": s.env.world_size,
        "train_loss": s.last_loss,
        # candidates per row of the masked phase's contrastive loss: the global contrastive batch
        "chance_loss": math.log(t.batch_size * s.env.world_size * (t.accum_steps if t.accum_mode == "cache" else 1)),
        "wall_s": round(s.totals["wall_s"], 2),
        "images_per_s": round(attempt_samples / max(attempt_s, 1e-9), 2),
        "train_flops": s.totals["train_flops"] * s.env.world_size,
        "params_nonembedding": s.model.nonembedding_params(),
        "unique_pairs": pairs,
        "masking": {
            "label": describe(s.cfg.masking),
            "mean_mask_ratio": s.totals["mask_ratio_sum"] / n,
            "mean_cluster_coverage": (s.totals["coverage_sum"] + float(s.window.coverage)) / n,
            **get_strategy(s.masking.strategy).record(s.masking),
            # object vs background patches of the probe scenes (probe.py)
            **({key: s.totals[f"probe_{key}"] / probes for key in PROBE_STATS} if probes else {}),
        },
        "text_masking": {  # the masked phase's captions: tokens the text tower saw of the model's context
            "label": textmask.describe(s.cfg.text_masking),
            "tokens": textmask.text_tokens(s.cfg.text_masking, s.cfg.model.context_length),
            "context_length": s.cfg.model.context_length,
        },
        "threads": share.threads,
        # in place: the samples left out as unusable, by reason, over every rank
        **({"data_skipped": dict(sorted(skipped.items()))} if s.data.in_place or skipped else {}),
    }
    if s.env.is_main:
        record = update_result(s.paths, **record)
    return {**record, "rank": s.env.rank}


class TrainJob(PreemptibleJob):
    """`pretrain` as a Slurm job (launch.py): on preemption or at the time limit the loop saves a step
    checkpoint and the job is requeued to resume it, at most launcher.max_requeues times."""

    by_hand = "Resume by hand with `maskvlp pretrain --resume`"

    def __init__(self, cfg_dict: dict[str, Any], resume: bool = False, requeues: int = 0):
        super().__init__(requeues, cfg_dict["launcher"]["max_requeues"])
        self.cfg_dict, self.resume = cfg_dict, resume

    def run(self, stop: CooperativeStop) -> dict[str, Any]:
        cfg = config_from_dict(self.cfg_dict)
        # Slurm ran this first submission again by itself (node failure, `scontrol requeue`): resume the
        # checkpoint the last attempt left, as submitit's requeue does (a restart before any starts afresh)
        again = restarted_by_slurm() and bool(list_checkpoints(run_paths(cfg).checkpoints))
        return pretrain(cfg, resume=self.resume or again, progress=True, stop=stop)  # plain lines in the job's log

    def resumed(self) -> TrainJob:
        return TrainJob(self.cfg_dict, resume=True, requeues=self.requeues + 1)
