"""One place that turns a URI into filesystems and does I/O on it.

URIs are `s3://bucket/key`, `file:///abs/path` or a plain local path. Everything else in the
project goes through here, so that the S3 endpoint (`AWS_ENDPOINT_URL`, for a MinIO or moto
server) and the credentials are honored the same way by fsspec, pyarrow and Ray Data.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

_REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")


@dataclass(frozen=True)
class FileInfo:
    uri: str
    size: int
    mtime: float | None  # seconds since the epoch; None where the store gives none


def scheme(uri: str) -> str:
    """`s3`, `file`, ...; a plain path is `file`."""
    parsed = urlparse(uri)
    # A one-letter scheme is a Windows drive, not a protocol.
    return parsed.scheme if len(parsed.scheme) > 1 else "file"


def is_remote(uri: str) -> bool:
    return scheme(uri) in _REMOTE_SCHEMES


def strip_scheme(uri: str) -> str:
    """The filesystem path of a URI: `bucket/key` for s3, an absolute path for local."""
    if is_remote(uri):
        parsed = urlparse(uri)
        return f"{parsed.netloc}{parsed.path}".rstrip("/") or parsed.netloc
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def _endpoint_url() -> str | None:
    # AWS_ENDPOINT_URL is the SDK-wide standard; AWS_ENDPOINT_URL_S3 the service-specific one.
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3fs_options() -> dict:
    # No listings cache: a long-lived process (a nightly job, an actor) must see objects
    # written since its last listing, by itself or by anyone else.
    options: dict = {"use_listings_cache": False}
    endpoint = _endpoint_url()
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path to use with it."""
    proto = scheme(uri)
    if proto in ("s3", "s3a"):
        try:
            fs = fsspec.filesystem("s3", **_s3fs_options())
        except ImportError as err:  # pragma: no cover - s3fs is a hard dependency
            raise RuntimeError("s3:// URIs need s3fs: pip install s3fs") from err
        return fs, strip_scheme(uri)
    if proto == "file":
        return fsspec.filesystem("file"), strip_scheme(uri)
    return fsspec.core.url_to_fs(uri)


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `uri` (what Ray Data and pyarrow.parquet take) and its path."""
    proto = scheme(uri)
    if proto in ("s3", "s3a"):
        kwargs: dict = {}
        endpoint = _endpoint_url()
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), strip_scheme(uri)
    if proto == "file":
        return pafs.LocalFileSystem(), strip_scheme(uri)
    fs, _ = filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), strip_scheme(uri)


def _with_scheme(like: str, path: str) -> str:
    """Put `like`'s scheme back on a filesystem path."""
    if is_remote(like):
        return f"{scheme(like)}://{path}"
    return path


def join(base: str, key: str) -> str:
    """`base`/`key`, refusing any key that would land outside `base` (`../x`, `/etc/x`)."""
    if not key or "\\" in key or "\x00" in key:
        raise ValueError(f"refusing object key {key!r}: empty or holds a backslash or NUL")
    if key.startswith("/") or "://" in key:
        raise ValueError(f"refusing object key {key!r}: it must be relative to {base!r}")
    normalized = posixpath.normpath(key)
    if normalized in (".", "..") or normalized.startswith("../"):
        raise ValueError(f"refusing object key {key!r}: it escapes its prefix {base!r}")
    return base.rstrip("/") + "/" + normalized


def relative_key(base: str, uri: str) -> str:
    """The key of `uri` under `base`; a ValueError when it does not lie under `base`."""
    base_path = strip_scheme(base).rstrip("/")
    path = strip_scheme(uri)
    if not path.startswith(base_path + "/"):
        raise ValueError(f"{uri!r} does not lie under {base!r}")
    return path[len(base_path) + 1 :]


def _mtime(info: dict) -> float | None:
    for name in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def list_files(uri: str, extensions: tuple[str, ...] | None = None) -> list[FileInfo]:
    """Every file under `uri` (recursive), sorted by URI; `extensions` match case-insensitively.

    A missing prefix lists as empty; an unreachable store raises.
    """
    fs, path = filesystem(uri)
    suffixes = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions or ())
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    files = []
    for name, info in found.items():
        if info.get("type") == "directory":
            continue
        if suffixes and not name.lower().endswith(suffixes):
            continue
        files.append(FileInfo(_with_scheme(uri, name), int(info.get("size") or 0), _mtime(info)))
    return sorted(files, key=lambda f: f.uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)  # one GET on S3 (open() + read() costs a HEAD as well)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def makedirs(uri: str) -> None:
    """Create a local directory; object stores have no directories, so nothing to do there."""
    if not is_remote(uri):
        os.makedirs(strip_scheme(uri), exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write the whole object or nothing: readers never see a partial file.

    Local: a temp file in the same directory, fsynced, then renamed over the target. S3: a
    single PUT is already atomic (an object appears only once complete).
    """
    if is_remote(uri):
        fs, path = filesystem(uri)
        fs.pipe_file(path, data)
        return
    write_with(uri, lambda f: f.write(data))


def write_with(uri: str, write: Callable[[BinaryIO], object]) -> None:
    """`write_bytes` for content too big to hold twice in memory: `write(f)` streams it into a
    local file, which then replaces the target (local) or is uploaded (S3: a multipart upload
    appears only once complete). Either way readers see the whole object or nothing.
    """
    if is_remote(uri):
        fs, path = filesystem(uri)
        with tempfile.NamedTemporaryFile(prefix="fcn-upload-") as tmp:
            write(tmp)
            tmp.flush()
            fs.put_file(tmp.name, path)
        return
    path = strip_scheme(uri)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def unique_name(prefix: str = "", suffix: str = "") -> str:
    """A name no other writer picks (for temp objects and per-run files)."""
    return f"{prefix}{uuid.uuid4().hex}{suffix}"
