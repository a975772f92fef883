"""IDX files (the MNIST family's format, gzipped or not): a reader that checks every byte it needs.

Layout: two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian uint32, then the
values in C order, big-endian. A file that ends early, has a bad magic, or holds bytes past its data is
refused with a message naming the file.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
    """The file is not a complete IDX file; the message names it and what is wrong."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError as exc:  # a gzip stream cut short
        raise IdxError(f"{path}: truncated gzip stream ({exc}); reinstall the package that ships it") from exc
    except gzip.BadGzipFile as exc:
        raise IdxError(f"{path}: not a gzip file ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds, in its own dtype (native byte order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in DTYPES:
        raise IdxError(f"{path}: not an IDX file (magic {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path}: truncated header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(DTYPES[raw[2]])
    need = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "has trailing bytes"
        raise IdxError(f"{path}: {what}: shape {shape} needs {need} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an array as IDX (gzipped when the name ends in .gz): for tests and small exports."""
    path = Path(path)
    code = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}[array.dtype.newbyteorder("=")]
    body = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body += array.astype(np.dtype(DTYPES[code])).tobytes()
    path.write_bytes(gzip.compress(body, mtime=0) if path.suffix == ".gz" else body)
    return path
