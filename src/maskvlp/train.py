"""The `pretrain` stage: masked CLIP training that resumes exactly and logs to TensorBoard.

Progress is counted in samples seen (TensorBoard's x-axis, the schedule, checkpoints). Randomness
that the loop draws is a pure function of (seed, rank, step): the data stream by construction
(loader.py), the mask generator re-seeded every step, so a run stopped and resumed from a
checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from maskvlp import flops
from maskvlp.accumulate import ACCUMULATORS
from maskvlp.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_weights
from maskvlp.config import Config, to_dict, to_yaml
from maskvlp.coverage import STATS as PROBE_STATS
from maskvlp.coverage import ObjectProbe
from maskvlp.data.loader import StreamSpec, read_images, train_loader
from maskvlp.data.shards import MANIFEST, check_manifest, first_pairs, load_manifest, sha256_file, shard_paths
from maskvlp.data.transforms import normalize
from maskvlp.distributed import DistEnv, any_rank, init_distributed
from maskvlp.evaltasks import SubsetEvaluator
from maskvlp.launch import CooperativeStop, PreemptibleJob
from maskvlp.masking import MaskContext, MaskResult, calibrate, describe, get_strategy, make_mask
from maskvlp.model import CLIP
from maskvlp.params import config_from_dict
from maskvlp.resources import CpuShare, cpu_share_applied, loader_hint
from maskvlp.runs import RunPaths, run_paths, update_result, weights_complete, write_json_atomic, write_text_atomic
from maskvlp.schedule import Budget, lr_at, make_budget
from maskvlp.trainlog import NonFiniteLoss, TrainLog

# Params that may change between a run and its resume: they do not change what is computed.
RESUME_FREE = (
    "launcher",
    "train.log_every_steps",
    "train.mask_image_every_steps",
    "train.keep_checkpoints",
    "train.checkpoint_every_samples",
    "train.eval_every_samples",
    "eval",
)
LOGIT_SCALE_MAX = math.log(100.0)


class TrainError(RuntimeError):
    """Training cannot start or resume as asked; the message says what to do."""


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


FAILURE_KEYS = ("error", "failure", "loss", "sweep_state", "sweep_failure")  # result.json: why an attempt failed


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
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_optimizer(model: CLIP, cfg: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: never on 1-D parameters (gains, biases, class token)
    or the temperature, nor on parameters whose name contains a part listed in train.no_decay (the
    recipe's: positions for FLIP, every embedding for the default, none for open_clip's)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or "logit_scale" in name or any(part in name for part in cfg.train.no_decay)
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
    k: Any,
    samples_seen: int,
) -> MaskResult:
    """The kept tokens for one micro-batch (no gradient flows through the choice): the configured
    strategy (from the masking registry) in the masked phase, every token in the unmasked one."""
    k = k if masked else replace(k, strategy="none")
    gen = torch.Generator(device=images.device).manual_seed(mask_seed(cfg.train.seed, rank, step, micro))
    # fp32 whatever autocast the caller runs under: clusters must not depend on the device's precision
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        weight = get_strategy(k.strategy).embed_weight(k, samples_seen)
        embed_tokens = model.visual.patch_tokens(images) if weight > 0 else None
        return make_mask(images, k, MaskContext(cfg.model.patch_size, gen, embed_tokens, weight))


def calibration_images(cfg: Config, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised training images a strategy calibrates on: the first 256 of train shard 0."""
    first = shard_paths(cfg.data.out_dir, "train")[0]  # training images: what the masks will see
    images = read_images(first, 256, cfg.model.image_size)[0].to(device)
    return normalize(images, cfg.data.augment.mean, cfg.data.augment.std)


def calibrated_masking(cfg: Config, device: torch.device | str = "cpu") -> tuple[Any, str]:
    """The masking config the run trains with (its strategy's calibration applied, seeded by
    train.seed), and the line saying what was calibrated ("" for nothing)."""
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    return calibrate(cfg.masking, lambda: calibration_images(cfg, device), cfg.model.patch_size, gen)


def _prepare_run_dir(cfg: Config, paths: RunPaths, resume: bool, env: DistEnv) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None. Refuses to silently restart or overwrite."""
    found = list_checkpoints(paths.checkpoints)
    if not resume:
        if found or weights_complete(paths.model):
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
    if state["world_size"] != env.world_size:
        raise TrainError(
            f"cannot resume {paths.root}: it ran with world size {state['world_size']}, now {env.world_size}: "
            "the data stream would differ. Resume with the same launcher.tasks_per_node x nodes"
        )
    return state


def preflight(cfg: Config, resume: bool, world_size: int) -> None:
    """The checks `pretrain` makes before any work, for a launcher to run before it submits a job."""
    check_manifest(cfg, load_manifest(cfg.data.out_dir))
    first_pairs(cfg.data.out_dir, "train", cfg.train.unique_pairs)  # no more pairs than the shards hold
    _prepare_run_dir(cfg, run_paths(cfg), resume, DistEnv(0, world_size, 0))


@dataclass
class Session:
    """Everything the loop works with, built by `start_or_resume`."""

    cfg: Config
    env: DistEnv
    device: torch.device
    paths: RunPaths
    model: CLIP
    forward: Any  # the model, wrapped by DDP and/or torch.compile
    ddp: DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    budget: Budget
    batches: Any
    autocast: Any
    masking: Any  # the masking config trained with: cfg.masking with its strategy's calibration applied
    spec: StreamSpec
    loader_workers: int
    step: int = 0
    tuning: bool = False  # in the unmasked tuning phase (its loader, compiled graph and checkpointing set up)
    probe: ObjectProbe | None = None  # val scenes with object boxes: where the masking removes tokens
    # totals over the whole run, carried across resumes in the checkpoints
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0.0))

    @property
    def samples_seen(self) -> int:
        return self.budget.samples_at(self.step)


PROBE_SUMS = tuple(f"probe_{k}" for k in PROBE_STATS)
TOTALS = ("train_flops", "wall_s", "mask_ratio_sum", "coverage_sum", "micro_batches", "probe_count", *PROBE_SUMS)


def start_or_resume(cfg: Config, share: CpuShare, resume: bool) -> Session:
    """Check the shards and the run folder, build model, optimizer and data stream, load the
    checkpoint when resuming, and record how the run starts (config.yaml, run.json, result.json)."""
    env, device = init_distributed()
    t, m = cfg.train, cfg.model
    manifest = load_manifest(cfg.data.out_dir)
    check_manifest(cfg, manifest)
    paths = run_paths(cfg)
    state = _prepare_run_dir(cfg, paths, resume, env)
    torch.manual_seed(cfg.train.seed)
    model = CLIP.from_config(m).to(device)
    if t.grad_checkpointing:
        model.set_grad_checkpointing()
    optimizer = build_optimizer(model, cfg)
    budget = make_budget(t, env.world_size)
    step, totals = 0, dict.fromkeys(TOTALS, 0.0)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise TrainError(f"checkpoint of {paths.root} does not fit the model ({exc})") from exc
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, masking = state["step"], replace(cfg.masking, **state["masking"])
        totals.update(state.get("totals", {}))
    else:
        masking, calibrated = calibrated_masking(cfg, device)
        if calibrated and env.is_main:
            print(calibrated)
    if env.is_main:
        paths.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(paths.config, to_yaml(cfg))
        info = {
            "git_commit": _git_commit(),
            "manifest_sha256": sha256_file(Path(cfg.data.out_dir) / MANIFEST),
            "world_size": env.world_size,
            **get_strategy(masking.strategy).record(masking),
            "global_batch": budget.global_batch,
            "total_steps": budget.total_steps,
            "resumed_at_step": step,
            "cpu_share": share.record(),
        }
        write_json_atomic(paths.info, info, sort_keys=False)
        start = {
            "status": "running",
            "git_commit": info["git_commit"],
            "steps": step,
            "total_steps": budget.total_steps,
        }
        if state is None:  # a fresh run: nothing of an earlier run in this folder (e.g. its eval) may survive
            write_json_atomic(paths.result, start)
        else:
            update_result(paths, drop=FAILURE_KEYS, **start)  # what an earlier attempt's failure left

    ddp = DistributedDataParallel(model) if env.world_size > 1 else None
    forward = torch.compile(ddp or model, dynamic=False) if t.compile else (ddp or model)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    spec = StreamSpec(
        tuple(shard_paths(cfg.data.out_dir, "train")),
        t.batch_size,
        m.image_size,
        m.context_length,
        cfg.train.seed,
        env.rank,
        env.world_size,
        cfg.data.shuffle_buffer,
        (cfg.data.augment.crop_scale_min, cfg.data.augment.crop_scale_max),
        (cfg.data.augment.crop_ratio_min, cfg.data.augment.crop_ratio_max),
        streams=max(1, cfg.data.loader_workers),
        hflip=bool(cfg.data.augment.hflip),
        limits=first_pairs(cfg.data.out_dir, "train", t.unique_pairs),
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    s = Session(
        cfg,
        env,
        device,
        paths,
        model,
        forward,
        ddp,
        optimizer,
        budget,
        None,
        autocast,
        masking,
        spec,
        share.loader_workers,
        step,
        totals=totals,
    )
    if env.is_main:
        s.probe = ObjectProbe.from_shards(cfg, device)
        hint = loader_hint(share, spec.streams) if device.type == "cuda" else None
        if hint:  # CPU training: the workers share the cores with the step itself, fewer is better
            print(hint, flush=True)
    if step >= budget.masked_steps:  # resumed inside the unmasked tuning phase
        enter_tuning(s)
    else:
        s.batches = iter(train_loader(spec, share.loader_workers, step * t.accum_steps, device.type == "cuda"))
    return s


TUNING_STREAM_SEED = 1_000_003  # added to the seed of the tuning phase's own stream (its own batch size)


def enter_tuning(s: Session) -> None:
    """Set up the unmasked tuning phase (FLIP): the full token count gets a graph of its own when
    compiled (one compiled graph per token count: a second count reaching a compiled graph crashed
    inductor on an H100, ../performance notes), gradient checkpointing if asked for this phase (its
    activations are those of every token), and a stream of `unmasked_tuning_batch_size` batches when
    that differs from the masked phase's (otherwise the one stream continues)."""
    t = s.cfg.train
    s.tuning = True
    if t.unmasked_tuning_grad_checkpointing:
        s.model.set_grad_checkpointing()
    if t.compile:
        torch._dynamo.reset()  # drop the masked phase's graphs: the tuning phase compiles its own
        s.forward = torch.compile(s.ddp or s.model, dynamic=False)
    tuning_batch = t.unmasked_tuning_batch_size or t.batch_size
    if tuning_batch == t.batch_size:
        if s.batches is None:
            s.batches = iter(train_loader(s.spec, s.loader_workers, s.step * t.accum_steps, s.device.type == "cuda"))
        return
    s.batches = None  # shut the masked phase's workers down before the next ones start
    spec = replace(s.spec, batch_size=tuning_batch, seed=s.spec.seed + TUNING_STREAM_SEED)
    start = (s.step - s.budget.masked_steps) * t.accum_steps
    s.batches = iter(train_loader(spec, s.loader_workers, start, s.device.type == "cuda"))


@dataclass
class StepOut:
    loss: torch.Tensor  # the step's contrastive loss, detached (no host sync); per accum_mode
    mask: MaskResult  # the last micro-batch's mask
    images_uint8: torch.Tensor  # the last micro-batch's images
    mask_ratio: float  # summed over the micro-batches
    coverage: torch.Tensor  # summed over the micro-batches (a device scalar)


def train_step(s: Session) -> StepOut:
    """One optimizer step over `accum_steps` micro-batches at the schedule's learning rate: one
    contrastive batch of accum_steps x batch_size (accum_mode cache) or a loss per micro-batch
    (accum_mode micro; accumulate.py)."""
    cfg, t = s.cfg, s.cfg.train
    masked = s.step < s.budget.masked_steps
    if not masked and not s.tuning:
        enter_tuning(s)
    for group in s.optimizer.param_groups:
        group["lr"] = lr_at(s.step, s.budget)
    micros, ratio_sum, coverage_sum = [], 0.0, torch.zeros((), device=s.device)
    counted = s.masking if masked else replace(s.masking, strategy="none")  # the mask whose FLOPs count
    cached = flops.cache_pass(t.accum_mode, t.accum_steps)
    for micro in range(t.accum_steps):
        batch = next(s.batches)
        images_uint8 = batch["images"].to(s.device, non_blocking=True)
        tokens = batch["tokens"].to(s.device, non_blocking=True)
        images = normalize(images_uint8, cfg.data.augment.mean, cfg.data.augment.std)
        mask = choose_mask(cfg, s.model, images, s.step, micro, s.env.rank, masked, s.masking, s.samples_seen)
        kept = mask.keep_idx.shape[1]
        # every patch kept (no masking, unmasked tuning): no gather, and no scatter in backward
        micros.append((images, tokens, None if kept == s.model.visual.num_patches else mask.keep_idx))
        ratio_sum += mask.mask_ratio
        coverage_sum += mask.cluster_coverage.mean()
        s.totals["train_flops"] += flops.sample_flops(s.model, counted, kept, s.samples_seen, cached) * images.shape[0]
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
    return StepOut(loss, mask, images_uint8, ratio_sum, coverage_sum)


def measure_probe(s: Session) -> dict[str, float]:
    """The masking's object / background split on the probe scenes at this step (masked phase only);
    added to the run's totals. Empty when the data has no object boxes."""
    if s.probe is None or s.tuning:
        return {}
    stats = s.probe.measure(
        lambda images: choose_mask(s.cfg, s.model, images, s.step, -1, 0, True, s.masking, s.samples_seen)
    )
    if all(v == v for v in stats.values()):  # no NaN: the probe has object and background patches
        s.totals["probe_count"] += 1
        for key, value in stats.items():
            s.totals[f"probe_{key}"] += value
    return stats


def probe_means(s: Session) -> dict[str, float]:
    n = s.totals.get("probe_count", 0)
    return {key: s.totals[f"probe_{key}"] / n for key in PROBE_STATS} if n else {}


def save(s: Session) -> None:
    """A step checkpoint (rank 0), with what exact resumption and the run's totals need."""
    if s.env.is_main:
        state = {
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "step": s.step,
            "samples_seen": s.samples_seen,
            "torch_rng": torch.get_rng_state(),
            "masking": dataclasses.asdict(s.masking),  # as calibrated
            "signature": resume_signature(s.cfg),
            "world_size": s.env.world_size,
            "tuning": s.tuning,
            "totals": dict(s.totals),
        }
        save_checkpoint(state, s.paths.checkpoints, s.step, s.cfg.train.keep_checkpoints)


def chance_candidates(cfg: Config, world_size: int) -> int:
    """Candidates per row of the contrastive loss in the masked phase: the global contrastive batch."""
    t = cfg.train
    return t.batch_size * world_size * (t.accum_steps if t.accum_mode == "cache" else 1)


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
    Uses this process's CPU share (resources.py)."""
    with cpu_share_applied(cfg) as share:
        s = start_or_resume(cfg, share, resume)
        log = TrainLog(s, progress)
        evaluator = SubsetEvaluator(cfg, s.device) if cfg.train.eval_every_samples and s.env.is_main else None
        # every rank counts the evaluation steps: the hooks' decision is agreed on by all ranks (any_rank)
        eval_every = (
            math.ceil(cfg.train.eval_every_samples / s.budget.global_batch) if cfg.train.eval_every_samples else 0
        )
        own_stop, stop = stop is None, stop or StopRequest()
        status, started = "complete", time.perf_counter()
        try:
            while s.step < s.budget.total_steps:
                # a stop request (SIGTERM, preemption) is agreed on by all ranks; with several ranks that
                # is an all-reduce + host sync, so it is asked every log_every_steps steps, not every step
                check = s.env.world_size == 1 or s.step % cfg.train.log_every_steps == 0
                if check and any_rank(stop.requested, s.device):
                    abandoned = getattr(stop, "abandoned", None)  # asked on rank 0 alone; all ranks agree
                    if any_rank(bool(abandoned), s.device):
                        raise Abandoned(abandoned or "rank 0 found the attempt no longer live")
                    status = "stopped"
                    break
                log.after_step(s, train_step(s))
                if eval_every and s.step % eval_every == 0 and s.step < s.budget.total_steps:
                    metrics = evaluator(s.model) if evaluator is not None else {}  # rank 0 evaluates
                    if metrics:
                        log.evaluation(s, metrics)
                    if any_rank(any(hook(s.samples_seen, metrics) for hook in hooks), s.device):
                        status = "stopped"
                        break
                if s.step % s.budget.checkpoint_every == 0 and s.step < s.budget.total_steps:
                    log.check_finite(s)
                    save(s)
            log.check_finite(s)  # before finish() saves the last checkpoint and the weights
        except BaseException as exc:
            if s.env.is_main and not isinstance(exc, Abandoned):
                extra = {"failure": "non_finite_loss", "loss": str(exc.loss)} if isinstance(exc, NonFiniteLoss) else {}
                update_result(s.paths, status="failed", error=f"{type(exc).__name__}: {exc}", steps=s.step, **extra)
            log.close()
            raise
        finally:
            if own_stop:
                stop.restore()
        s.totals["wall_s"] += time.perf_counter() - started
        return finish(s, status, log, time.perf_counter() - started, share)


def _train_pairs(cfg: Config) -> int:
    return int(load_manifest(cfg.data.out_dir)["splits"]["train"]["count"])


def finish(s: Session, status: str, log: TrainLog, attempt_s: float, share: CpuShare) -> dict[str, Any]:
    """Close the logs, save the checkpoint (and, when complete, the weights), write result.json."""
    log.close(s)
    save(s)
    if status == "complete" and s.env.is_main:
        save_weights(s.model.state_dict(), s.paths.model)
    n = max(1.0, s.totals["micro_batches"])
    record = {
        "status": status,
        "steps": s.step,
        "total_steps": s.budget.total_steps,
        "samples_seen": s.samples_seen,
        "global_batch": s.budget.global_batch,
        "world_size": s.env.world_size,
        "train_loss": log.last_loss,
        "chance_loss": math.log(chance_candidates(s.cfg, s.env.world_size)),
        "wall_s": round(s.totals["wall_s"], 2),
        "images_per_s": round(log.samples_this_attempt / max(attempt_s, 1e-9), 2),
        "train_flops": s.totals["train_flops"] * s.env.world_size,
        "params_nonembedding": s.model.nonembedding_params(),
        "unique_pairs": sum(s.spec.limits) if s.spec.limits else _train_pairs(s.cfg),
        "masking": {
            "label": describe(s.cfg.masking),
            "mean_mask_ratio": s.totals["mask_ratio_sum"] / n,
            "mean_cluster_coverage": s.totals["coverage_sum"] / n,
            **get_strategy(s.masking.strategy).record(s.masking),
            **probe_means(s),  # object vs background patches of the probe scenes (coverage.py)
        },
        "threads": share.threads,
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
        return pretrain(cfg, resume=self.resume, progress=True, stop=stop)  # plain lines in the job's log

    def resumed(self) -> TrainJob:
        return TrainJob(self.cfg_dict, resume=True, requeues=self.requeues + 1)
