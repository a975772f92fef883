"""Shared fixtures. Tests use real components: real shards on disk, real DVC in a temporary git repo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from maskvlp.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"

requires_emoji_font = pytest.mark.skipif(
    not Path(EMOJI_FONT).is_file(),
    reason="emoji font absent: apt-get install fonts-noto-color-emoji (.ci/run installs it)",
)


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


@pytest.fixture
def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin dir first on PATH, no DVC analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env
