"""Progress that shows wherever the output goes.

On a terminal: a tqdm bar. Anywhere else (`dvc repro` with redirected output, nohup, Slurm logs,
CI), tqdm prints nothing useful, so a plain line is printed at a steady cadence instead:

    pretrain default: 120/469 step (26%) | samples=7680 loss=2.310 img_s=262 | 4.1 step/s | ETA 1m25s

every `MASKVLP_PROGRESS_SECONDS` seconds (default 30), and once more when the work ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
DEFAULT_EVERY_S = 30.0


def every_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("MASKVLP_PROGRESS_SECONDS", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """`update(n)`, `set_postfix(**values)`, `close()`: a tqdm bar on a terminal, plain lines elsewhere."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        initial: int = 0,
        stream: IO[str] | None = None,
        every_s: float | None = None,
    ):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.enabled = enabled
        self.every_s = every_seconds() if every_s is None else every_s
        self.postfix: dict[str, Any] = {}
        self.bar = None
        self._t0 = self._last = time.perf_counter()
        self._closed = False
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self._last >= self.every_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(**self.postfix, refresh=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line(final=True)

    def line(self, final: bool = False) -> str:
        """The plain progress line (what is printed off a terminal)."""
        elapsed = time.perf_counter() - self._t0
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc}: {count}"]
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        parts.append(f"{rate:.1f} {self.unit}/s")
        if final:
            parts.append(f"done in {format_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        return " | ".join(parts)

    def _line(self, final: bool = False) -> None:
        self._last = time.perf_counter()
        print(self.line(final), file=self.stream, flush=True)


def track(iterable: Iterable[T], total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[T]:
    """Iterate with progress (one update per item)."""
    progress = Progress(total, desc, unit, enabled)
    try:
        for item in iterable:
            yield item
            progress.update(1)
    finally:
        progress.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
