import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from maskvlp.data.shards import AtomicShardWriter, load_manifest, shard, split_of

from .conftest import make_cfg


def test_manifest_records_counts_shards_hashes_and_params(tmp_path):
    cfg = make_cfg(tmp_path, "data.val_fraction=0.2")
    manifest = shard(cfg, progress=False)
    assert manifest == load_manifest(cfg.data.out_dir)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["count"] + val["count"] == 200
    assert 20 <= val["count"] <= 60  # ~20% by hash
    for split in (train, val):
        assert sum(s["count"] for s in split["shards"]) == split["count"]
        assert all(s["count"] <= 50 for s in split["shards"])
        for s in split["shards"]:
            data = (Path(cfg.data.out_dir) / s["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s["sha256"]
    assert manifest["params"]["data"]["synthetic"]["num_samples"] == 200
    assert manifest["params"]["seed"] == 0
    assert manifest["source"]["kind"] == "synthetic"
    assert manifest["skipped"] == {}
    assert not list(Path(cfg.data.out_dir).glob("*.tmp"))


def test_shards_hold_webdataset_samples_readable_by_tar_tools(tmp_path):
    cfg = make_cfg(tmp_path, "data.val_fraction=0")
    shard(cfg, progress=False)
    with tarfile.open(Path(cfg.data.out_dir) / "train-000000.tar") as tar:
        names = tar.getnames()
        assert sorted(names[:3]) == ["syn0000000.jpg", "syn0000000.json", "syn0000000.txt"]
        meta = json.loads(tar.extractfile("syn0000000.json").read())
        assert {"labels", "objects", "negatives", "place"} <= set(meta)
        assert tar.extractfile("syn0000000.txt").read().decode().startswith("a ")


def test_same_params_give_byte_identical_shards_regardless_of_workers(tmp_path):
    a = shard(make_cfg(tmp_path / "a", "data.num_workers=1"), progress=False)
    b = shard(make_cfg(tmp_path / "b", "data.num_workers=2"), progress=False)
    assert a["splits"] == b["splits"]
    c = shard(make_cfg(tmp_path / "c", "seed=1"), progress=False)
    assert c["splits"] != a["splits"]


def test_split_is_deterministic_and_depends_on_seed_and_key_only():
    keys = [f"k{i}" for i in range(2000)]
    first = [split_of(k, 0, 0.1) for k in keys]
    assert first == [split_of(k, 0, 0.1) for k in keys]
    assert 150 < first.count("val") < 250
    assert first != [split_of(k, 1, 0.1) for k in keys]
    assert all(split_of(k, 0, 0.0) == "train" for k in keys)


def test_rerun_replaces_stale_shards(tmp_path):
    cfg = make_cfg(tmp_path, "data.max_samples_per_shard=10", "data.val_fraction=0")
    shard(cfg, progress=False)
    assert len(list(Path(cfg.data.out_dir).glob("train-*.tar"))) == 20
    shard(make_cfg(tmp_path, "data.max_samples_per_shard=100", "data.val_fraction=0"), progress=False)
    assert len(list(Path(cfg.data.out_dir).glob("train-*.tar"))) == 2


def test_a_shard_is_only_visible_under_its_final_name_when_complete(tmp_path):
    from maskvlp.data.clean import CleanSample

    writer = AtomicShardWriter(tmp_path, "train", 2, "jpg")
    writer.write(CleanSample("a", b"x", "cap", {}))
    assert [p.name for p in tmp_path.iterdir()] == ["train-000000.tar.tmp"]
    writer.write(CleanSample("b", b"y", "cap", {}))
    writer.write(CleanSample("c", b"z", "cap", {}))  # rolls over: first shard renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar", "train-000001.tar.tmp"]
    shards = writer.close()
    assert [s["count"] for s in shards] == [2, 1]


def test_missing_manifest_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="maskvlp shard"):
        load_manifest(tmp_path)


def test_sizes_json_lets_open_clip_count_the_samples(tmp_path):
    """open_clip's webdataset pipeline refuses shards without a sample count: sizes.json beside them
    maps each shard file name to its count, and the manifest gives the brace pattern it expects."""
    cfg = make_cfg(tmp_path, "data.val_fraction=0.2")
    manifest = shard(cfg, progress=False)
    out = Path(cfg.data.out_dir)
    sizes = json.loads((out / "sizes.json").read_text())
    listed = {s["name"]: s["count"] for split in manifest["splits"].values() for s in split["shards"]}
    assert sizes == listed
    for name, count in sizes.items():
        with tarfile.open(out / name) as tar:
            assert len({m.name.split(".")[0] for m in tar.getmembers()}) == count
    n_train = len(manifest["splits"]["train"]["shards"])
    assert n_train > 1
    assert manifest["open_clip"]["train"] == f"{out}/train-{{000000..{n_train - 1:06d}}}.tar"
    from braceexpand import braceexpand

    assert [Path(p).name for p in braceexpand(manifest["open_clip"]["train"])] == [
        s["name"] for s in manifest["splits"]["train"]["shards"]
    ]


def test_shards_written_before_a_data_key_existed_still_match_when_it_is_at_its_default(tmp_path):
    """The fault: a key added to a data section (data.synthetic.objects, default `flat`) made every shard
    set written before it 'stale', even the real preset's, which does not read that section: the paper
    study's 48 remaining trials failed. A key the manifest lacks compares at its default."""
    from maskvlp.data.shards import ShardError, check_manifest

    cfg = make_cfg(tmp_path)
    manifest = shard(cfg, progress=False)
    older = json.loads(json.dumps(manifest))
    del older["params"]["data"]["synthetic"]["context"]  # written by a version without this key
    check_manifest(cfg, older)  # context is at its default (0.7): the same shards
    changed = make_cfg(tmp_path, "data.synthetic.context=0.5")
    with pytest.raises(ShardError, match=r"data\.synthetic"):
        check_manifest(changed, older)
