import os

import pytest

from fcn import storage


def test_local_round_trip_and_listing(tmp_path):
    base = str(tmp_path / "data")
    storage.write_bytes(storage.join(base, "a/b/one.JPG"), b"1")
    storage.write_bytes(storage.join(base, "two.png"), b"22")
    storage.write_text(storage.join(base, "notes.txt"), "x")
    assert storage.read_bytes(storage.join(base, "a/b/one.JPG")) == b"1"
    images = storage.list_files(base, extensions=(".jpg", "png"))
    assert [storage.relative_key(base, f.uri) for f in images] == ["a/b/one.JPG", "two.png"]
    assert [f.size for f in images] == [1, 2]
    assert all(f.mtime and f.mtime > 0 for f in images)
    assert len(storage.list_files(base)) == 3
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_file_scheme_is_a_local_path(tmp_path):
    storage.write_bytes(f"file://{tmp_path}/x.bin", b"abc")
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert storage.exists(str(tmp_path / "x.bin"))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"new contents")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_streamed_write_that_fails_midway_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"half of the new")
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        storage.write_with(str(target), write)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    storage.write_with(str(target), lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "..", "", "s3://other/x", "a\\..\\x", "a/\x00"]
)
def test_keys_that_escape_their_prefix_are_refused(key):
    with pytest.raises(ValueError, match="refusing"):
        storage.join("s3://bucket/masks", key)


@pytest.mark.parametrize("key", ["a/./b.png", "a//b.png", "a/b/../b.png", "./b.png"])
def test_join_refuses_another_spelling_of_a_key(key):
    # On S3 each is its own object; read as `a/b.png` it would be another image's data.
    with pytest.raises(ValueError, match="another spelling"):
        storage.join("s3://bucket/masks/", key)


def test_join_takes_a_plain_key_and_a_trailing_slash():
    assert storage.join("s3://bucket/masks/", "a/b.png") == "s3://bucket/masks/a/b.png"
    assert storage.join("/data", "train/") == "/data/train"


def test_relative_key_refuses_uris_outside_the_base():
    assert storage.relative_key("s3://b/in", "s3://b/in/x/y.jpg") == "x/y.jpg"
    with pytest.raises(ValueError):
        storage.relative_key("s3://b/in", "s3://b/input-other/y.jpg")


def test_s3_filesystems_honor_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs, path = storage.filesystem("s3://bucket/key/x")
    assert path == "bucket/key/x"
    assert fs.client_kwargs.get("region_name") == "us-east-1"
    assert fs.endpoint_url == "http://127.0.0.1:9"
    pa_fs, pa_path = storage.pyarrow_filesystem("s3://bucket/key")
    assert pa_path == "bucket/key"
    assert pa_fs.type_name == "s3"


def test_unreachable_store_is_an_error_not_an_empty_listing(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(Exception) as caught:
        storage.list_files("s3://bucket/prefix")
    assert not isinstance(caught.value, FileNotFoundError)


def test_local_writes_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_bytes(str(tmp_path / "a.bin"), b"x")
        storage.write_with(str(tmp_path / "b.bin"), lambda f: f.write(b"y"))
    finally:
        os.umask(old)
    for name in ("a.bin", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~storage._UMASK


@pytest.mark.parametrize(
    "uri", ["s3://AKIAKEY:topsecret@bucket/data", "s3://topsecret@bucket", "gs://u:topsecret@b/x"]
)
def test_a_uri_with_credentials_is_refused_without_echoing_them(uri):
    for call in (storage.locate, storage.pyarrow_filesystem, storage.strip_scheme):
        with pytest.raises(ValueError, match="credentials") as err:
            call(uri)
        assert "topsecret" not in str(err.value)


def test_an_at_sign_in_a_key_is_not_userinfo():
    assert storage.strip_scheme("s3://bucket/me@home/x.png") == "bucket/me@home/x.png"


@pytest.mark.parametrize("key", ["photo #1.png", "what?.png", "a b/c\td\re.png", "Ünï/çødé.png"])
def test_an_s3_key_is_taken_literally_not_as_a_url(key):
    assert storage.strip_scheme(f"s3://bucket/in/{key}") == f"bucket/in/{key}"
    assert storage.join("s3://bucket/in", key) == f"s3://bucket/in/{key}"


@pytest.mark.parametrize("key", ["photo #1.png", "what?x=1.png", "tab\there.png"])
def test_local_keys_with_url_characters_round_trip(tmp_path, key):
    storage.write_bytes(storage.join(str(tmp_path), key), b"k")
    [found] = storage.list_files(str(tmp_path))
    assert storage.relative_key(str(tmp_path), found.uri) == key
    assert storage.read_bytes(found.uri) == b"k"


def test_s3_requests_retry_once_per_policy_not_per_layer(monkeypatch):
    """One retry policy (the SDK's standard mode, `AWS_MAX_ATTEMPTS`), set in the filesystem's
    options so that a Location pickled to a worker keeps it; s3fs's own loop is off, or its
    attempts would multiply botocore's."""
    import pickle

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    where = storage.locate("s3://bucket/key")
    retries = where.fs.config_kwargs["retries"]
    assert retries == {"mode": "standard", "total_max_attempts": storage.S3_MAX_ATTEMPTS}
    assert where.fs.retries == 1
    copy = pickle.loads(pickle.dumps(where))
    assert type(copy.fs) is type(where.fs) and copy.fs.retries == 1
    assert copy.fs.config_kwargs["retries"] == retries

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert storage.locate("s3://bucket/key").fs.config_kwargs["retries"] == {
        "mode": "adaptive", "total_max_attempts": 3
    }  # fmt: skip
    assert {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} <= set(storage.forwarded_env())
