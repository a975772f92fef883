"""The run folder: its layout (RunPaths), its records, and safe writing (atomic files, one writer).

    runs/<name>/
      config.yaml          the run's complete, resolved params (re-run it with --params)
      run.json             how it started: git commit, shard manifest hash, world size, CPU share, ...
      result.json          how it ended (see below); rewritten atomically at every change
      checkpoints/         step-NNNNNNNNN.pt (atomic, the last N kept)
      tb/                  TensorBoard: training curves, mask pictures, evaluations during training
      model.safetensors    the final weights
      eval/                metrics.json + the TensorBoard HParams session of the stage's evaluation
      eval-extra/<set>/    metrics.json + notes.json of `maskvlp evaluate --dataset SPEC` (not a DVC output)
      jobs.jsonl, slurm/   Slurm jobs submitted for the run and their logs
      trial.json, trial.log, stopped.json   a sweep trial's task, its local log, its clean-stop mark
    runs/<study>/          a sweep (StudyPaths): sweep.json, driver.json, study.journal, driver/, trial-NNNN/

result.json holds `status` (running | complete | stopped | failed | pruned: a sweep trial stopped by its pruner), `samples_seen`, `steps`,
`train_loss`, `wall_s`, `images_per_s`, `train_flops`, `params_nonembedding`, `masking`,
`git_commit`, `evals` (evaluations during training) and, once evaluated, `eval` (flat metric keys).
Sweeps, scaling fits and the report read runs through :func:`list_runs`; the analyses of a study read its
finished trials through :func:`finished_trials`, which counts the trials it leaves out by reason.

Every record, report and weights file is written through :func:`atomic_path` (a unique temporary name
in the same folder, fsync, rename): a reader, a crash or a full disk never leaves half a file, and two
writers never share a temporary file. Read-modify-write of result.json happens under
:func:`record_lock`. A run folder has one writer at a time: :func:`folder_writer` (a kernel lock on
``writer.lock``, released by the kernel when its holder dies, so a stale holder cannot block anyone).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _in_root(name: str) -> property:
    """A path property: the file or folder `name` in the dataclass's root."""
    return property(lambda self: self.root / name)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    config = _in_root("config.yaml")
    info = _in_root("run.json")
    result = _in_root("result.json")
    checkpoints = _in_root("checkpoints")
    tensorboard = _in_root("tb")
    model = _in_root("model.safetensors")
    jobs = _in_root("jobs.jsonl")
    slurm_logs = _in_root("slurm")
    writer_lock = _in_root("writer.lock")
    attempts = _in_root("attempts.jsonl")  # one line per writer that held the folder (start / end, who, which study)
    trial = _in_root("trial.json")  # a sweep trial's task, as the driver hands it (sweep.job.TrialTask)
    trial_log = _in_root("trial.log")  # a local trial process's output
    stopped = _in_root("stopped.json")  # {"attempt": N}: attempt N stopped cleanly (checkpoint saved)
    shard_counts = _in_root("shard_counts.json")  # in-place training: samples per shard, counted once ({url: n})

    @property
    def name(self) -> str:
        return self.root.name

    def eval_dir(self) -> Path:
        """eval/: the `evaluate` stage's own evaluation (a DVC output of that stage)."""
        return self.root / "eval"

    def extra_eval_dir(self, dataset: str) -> Path:
        """eval-extra/<dataset>/: `maskvlp evaluate --dataset`, outside eval/ so DVC sees no change."""
        return self.root / "eval-extra" / dataset


@dataclass(frozen=True)
class StudyPaths:
    """A sweep's study folder <runs_dir>/<study>/: the driver's files and the trials' run folders."""

    root: Path
    info = _in_root("sweep.json")  # the spec, storage and params the study was started with
    driver_record = _in_root("driver.json")  # who drives the study, for messages (the lock is driver_lock)
    driver_logs = _in_root("driver")  # `maskvlp sweep --detach`: the driver's Slurm job
    journal = _in_root("study.journal")  # the default Optuna storage
    fit_tensorboard = _in_root("scaling-fit")  # `maskvlp scaling-fit`'s figures

    @property
    def driver_lock(self) -> Path:
        return self.root.parent / f".{self.root.name}.driver.lock"  # beside: --force-new moves the folder

    def trial(self, number: int) -> RunPaths:
        return RunPaths(self.root / f"trial-{number:04d}")


def run_paths(cfg: Any) -> RunPaths:
    """The folder of the run that `cfg` (a Config) describes: <train.runs_dir>/<train.run_name>."""
    return RunPaths(Path(cfg.train.runs_dir) / cfg.train.run_name)


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: files written through atomic_path get the mode an open() would give them
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # flock's "someone holds it"; other errors are real


def try_lock(fd: int, path: Path) -> bool:
    """Take an exclusive flock on `fd` without waiting: False when another holds it. A filesystem that
    cannot lock (Lustre mounted noflock, NFS without lockd) is an error that says so, never "busy"."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise OSError(
            exc.errno,
            f"cannot lock {path} ({exc.strerror}): the filesystem must support flock (Lustre: mount with flock; "
            "NFS: lockd)",
        ) from exc
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A unique temporary path beside `path` to write to; on success it is fsynced and renamed onto
    `path`, on any error removed (so a full disk or a kill leaves the old file, never half a new one).
    `suffix` keeps an extension that a writer looks at (matplotlib's savefig picks the format by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk with the folder's entry
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any, **dumps: Any) -> None:
    """Write JSON through :func:`atomic_path`: a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, **{"indent": 2, "sort_keys": True, **dumps}) + "\n")


@contextlib.contextmanager
def record_lock(path: Path, timeout_s: float = 120.0) -> Iterator[None]:
    """An exclusive lock for a read-modify-write of the record `path` (on `<path>.lock`)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout_s):
        yield


def read_result(paths: RunPaths) -> dict[str, Any]:
    """The run's result record ({} when it has none yet)."""
    if not paths.result.is_file():
        return {}
    return json.loads(paths.result.read_text())


def update_result(paths: RunPaths, drop: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    """Merge `fields` into result.json (the `eval` mapping is merged key by key), removing the keys in
    `drop`, and write it atomically, under the record's lock: another process updating it at the same
    moment loses none of its fields."""
    with record_lock(paths.result):
        record = {k: v for k, v in read_result(paths).items() if k not in drop}
        for key, value in fields.items():
            if key == "eval" and isinstance(value, dict):
                record["eval"] = {**record.get("eval", {}), **value}
            else:
                record[key] = value
        write_json_atomic(paths.result, record)
    return record


class FolderBusy(RuntimeError):
    """Another process holds the run folder (see :func:`folder_writer`)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return ", ".join(f"{k} {v}" for k, v in sorted(info.items())) or "another process"


@contextlib.contextmanager
def folder_writer(paths: RunPaths, who: dict[str, Any], wait_s: float = 0.0, poll_s: float = 1.0) -> Iterator[None]:
    """Hold the run folder as its one writer: an flock on writer.lock (Linux maps it to a POSIX lock on
    NFS, so hosts sharing the folder see it too), waited for up to `wait_s`. The kernel drops the lock
    when its holder process dies, so a killed job never leaves a stale lock (a host that dies holds an
    NFSv4 lock until its lease ends, ~90 s); the holder's `who` is written into the file for the
    message the next writer sees. Each holding is appended to attempts.jsonl (start and end), which the fault tests
    read to show that no two attempts ever wrote one folder at once. Raises FolderBusy."""
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.writer_lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while not try_lock(fd, paths.writer_lock):
            if time.monotonic() >= deadline:
                raise FolderBusy(
                    f"{paths.root} is being written by {_holder(paths.writer_lock)}; "
                    "one writer per run folder (wait for it to end, or stop it)"
                )
            time.sleep(poll_s)
        who = {"host": socket.gethostname(), "pid": os.getpid(), **who}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(who, sort_keys=True).encode(), 0)
        _append_attempt(paths, {**who, "event": "start", "t": time.time()})
        try:
            yield
        finally:
            _append_attempt(paths, {**who, "event": "end", "t": time.time()})
    finally:
        os.close(fd)  # releases the lock


def folder_in_use(paths: RunPaths, lock: Path | None = None) -> bool:
    """Whether some process holds the run folder's writer lock (or the lock file `lock`) now, on any
    host sharing the folder (it asks the kernel by trying the lock for an instant)."""
    lock = lock or paths.writer_lock
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        return not try_lock(fd, lock)
    finally:
        os.close(fd)  # (a lock taken here is released with it)


def _append_attempt(paths: RunPaths, entry: dict[str, Any]) -> None:
    with open(paths.attempts, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_attempts(paths: RunPaths) -> list[dict[str, Any]]:
    """attempts.jsonl as a list (a line cut short by a kill is skipped)."""
    if not paths.attempts.is_file():
        return []
    out = []
    for line in paths.attempts.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def weights_complete(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and the file is exactly as long as
    the header says (a truncated or foreign file is treated as no weights at all)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > min(size - 8, 100_000_000):
                return False
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (KeyError, TypeError, IndexError, ValueError):
        return False
    return size == 8 + n + max(ends, default=0)


@dataclass
class Run:
    paths: RunPaths
    config: dict[str, Any]  # the run's config.yaml as a plain dict
    result: dict[str, Any]  # its result.json ({} if it has none)

    @property
    def name(self) -> str:
        return self.paths.name

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.get("eval", {})


def load_run_record(root: str | Path) -> Run | None:
    """The run in `root`, or None when the folder holds no run (no config.yaml)."""
    import yaml

    paths = RunPaths(Path(root))
    if not paths.config.is_file():
        return None
    return Run(paths, yaml.safe_load(paths.config.read_text()) or {}, read_result(paths))


def list_runs(locations: list[str | Path] | str | Path) -> list[Run]:
    """Runs found in the given folders: each may be a run folder itself or hold run folders at any
    depth (runs/, runs/<study>/trial-0003/, ...). Sorted by path."""
    roots = [locations] if isinstance(locations, str | Path) else list(locations)
    found: dict[Path, Run] = {}
    for root in map(Path, roots):
        candidates = [root] if (root / "config.yaml").is_file() else sorted(p.parent for p in root.rglob("config.yaml"))
        for folder in candidates:
            run = load_run_record(folder)
            if run is not None and folder not in found:
                found[folder] = run
    return [found[k] for k in sorted(found)]


# ------------------------------------------- a study's finished trials: the one reader of sweep.fit and sweep.compare
@dataclass
class TrialRecord:
    root: Path  # the trial's run folder
    params: dict[str, Any]  # its sampled values (trial.json)
    result: dict[str, Any]  # its run record (result.json)


def metric_value(result: dict[str, Any], key: str) -> float | None:
    """An evaluation metric of the run record, else a key of the record itself; None unless a finite number."""
    value = result.get("eval", {}).get(key, result.get(key))
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def value_at(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The run record's value at a path of keys, e.g. ("masking", "mean_cluster_coverage"); None unless
    a finite number."""
    node: Any = result
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) and math.isfinite(node) else None


def finished_trials(study_dir: Path, needs: str | None = None) -> tuple[list[TrialRecord], dict[str, int]]:
    """The complete, evaluated trials of a study folder (with a finite `needs` metric when given), in
    path order, and counts of the trials left out by reason: pruned, not finished, no <metric>."""
    out, skipped = [], {}
    for run in list_runs(study_dir):
        if not run.paths.trial.is_file():
            continue
        r = run.result
        reason = None
        if r.get("status") == "pruned":
            reason = "pruned"
        elif r.get("status") != "complete" or not r.get("eval"):
            reason = "not finished"
        elif needs is not None and metric_value(r, needs) is None:
            reason = f"no {needs}"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        out.append(TrialRecord(run.paths.root, json.loads(run.paths.trial.read_text())["params"], r))
    return out, skipped
