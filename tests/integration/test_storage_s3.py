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
