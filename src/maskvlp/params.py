"""Reading params.yaml into a checked :class:`~maskvlp.config.Config`.

`load_config` merges params.yaml and `key=value` overrides into the schema (config.py), fills the keys
left at null (`resolve_derived`: presets, recipes, the compute-matched budget) and validates. Each
section is checked by its owner (data.sources, model, masking, evalsets, launch); the train section,
which has no lower owner, is checked here. Owners are imported inside the functions, so that
importing this module (as the CLI does) loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskvlp.config import Config, ConfigError, check, choice, control_character, no_control_characters


def _omegaconf_error(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", exc)).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        hint = "unknown key: check the spelling against params.yaml's sections"
    else:
        hint = "wrong type"
    return ConfigError(f"{origin}: '{key}': {msg} ({hint})")


def schema() -> DictConfig:
    """params.yaml's schema: config.Config with the `masking` section composed from the registered
    strategies' own keys (masking.masking_schema)."""
    from maskvlp.masking import masking_schema

    node = OmegaConf.structured(Config)
    node.masking = OmegaConf.structured(masking_schema())
    return node


def load_config(params: str | Path | ParamsFile | None = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read params.yaml (or only defaults when params is None; a ParamsFile: the file as it was read),
    apply `key=value` overrides, validate."""
    return config_from(params if isinstance(params, ParamsFile) else read_params(params), overrides)


@dataclass(frozen=True)
class ParamsFile:
    """A params file as read at one moment: where from, and its contents as plain data. A sweep keeps
    this snapshot for all its trials, so editing the file while the sweep runs changes none of them."""

    source: str
    data: dict[str, Any]


def read_params(params: str | Path | None) -> ParamsFile | None:
    """The params file as it is now (None: defaults only), refused as load_config refuses it."""
    if params is None:
        return None
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
    data = OmegaConf.to_container(loaded)
    assert isinstance(data, dict)
    return ParamsFile(str(path), data)


def config_from(read: ParamsFile | None, overrides: list[str] | None = None) -> Config:
    """A validated Config from a params file as `read_params` read it, with `key=value` overrides."""
    merged: DictConfig = schema()
    if read is not None:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(read.data))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, read.source) from exc
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
    `train.recipe` (recipes.py), train.samples from train.compute_samples, the masking strategy's keys
    that follow the training budget (its `derive`), train.seed from seed. Values given explicitly are kept."""
    from maskvlp.masking import STRATEGIES, get_strategy
    from maskvlp.presets import PRESETS
    from maskvlp.recipes import RECIPES

    try:  # the budget and the derived keys ask the strategy
        get_strategy(cfg.masking.strategy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    choice("data.preset", cfg.data.preset, tuple(PRESETS))
    choice("train.recipe", cfg.train.recipe, tuple(RECIPES))
    for table in (PRESETS[cfg.data.preset], RECIPES[cfg.train.recipe]):
        for key, value in table.items():
            *parents, leaf = key.split(".")
            node: Any = cfg
            for part in parents:
                node = getattr(node, part)
            if getattr(node, leaf) is None:
                setattr(node, leaf, list(value) if isinstance(value, list) else value)
    if cfg.train.compute_samples:
        cfg.train.samples = (
            time_matched_samples(cfg) if cfg.train.compute_basis == "time" else compute_matched_samples(cfg)
        )
        check(cfg.train.samples >= 1, "train.compute_samples", "must be >= 1 (0 = off)", cfg.train.compute_samples)
    for strategy in STRATEGIES.values():  # each owner fills its own keys of the section, used or not
        if strategy.derive is not None:
            strategy.derive(cfg.masking, cfg.train.samples)
    if cfg.train.seed is None:
        cfg.train.seed = cfg.seed


def compute_matched_samples(cfg: Config) -> int:
    """train.samples for `train.compute_samples = N`: the samples whose masking-aware training FLOPs
    (docs/records.md: kept tokens, both towers, forward and backward, plus the mask's own cost)
    equal those of N samples trained unmasked on the same model, so masked runs see more samples for
    the same compute. FLIP's unmasked tuning (train.unmasked_tuning_samples = T) is paid from the same
    budget at the unmasked cost: the masked phase gets the FLOPs of N - T unmasked samples. Needs a
    token count the budget can plan with (masking.planned_tokens)."""
    import torch

    from maskvlp.flops import matched_samples
    from maskvlp.masking import describe, planned_tokens
    from maskvlp.model import CLIP
    from maskvlp.textmask import text_tokens

    k, m, t = cfg.masking, cfg.model, cfg.train
    check(
        t.compute_samples >= 0, "train.compute_samples", "must be >= 0 (0 = train.samples as given)", t.compute_samples
    )
    grid = (m.image_size // m.patch_size) ** 2
    check(
        planned_tokens(k, grid) is not None,
        "train.compute_samples",
        f"needs a token count to plan with, and masking.strategy={k.strategy} ({describe(k)}) changes it "
        "from batch to batch (cluster: use masking.mode exact, or calibrate official mode to a mean with "
        "masking.calibrate_mask_ratio)",
        t.compute_samples,
    )
    tuning = t.unmasked_tuning_samples
    check(
        0 <= tuning < t.compute_samples,
        "train.unmasked_tuning_samples",
        f"is paid from the compute budget (train.compute_samples={t.compute_samples}) and must leave some of it to "
        "the masked phase; lower it",
        tuning,
    )
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = CLIP.from_config(m)
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"train.compute_samples: cannot size the model to count its FLOPs ({exc})") from exc
    text = text_tokens(cfg.text_masking, m.context_length)
    return matched_samples(model, k, t.compute_samples - tuning, text) + tuning


def time_matched_samples(cfg: Config) -> int:
    """train.samples for `train.compute_samples = N` with `train.compute_basis: time`: the samples this
    configuration trains in the wall time of N unmasked samples, from its measured speed relative to the
    unmasked run (`train.compute_speedup`, images/s over images/s on the same model, data and machine:
    `maskvlp sweep-report` prints it per arm from a samples-budget study). FLIP's unmasked tuning runs
    at the unmasked speed: the masked phase gets the time of N - T unmasked samples."""
    t = cfg.train
    check(
        t.compute_speedup > 0,
        "train.compute_speedup",
        "must be > 0 with train.compute_basis time: the measured images/s of this configuration over the "
        "unmasked run's (maskvlp sweep-report prints it per arm)",
        t.compute_speedup,
    )
    check(
        0 <= t.unmasked_tuning_samples < t.compute_samples,
        "train.unmasked_tuning_samples",
        f"is paid from the time budget (train.compute_samples={t.compute_samples}); lower it",
        t.unmasked_tuning_samples,
    )
    return round((t.compute_samples - t.unmasked_tuning_samples) * t.compute_speedup) + t.unmasked_tuning_samples


def config_from_dict(cfg_dict: dict[str, Any]) -> Config:
    """A validated Config from its plain dict (a run's config.yaml, a job's pickled parameters)."""
    cfg = OmegaConf.to_object(OmegaConf.merge(schema(), cfg_dict))
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range and consistency checks that types alone cannot express, section by section in the
    order of params.yaml; the first refusal is raised as a ConfigError naming the key."""
    from maskvlp import masking
    from maskvlp.data.clean import check_section as check_encoding
    from maskvlp.data.sources import check_section as check_data
    from maskvlp.evalsets import check_section as check_eval
    from maskvlp.launch import check_section as check_launcher
    from maskvlp.model import check_section as check_model
    from maskvlp.textmask import check_section as check_text

    check_data(cfg.data)
    check_encoding(cfg.data)
    check_model(cfg.model)
    k, m = cfg.masking, cfg.model
    try:
        masking.check_config(k, (m.image_size // m.patch_size) ** 2)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    check_text(cfg.text_masking, cfg.model.context_length)
    _check_train(cfg)
    check_eval(cfg.eval)
    check_launcher(cfg.launcher)


def _check_train(cfg: Config) -> None:
    from maskvlp.accumulate import ACCUMULATORS
    from maskvlp.masking import describe, kept_tokens
    from maskvlp.recipes import LR_SCALING

    k = cfg.masking
    t = cfg.train
    check(
        t.run_name not in ("", ".", "..") and "/" not in t.run_name and control_character(t.run_name) is None,
        "train.run_name",
        "must be a plain folder name (not empty, '.' or '..', without '/' or control characters): "
        "the run folder is train.runs_dir/train.run_name",
        t.run_name,
    )
    no_control_characters("train.runs_dir", t.runs_dir, "Slurm's log paths under it are written into #SBATCH lines")
    check(t.samples >= 1, "train.samples", "must be >= 1", t.samples)
    check(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    choice("train.lr_scaling", t.lr_scaling, LR_SCALING)
    choice("train.accum_mode", t.accum_mode, tuple(ACCUMULATORS))
    check(t.warmup_samples >= 0, "train.warmup_samples", "must be >= 0", t.warmup_samples)
    check(t.unique_pairs >= 0, "train.unique_pairs", "must be >= 0 (0 = every training pair)", t.unique_pairs)
    check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)", (t.beta1, t.beta2))
    check(t.eps > 0, "train.eps", "must be > 0", t.eps)
    check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)", t.grad_clip)
    check(t.accum_steps >= 1, "train.accum_steps", "must be >= 1", t.accum_steps)
    choice("train.precision", t.precision, ("auto", "fp32", "bf16"))
    choice("train.compute_basis", t.compute_basis, ("flops", "time"))
    check(t.compute_speedup >= 0, "train.compute_speedup", "must be >= 0 (0 = not given)", t.compute_speedup)
    check(
        0 <= t.unmasked_tuning_samples < t.samples,
        "train.unmasked_tuning_samples",
        f"must be in [0, train.samples={t.samples})",
        t.unmasked_tuning_samples,
    )
    check(
        0 <= t.unmasked_tuning_warmup_fraction < 1,
        "train.unmasked_tuning_warmup_fraction",
        "must be in [0, 1)",
        t.unmasked_tuning_warmup_fraction,
    )
    check(
        t.unmasked_tuning_batch_size >= 0,
        "train.unmasked_tuning_batch_size",
        "must be >= 0 (0 = train.batch_size)",
        t.unmasked_tuning_batch_size,
    )
    check(t.unmasked_tuning_lr_scale > 0, "train.unmasked_tuning_lr_scale", "must be > 0", t.unmasked_tuning_lr_scale)
    check(t.checkpoint_every_samples >= 1, "train.checkpoint_every_samples", "must be >= 1", t.checkpoint_every_samples)
    check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    check(
        not (t.compile and kept_tokens(k, (cfg.model.image_size // cfg.model.patch_size) ** 2) is None),
        "train.compile",
        f"cannot be combined with a token count that changes every batch ({describe(k)}; cluster: masking.mode=official)",
        t.compile,
    )
    check(t.eval_every_samples >= 0, "train.eval_every_samples", "must be >= 0 (0 = off)", t.eval_every_samples)
    check(t.log_every_steps >= 1, "train.log_every_steps", "must be >= 1", t.log_every_steps)
    check(
        t.mask_image_every_steps >= 0,
        "train.mask_image_every_steps",
        "must be >= 0 (0 = off)",
        t.mask_image_every_steps,
    )
