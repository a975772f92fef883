"""Checkpoints and final weights: written atomically (temp file + fsync + rename), the last N checkpoints
kept, loaded with weights_only; a weights file is checked whole before it is trusted."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step-(\d{9})\.pt$")


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first (temp files are ignored)."""
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)))


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep: int) -> Path:
    """Write `state` as step-NNNNNNNNN.pt via a temp file and os.replace, then prune to the last `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:09d}.pt"
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load on the CPU; weights_only=True refuses arbitrary pickled objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The final weights as safetensors, written atomically: a job killed or a disk filling mid-write
    leaves no model.safetensors (which would make every retry skip training and fail to load it)."""
    from safetensors.torch import save_file

    from maskvlp.runs import atomic_path

    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        except Exception as exc:  # safetensors reports a full disk as SafetensorError "... (os error 28)"
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), f"cannot write {path}: {exc}") from exc
