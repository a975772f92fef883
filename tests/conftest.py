"""Shared fixtures. Tests use real components: real shards on disk, real DVC in a temporary git repo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from maskvlp.config import Config
from maskvlp.params import load_config

ROOT = Path(__file__).resolve().parents[1]

# No time limit per Hypothesis example: speed is measured in benchmarks, not asserted in tests, and a
# first example that imported scipy on a busy machine took 2.6 s against the default 200 ms.
settings.register_profile("maskvlp", deadline=None)
settings.load_profile("maskvlp")

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"

requires_emoji_font = pytest.mark.skipif(
    not Path(EMOJI_FONT).is_file(),
    reason="emoji font absent: apt-get install fonts-noto-color-emoji (.ci/run installs it)",
)


def slurm_up() -> bool:
    """A Slurm cluster answers (scripts/slurm-local.sh start; .ci/run starts it)."""
    import shutil
    import subprocess

    if not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


def require_slurm() -> None:
    """Skip the calling test module when no cluster answers; in CI (CI=true) that is an error."""
    if slurm_up():
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must start Slurm first: scripts/slurm-local.sh start")
    pytest.skip("no Slurm cluster answers: start one with `scripts/slurm-local.sh start`", allow_module_level=True)


def make_cfg(tmp_path: Path, *overrides: str) -> Config:
    """Defaults with small sizes, writing under tmp_path, plus the given key=value overrides."""
    base = [
        f"data.out_dir={tmp_path / 'shards'}",
        "data.synthetic.num_samples=200",
        "data.max_samples_per_shard=50",
        "data.num_workers=1",
        "data.image_size=32",
    ]
    return load_config(None, base + list(overrides))


def subprocess_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin dir first on PATH, no DVC analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def tool_env() -> dict[str, str]:
    """subprocess_env(), a fresh copy per test."""
    return subprocess_env()


def make_tiny_shards(directory: Path, num_samples: int) -> Path:
    """Embedded-dataset shards at 32 px for quick training tests."""
    from maskvlp.data.shards import shard

    out = directory / "shards"
    shard(load_config(None, tiny_data(out, num_samples)), progress=False)
    return out


def tiny_data(shards: Path, num_samples: int) -> list[str]:
    return [
        f"data.out_dir={shards}",
        f"data.synthetic.num_samples={num_samples}",
        "data.image_size=32",
        "data.num_workers=1",
        "data.loader_workers=0",
    ]


def tiny_run(shards: Path, num_samples: int, runs: Path, *extra: str) -> list[str]:
    """Overrides for a tiny, fast training run (32 px, 8 px patches, narrow embedding) on `shards`."""
    return [
        *tiny_data(shards, num_samples),
        "model.image_size=32",
        "model.patch_size=8",
        "model.embed_dim=32",
        "model.context_length=24",
        f"train.runs_dir={runs}",
        *extra,
    ]


def slurm_run(shards: Path, runs: Path, *extra: str) -> list[str]:
    """A tiny 320-sample run on 400-sample `shards` as a 1-CPU, 2 GB Slurm job (the partition is the caller's)."""
    return tiny_run(
        shards,
        400,
        runs,
        "train.samples=320",
        "train.batch_size=16",
        "train.warmup_samples=32",
        "train.checkpoint_every_samples=100000",
        "train.log_every_steps=1",
        "launcher.cpus_per_task=1",
        "launcher.mem_gb=2",
        "launcher.timeout_min=10",
        *extra,
    )


def logged_steps(run_dir: Path) -> list[int]:
    """The training steps a run logged to TensorBoard, in order (none before its first event)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run_dir / "tb").is_dir():
        return []
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [int(e.value) for e in acc.Scalars("train/step")] if "train/step" in acc.Tags()["scalars"] else []


def as_set_args(overrides: list[str]) -> list[str]:
    """["k=v", ...] -> ["--set", "k=v", ...] for the command line."""
    return [arg for kv in overrides for arg in ("--set", kv)]


class StopAfter:
    """A stop request that fires after `n` step boundaries (as SIGTERM would)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls > self.n

    def restore(self) -> None:
        pass


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar of (member name, bytes), in order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
