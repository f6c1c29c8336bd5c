import io

import pytest

from fcn import storage

pytestmark = pytest.mark.integration


def test_s3_round_trip_listing_and_pyarrow(s3):
    base = s3.uri("storage-test")
    storage.write_bytes(storage.join(base, "a/one.JPG"), b"one")
    storage.write_text(storage.join(base, "b/two.png"), "two")
    assert storage.read_bytes(f"{base}/a/one.JPG") == b"one"
    assert s3.keys("storage-test/") == ["storage-test/a/one.JPG", "storage-test/b/two.png"]
    listed = storage.list_files(base, extensions=(".jpg", ".png"))
    assert [storage.relative_key(base, f.uri) for f in listed] == ["a/one.JPG", "b/two.png"]
    assert listed[0].uri == f"{base}/a/one.JPG" and listed[0].size == 3
    # a listing made after a write sees it (no stale listing cache)
    storage.write_bytes(storage.join(base, "c.png"), b"c")
    assert len(storage.list_files(base)) == 3

    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(base)
    pq.write_table(pa.table({"x": [1, 2]}), f"{path}/t.parquet", filesystem=fs)
    assert pq.read_table(f"{path}/t.parquet", filesystem=fs)["x"].to_pylist() == [1, 2]
    assert storage.exists(f"{base}/t.parquet")
    storage.delete(base, recursive=True)
    assert s3.keys("storage-test/") == []


def test_streamed_checkpoint_round_trip_on_s3(s3):
    """checkpoint.save streams each file through a local temp file and one upload."""
    import torch

    from fcn.engine import checkpoint

    uri = s3.uri("storage-test/ckpt")
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    extra = {"training_state.pt": {"progress": {"iteration": 7}, "m": torch.ones(2)}}
    config = {"model": "fcn32s", "num_classes": 2, "preprocessing": "torchvision"}
    checkpoint.save(state, config, uri, extra=extra)
    assert s3.keys("storage-test/ckpt/") == [
        "storage-test/ckpt/config.json", "storage-test/ckpt/model.pt",
        "storage-test/ckpt/training_state.pt",
    ]  # fmt: skip
    loaded, config = checkpoint.load(uri)
    assert torch.equal(loaded["w"], state["w"]) and config.num_classes == 2
    data = io.BytesIO(storage.read_bytes(f"{uri}/training_state.pt"))
    saved = torch.load(data, weights_only=True)
    assert saved["progress"]["iteration"] == 7
    storage.delete(uri, recursive=True)


def test_walk_lists_what_s3fs_lists_with_the_same_size_and_time(s3):
    """Listings go through pyarrow's S3 client (`Location.walk`, `Location.paths`); the state
    holds image versions (`size:mtime`) that s3fs listed before. Both must see the same keys,
    odd ones included, with the same size and the same float time, or every image would look
    changed after an upgrade."""
    from fcn.storage import _mtime

    base = s3.uri("paths-test")
    keys = ["a.png", "A/b.PNG", "A/deep/er/c.png", "sp ace/#hash?.png", "ünï/çødé.png", "x.jpg"]
    for n, key in enumerate(keys):
        storage.write_bytes(f"{base}/{key}", b"m" * (n + 1))
    at = storage.locate(base)
    by_s3fs = sorted(
        (info["name"], int(info["size"]), _mtime(info))
        for _, _, files in at.fs.walk(at.path, detail=True)
        for info in files.values()
    )
    walked = sorted(tuple(row.values()) for t in at.walk(chunk=4) for row in t.to_pylist())
    assert walked == by_s3fs and len(walked) == len(keys)
    assert all(isinstance(mtime, float) for _, _, mtime in by_s3fs)
    for extensions in (None, (".png",)):
        walked = sorted(p for t in at.walk(extensions) for p in t.column("path").to_pylist())
        listed = sorted(p for a in at.paths(extensions, chunk=2) for p in a.to_pylist())
        assert listed == walked
    assert len(walked) == 5 and f"{at.path}/sp ace/#hash?.png" in walked
    assert list(storage.locate(s3.uri("paths-test-missing")).paths()) == []
    assert list(storage.locate(s3.uri("paths-test-missing")).walk()) == []
    storage.delete(base, recursive=True)
