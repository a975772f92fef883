"""A study carried to another machine: `maskvlp sweep-pack NAME DIR` and `maskvlp sweep-unpack DIR`.

A study longer than one sitting on a machine that does not last (a cloud node, a lent workstation, a
cluster account that ends) keeps its state in its study folder, `runs/<study>/`, which is not
committed. `sweep-pack` copies that state into a plain folder that can be committed or copied: the
journal (cut at its last complete line, so a copy taken while the driver writes is a valid journal),
`sweep.json`, and per trial:

- a finished trial (COMPLETE, PRUNED, or FAIL with its retries used up): its whole run folder except
  its checkpoints and, unless `--weights`, its weights (`model.safetensors`; a re-evaluation needs
  them). Its record, evaluation, logs and TensorBoard events are what its report reads.
- an unfinished trial (running, or waiting for its retry): only the records the driver resumes it
  from (config.yaml, trial.json, attempts.jsonl, jobs.jsonl), with a clean-stop marker for its live
  attempt: it was moved, not crashed, so the next driver retries it without counting a failure. With
  no checkpoint packed it trains again from its first step (the same result: runs are deterministic).

`sweep-unpack DIR` puts the folder back where the study was (the journal's recorded path, relative to
the current folder for a study in `runs/`), refusing to overwrite a study that is already there. Then
the same `maskvlp sweep FILE` continues it. Only a journal study can be packed: an RDB study lives in
its database, which outlives any one machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from maskvlp.runs import RunPaths, StudyPaths, write_json_atomic
from maskvlp.sweep.space import SweepSpecError

PACK_FILE = "pack.json"  # what was packed, when, from where; a folder without it is not a pack
RESUME_RECORDS = ("config.yaml", "trial.json", "attempts.jsonl", "jobs.jsonl")  # an unfinished trial's
LEFT_OUT = ("checkpoints", "writer.lock")  # never packed: machine-local or too large to commit


def _complete_lines(data: bytes) -> bytes:
    """A journal's bytes up to its last newline: a line the driver was still appending is dropped."""
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


def _copy_tree(src: Path, dst: Path, weights: bool) -> int:
    """Copy a finished trial's run folder without checkpoints, locks, temporary files and (unless
    `weights`) its weights; returns the bytes copied."""
    total = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in LEFT_OUT or path.name.endswith(".lock") or path.name.startswith("."):
            continue
        if not weights and path.name == RunPaths(src).model.name and path.parent == src:
            continue
        if path.is_dir():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        total += path.stat().st_size
    return total


def pack(name: str, dest: str | Path, runs_dir: str | Path = "runs", weights: bool = False) -> dict[str, Any]:
    """Copy study `name` of `runs_dir` into `dest` (replaced whole, atomically: a reader sees the old pack
    or the new one). Returns the pack's record (pack.json)."""
    from optuna.trial import TrialState

    from maskvlp.sweep.spec import open_study
    from maskvlp.sweep.study import is_finished, is_rdb, load_study, logical_trials

    info, spec = open_study(name, runs_dir)
    storage = info["storage"]
    if is_rdb(storage):
        raise SweepSpecError(
            f"study '{name}' lives in a database ({storage}), which outlives this machine: point the next "
            "machine's `maskvlp sweep --storage` at it instead of packing"
        )
    paths = StudyPaths(Path(runs_dir) / name)
    if Path(storage).resolve() != paths.journal.resolve():
        raise SweepSpecError(
            f"study '{name}': its journal {storage} is not in its folder {paths.root}; pack that folder"
        )
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        journal = _complete_lines(paths.journal.read_bytes())
        (tmp / paths.journal.name).write_bytes(journal)
        shutil.copy2(paths.info, tmp / paths.info.name)
        study = load_study(spec, str(tmp / paths.journal.name))  # the state as the packed journal says
        finished, moved, size = [], [], 0
        for g in logical_trials(study):
            src = Path(g.run_dir)
            if src.resolve().parent != paths.root.resolve():
                raise SweepSpecError(f"trial {g.number}'s run folder {src} is not in the study folder {paths.root}")
            out = tmp / src.name
            if is_finished(g, spec.retries):
                size += _copy_tree(src, out, weights) if src.is_dir() else 0
                finished.append(g.number)
                continue
            out.mkdir(parents=True, exist_ok=True)
            for record in RESUME_RECORDS:
                if (src / record).is_file():
                    shutil.copy2(src / record, out / record)
            if g.last.state == TrialState.RUNNING:  # moved, not crashed: the next driver does not count it
                write_json_atomic(RunPaths(out).stopped, {"attempt": g.last.number})
            moved.append(g.number)
        record = {
            "name": name,
            "study_folder": str(paths.root),
            "packed": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": socket.gethostname(),
            "finished": finished,
            "unfinished": moved,
            "weights": weights,
            "bytes": size + len(journal),
        }
        write_json_atomic(tmp / PACK_FILE, record)
        os.chmod(tmp, 0o755)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old)
        return record
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def unpack(source: str | Path) -> Path:
    """Put the pack `source` back as its study folder; returns that folder. Refused when a study is there."""
    source = Path(source)
    record_path = source / PACK_FILE
    if not record_path.is_file():
        raise SweepSpecError(
            f"{source} is not a study pack (no {PACK_FILE}); write one with `maskvlp sweep-pack NAME DIR`"
        )
    record = json.loads(record_path.read_text())
    target = Path(record["study_folder"])
    if target.exists() and any(target.iterdir()):
        raise SweepSpecError(
            f"{target} is not empty (a study or trials are there): unpacking over it would mix two studies' trials. "
            "Continue that study with `maskvlp sweep FILE`, or move the folder away and unpack again"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path != record_path:
                dst = tmp / path.relative_to(source)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst)
        os.chmod(tmp, 0o755)
        if target.exists():  # an empty folder
            target.rmdir()
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
