"""data/shardio.py with real parts: img2dataset-style tars built here from the embedded scenes, shards
written by `maskvlp shard`, a real HTTP server on 127.0.0.1, real pipe: commands; nothing downloaded."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import urllib.parse
from pathlib import Path

import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from maskvlp.config import ConfigError
from maskvlp.data import shardio
from maskvlp.data.shardio import ShardReadError, Skip, open_url, shard_counts, tar_samples
from maskvlp.data.synthetic import generate_scene

from .conftest import make_cfg, write_tar


def _jpeg(index: int) -> bytes:
    image, _, _ = generate_scene(0, index, 40)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def img2dataset_folder(root: Path, shards: int = 2, per_shard: int = 4, stats: bool = True) -> list[Path]:
    """`{shard:05d}.tar` with {key}.jpg + {key}.txt + {key}.json per sample, as img2dataset writes them,
    and a `{shard:05d}_stats.json` beside each (unless stats=False); no manifest, no sizes.json."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        members = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            _, caption, _ = generate_scene(0, s * per_shard + i, 8)
            members += [(f"{key}.jpg", _jpeg(s * per_shard + i)), (f"{key}.txt", caption.encode())]
            members.append((f"{key}.json", json.dumps({"key": key, "caption": caption, "status": "success"}).encode()))
        path = root / f"{s:05d}.tar"
        write_tar(path, members)
        if stats:
            record = {"count": per_shard + 1, "successes": per_shard, "failed_to_download": 1, "failed_to_resize": 0}
            (root / f"{s:05d}_stats.json").write_text(json.dumps(record))
        paths.append(path)
    return paths


def _without_url(samples: list) -> list:
    return [s if isinstance(s, Skip) else {k: v for k, v in s.items() if k != "__url__"} for s in samples]


class Server:
    """Serves a folder over HTTP on 127.0.0.1: `fail[name]` 503s first, `cut[name]` byte offsets at which
    the next responses stop (the connection is closed mid-file); `requests` lists what was asked."""

    def __init__(self, root: Path):
        self.root, self.fail, self.cut, self.requests = root, {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = urllib.parse.unquote(self.path.lstrip("/"))
                server.requests.append(name)
                if server.fail.get(name, 0) > 0:
                    server.fail[name] -= 1
                    self.send_error(503, "busy")
                    return
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                cuts = server.cut.get(name) or []
                self.wfile.write(data[: cuts.pop(0)] if cuts else data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "www"
    img2dataset_folder(folder)
    server = Server(folder)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@contextlib.contextmanager
def read_only(folder: Path):
    """The folder read-only for this process: a read-only bind mount as root, else chmod."""
    mounted = os.geteuid() == 0 and not subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode
    if mounted and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)]).returncode:
        subprocess.run(["umount", str(folder)])
        mounted = False
    if not mounted:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o755)


# ---- grouping: exactly webdataset's


def test_maskvlp_shards_are_grouped_exactly_as_webdataset_groups_them(tmp_path):
    from maskvlp.data.shards import shard

    cfg = make_cfg(tmp_path, "data.synthetic.num_samples=30", "data.max_samples_per_shard=8")
    manifest = shard(cfg, progress=False)
    urls = [
        str(Path(cfg.data.out_dir) / sh["name"]) for s in ("train", "val") for sh in manifest["splits"][s]["shards"]
    ]
    assert len(urls) >= 4
    for url in urls:
        ours = list(tar_samples(url))
        theirs = list(wds.tarfile_samples([{"url": url}]))
        assert ours == theirs and len(ours) > 0
        assert set(ours[0]) == {"__key__", "__url__", cfg.data.image_format, "txt", "json"}
    # the shard stage's sizes.json answers the counts
    counted = [sum(1 for _ in tar_samples(u)) for u in urls]
    assert shard_counts(urls) == counted and sum(counted) == 30


_stem = st.text("abXY09_-", min_size=1, max_size=5).filter(lambda s: not s.startswith("__"))
_ext = st.lists(st.text("abJPG", min_size=1, max_size=3), min_size=1, max_size=2).map(".".join)
_sample = st.tuples(
    st.sampled_from(["", "d/", "d.x/", "./", "a/b/"]),
    _stem,
    st.lists(_ext, min_size=1, max_size=4, unique_by=str.lower),
)
# members both readers leave out: webdataset's metadata, a name without extension, a directory
_extra = st.sampled_from(["__meta__", "README", "d/NOEXT", "dir/"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_sample, max_size=8, unique_by=lambda s: s[0] + s[1]),
    st.lists(st.tuples(st.integers(0, 30), _extra), max_size=3),
    st.data(),
)
def test_any_key_and_extension_layout_is_grouped_as_webdataset_groups_it(samples, extras, data):
    members = [
        (f"{folder}{stem}.{ext}", data.draw(st.binary(max_size=40))) for folder, stem, exts in samples for ext in exts
    ]
    for at, name in extras:
        members.insert(min(at, len(members)), (name, b"x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layout.tar"
        with tarfile.open(path, "w") as tar:
            for name, payload in members:
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
                info.size = 0 if name.endswith("/") else len(payload)
                tar.addfile(info, io.BytesIO(payload))
        ours = list(tar_samples(str(path)))
        assert ours == list(wds.tarfile_samples([{"url": str(path)}]))
        assert sum(len(s) - 2 for s in ours) == sum(len(exts) for _, _, exts in samples)


def test_macos_and_hidden_members_are_left_out():
    assert shardio.key_ext("a/._000001.jpg") is None and shardio.key_ext(".hidden.txt") is None
    assert shardio.key_ext("d/__x.jpg") is None and shardio.key_ext("__key__.txt") is None
    assert shardio.key_ext("a.b/000001.Seg.PNG") == ("a.b/000001", "seg.png")


# ---- bad tars: skipped, never raised


def test_a_truncated_local_tar_gives_its_complete_samples_then_a_skip(tmp_path):
    (path,) = img2dataset_folder(tmp_path / "in", shards=1, per_shard=4)
    whole = list(tar_samples(str(path)))
    data = path.read_bytes()
    # a cut inside the third sample's image; one exactly at a member boundary (no end marker) or inside
    # a header: the sample before it may lack members that were to follow, so it is dropped too
    offsets = _member_offsets(path)
    cuts = (
        (offsets["000000002.jpg"] + 700, 2),
        (offsets["000000003.jpg"] - 512, 2),
        (offsets["000000003.jpg"] - 100, 2),
    )
    for cut, kept in cuts:
        cut_path = tmp_path / f"cut-{cut}.tar"
        cut_path.write_bytes(data[:cut])
        got = list(tar_samples(str(cut_path)))
        assert _without_url(got[:-1]) == _without_url(whole[:kept])
        assert got[-1].reason == "truncated_tar" and got[-1].key == whole[kept]["__key__"]
        assert str(cut_path) in got[-1].detail


def _member_offsets(path: Path) -> dict[str, int]:
    """Where each member's data starts (its 512-byte header is just before)."""
    with tarfile.open(path) as tar:
        return {m.name: m.offset_data for m in tar.getmembers()}


def test_a_file_that_is_not_a_tar_is_an_unreadable_tar(tmp_path):
    (tmp_path / "notes.tar").write_bytes(b"these are not the shards you are looking for\n" * 40)
    (tmp_path / "empty.tar").write_bytes(b"")
    for name in ("notes.tar", "empty.tar", "missing.tar"):
        (skip,) = list(tar_samples(str(tmp_path / name)))
        assert skip.reason == "unreadable_tar" and name in skip.detail


# ---- pipe: commands, without a shell


def test_pipe_cat_and_http_read_the_same_samples_as_the_local_file(served):
    local = str(served.root / "00001.tar")
    expected = _without_url(list(tar_samples(local)))
    assert len(expected) == 4
    for url in (f"pipe:cat {local}", f"{served.url}/00001.tar"):
        got = list(tar_samples(url))
        assert _without_url(got) == expected and all(s["__url__"] == url for s in got)
    assert served.requests == ["00001.tar"]


def test_a_failing_pipe_command_is_named_with_its_status(tmp_path):
    stream = open_url("pipe:false")
    assert stream.read() == b""
    with pytest.raises(ShardReadError, match=r"pipe:false: command \['false'\] exited with status 1"):
        stream.close()
    (skip,) = list(tar_samples("pipe:false", retries=0))
    assert skip.reason == "unreadable_tar" and "['false'] exited with status 1" in skip.detail
    (skip,) = list(tar_samples("pipe:no-such-command-here x.tar", retries=0))
    assert "cannot run 'no-such-command-here'" in skip.detail


def test_a_pipe_command_never_reaches_a_shell(tmp_path):
    (path,) = img2dataset_folder(tmp_path / "in", shards=1)
    marker = tmp_path / "marker"
    (skip,) = list(tar_samples(f"pipe:cat {path}; echo x > {marker}", retries=0))
    # cat was given `<path>;`, `echo`, `x`, `>` and the marker as file names, and failed on them
    assert skip.reason == "unreadable_tar"
    assert f"'{path};'" in skip.detail and "No such file" in skip.detail and "write a script" in skip.detail
    assert not marker.exists()
    assert len(list(tar_samples(f"pipe:cat '{path}'"))) == 4  # quoting works as a shell's would


# ---- http(s): retries and clear errors


def test_http_retries_a_busy_server_then_reads(served):
    served.fail["00000.tar"] = 2
    got = list(tar_samples(f"{served.url}/00000.tar", retries=3))
    assert len(got) == 4 and not any(isinstance(s, Skip) for s in got)
    assert served.requests == ["00000.tar"] * 3
    served.fail["00000.tar"] = 2
    with pytest.raises(ShardReadError, match=r"00000.tar: HTTP 503 busy \(after 2 tries\); .*data.shards.retries"):
        open_url(f"{served.url}/00000.tar", retries=1)


def test_http_404_is_not_retried_and_says_what_to_do(served):
    url = f"{served.url}/nothere.tar"
    with pytest.raises(
        ShardReadError, match=r"cannot read shard .*nothere.tar: HTTP 404 .*\(after 1 try\); check the URL"
    ):
        open_url(url, retries=3)
    assert served.requests == ["nothere.tar"]
    (skip,) = list(tar_samples(url))
    assert skip.reason == "unreadable_tar" and url in skip.detail


def test_a_connection_cut_mid_tar_is_resumed_without_duplicates(served):
    expected = _without_url(list(tar_samples(str(served.root / "00000.tar"))))
    offsets = _member_offsets(served.root / "00000.tar")
    cut = offsets["000000002.jpg"] + 300  # inside the third sample
    served.cut["00000.tar"] = [cut, offsets["000000003.txt"]]  # and the retry is cut again, later
    got = list(tar_samples(f"{served.url}/00000.tar", retries=2))
    assert _without_url(got) == expected
    assert served.requests == ["00000.tar"] * 3
    # no retries: the complete samples before the cut, then the skip naming the dropped sample
    served.cut["00000.tar"] = [cut]
    got = list(tar_samples(f"{served.url}/00000.tar", retries=0))
    assert _without_url(got[:-1]) == expected[:2]
    assert got[-1].reason == "truncated_tar" and got[-1].key == "000000002"


# ---- counts


def test_counts_from_img2dataset_stats_json_without_reading_the_tars(tmp_path, served):
    folder = tmp_path / "shards"
    paths = img2dataset_folder(folder, shards=3, per_shard=5)
    for path in paths:
        path.write_bytes(b"")  # would count 0 if read
    with read_only(folder):
        assert shard_counts([str(p) for p in paths]) == [5, 5, 5]
    assert shard_counts([f"{served.url}/00000.tar", f"{served.url}/00001.tar"]) == [4, 4]
    assert not [r for r in served.requests if r.endswith(".tar")]


def test_counts_from_sizes_json_local_and_over_http(tmp_path, served):
    (served.root / "sizes.json").write_text(json.dumps({"00000.tar": 7, "00001.tar": 9}))
    urls = [f"{served.url}/00000.tar", f"{served.url}/00001.tar"]
    assert shard_counts(urls) == [7, 9]
    assert served.requests == ["sizes.json"]  # one folder, asked once
    assert shard_counts([str(served.root / "00001.tar")]) == [9]


def test_a_counting_pass_is_cached_outside_the_read_only_shards(tmp_path):
    folder = tmp_path / "shards"
    paths = img2dataset_folder(folder, shards=2, per_shard=3, stats=False)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: _member_offsets(paths[1])["000010002.txt"] + 100])  # cut in its last sample
    urls = [str(p) for p in paths] + [f"pipe:cat {paths[0]}", "pipe:false"]
    cache = tmp_path / "run" / "shard_counts.json"
    before = sorted(folder.iterdir())
    with read_only(folder):
        assert shard_counts(urls, cache=cache, retries=0) == [3, 2, 3, 0]
    assert sorted(folder.iterdir()) == before  # nothing written beside the shards
    remembered = json.loads(cache.read_text())
    assert remembered == {urls[0]: 3, urls[1]: 2, urls[2]: 3}  # a remote failure may pass: not remembered
    for path in paths:
        path.write_bytes(b"")  # would count 0 if read again
    assert shard_counts(urls[:3], cache=cache) == [3, 2, 3]


def test_the_count_progress_line_reports_the_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASKVLP_PROGRESS_SECONDS", "0")
    paths = img2dataset_folder(tmp_path / "shards", shards=2, per_shard=3, stats=False)
    shard_counts([str(p) for p in paths], progress=True)
    assert "count shard samples: 2/2 shard" in capsys.readouterr().err


# ---- data.shards checks (sources.check_section): refused before any work, naming the key


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.shards.in_place=true"], "data.shards.in_place"),
        (["data.source=shards", "data.shards.urls=a.tar", "data.shards.val_shard_fraction=1.0"], "val_shard_fraction"),
        (["data.shards.val_shard_fraction=-0.1"], "data.shards.val_shard_fraction"),
        (["data.shards.val_urls=v.tar", "data.shards.val_shard_fraction=0.1"], "data.shards.val_urls .*choose one"),
        (["data.shards.urls=a.tar::b.tar", "data.shards.upsampling=1"], "data.shards.upsampling .*'1::1'"),
        (["data.shards.urls=a.tar::b.tar", "data.shards.upsampling=1::0"], "data.shards.upsampling"),
        (["data.shards.urls=a.tar::b.tar", "data.shards.upsampling=1::x"], "data.shards.upsampling"),
        (["data.shards.urls=a.tar", "data.shards.upsampling=inf"], "data.shards.upsampling"),
        (["data.shards.retries=-1"], "data.shards.retries"),
    ],
)
def test_bad_data_shards_keys_are_refused_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_cfg(tmp_path, *overrides)


def test_good_in_place_keys_pass(tmp_path):
    cfg = make_cfg(
        tmp_path,
        "data.source=shards",
        "data.shards.in_place=true",
        "data.shards.urls=a-{0..3}.tar::pipe:cat b.tar",
        "data.shards.upsampling=1::2.5",
        "data.shards.val_shard_fraction=0.25",
        "data.shards.retries=0",
    )
    assert cfg.data.shards.upsampling == "1::2.5"
