"""The IDX reader on tiny files the tests write, and Fashion-MNIST's split loader over them."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from maskvlp.data import fashion_mnist as fm
from maskvlp.data.idx import IdxError, read_idx, write_idx


@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_round_trip_in_every_layout(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    back = read_idx(write_idx(tmp_path / f"a{suffix}", array))
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_header_bytes_are_the_format_s(tmp_path):
    raw = (write_idx(tmp_path / "l.idx", np.array([3, 1, 4], dtype=np.uint8))).read_bytes()
    assert raw == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 3, 1, 4])


def test_truncated_bad_magic_trailing_and_cut_gzip_are_refused_naming_the_file(tmp_path):
    good = write_idx(tmp_path / "g.idx", np.zeros((4, 5, 5), np.uint8)).read_bytes()
    cases = {
        "short.idx": (good[:-7], "truncated: shape \\(4, 5, 5\\) needs 116 bytes, the file has 109"),
        "header.idx": (good[:9], "truncated header"),
        "magic.idx": (b"\x01\x02" + good[2:], "not an IDX file"),
        "empty.idx": (b"", "not an IDX file \\(magic empty\\)"),
        "trailing.idx": (good + b"\x00", "has trailing bytes"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IdxError, match=f"{name}: {message}"):
            read_idx(tmp_path / name)
    (tmp_path / "cut.idx.gz").write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(IdxError, match="cut.idx.gz: truncated gzip stream"):
        read_idx(tmp_path / "cut.idx.gz")


def _fake_fashion(directory, n=12):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for images, labels in fm.FILES.values():
        write_idx(directory / images, rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / labels, (np.arange(n) % 10).astype(np.uint8))
    return directory


def test_fashion_mnist_split_loader_limits_and_checks_pairs(tmp_path):
    d = _fake_fashion(tmp_path / "fm")
    images, labels = fm.load_split(d, "test", limit=5)
    assert images.shape == (5, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4] and labels.dtype == np.int64
    write_idx(d / fm.FILES["train"][1], np.arange(11, dtype=np.uint8) % 10)  # one label short
    with pytest.raises(IdxError, match="do not pair up"):
        fm.load_split(d, "train")
    write_idx(d / fm.FILES["train"][1], np.full(12, 10, np.uint8))
    with pytest.raises(IdxError, match="labels outside 0..9"):
        fm.load_split(d, "train")
    with pytest.raises(fm.FashionMnistMissing, match="apt-get install dataset-fashion-mnist"):
        fm.load_split(tmp_path / "nowhere", "test")
