"""What a training run works with, and how it starts, resumes and checkpoints (train.py runs the loop).

`start_or_resume` checks the shards and the run folder, builds the model, optimizer and precision,
restores a checkpoint when resuming (or calibrates the masking when starting), records how the run
starts (config.yaml, run.json, result.json) and opens the data stream. `save` writes a step checkpoint
with everything exact resumption needs, the run's totals included, and the window of steps since the
last log line: the loop logs that window and adds its coverage to the totals at the next log line, so a
run resumed between two log lines counts every step once, as an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from maskvlp.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from maskvlp.config import Config, to_dict, to_yaml
from maskvlp.cpushare import CpuShare, loader_hint
from maskvlp.data.loader import StreamSpec, train_loader
from maskvlp.data.trainset import TrainData, training_data
from maskvlp.data.transforms import normalize
from maskvlp.distributed import DistEnv, init_distributed, placement
from maskvlp.masking import calibrate, get_strategy
from maskvlp.model import CLIP
from maskvlp.probe import STATS as PROBE_STATS
from maskvlp.probe import ObjectProbe
from maskvlp.runs import RunPaths, run_paths, update_result, weights_complete, write_json_atomic, write_text_atomic
from maskvlp.schedule import Budget, make_budget
from maskvlp.textmask import prepare as prepare_text

# Params that may change between a run and its resume: they do not change what is computed.
RESUME_FREE = tuple(
    "launcher train.log_every_steps train.mask_image_every_steps train.keep_checkpoints "
    "train.checkpoint_every_samples train.eval_every_samples eval".split()
)
FAILURE_KEYS = ("error", "failure", "loss", "sweep_state", "sweep_failure")  # result.json: why an attempt failed
TUNING_STREAM_SEED = 1_000_003  # added to the seed of the tuning phase's own stream (its own batch size)
PROBE_SUMS = tuple(f"probe_{k}" for k in PROBE_STATS)
TOTALS = ("train_flops", "wall_s", "mask_ratio_sum", "coverage_sum", "micro_batches", "probe_count", *PROBE_SUMS)


class TrainError(RuntimeError):
    """Training cannot start or resume as asked; the message says what to do."""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def resume_signature(cfg: Config) -> dict[str, Any]:
    """The params a checkpoint must share with the run that resumes it."""
    return {k: v for k, v in _flat(to_dict(cfg)).items() if not k.startswith(RESUME_FREE)}


def with_default_keys(signature: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's signature with the keys it lacks (added to params since it was written) at their
    defaults: a key is added with the default that keeps what runs computed before, so a run resumes
    when the key is left there and is refused, naming it, when it is not."""
    from maskvlp.params import schema

    defaults = resume_signature(OmegaConf.to_object(schema()))
    return {**{k: v for k, v in defaults.items() if k not in signature}, **signature}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


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


CALIBRATION_BATCHES = 128  # training batches a strategy calibrates on: official mode's final mask ratio is
# a batch minimum whose batch-to-batch sd was 0.16 on the testbed (16 batches calibrated to 0.508 where
# training masked 0.606; 128 bring the mean's 95% interval to about +-0.03)


def stream_spec(cfg: Config, data: TrainData, rank: int, world_size: int, limits: tuple[int, ...]) -> StreamSpec:
    """The training stream of `rank` of `world_size` processes (`limits`: pair_limits)."""
    t, m, a, d = cfg.train, cfg.model, cfg.data.augment, cfg.data
    return StreamSpec(
        data.train,
        t.batch_size,
        m.image_size,
        m.context_length,
        t.seed,
        rank,
        world_size,
        d.shuffle_buffer,
        (a.crop_scale_min, a.crop_scale_max),
        (a.crop_ratio_min, a.crop_ratio_max),
        streams=max(1, d.loader_workers),
        hflip=bool(a.hflip),
        limits=limits,
        in_place=data.in_place,
        data_size=d.image_size if data.in_place else 0,
        min_side=d.min_image_side if data.in_place else 1,
        weights=data.weights,
        retries=data.retries,
    )


def calibration_images(
    cfg: Config, device: torch.device | str = "cpu", spec: StreamSpec | None = None
) -> Iterator[torch.Tensor]:
    """The normalised images a strategy calibrates on: the training stream's first CALIBRATION_BATCHES
    batches, one by one, augmented as training sees them, of one process whatever the world size, so
    every rank and every world size calibrates alike. Centre crops would not do: on clip art, random
    resized crops break the exact repeats a threshold near 1 clusters (the official ratio calibrated to
    0.523 on centre crops trained at 0.339, docs/paper-study.md). `spec`: the run's stream (else built
    from `cfg`)."""
    if spec is None:
        data = training_data(cfg)
        spec = stream_spec(cfg, data, 0, 1, pair_limits(data, cfg, run_paths(cfg)))
    a = cfg.data.augment
    for batch, _ in zip(train_loader(replace(spec, rank=0, world_size=1), 0), range(CALIBRATION_BATCHES)):
        yield normalize(batch["images"].to(device), a.mean, a.std)


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
    old, new = with_default_keys(state["signature"]), resume_signature(cfg)
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
    paths = run_paths(cfg)
    pair_limits(training_data(cfg), cfg, paths)  # the data is there, and holds as many pairs as asked
    _prepare_run_dir(cfg, paths, resume, DistEnv(0, world_size, 0))


def pair_limits(data: TrainData, cfg: Config, paths: RunPaths) -> tuple[int, ...]:
    """train.unique_pairs as per-shard limits (); in place, counted once into the run folder when the
    shards carry no sizes.json / _stats.json."""
    if cfg.train.unique_pairs > 0 and data.counts is None:
        paths.root.mkdir(parents=True, exist_ok=True)
    return data.limits(cfg.train.unique_pairs, paths.shard_counts)


@dataclass
class Window:
    """The steps since the last log line, summed without a host sync (loss and coverage become device
    scalars with the first step). The loop logs it and adds its coverage to the run's totals at the next
    log line; checkpoints keep it (`state`), so a run resumed between two log lines logs and totals what
    an uninterrupted one does (the float sums are the same: a float32 scalar read back and added again)."""

    loss: Any = 0.0  # the steps' losses
    ratio: float = 0.0  # the micro-batches' mask ratios
    coverage: Any = 0.0  # the micro-batches' mean cluster coverages
    micro: int = 0  # micro-batches
    steps: int = 0

    def add(self, loss: torch.Tensor, ratio: float, coverage: torch.Tensor, micro: int) -> None:
        self.loss += loss
        self.ratio += ratio
        self.coverage += coverage
        self.micro += micro
        self.steps += 1

    def state(self) -> dict[str, float]:
        return {**vars(self), "loss": float(self.loss), "coverage": float(self.coverage)}


@dataclass
class Session:
    """Everything the loop works with: built by keyword in `start_or_resume`; the loop advances `step`,
    `totals` and `window`, and `enter_tuning` switches the phase."""

    cfg: Config
    env: DistEnv
    device: torch.device
    paths: RunPaths
    model: CLIP
    optimizer: torch.optim.Optimizer
    budget: Budget
    masking: Any  # the masking config trained with: cfg.masking with its strategy's calibration applied
    loader_workers: int
    forward: Any = None  # the model, wrapped by DDP and/or torch.compile
    text_state: Any = None  # the text strategy's state from the training captions (frequency: token weights)
    ddp: DistributedDataParallel | None = None
    autocast: Any = None  # the steps' precision (bf16 autocast, or a disabled one)
    spec: StreamSpec | None = None  # the masked phase's data stream
    data: TrainData | None = None  # where the stream reads (trainset.py)
    positions: dict[int, int] = field(default_factory=dict)  # the current stream's raw position per logical stream
    data_skipped: Counter = field(default_factory=Counter)  # this rank's unusable samples, by reason (in place)
    batches: Any = None  # the data stream's iterator
    step: int = 0
    tuning: bool = False  # in the unmasked tuning phase (its loader, compiled graph and checkpointing set up)
    probe: ObjectProbe | None = None  # val scenes with object boxes: where the masking removes tokens
    # totals over the whole run, carried across resumes in the checkpoints
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0.0))
    window: Window = field(default_factory=Window)
    last_loss: float | None = None  # the loss of this attempt's last log line

    @property
    def samples_seen(self) -> int:
        return self.budget.samples_at(self.step)


def start_or_resume(cfg: Config, share: CpuShare, resume: bool) -> Session:
    """Check the shards and the run folder, build model and optimizer, restore the checkpoint when
    resuming (calibrate the masking when starting), record how the run starts, open the data stream."""
    env, device = init_distributed()
    data = training_data(cfg)
    paths = run_paths(cfg)
    state = _prepare_run_dir(cfg, paths, resume, env)
    torch.manual_seed(cfg.train.seed)
    model = CLIP.from_config(cfg.model).to(device)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing()
    s = Session(
        cfg=cfg,
        env=env,
        device=device,
        paths=paths,
        model=model,
        optimizer=build_optimizer(model, cfg),
        budget=make_budget(cfg.train, env.world_size),
        masking=cfg.masking,  # until calibrated or restored
        loader_workers=share.loader_workers,
        data=data,
    )
    s.spec = stream_spec(cfg, data, env.rank, env.world_size, pair_limits(data, cfg, paths))
    if state is None:  # the masking trained with: its strategy's calibration applied, seeded by train.seed
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
        images, size = (lambda: calibration_images(cfg, device, s.spec)), cfg.train.batch_size  # only if needed
        s.masking, note = calibrate(cfg.masking, images, cfg.model.patch_size, gen, size)
        if note and env.is_main:  # what was calibrated
            print(note)
    else:
        _restore(s, state)
    where = placement(env)  # every rank takes part
    if env.is_main:
        _record_start(s, share, fresh=state is None, where=where)
    _distribute(s)
    s.text_state = prepare_text(cfg.text_masking, cfg)  # every rank, from the same captions: the same state
    if isinstance(s.text_state, torch.Tensor):  # on the device once, not copied there every step
        s.text_state = s.text_state.to(device)
    if env.is_main:
        s.probe = ObjectProbe.from_shards(cfg, device)
        # GPU training only: on the CPU the workers share the cores with the step itself, and fewer is better
        hint = loader_hint(share, s.spec.streams) if device.type == "cuda" else None
        if hint:
            print(hint, flush=True)
    if s.step >= s.budget.masked_steps:  # resumed inside the unmasked tuning phase
        enter_tuning(s)
    if s.batches is None:  # the masked phase's stream (which a tuning phase of the same batch size continues)
        s.batches = iter(
            train_loader(s.spec, s.loader_workers, s.step * cfg.train.accum_steps, device.type == "cuda", s.positions)
        )
    return s


def _restore(s: Session, state: dict[str, Any]) -> None:
    """A checkpoint's weights, optimizer state, RNG, step, calibrated masking, totals and window."""
    try:
        s.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise TrainError(f"checkpoint of {s.paths.root} does not fit the model ({exc})") from exc
    s.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    s.step, s.masking = state["step"], replace(s.cfg.masking, **state["masking"])
    s.totals.update(state.get("totals", {}))
    # the current stream's raw positions and skips of this rank (checkpoints before them: none)
    s.positions = dict((state.get("data_positions") or [{}] * s.env.world_size)[s.env.rank])
    s.data_skipped = Counter((state.get("data_skipped") or [{}] * s.env.world_size)[s.env.rank])
    s.window = Window(**state.get("window", {}))  # checkpoints before the window was kept: an empty one


def _record_start(s: Session, share: CpuShare, fresh: bool, where: dict[str, Any]) -> None:
    """config.yaml, run.json and result.json's "running" (rank 0). run.json says this attempt's hosts
    and ranks (`where`); the log line says it for every attempt."""
    cfg, paths = s.cfg, s.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.config, to_yaml(cfg))
    info = {
        "git_commit": _git_commit(),
        **{k: v for k, v in s.data.record.items() if k != "source"},  # manifest_sha256, or the shards in place
        "world_size": s.env.world_size,
        **get_strategy(s.masking.strategy).record(s.masking),
        "global_batch": s.budget.global_batch,
        "total_steps": s.budget.total_steps,
        "resumed_at_step": s.step,
        "cpu_share": dataclasses.asdict(share),
        **where,
    }
    write_json_atomic(paths.info, info, sort_keys=False)
    if s.env.world_size > 1:
        ranks = ", ".join(f"{r['rank']}@{r['host']}" for r in where["ranks"])
        print(f"ranks {ranks}; rendezvous {where['master']}; from step {s.step}", flush=True)
    start = {"status": "running", "git_commit": info["git_commit"], "steps": s.step, "total_steps": info["total_steps"]}
    if fresh:  # nothing of an earlier run in this folder (e.g. its eval) may survive
        write_json_atomic(paths.result, start)
    else:
        update_result(paths, drop=FAILURE_KEYS, **start)  # what an earlier attempt's failure left


def _distribute(s: Session) -> None:
    """DDP across ranks, torch.compile when asked, and the precision of the steps."""
    t = s.cfg.train
    s.ddp = DistributedDataParallel(s.model) if s.env.world_size > 1 else None
    s.forward = torch.compile(s.ddp or s.model, dynamic=False) if t.compile else (s.ddp or s.model)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and s.device.type == "cuda")
    s.autocast = torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=use_bf16)


def enter_tuning(s: Session) -> None:
    """Set up the unmasked tuning phase (FLIP): the full token count gets a graph of its own when
    compiled (one compiled graph per token count: a second count reaching a compiled graph crashed
    inductor on an H100, docs/algorithms.md), gradient checkpointing if asked for this phase (its
    activations are those of every token), and a stream of `unmasked_tuning_batch_size` batches when
    that differs from the masked phase's (otherwise the one stream continues)."""
    t = s.cfg.train
    s.tuning = True
    if t.unmasked_tuning_grad_checkpointing:
        s.model.set_grad_checkpointing()
    if t.compile:
        torch._dynamo.reset()  # drop the masked phase's graphs: the tuning phase compiles its own
        s.forward = torch.compile(s.ddp or s.model, dynamic=False)
    if t.unmasked_tuning_batch_size not in (0, t.batch_size):  # a stream of its own
        # resuming inside the phase (no stream yet): the checkpoint's positions are this stream's
        s.positions = s.positions if s.batches is None else {}
        s.batches = None  # shut the masked phase's workers down before the next ones start
        spec = replace(s.spec, batch_size=t.unmasked_tuning_batch_size, seed=s.spec.seed + TUNING_STREAM_SEED)
        start = (s.step - s.budget.masked_steps) * t.accum_steps
        s.batches = iter(train_loader(spec, s.loader_workers, start, s.device.type == "cuda", s.positions))


def note_batch(s: Session, batch: dict[str, Any]) -> None:
    """A batch the step takes: its stream's raw position (exact resume) and its skipped samples."""
    s.positions[batch["stream"]] = batch["raw_end"]
    s.data_skipped.update(batch["skipped"])


def per_rank(s: Session, value: Any) -> list[Any]:
    """`value` of every rank, in rank order (a collective: every rank calls it)."""
    if s.env.world_size == 1:
        return [value]
    out: list[Any] = [None] * s.env.world_size
    torch.distributed.all_gather_object(out, value)
    return out


def save(s: Session) -> None:
    """A step checkpoint (rank 0), with what exact resumption, the run's totals and its log need. Every
    rank calls it: rank 0 gathers each rank's stream positions and skip counts."""
    positions, skipped = per_rank(s, dict(s.positions)), per_rank(s, dict(s.data_skipped))
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
            "window": s.window.state(),  # the steps since the last log line: not yet in the totals
            "data_positions": positions,  # per rank {logical stream: raw samples read through its last batch}
            "data_skipped": skipped,  # per rank {reason: unusable samples}
        }
        save_checkpoint(state, s.paths.checkpoints, s.step, s.cfg.train.keep_checkpoints)
