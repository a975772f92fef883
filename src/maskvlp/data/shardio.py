"""Reading webdataset shards from anywhere: local files, pipe: commands, http(s) URLs; grouped samples, counts.

`open_url` opens one shard as a byte stream: a local path (or file:// URL); `pipe:CMD ARGS`, run
without a shell (the words are split as a shell splits them, but pipes, redirections and variables
are not interpreted: write a script and name it); or an http(s) URL read with urllib, retried on
connection errors and 5xx. `tar_samples` groups a tar's members into samples as webdataset's
`tarfile_samples` does and never raises for bad data: an unreadable or truncated tar ends in a
`Skip`, and a remote stream that fails midway is reopened and resumed after the samples already given.
`shard_counts` gives each shard's sample count from open_clip's sizes.json, img2dataset's
`{stem}_stats.json`, or one counting pass cached in a JSON file (never beside the shards: they may be
read-only). `Skip` lives here, at the bottom of the data layer; `data.sources` re-exports it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from maskvlp.progress import Progress
from maskvlp.runs import write_json_atomic

SIZES = "sizes.json"  # open_clip's per-shard sample counts ({shard file name: count}), as data/shards.py writes
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, http.client.HTTPException)


@dataclass(frozen=True)
class Skip:
    reason: str  # e.g. missing_file, outside_folder, unreadable_image, empty_caption, duplicate_key, truncated_tar
    key: str = ""
    detail: str = ""


class ShardReadError(OSError):
    """a shard URL cannot be read; the message names the URL and what to do"""


def is_remote(url: str) -> bool:
    """A `pipe:` command or an http(s) URL (read over a stream that may fail midway and be retried)."""
    return url.startswith("pipe:") or url.lower().startswith(("http://", "https://"))


def _backoff(attempt: int) -> None:
    if attempt:
        time.sleep(0.1 * 2**attempt)  # before the 2nd, 3rd, 4th... try: 0.2 s, 0.4 s, 0.8 s, ...


class _Pipe(io.RawIOBase):
    """A command's standard output. close() waits for the command and raises ShardReadError when it
    failed after its whole output was read (a command closed early by the reader is stopped instead)."""

    def __init__(self, url: str, proc: subprocess.Popen, stderr: IO[bytes]):
        super().__init__()
        self.url, self.proc, self.stderr, self.eof = url, proc, stderr, False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self.proc.stdout.readinto(buf)
        self.eof = self.eof or not n
        return n

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.proc.stdout.close()
        if not self.eof:
            self.proc.terminate()  # the reader wants no more: its exit status says nothing
        status = self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-400:].decode("utf-8", "replace").strip()
        self.stderr.close()
        if status and self.eof:
            raise ShardReadError(
                f"cannot read shard {self.url}: command {self.proc.args!r} exited with status {status}"
                + (f" ({tail})" if tail else "")
                + "; pipe: runs the command without a shell (no |, >, ;, $VAR): write a script and name it"
            )


def _open_pipe(url: str) -> _Pipe:
    try:
        argv = shlex.split(url[len("pipe:") :])
    except ValueError as exc:
        raise ShardReadError(f"cannot read shard {url}: {exc} in the command") from exc
    if not argv:
        raise ShardReadError(f"cannot read shard {url}: pipe: names no command")
    stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty command cannot block on it
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, shell=False)
    except OSError as exc:
        stderr.close()
        raise ShardReadError(f"cannot read shard {url}: cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    return _Pipe(url, proc, stderr)


def _open_http(url: str, retries: int, timeout: float) -> IO[bytes]:
    why, tries = "", 0
    while tries <= max(retries, 0):
        _backoff(tries)
        tries += 1
        try:
            return urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            why = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500:  # 404, 403...: asking again gives the same answer
                break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            why = str(getattr(exc, "reason", exc))
    raise ShardReadError(
        f"cannot read shard {url}: {why} (after {tries} {'try' if tries == 1 else 'tries'}); "
        "check the URL or set data.shards.retries"
    )


def _local_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path) if url.startswith("file://") else url


def open_url(url: str, retries: int = 3, *, timeout: float = 60.0) -> IO[bytes]:
    """One shard as a byte stream (see the module's docstring); ShardReadError when it cannot be opened."""
    if url.startswith("pipe:"):
        return _open_pipe(url)
    if url.lower().startswith(("http://", "https://")):
        return _open_http(url, retries, timeout)
    try:
        return open(_local_path(url), "rb")
    except OSError as exc:
        raise ShardReadError(f"cannot read shard {url}: {exc.strerror or exc}; check data.shards.urls") from exc


class _Header(tarfile.TarInfo):
    """tarfile ends the archive quietly at a bad or missing header after the first: note it, as a cut."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:  # EOFHeaderError: a zero block, the end-of-archive marker
            if not isinstance(exc, tarfile.EOFHeaderError):
                empty = isinstance(exc, tarfile.EmptyHeaderError)
                tar.cut = f"{'no end-of-archive marker' if empty else exc} at byte {tar.offset}"
            raise


_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members ("__meta__", "__x__/...")


def key_ext(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member as webdataset groups it: the path up to the first '.' of the
    base name, and the rest lower-cased; None for a member left out (no extension, a base name starting
    with '.' or '__', as macOS's '._x' files and webdataset's metadata)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot or base.startswith("__") or _META.match(name):
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _grouped(url: str, stream: IO[bytes]) -> Iterator[dict[str, Any] | Skip]:
    """One pass over an opened tar: its samples, then a Skip if it could not be read to its end."""
    current: dict[str, Any] | None = None
    opened, why = False, ""
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_Header) as tar:
            opened = True
            for member in tar:
                tar.members = []  # a stream keeps no index of what it has read
                split = key_ext(member.name) if member.isreg() else None
                if split is None:
                    continue
                if current is None or split[0] != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": split[0], "__url__": url}
                data = tar.extractfile(member).read()
                current.setdefault(split[1], data)  # a repeated member: the first is kept
            if getattr(tar, "cut", ""):
                raise tarfile.ReadError(tar.cut)
    except READ_ERRORS as exc:
        why = f"{url}: {exc}"
    finally:
        try:
            stream.close()
        except ShardReadError as exc:  # the command failed: its message says more than the tar's
            why = str(exc)
    if not why:
        if current is not None:
            yield current
    elif opened:  # the sample being read may be incomplete: dropped
        yield Skip("truncated_tar", current["__key__"] if current else "", why)
    else:
        yield Skip("unreadable_tar", "", why)


def tar_samples(url: str, retries: int = 3) -> Iterator[dict[str, Any] | Skip]:
    """The samples of one tar, in member order, as webdataset's `tarfile_samples` groups them:
    {"__key__", "__url__", <ext>: bytes}. A tar that cannot be opened gives Skip("unreadable_tar"),
    one cut short its complete samples then Skip("truncated_tar", <the dropped key>); never raises.
    A remote stream that fails is reopened up to `retries` times, resuming after the samples given."""
    given, skip = 0, None
    for attempt in range(max(retries, 0) + 1 if is_remote(url) else 1):
        _backoff(attempt)
        try:
            stream = open_url(url, retries)
        except ShardReadError as exc:  # open_url has retried already
            yield Skip("unreadable_tar", "", str(exc))
            return
        seen, skip = 0, None
        for item in _grouped(url, stream):
            if isinstance(item, Skip):
                skip = item
                break
            seen += 1
            if seen > given:
                given = seen
                yield item
        if skip is None:
            return
    yield skip


def _beside(url: str, name: str) -> str:
    """Where file `name` is in a shard's folder: a path, or a URL (an http URL's query dropped)."""
    if not url.lower().startswith(("http://", "https://")):
        return os.path.join(os.path.dirname(_local_path(url)), name)
    parts = urllib.parse.urlsplit(url)
    path = f"{parts.path.rpartition('/')[0]}/{urllib.parse.quote(name)}"
    return urllib.parse.urlunsplit(parts._replace(path=path, query="", fragment=""))


def _json_at(location: str, retries: int) -> dict[str, Any]:
    """A JSON object at a path or URL; {} when it is not there (a 404) or not a JSON object."""
    try:
        with open_url(location, retries) as fh:
            obj = json.loads(fh.read())
    except (OSError, ValueError, http.client.HTTPException):
        return {}
    return obj if isinstance(obj, dict) else {}


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _listed(url: str, retries: int, sizes: dict[str, dict[str, Any]]) -> int | None:
    """A shard's count from sizes.json in its folder, else from `{stem}_stats.json` beside it."""
    if url.startswith("pipe:"):
        return None
    where = _beside(url, SIZES)
    if where not in sizes:  # one folder, read once
        sizes[where] = _json_at(where, retries)
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path) if is_remote(url) else url)
    if (n := _count(sizes[where].get(name))) is not None:
        return n
    stats = _json_at(_beside(url, re.sub(r"\.(tar|tgz|tar\.gz)$", "", name) + "_stats.json"), retries)
    return _count(stats.get("successes"))


def shard_counts(urls: list[str], cache: Path | None = None, retries: int = 3, progress: bool = False) -> list[int]:
    """Per url the number of grouped samples in its tar: open_clip's sizes.json in its folder, else
    img2dataset's `{stem}_stats.json` beside it ("successes"), else a counting pass (Skips not counted)
    remembered in `cache` ({url: count}, written atomically; nothing is written beside the shards).
    A remote shard whose pass ended in a Skip is not remembered (the failure may pass)."""
    known = _json_at(str(cache), 0) if cache is not None else {}
    sizes: dict[str, dict[str, Any]] = {}
    counts = [_listed(url, retries, sizes) for url in urls]
    counts = [_count(known.get(url)) if n is None else n for url, n in zip(urls, counts)]
    todo = [i for i, n in enumerate(counts) if n is None]
    bar = Progress(len(todo), "count shard samples", unit="shard", enabled=progress and bool(todo))
    total = 0
    for i in todo:
        n, failed = 0, False
        for item in tar_samples(urls[i], retries):
            failed = isinstance(item, Skip)
            n += not failed
        counts[i], total = n, total + n
        if cache is not None and not (failed and is_remote(urls[i])):
            known[urls[i]] = n
            write_json_atomic(cache, known)
        bar.update(1)
        bar.set_postfix(samples=total)
    bar.close()
    return counts
