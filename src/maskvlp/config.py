"""Typed configuration: one dataclass per section of params.yaml.

params.yaml is read through OmegaConf into these structured configs, so unknown keys and wrong types
are rejected by OmegaConf and out-of-range values by :func:`validate`, all before any work starts.
The rest of the package receives :class:`Config` objects and never reads params.yaml itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
    urls: str = ""  # existing webdataset shards: brace pattern ("x-{000..009}.tar") or glob


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
    strategy: str = "cluster"  # none | random | cluster
    ratio: float = 0.5  # fraction of patch tokens removed, fixed per run
    anchor_ratio: float = 0.03  # cluster: fraction of patches drawn as anchors (official: 6 of 196)
    threshold: float = 0.5  # cluster: similarity (Pearson) above which a patch joins an anchor
    features: str = "rgb"  # cluster: rgb | rgb+embed
    fusion_samples: int | None = (
        None  # rgb+embed: samples over which the mix moves from RGB to embed; null = train.samples
    )
    mode: str = "exact"  # exact (fixed ratio) | official (batch-minimum token count)
    min_mask_ratio: float = 0.3  # official mode only
    calibrate_coverage: float = 0.0  # >0: pick the threshold so mean cluster coverage hits this


# ---------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    run_name: str = "default"
    runs_dir: str = "runs"
    samples: int = 30000  # training budget in samples seen (derived when compute_samples > 0)
    compute_samples: int = 0  # > 0: train for the FLOPs of this many unmasked samples (train.samples derived)
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
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


# ------------------------------------------------------------------------------------- loading
def _omegaconf_error(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", exc)).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        hint = "unknown key: check the spelling against params.yaml's sections"
    else:
        hint = "wrong type"
    return ConfigError(f"{origin}: '{key}': {msg} ({hint})")


def load_config(params: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read params.yaml (or only defaults when params is None), apply `key=value` overrides, validate."""
    schema = OmegaConf.structured(Config)
    merged: DictConfig = schema
    if params is not None:
        path = Path(params)
        if not path.is_file():
            raise ConfigError(f"params file '{path}' not found (pass --params FILE)")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml syntax errors
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        if any("${" in line.split("#", 1)[0] for line in path.read_text().splitlines()):
            raise ConfigError(
                f"{path}: holds ${{...}} interpolations; 'dvc exp run -S' would rewrite them into "
                "literal values. Write the values out, or derive them in code."
            )
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, str(path)) from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. masking.ratio=0.75")
        key = item.split("=", 1)[0].strip()
        try:
            if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
                raise ConfigError(f"--set {item}: unknown key '{key}'")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, f"--set {item}") from exc
        except yaml.YAMLError as exc:  # OmegaConf reads the value as YAML: `seed=[1`
            problem = str(getattr(exc, "problem", "") or exc).splitlines()[0]
            raise ConfigError(
                f"--set {item}: the value is not valid YAML ({problem}); quote a string, e.g. --set '{key}=\"...\"'"
            ) from exc
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, Config)
    resolve_derived(cfg)
    validate(cfg)
    return cfg


def resolve_derived(cfg: Config) -> None:
    """Fill the keys left at null: data keys from `data.preset` (presets.py), recipe keys from
    `train.recipe` (recipes.py), train.samples from train.compute_samples, masking.fusion_samples from
    the training budget, train.seed from seed. Values given explicitly are kept."""
    from maskvlp.presets import PRESETS
    from maskvlp.recipes import RECIPES

    _choice("data.preset", cfg.data.preset, tuple(PRESETS))
    _choice("train.recipe", cfg.train.recipe, tuple(RECIPES))
    for table in (PRESETS[cfg.data.preset], RECIPES[cfg.train.recipe]):
        for key, value in table.items():
            *parents, leaf = key.split(".")
            node: Any = cfg
            for part in parents:
                node = getattr(node, part)
            if getattr(node, leaf) is None:
                setattr(node, leaf, list(value) if isinstance(value, list) else value)
    if cfg.train.compute_samples:
        cfg.train.samples = compute_matched_samples(cfg)
        _check(cfg.train.samples >= 1, "train.compute_samples", "must be >= 1 (0 = off)", cfg.train.compute_samples)
    if cfg.masking.fusion_samples is None:
        cfg.masking.fusion_samples = cfg.train.samples
    if cfg.train.seed is None:
        cfg.train.seed = cfg.seed


def compute_matched_samples(cfg: Config) -> int:
    """train.samples for `train.compute_samples = N`: the samples whose masking-aware training FLOPs
    (docs/records.md: kept tokens, both towers, forward and backward, plus cluster masking's own cost)
    equal those of N samples trained unmasked on the same model, so masked runs see more samples for
    the same compute. Needs a fixed token count: none, random, or cluster in exact mode."""
    import torch

    from maskvlp.masking import mask_flops_per_image, num_keep
    from maskvlp.model import CLIP

    k, m, t = cfg.masking, cfg.model, cfg.train
    _check(
        t.compute_samples >= 0, "train.compute_samples", "must be >= 0 (0 = train.samples as given)", t.compute_samples
    )
    fixed = k.strategy in ("none", "random") or (k.strategy == "cluster" and k.mode == "exact")
    _check(
        fixed,
        "train.compute_samples",
        "needs a fixed token count per step: masking.strategy none, random, or cluster with masking.mode exact "
        f"(masking.strategy={k.strategy}, masking.mode={k.mode})",
        t.compute_samples,
    )
    _check(
        t.unmasked_tuning_samples == 0,
        "train.compute_samples",
        "cannot be combined with train.unmasked_tuning_samples (two token counts in one run); set one of them to 0",
        t.compute_samples,
    )
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = CLIP.from_config(m)
        grid = model.visual.num_patches
        kept = grid if k.strategy == "none" else num_keep(grid, k.ratio)
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"train.compute_samples: cannot size the model to count its FLOPs ({exc})") from exc
    width = model.visual.patch_embed.weight.shape[0] if k.features == "rgb+embed" else 0
    masked = model.train_flops_per_sample(kept) + mask_flops_per_image(
        k.strategy, grid, m.patch_size, k.anchor_ratio, width
    )
    return max(1, round(t.compute_samples * model.train_flops_per_sample(grid) / masked))


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (for manifests, run directories and hparams)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---------------------------------------------------------------------------------- validation
def _check(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"must be one of {', '.join(choices)}", value)


def _control_character(text: str) -> str | None:
    """The first control character (below 0x20, or DEL) in `text`, or None."""
    return next((ch for ch in text if ord(ch) < 0x20 or ord(ch) == 0x7F), None)


def _no_control_characters(key: str, value: str, why: str) -> None:
    bad = _control_character(value)
    if bad is not None:
        raise ConfigError(f"{key}: control character {bad!r} not allowed ({why}), got {value!r}")


# sbatch option names, as submitit writes them: `#SBATCH --{name}={value}` with `_` turned into `-`
SBATCH_OPTION = re.compile(r"^[a-z][a-z0-9_-]*$")
# sbatch options that maskvlp sets from its own launcher keys (launch.make_executor), that submitit
# needs for logs and preemption (one in launcher.additional_parameters would replace them), or that
# run a shell command
SBATCH_SET_BY_MASKVLP = {
    "job-name": "maskvlp sets it from launcher.job_name: set that instead",
    "partition": "maskvlp sets it from launcher.partition: set that instead",
    "account": "maskvlp sets it from launcher.account: set that instead",
    "qos": "maskvlp sets it from launcher.qos: set that instead",
    "nodes": "maskvlp sets it from launcher.nodes: set that instead",
    "ntasks-per-node": "maskvlp sets it from launcher.tasks_per_node: set that instead",
    "cpus-per-task": "maskvlp sets it from launcher.cpus_per_task: set that instead",
    "gpus-per-node": "maskvlp sets it from launcher.gpus_per_node: set that instead",
    "mem": "maskvlp sets it from launcher.mem_gb: set that instead",
    "time": "maskvlp sets it from launcher.timeout_min: set that instead",
    "output": "submitit sets it: the job's logs go to the run's slurm folder; leave it out",
    "error": "submitit sets it: the job's logs go to the run's slurm folder; leave it out",
    "open-mode": "submitit sets it: requeued attempts append to the same logs; leave it out",
    "signal": "submitit sets it: its preemption signal saves a checkpoint before the requeue; leave it out",
    "array": "maskvlp submits one job per run; leave it out",
    "wrap": "sbatch would run its value as a shell command; leave it out",
}
# full sbatch options that are also abbreviations of one above (sbatch takes exact names first)
SBATCH_PREFIX_OPTIONS = {"gpus", "ntasks"}


def _check_additional_parameters(params: dict[str, Any]) -> None:
    """launcher.additional_parameters become `#SBATCH --name=value` lines: names must be sbatch option
    names, values one-line strings, numbers or true (a flag), and none may replace what maskvlp sets."""
    key = "launcher.additional_parameters"
    for name, value in params.items():
        name = str(name)
        bad = _control_character(name)
        if bad is not None:
            raise ConfigError(
                f"{key}: control character {bad!r} in the name {name!r} not allowed "
                "(it would end the #SBATCH line and run the rest as a shell command)"
            )
        if not SBATCH_OPTION.match(name):
            raise ConfigError(
                f"{key}: {name!r} is not an sbatch option name (lower-case letters, digits, '-' and '_', "
                "without the leading '--'), e.g. constraint or mem_per_cpu"
            )
        option = name.replace("_", "-")
        if option in SBATCH_SET_BY_MASKVLP:
            raise ConfigError(f"{key}.{name}: not allowed: {SBATCH_SET_BY_MASKVLP[option]}")
        clash = [o for o in SBATCH_SET_BY_MASKVLP if o.startswith(option)]
        if clash and option not in SBATCH_PREFIX_OPTIONS:  # sbatch accepts abbreviated long options
            raise ConfigError(
                f"{key}.{name}: not allowed: sbatch may read --{option} as an abbreviation of --{clash[0]}, "
                f"and {SBATCH_SET_BY_MASKVLP[clash[0]]}"
            )
        if isinstance(value, str):
            _no_control_characters(
                f"{key}.{name}", value, "it would end the #SBATCH line and run the rest as a shell command"
            )
        elif value is not True and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(
                f"{key}.{name}: must be a string, a number, or true for an option without value "
                f"(leave the key out to not pass it), got {value!r}"
            )


def validate(cfg: Config) -> None:
    """Range and consistency checks that types alone cannot express. Raises ConfigError."""
    # each choice list lives with its owner; imported here, at validation time, to keep this module light
    from maskvlp.accumulate import ACCUMULATORS
    from maskvlp.data.clean import IMAGE_FORMATS
    from maskvlp.data.sources import SOURCES
    from maskvlp.launch import EXECUTORS
    from maskvlp.model import POOLS, POS_EMBEDS, TEXT_PRESETS, VISION_PRESETS
    from maskvlp.recipes import LR_SCALING

    d = cfg.data
    _choice("data.source", d.source, tuple(SOURCES))
    _choice("data.image_format", d.image_format, tuple(IMAGE_FORMATS))
    _check(d.image_size >= 8, "data.image_size", "must be >= 8 pixels", d.image_size)
    _check(d.min_image_side >= 1, "data.min_image_side", "must be >= 1 pixel", d.min_image_side)
    _check(1 <= d.jpeg_quality <= 100, "data.jpeg_quality", "must be in [1, 100]", d.jpeg_quality)
    _check(0 <= d.val_fraction < 1, "data.val_fraction", "must be in [0, 1)", d.val_fraction)
    _check(d.max_samples_per_shard >= 1, "data.max_samples_per_shard", "must be >= 1", d.max_samples_per_shard)
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0 (0 = one per core)", d.num_workers)
    _check(d.loader_workers >= 0, "data.loader_workers", "must be >= 0", d.loader_workers)
    _check(d.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1", d.shuffle_buffer)
    s = d.synthetic
    _check(s.num_samples >= 1, "data.synthetic.num_samples", "must be >= 1", s.num_samples)
    _check(1 <= s.min_objects <= 4, "data.synthetic.min_objects", "must be in [1, 4]", s.min_objects)
    _check(
        s.min_objects <= s.max_objects <= 4,
        "data.synthetic.max_objects",
        f"must be in [min_objects={s.min_objects}, 4]",
        s.max_objects,
    )
    _check(0 <= s.context <= 1, "data.synthetic.context", "must be in [0, 1]", s.context)
    _check(0 <= s.textured_fraction <= 1, "data.synthetic.textured_fraction", "must be in [0, 1]", s.textured_fraction)
    oc = d.openclipart
    _choice("data.openclipart.level", oc.level, ("leaf", "top"))
    _check(oc.min_per_class >= 1, "data.openclipart.min_per_class", "must be >= 1", oc.min_per_class)
    _check(oc.max_per_class >= 0, "data.openclipart.max_per_class", "must be >= 0 (0 = all)", oc.max_per_class)
    _check(
        oc.collection_title_min == 0 or oc.collection_title_min >= 2,
        "data.openclipart.collection_title_min",
        "must be 0 (off) or >= 2",
        oc.collection_title_min,
    )
    _check(
        len(oc.background) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in oc.background),
        "data.openclipart.background",
        "must be three integers 0..255 (RGB)",
        oc.background,
    )
    try:
        oc.template.format(title="", description="", keywords="", category="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"data.openclipart.template: {oc.template!r} has an unknown field {exc}; "
            "use {title}, {description}, {keywords}, {category}"
        ) from exc
    mx = d.mix
    mixable = tuple(name for name in SOURCES if name != "mix")
    _check(
        bool(mx.sources) and all(name in mixable for name in mx.sources) and len(set(mx.sources)) == len(mx.sources),
        "data.mix.sources",
        f"must list distinct sources among {', '.join(mixable)}",
        mx.sources,
    )
    _check(
        all(name in mx.sources for name in mx.val_sources),
        "data.mix.val_sources",
        f"must be among data.mix.sources={mx.sources} (the others go to the train split only)",
        mx.val_sources,
    )
    e = d.emoji
    _check(e.samples_per_emoji >= 1, "data.emoji.samples_per_emoji", "must be >= 1", e.samples_per_emoji)
    _check(e.max_emoji >= 0, "data.emoji.max_emoji", "must be >= 0 (0 = all)", e.max_emoji)
    _check(0 <= e.scene_fraction <= 4, "data.emoji.scene_fraction", "must be in [0, 4]", e.scene_fraction)
    uses = d.mix.sources if d.source == "mix" else [d.source]
    if "folder" in uses:
        _check(bool(d.folder.table), "data.folder.table", "must name a CSV/TSV/JSONL/Parquet file", d.folder.table)
    if "shards" in uses:
        _check(bool(d.shards.urls), "data.shards.urls", "must name existing shards (brace pattern or glob)", "")
    a = d.augment
    _check(
        0 < a.crop_scale_min <= a.crop_scale_max <= 1,
        "data.augment.crop_scale_min/max",
        "must satisfy 0 < min <= max <= 1",
        (a.crop_scale_min, a.crop_scale_max),
    )
    _check(
        0 < a.crop_ratio_min <= a.crop_ratio_max,
        "data.augment.crop_ratio_min/max",
        "must satisfy 0 < min <= max",
        (a.crop_ratio_min, a.crop_ratio_max),
    )
    _check(len(a.mean) == 3 and len(a.std) == 3, "data.augment.mean/std", "must have 3 values each", (a.mean, a.std))
    _check(all(v > 0 for v in a.std), "data.augment.std", "must be positive", a.std)

    m = cfg.model
    _choice("model.vision", m.vision, tuple(VISION_PRESETS))
    _choice("model.text", m.text, tuple(TEXT_PRESETS))
    _check(m.patch_size >= 1, "model.patch_size", "must be >= 1", m.patch_size)
    _check(
        m.image_size >= m.patch_size and m.image_size % m.patch_size == 0,
        "model.image_size",
        f"must be a multiple of model.patch_size={m.patch_size}",
        m.image_size,
    )
    _check(m.embed_dim >= 1, "model.embed_dim", "must be >= 1", m.embed_dim)
    _check(m.context_length >= 3, "model.context_length", "must be >= 3", m.context_length)
    _choice("model.pos_embed", m.pos_embed, POS_EMBEDS)
    _choice("model.pool", m.pool, POOLS)
    _check(0 < m.init_temperature <= 1, "model.init_temperature", "must be in (0, 1]", m.init_temperature)

    k = cfg.masking
    from maskvlp import masking  # the strategies own their choices and checks (masking.register_strategy)

    try:
        masking.check_config(k, (m.image_size // m.patch_size) ** 2)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    _check(
        0 <= k.calibrate_coverage < 1, "masking.calibrate_coverage", "must be in [0, 1) (0 = off)", k.calibrate_coverage
    )

    t = cfg.train
    _check(
        t.run_name not in ("", ".", "..") and "/" not in t.run_name and _control_character(t.run_name) is None,
        "train.run_name",
        "must be a plain folder name (not empty, '.' or '..', without '/' or control characters): "
        "the run folder is train.runs_dir/train.run_name",
        t.run_name,
    )
    _no_control_characters("train.runs_dir", t.runs_dir, "Slurm's log paths under it are written into #SBATCH lines")
    _check(t.samples >= 1, "train.samples", "must be >= 1", t.samples)
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    _check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    _choice("train.lr_scaling", t.lr_scaling, LR_SCALING)
    _choice("train.accum_mode", t.accum_mode, tuple(ACCUMULATORS))
    _check(t.warmup_samples >= 0, "train.warmup_samples", "must be >= 0", t.warmup_samples)
    _check(t.unique_pairs >= 0, "train.unique_pairs", "must be >= 0 (0 = every training pair)", t.unique_pairs)
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)", (t.beta1, t.beta2))
    _check(t.eps > 0, "train.eps", "must be > 0", t.eps)
    _check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)", t.grad_clip)
    _check(t.accum_steps >= 1, "train.accum_steps", "must be >= 1", t.accum_steps)
    _choice("train.precision", t.precision, ("auto", "fp32", "bf16"))
    _check(
        0 <= t.unmasked_tuning_samples < t.samples,
        "train.unmasked_tuning_samples",
        f"must be in [0, train.samples={t.samples})",
        t.unmasked_tuning_samples,
    )
    _check(
        0 <= t.unmasked_tuning_warmup_fraction < 1,
        "train.unmasked_tuning_warmup_fraction",
        "must be in [0, 1)",
        t.unmasked_tuning_warmup_fraction,
    )
    _check(
        t.unmasked_tuning_batch_size >= 0,
        "train.unmasked_tuning_batch_size",
        "must be >= 0 (0 = train.batch_size)",
        t.unmasked_tuning_batch_size,
    )
    _check(t.unmasked_tuning_lr_scale > 0, "train.unmasked_tuning_lr_scale", "must be > 0", t.unmasked_tuning_lr_scale)
    _check(
        t.checkpoint_every_samples >= 1, "train.checkpoint_every_samples", "must be >= 1", t.checkpoint_every_samples
    )
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    _check(
        not (t.compile and k.strategy == "cluster" and k.mode == "official"),
        "train.compile",
        "cannot be combined with masking.mode=official (its token count changes every batch)",
        t.compile,
    )
    _check(t.eval_every_samples >= 0, "train.eval_every_samples", "must be >= 0 (0 = off)", t.eval_every_samples)
    _check(t.log_every_steps >= 1, "train.log_every_steps", "must be >= 1", t.log_every_steps)
    _check(
        t.mask_image_every_steps >= 0,
        "train.mask_image_every_steps",
        "must be >= 0 (0 = off)",
        t.mask_image_every_steps,
    )

    ev = cfg.eval
    _check(ev.batch_size >= 1, "eval.batch_size", "must be >= 1", ev.batch_size)
    from maskvlp.evalsets import DATASETS  # the registry owns the names

    _check(
        bool(ev.datasets) and all(d in DATASETS or "/" in d or Path(d).suffix for d in ev.datasets),
        "eval.datasets",
        f"must list registered sets ({', '.join(DATASETS)}) or paths of captions tables / shards",
        ev.datasets,
    )
    _check(ev.objects_per_class >= 1, "eval.objects_per_class", "must be >= 1", ev.objects_per_class)
    _check(ev.subset_samples >= 2, "eval.subset_samples", "must be >= 2", ev.subset_samples)
    _check(ev.linear_probe_samples >= 2, "eval.linear_probe_samples", "must be >= 2", ev.linear_probe_samples)
    _check(
        ev.fashion_mnist_samples >= 0, "eval.fashion_mnist_samples", "must be >= 0 (0 = all)", ev.fashion_mnist_samples
    )

    la = cfg.launcher
    _choice("launcher.executor", la.executor, EXECUTORS)
    _check(la.nodes >= 1, "launcher.nodes", "must be >= 1", la.nodes)
    _check(la.tasks_per_node >= 1, "launcher.tasks_per_node", "must be >= 1", la.tasks_per_node)
    _check(la.gpus_per_node >= 0, "launcher.gpus_per_node", "must be >= 0", la.gpus_per_node)
    _check(la.cpus_per_task >= 1, "launcher.cpus_per_task", "must be >= 1", la.cpus_per_task)
    _check(la.threads >= 0, "launcher.threads", "must be >= 0 (0 = derived from the CPUs the process has)", la.threads)
    _check(la.mem_gb > 0, "launcher.mem_gb", "must be > 0", la.mem_gb)
    _check(la.timeout_min >= 1, "launcher.timeout_min", "must be >= 1", la.timeout_min)
    _check(la.max_requeues >= 0, "launcher.max_requeues", "must be >= 0", la.max_requeues)
    # the strings launch.make_executor hands to submitit, which writes each into an #SBATCH line
    for name in ("job_name", "partition", "account", "qos"):
        _no_control_characters(
            f"launcher.{name}",
            getattr(la, name),
            "it would end the #SBATCH line and run the rest as a shell command",
        )
    _check_additional_parameters(la.additional_parameters)
