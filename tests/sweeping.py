"""Helpers for the sweep tests: a tiny sweep file over tiny shards (trials of a few seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .conftest import make_tiny_shards

SHARD_SAMPLES = 300


def tiny_shards(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("sweep-data"), SHARD_SAMPLES)


def tiny_base(shards: Path, runs: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "data.out_dir": str(shards),
        "data.synthetic.num_samples": SHARD_SAMPLES,
        "data.image_size": 32,
        "data.num_workers": 1,
        "data.loader_workers": 0,
        "model.image_size": 32,
        "model.patch_size": 8,
        "model.embed_dim": 32,
        "model.context_length": 24,
        "train.runs_dir": str(runs),
        "train.samples": 256,
        "train.batch_size": 32,
        "train.warmup_samples": 64,
        "train.log_every_steps": 1,
        "eval.linear_probe": False,
        "eval.objects_per_class": 4,
        "eval.subset_samples": 64,
        "launcher.partition": "debug",
        "launcher.cpus_per_task": 1,
        "launcher.mem_gb": 2,
        "launcher.timeout_min": 10,
    }
    base.update(extra)
    return base


def write_sweep(path: Path, base: dict[str, Any], **fields: Any) -> Path:
    raw = {
        "name": "tiny",
        "base": base,
        "space": {
            "masking.ratio": {"type": "float", "low": 0.25, "high": 0.75, "step": 0.25},
            "masking.threshold": {"type": "float", "low": 0.2, "high": 0.9},
        },
        "objectives": [{"metric": "zeroshot/objects/top1", "direction": "maximize"}],
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "n_trials": 2,
        "parallel": 2,
        "retries": 1,
    }
    raw.update(fields)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def hparams_of(event_dir: Path) -> dict[str, Any]:
    """The HParams session written in `event_dir`, read back from its event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    out = {}
    for key, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out
