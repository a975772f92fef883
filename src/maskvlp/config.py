"""The schema of params.yaml: one dataclass per section, and the small checks every owner uses.

This module is the leaf of the package: it imports nothing of maskvlp. params.py reads params.yaml
into these dataclasses through OmegaConf (unknown keys and wrong types are refused there) and asks
each section's owner to check its values (data.sources, model, masking, evalsets, launch), using
:func:`check` and :func:`choice` below, so every refusal is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type or out of range. The message names the key."""


# ----------------------------------------------------------------------------------------- data
@dataclass
class SyntheticConfig:
    num_samples: int = 4000  # image-caption pairs generated (train + val)
    min_objects: int = 1
    max_objects: int = 3
    textured_fraction: float = 0.8  # fraction of scenes without a place whose background is textured, not plain
    context: float = 0.7  # fraction of scenes in a place: background, objects and arrangement co-occur
    objects: str = "flat"  # flat | parts: 2-4 textured parts per object, so a cluster is a part (docs/testbed.md)


@dataclass
class EmojiConfig:
    font_path: str = DEFAULT_EMOJI_FONT  # Debian package fonts-noto-color-emoji
    samples_per_emoji: int = 3  # renderings of each emoji (placement, scale, background vary)
    max_emoji: int = 0  # 0 = every emoji in the font
    scene_fraction: float = 0.2  # extra two-emoji scenes with relation captions, per single sample


@dataclass
class OpenClipartConfig:
    root: str = "/usr/share/openclipart/svg"  # Debian package openclipart-svg
    level: str = "leaf"  # category = leaf folder (food/fruit) | top folder (food)
    template: str = "{title}"  # caption: fields {title}, {description}, {keywords}, {category}
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # RGB under transparent parts
    min_per_class: int = 10  # categories with fewer drawings are left out (rare_category)
    max_per_class: int = 100  # at most this many drawings per category (a seeded choice); 0 = all
    collection_title_min: int = 5  # a title this many drawings share names a collection: use the file name; 0 = off


@dataclass
class MixConfig:
    sources: list[str] = field(default_factory=lambda: ["openclipart", "emoji"])  # data.source: mix
    val_sources: list[str] = field(default_factory=lambda: ["openclipart"])  # the others go to train only


@dataclass
class FolderConfig:
    table: str = ""  # CSV / TSV / JSONL / Parquet with one row per image-caption pair
    images_dir: str = ""  # image paths in the table are relative to this ("" = the table's folder)
    path_column: str = "path"
    caption_column: str = "caption"
    label_column: str = ""  # optional class label column, stored in the sample's json
    allow_outside: bool = False  # read table paths that lead out of images_dir (../, absolute, symlinks)


@dataclass
class ShardSourceConfig:
    urls: str = ""  # existing webdataset shards: brace pattern ("x-{000..009}.tar") or glob; several joined by '::'
    in_place: bool = False  # train straight from `urls` (no shard stage, no copy; nothing written beside them)
    val_urls: str = ""  # in place: the val split's shards; '' = hold out val_shard_fraction of the shards
    val_shard_fraction: float = 0.0  # in place, no val_urls: this fraction of whole shards (seeded) is the val split
    upsampling: str = ""  # in place: one factor per '::' part of urls ("1::2"), as open_clip's upsampling factors
    retries: int = 3  # pipe:/http(s) shards: reopen a failed stream this many times before skipping it


@dataclass
class AugmentConfig:
    # null = from train.recipe (recipes.py)
    crop_scale_min: float | None = None  # RandomResizedCrop area scale range (training only)
    crop_scale_max: float | None = None
    hflip: bool | None = None  # random horizontal flip (training only; contradicts left/right captions)
    crop_ratio_min: float = 0.75
    crop_ratio_max: float = 1.3333333
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))


@dataclass
class DataConfig:
    preset: str = "synthetic"  # synthetic | real: fills data.source and eval.datasets when null (presets.py)
    source: str | None = None  # synthetic | emoji | openclipart | mix | folder | shards; null = from preset
    out_dir: str = "data/shards"
    image_size: int = 64  # stored images: shorter side resized to this, then centre-cropped
    image_format: str = "jpg"  # jpg | png | webp
    jpeg_quality: int = 95
    min_image_side: int = 16  # decoded images with a shorter side below this are skipped (image_too_small)
    val_fraction: float = 0.1
    max_samples_per_shard: int = 1000
    num_workers: int = 0  # sharding processes; 0 = one per CPU this process may use
    loader_workers: int = 2  # logical data streams per training process; up to this many DataLoader workers
    shuffle_buffer: int = 1000  # samples in the training stream's shuffle buffer
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    emoji: EmojiConfig = field(default_factory=EmojiConfig)
    openclipart: OpenClipartConfig = field(default_factory=OpenClipartConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)
    shards: ShardSourceConfig = field(default_factory=ShardSourceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ---------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    vision: str = "tiny"  # image tower preset: tiny | S | B | L, or the scaling family w64 | w96 | w128 | w192 | w256
    text: str = "tiny"  # text tower preset: tiny | S | B | L, or w64 | w96 | w128 | w192 | w256
    image_size: int = 64  # model input resolution (training crops and evaluation resize)
    patch_size: int = 8
    embed_dim: int = 128  # shared image-text embedding width
    # null = from train.recipe (recipes.py)
    context_length: int | None = None  # text tokens (CLIP BPE, including start/end tokens)
    pos_embed: str | None = None  # image positions: learned | sincos (fixed 2-D sin-cos, FLIP)
    pool: str | None = None  # image feature: cls (class token) | avg (mean of the kept tokens, FLIP)
    init_temperature: float | None = None  # initial softmax temperature (logit scale = 1 / this)


# -------------------------------------------------------------------------------------- masking
@dataclass
class MaskingConfig:
    """The keys every strategy shares; each strategy adds its own (masking.masking_schema)."""

    strategy: str = "cluster"  # a registered strategy: none | random | cluster | ...
    ratio: float = 0.5  # fraction of patch tokens removed, fixed per run


@dataclass
class TextMaskingConfig:
    """Text-side token reduction in training (the textmask package); evaluation sees whole captions."""

    strategy: str = "none"  # none | truncate | random | block | frequency (textmask.TEXT_STRATEGIES)
    length: int = 0  # tokens the text tower sees in training, start and end included; 0 = model.context_length
    frequency_t: float = 1e-4  # frequency (CLIPF): a token is masked with probability 1 - sqrt(t / its frequency)


# ---------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    run_name: str = "default"
    runs_dir: str = "runs"
    samples: int = 30000  # training budget in samples seen (derived when compute_samples > 0)
    compute_samples: int = 0  # > 0: train for the FLOPs of this many unmasked samples (train.samples derived)
    # what compute_samples matches: flops (the FLOPs formula) | time (the measured wall time: samples scaled
    # by compute_speedup, this configuration's images/s over the unmasked run's, measured on the same setup)
    compute_basis: str = "flops"
    compute_speedup: float = 0.0  # with compute_basis time: measured images/s ratio to unmasked (0 = not given)
    seed: int | None = None  # model init, data order, masks; null = the top-level seed (which also splits the data)
    unique_pairs: int = 0  # train on the first N pairs of the train shards only (data size); 0 = all
    batch_size: int = 64  # per process
    recipe: str = "default"  # default | flip | cluster: fills the keys below left at null (recipes.py)
    lr: float | None = None  # base learning rate per 256 samples, scaled to the global batch by lr_scaling
    lr_scaling: str | None = None  # linear | sqrt | none (lr is absolute)
    warmup_samples: int = 3000
    weight_decay: float | None = None
    no_decay: list[str] | None = None  # parameter-name parts exempt from weight decay (1-D ones always are)
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    grad_clip: float = 0.0  # 0 = off
    accum_steps: int = 1
    accum_mode: str = "cache"  # cache: one contrastive batch of accum x batch | micro: a loss per micro-batch
    precision: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16
    compile: bool = False
    grad_checkpointing: bool = False
    local_loss: bool = False
    unmasked_tuning_samples: int = 0  # FLIP: final samples trained with masking off
    unmasked_tuning_lr_scale: float = 0.1  # the tuning phase's peak lr, relative to the masked phase's
    unmasked_tuning_warmup_fraction: float = 0.1  # of the tuning phase, warmup to its peak, then cosine
    unmasked_tuning_batch_size: int = 0  # per process in the tuning phase; 0 = train.batch_size
    unmasked_tuning_grad_checkpointing: bool = False  # full token count: trade compute for memory there
    checkpoint_every_samples: int = 10000
    eval_every_samples: int = 0  # > 0: evaluate eval.subset_samples val pairs this often (TensorBoard, result.json)
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    mask_image_every_steps: int = 200


# ----------------------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    datasets: list[str] | None = None  # registered names or paths; null = from data.preset (presets.py)
    batch_size: int = 256
    objects_per_class: int = 20  # `objects`: generated single-object scenes per class (32 classes)
    linear_probe: bool = True
    linear_probe_samples: int = 2000  # train-split images whose features fit the probe
    subset_samples: int = 256  # val pairs evaluated during training (train.eval_every_samples)
    metrics_file: str = "metrics/eval.json"
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"  # `fashion-mnist`: Debian's dataset-fashion-mnist
    fashion_mnist_samples: int = 2000  # `fashion-mnist`: test images evaluated (the first N); 0 = all 10,000


# ------------------------------------------------------------------------------------- launcher
@dataclass
class LauncherConfig:
    executor: str = "local"  # local | slurm | debug
    partition: str = ""
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    threads: int = 0  # torch threads per process; 0 = derived (Slurm CPUs per task, else the affinity mask)
    mem_gb: float = 8.0
    timeout_min: int = 60
    account: str = ""
    qos: str = ""
    job_name: str = "maskvlp"
    wait: bool = True
    max_requeues: int = 5
    additional_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    text_masking: TextMaskingConfig = field(default_factory=TextMaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (for manifests, run directories and hparams)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ------------------------------------------------------------------------------------- checks
def check(ok: bool, key: str, message: str, value: Any) -> None:
    """Refuse `value` of `key` with `message` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


def choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, f"must be one of {', '.join(choices)}", value)


def control_character(text: str) -> str | None:
    """The first control character (below 0x20, or DEL) in `text`, or None."""
    return next((ch for ch in text if ord(ch) < 0x20 or ord(ch) == 0x7F), None)


def no_control_characters(key: str, value: str, why: str) -> None:
    bad = control_character(value)
    if bad is not None:
        raise ConfigError(f"{key}: control character {bad!r} not allowed ({why}), got {value!r}")
