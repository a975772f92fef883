"""The `pretrain` stage: masked CLIP training that resumes exactly and logs to TensorBoard.

Progress is counted in samples seen (TensorBoard's x-axis, the schedule, checkpoints). Randomness
that the loop draws is a pure function of (seed, rank, step): the data stream by construction
(loader.py), the mask generator re-seeded every step, so a run stopped and resumed from a
checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from maskvlp.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from maskvlp.config import Config, to_dict, to_yaml
from maskvlp.data.loader import StreamSpec, read_images, train_loader
from maskvlp.data.shards import MANIFEST, check_manifest, load_manifest, sha256_file, shard_paths
from maskvlp.data.transforms import normalize
from maskvlp.distributed import DistEnv, any_rank, init_distributed
from maskvlp.loss import distributed_clip_loss
from maskvlp.masking import MaskResult, calibrate_threshold, compute_mask, fusion_weight
from maskvlp.model import CLIP, train_flops_per_sample
from maskvlp.progress import Progress
from maskvlp.resources import CpuShare, cpu_share_applied
from maskvlp.schedule import Budget, lr_at, make_budget

# Params that may change between a run and its resume: they do not change what is computed.
RESUME_FREE = (
    "launcher",
    "train.log_every_steps",
    "train.mask_image_every_steps",
    "train.keep_checkpoints",
    "train.checkpoint_every_samples",
    "eval",
)
LOGIT_SCALE_MAX = math.log(100.0)
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16


class TrainError(RuntimeError):
    """Training cannot start or resume as asked; the message says what to do."""


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"


def run_paths(cfg: Config) -> RunPaths:
    return RunPaths(Path(cfg.train.runs_dir) / cfg.train.run_name)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_signature(cfg: Config) -> dict[str, Any]:
    """The params a checkpoint must share with the run that resumes it."""
    return {k: v for k, v in _flat(to_dict(cfg)).items() if not k.startswith(RESUME_FREE)}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class StopRequest:
    """SIGTERM / SIGUSR1 ask the loop to checkpoint and exit cleanly at the next step boundary."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.requested = False
        self._previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_optimizer(model: CLIP, cfg: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on gains, biases, embeddings or the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(p)
    t = cfg.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused or None)


def mask_seed(seed: int, rank: int, step: int, micro: int) -> int:
    digest = hashlib.blake2b(f"mask/{seed}/{rank}/{step}/{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def choose_mask(
    cfg: Config,
    model: CLIP,
    images: torch.Tensor,
    step: int,
    micro: int,
    rank: int,
    masked: bool,
    threshold: float,
    samples_seen: int,
) -> MaskResult:
    """The kept tokens for one micro-batch (no gradient flows through the choice)."""
    k, m = cfg.masking, cfg.model
    strategy = k.strategy if masked else "none"
    gen = torch.Generator(device=images.device).manual_seed(mask_seed(cfg.seed, rank, step, micro))
    with torch.no_grad():
        embed_tokens, weight = None, 0.0
        if strategy == "cluster" and k.features == "rgb+embed":
            weight = fusion_weight(samples_seen, k.fusion_samples)
            embed_tokens = model.visual.patch_tokens(images) if weight > 0 else None
        return compute_mask(
            strategy,
            images,
            m.patch_size,
            k.ratio,
            k.anchor_ratio,
            threshold,
            gen,
            k.mode,
            k.min_mask_ratio,
            embed_tokens,
            weight,
        )


def _calibrated_threshold(cfg: Config, device: torch.device) -> tuple[float, float | None]:
    k = cfg.masking
    if k.strategy != "cluster" or k.calibrate_coverage <= 0:
        return k.threshold, None
    images = read_images(cfg.data.out_dir, 256, cfg.model.image_size)[0].to(device)
    norm = normalize(images, cfg.data.augment.mean, cfg.data.augment.std)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    return calibrate_threshold(norm, cfg.model.patch_size, k.anchor_ratio, k.calibrate_coverage, gen)


def _prepare_run_dir(cfg: Config, paths: RunPaths, resume: bool, env: DistEnv) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None. Refuses to silently restart or overwrite."""
    found = list_checkpoints(paths.checkpoints)
    if not resume:
        if found or paths.model.exists():
            raise TrainError(
                f"{paths.root} already holds a run ({len(found)} checkpoint(s)): pass --resume to continue it, "
                "or choose another train.run_name (or delete the folder) to start afresh"
            )
        return None
    if not found:
        raise TrainError(f"--resume: no checkpoint in {paths.checkpoints}; start without --resume")
    state = load_checkpoint(found[-1][1])
    old, new = state["signature"], resume_signature(cfg)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise TrainError(
            f"cannot resume {paths.root}: params changed since its checkpoints ({detail}). "
            "Restore them, or start a new run with another train.run_name"
        )
    if state["world_size"] != env.world_size or state["loader_workers"] != cfg.data.loader_workers:
        raise TrainError(
            f"cannot resume {paths.root}: it ran with world size {state['world_size']} and "
            f"{state['loader_workers']} loader workers, now {env.world_size} and {cfg.data.loader_workers}: "
            "the data stream would differ. Resume with the same launcher.tasks_per_node x nodes and data.loader_workers"
        )
    return state


def preflight(cfg: Config, resume: bool, world_size: int) -> None:
    """The checks `pretrain` makes before any work, for a launcher to run before it submits a job."""
    check_manifest(cfg, load_manifest(cfg.data.out_dir))
    _prepare_run_dir(cfg, run_paths(cfg), resume, DistEnv(0, world_size, 0))


def _log_mask_image(writer, result: MaskResult, images_uint8: torch.Tensor, patch: int, samples: int) -> None:
    import numpy as np

    from maskvlp.viz import clusters_picture, kept_picture

    rows = []
    for i in range(min(4, images_uint8.shape[0])):
        img = images_uint8[i].permute(1, 2, 0).cpu().numpy()
        rows.append(
            np.concatenate([img, clusters_picture(img, result, i, patch), kept_picture(img, result, i, patch)], 1)
        )
    writer.add_image("mask/image_clusters_kept", np.concatenate(rows, 0), samples, dataformats="HWC")


def pretrain(
    cfg: Config, resume: bool = False, progress: bool = True, stop: StopRequest | None = None
) -> dict[str, Any]:
    """Train per cfg; returns the final metrics. Returns early with status "stopped" after saving a
    checkpoint when a stop is requested (SIGTERM/SIGUSR1). Uses this process's CPU share (resources.py)."""
    with cpu_share_applied(cfg) as share:
        return _pretrain(cfg, share, resume, progress, stop)


def _pretrain(cfg: Config, share: CpuShare, resume: bool, progress: bool, stop: StopRequest | None) -> dict[str, Any]:
    env, device = init_distributed()
    t, m = cfg.train, cfg.model
    manifest = load_manifest(cfg.data.out_dir)
    check_manifest(cfg, manifest)
    urls = tuple(shard_paths(cfg.data.out_dir, "train"))
    paths = run_paths(cfg)
    state = _prepare_run_dir(cfg, paths, resume, env)

    torch.manual_seed(cfg.seed)
    model = CLIP.from_config(m).to(device)
    if t.grad_checkpointing:
        model.set_grad_checkpointing()
    optimizer = build_optimizer(model, cfg)
    budget: Budget = make_budget(
        t.samples,
        t.unmasked_tuning_samples,
        t.batch_size,
        env.world_size,
        t.accum_steps,
        t.warmup_samples,
        t.checkpoint_every_samples,
        t.lr,
    )
    step = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise TrainError(f"checkpoint of {paths.root} does not fit the model ({exc})") from exc
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        threshold = state["threshold"]
    else:
        threshold, coverage = _calibrated_threshold(cfg, device)
        if coverage is not None and env.is_main:
            print(f"calibrated masking.threshold = {threshold:.4f} (coverage {coverage:.1%})")
    if env.is_main:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(to_yaml(cfg))
        info = {
            "git_commit": _git_commit(),
            "manifest_sha256": sha256_file(Path(cfg.data.out_dir) / MANIFEST),
            "world_size": env.world_size,
            "threshold": threshold,
            "global_batch": budget.global_batch,
            "total_steps": budget.total_steps,
            "resumed_at_step": step,
            "cpu_share": share.record(),
        }
        paths.info.write_text(json.dumps(info, indent=2) + "\n")

    ddp = DistributedDataParallel(model) if env.world_size > 1 else None
    forward = ddp or model
    if t.compile:
        forward = torch.compile(forward, dynamic=False)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    spec = StreamSpec(
        urls,
        t.batch_size,
        m.image_size,
        m.context_length,
        cfg.seed,
        env.rank,
        env.world_size,
        cfg.data.shuffle_buffer,
        (cfg.data.augment.crop_scale_min, cfg.data.augment.crop_scale_max),
        (cfg.data.augment.crop_ratio_min, cfg.data.augment.crop_ratio_max),
        streams=max(1, cfg.data.loader_workers),
    )
    batches = iter(train_loader(spec, share.loader_workers, start_step=step * t.accum_steps))

    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops what a killed attempt logged after the checkpoint (the checkpoint step's own
        # point stays): one continuous curve, each point once
        writer = SummaryWriter(str(paths.tensorboard), purge_step=step * budget.global_batch + 1 if step else None)
    own_stop = stop is None
    stop = stop or StopRequest()
    peak = next(
        (v for k, v in GPU_PEAK_FLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), 0
    )

    def save(at_step: int) -> None:
        if env.is_main:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": at_step,
                    "samples_seen": at_step * budget.global_batch,
                    "torch_rng": torch.get_rng_state(),
                    "threshold": threshold,
                    "signature": resume_signature(cfg),
                    "world_size": env.world_size,
                    "loader_workers": cfg.data.loader_workers,
                    "loader_batches": at_step * t.accum_steps,
                },
                paths.checkpoints,
                at_step,
                t.keep_checkpoints,
            )

    bar = Progress(budget.total_steps, f"pretrain {t.run_name}", "step", progress and env.is_main, initial=step)
    window = {"loss": 0.0, "ratio": 0.0, "coverage": 0.0, "n": 0, "t0": time.perf_counter(), "steps": 0}
    recent_losses: list[float] = []
    status = "finished"
    start_time = time.perf_counter()
    while step < budget.total_steps:
        if any_rank(stop.requested, device):
            save(step)
            status = "stopped"
            break
        masked = step < budget.masked_steps
        lr = lr_at(step, budget, t.unmasked_tuning_lr_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr
        samples_seen = step * budget.global_batch
        step_loss = 0.0
        for micro in range(t.accum_steps):
            batch = next(batches)
            images_uint8 = batch["images"].to(device, non_blocking=True)
            tokens = batch["tokens"].to(device, non_blocking=True)
            images = normalize(images_uint8, cfg.data.augment.mean, cfg.data.augment.std)
            with autocast:
                mask = choose_mask(cfg, model, images, step, micro, env.rank, masked, threshold, samples_seen)
            sync = ddp.no_sync() if ddp is not None and micro < t.accum_steps - 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    img_f, txt_f, scale = forward(images, tokens, mask.keep_idx)
                    loss = distributed_clip_loss(img_f.float(), txt_f.float(), scale.float(), t.local_loss)
                (loss / t.accum_steps).backward()
            step_loss += loss.detach() / t.accum_steps
            window["ratio"] += mask.mask_ratio
            window["coverage"] += mask.cluster_coverage.mean()
            window["n"] += 1
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        step += 1
        window["loss"] += step_loss
        window["steps"] += 1
        bar.update(1)

        if step % t.log_every_steps == 0 or step == budget.total_steps:
            mean_loss = float(window["loss"]) / window["steps"]  # one host sync per log interval
            recent_losses.append(mean_loss)
            elapsed = time.perf_counter() - window["t0"]
            images_per_s = window["steps"] * budget.global_batch / max(elapsed, 1e-9)
            samples = step * budget.global_batch
            bar.set_postfix(samples=samples, loss=f"{mean_loss:.3f}", img_s=f"{images_per_s:.0f}")
            if writer is not None:
                writer.add_scalar("train/loss", mean_loss, samples)
                writer.add_scalar("train/lr", lr, samples)
                writer.add_scalar("train/logit_scale", float(model.logit_scale.detach().exp()), samples)
                writer.add_scalar("perf/images_per_s", images_per_s, samples)
                writer.add_scalar("mask/ratio", window["ratio"] / window["n"], samples)
                writer.add_scalar("mask/cluster_coverage", float(window["coverage"]) / window["n"], samples)
                writer.add_scalar("train/step", step, samples)
                if peak:
                    flops = train_flops_per_sample(model, mask.keep_idx.shape[1], m.context_length)
                    writer.add_scalar("perf/mfu", flops * images_per_s / env.world_size / peak, samples)
            window.update(loss=0.0, ratio=0.0, coverage=0.0, n=0, t0=time.perf_counter(), steps=0)
        if writer is not None and t.mask_image_every_steps and (step - 1) % t.mask_image_every_steps == 0:
            _log_mask_image(writer, mask, images_uint8, m.patch_size, step * budget.global_batch)
        if step % budget.checkpoint_every == 0 and step < budget.total_steps:
            save(step)
    bar.close()
    if own_stop:
        stop.restore()

    result = {
        "status": status,
        "rank": env.rank,
        "world_size": env.world_size,
        "step": step,
        "total_steps": budget.total_steps,
        "samples_seen": step * budget.global_batch,
        "global_batch": budget.global_batch,
        "chance_loss": math.log(t.batch_size * env.world_size),  # candidates per contrastive loss
        "wall_s": round(time.perf_counter() - start_time, 2),
        "threads": torch.get_num_threads(),
    }
    if recent_losses:
        result["final_loss"] = recent_losses[-1]
    if status == "finished":
        save(step)
        if env.is_main:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(paths.model))
    if writer is not None:
        writer.flush()
        writer.close()
    return result
