"""One place that turns a URI into filesystems and does I/O on it.

URIs are `s3://bucket/key`, `file:///abs/path` or a plain local path. Everything else in the
project goes through here, so that the S3 endpoint (`AWS_ENDPOINT_URL`, for a MinIO or moto
server) and the credentials are honored the same way by fsspec, pyarrow and Ray Data.

Long module: on purpose. Every filesystem the project builds (fsspec/s3fs, pyarrow's S3 client,
Ray Data's) is configured here, with one endpoint rule, one retry policy and one rule for
credentials; spread over several modules, those rules would drift apart.
"""

from __future__ import annotations

import functools
import os
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs

_REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
# URIs that name an MLflow model or artifact, not a storage location: fcn.tracking resolves
# them to a checkpoint directory first (the engine and this module never talk to MLflow).
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


# The object-store settings a job may hand its workers in a runtime environment. Credentials
# (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) never: Ray writes runtime
# environments into its session logs and shows them on its dashboard. Workers get credentials
# from their node (see docs/trust.md).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "MLFLOW_S3_ENDPOINT_URL",
)  # fmt: skip

# Attempts per S3 request (the AWS SDKs' standard retry mode: exponential backoff with jitter,
# each wait up to 20 s): an endpoint back within about a minute (a restart, a network blip)
# costs a night nothing. `AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE`, the SDKs' own variables,
# override it. After the last attempt the call raises: the segment stages turn that into the
# image's error row (docs/trust.md).
S3_MAX_ATTEMPTS = 8

# What `Location.walk` yields: one row per file.
WALK_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.float64())])


@dataclass(frozen=True)
class FileInfo:
    uri: str
    size: int
    mtime: float | None  # seconds since the epoch; None where the store gives none


def scheme(uri: str) -> str:
    """`s3`, `file`, ...; a plain path is `file`. Refuses an object-store URI that carries
    credentials (`s3://KEY:SECRET@bucket`) without echoing it: credentials come from the
    environment (see docs/trust.md), and a URI gets printed, logged and stored."""
    proto = urlparse(uri).scheme
    # A one-letter scheme is a Windows drive, not a protocol.
    proto = proto if len(proto) > 1 else "file"
    if proto in _REMOTE_SCHEMES and "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError(
            f"refusing a {proto}:// URI with credentials in it (user:secret@): give "
            "credentials through the environment, never in a URI"
        )
    return proto


def is_remote(uri: str) -> bool:
    return scheme(uri) in _REMOTE_SCHEMES


def strip_scheme(uri: str) -> str:
    """The filesystem path of a URI: `bucket/key` for s3, an absolute path for local."""
    if is_remote(uri):
        # Everything after `s3://` is bucket and key, literally: URL parsing would cut a key
        # at `#` or `?` (`photo #1.png` is a key S3 allows) and read another object.
        path = uri.split("://", 1)[1]
        return path.rstrip("/") or path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def forwarded_env() -> dict:
    """This process's non-secret object-store settings (`FORWARDED_ENV`), for workers."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _read_umask() -> int:
    # The umask can only be read by setting it: done once, at import, before any thread of
    # this module writes a file.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _endpoint_url() -> str | None:
    # AWS_ENDPOINT_URL is the SDK-wide standard; AWS_ENDPOINT_URL_S3 the service-specific one.
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def max_attempts() -> int:
    """Attempts per S3 request: `AWS_MAX_ATTEMPTS`, else `S3_MAX_ATTEMPTS`."""
    return int(os.environ.get("AWS_MAX_ATTEMPTS") or S3_MAX_ATTEMPTS)


def _s3fs_options() -> dict:
    # No listings cache: a long-lived process (a nightly job, an actor) must see objects
    # written since its last listing, by itself or by anyone else. The retry policy is set
    # here, in the options, so it travels with a pickled Location to every worker.
    # `total_max_attempts`, as AWS_MAX_ATTEMPTS means it (the first request included);
    # botocore reads its `max_attempts` as retries and rewrites it in place (one more attempt,
    # and options that change once a client exists).
    retries = {"mode": os.environ.get("AWS_RETRY_MODE") or "standard"}
    retries["total_max_attempts"] = max_attempts()
    options: dict = {"use_listings_cache": False, "config_kwargs": {"retries": retries}}
    endpoint = _endpoint_url()
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


@functools.cache
def _s3_filesystem_class() -> type:
    """s3fs's filesystem with its own retry loop off (`retries = 1`): it wraps botocore's,
    which already retries every request (`_s3fs_options`), so attempts would multiply (2 x 5 x
    5 for one read, measured) and no setting would bound an outage's cost. Made on first use:
    s3fs takes a second to import. Named `fcn.storage.S3FileSystem`, so a pickled Location
    unpickles in a worker through this module's `__getattr__`."""
    import s3fs

    return type("S3FileSystem", (s3fs.S3FileSystem,), {"retries": 1, "__module__": __name__})


def __getattr__(name: str):
    if name == "S3FileSystem":
        return _s3_filesystem_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path to use with it."""
    proto = scheme(uri)
    if proto in ("s3", "s3a"):
        return _s3_filesystem_class()(**_s3fs_options()), strip_scheme(uri)
    if proto == "file":
        return fsspec.filesystem("file"), strip_scheme(uri)
    return fsspec.core.url_to_fs(uri)


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `uri` (what Ray Data and pyarrow.parquet take) and its path."""
    proto = scheme(uri)
    if proto in ("s3", "s3a"):
        kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts())}
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


def _check_key(key: str, base: str) -> str:
    """`key` normalized, or a ValueError when it would land outside `base` (`../x`, `/etc/x`)."""
    if not key or "\\" in key or "\x00" in key:
        raise ValueError(f"refusing object key {key!r}: empty or holds a backslash or NUL")
    if key.startswith("/") or "://" in key:
        raise ValueError(f"refusing object key {key!r}: it must be relative to {base!r}")
    normalized = posixpath.normpath(key)
    if normalized in (".", "..") or normalized.startswith("../"):
        raise ValueError(f"refusing object key {key!r}: it escapes its prefix {base!r}")
    if normalized != key.rstrip("/"):
        # `a/./b`, `a//b`, `a/x/../b` name other objects than `a/b` on S3 but the same file
        # locally (and the same mask): read literally they would be another image's mask.
        raise ValueError(f"refusing object key {key!r}: it is another spelling of {normalized!r}")
    return normalized


def join(base: str, key: str) -> str:
    """`base`/`key`, refusing any key that would land outside `base` (`../x`, `/etc/x`)."""
    return base.rstrip("/") + "/" + _check_key(key, base)


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


def _suffixes(extensions) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions or ())


@dataclass(frozen=True)
class Location:
    """A URI parsed once: its filesystem and path. Jobs resolve each URI at their edge and pass
    the Location (it pickles, filesystem options included) to Ray tasks and actors, so nothing
    downstream re-parses strings."""

    fs: fsspec.AbstractFileSystem
    path: str  # the filesystem path, no trailing slash
    scheme: str  # `s3`, `file`, ...

    @property
    def local(self) -> bool:
        return self.scheme == "file"

    @property
    def uri(self) -> str:
        return self.uri_of(self.path)

    def uri_of(self, path: str) -> str:
        """The URI of another path on this filesystem (a listing result, a child)."""
        return path if self.local else f"{self.scheme}://{path}"

    def child(self, key: str) -> Location:
        """`self`/`key`; refuses keys that escape it (see `join`)."""
        return Location(self.fs, self.path + "/" + _check_key(key, self.uri), self.scheme)

    def contains(self, path: str) -> bool:
        return path.startswith(self.path + "/")

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def stat(self) -> tuple[int, float | None]:
        """(size, mtime) of the object, as `walk` lists them; FileNotFoundError if absent."""
        info = self.fs.info(self.path)
        return int(info.get("size") or 0), _mtime(info)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)  # one GET on S3 (open() + read() costs a HEAD too)

    def write_bytes(self, data: bytes) -> None:
        """Whole object or nothing (see `write_bytes`)."""
        if self.local:
            self.write_with(lambda f: f.write(data))
        else:
            self.fs.pipe_file(self.path, data)  # a single PUT is atomic

    def write_with(self, write: Callable[[BinaryIO], object]) -> None:
        """See `write_with`."""
        if not self.local:
            with tempfile.NamedTemporaryFile(prefix="fcn-upload-") as tmp:
                write(tmp)
                tmp.flush()
                self.fs.put_file(tmp.name, self.path)
            return
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        name = os.path.basename(self.path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        try:
            # mkstemp creates the file 0600; the target gets what any new file gets (0644
            # under the usual umask 022), so other readers of the output (a web server, a
            # colleague's job) can read it.
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def delete(self, recursive: bool = False) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=recursive)

    def walk(self, extensions=None, chunk: int = 50_000):
        """Files under this location as Arrow tables of at most `chunk` rows (`path`, `size`,
        `mtime`), one directory listing at a time: a bucket of millions of keys never sits in
        Python objects all at once. A missing prefix yields nothing; an unreachable store
        raises. On S3 through pyarrow's C++ client (`_s3_files`): botocore parsing the pages
        in Python was most of the segment job's planning CPU at a million images
        (results/segment_scale.md)."""
        suffixes = _suffixes(extensions)
        paths, sizes, mtimes = [], [], []
        for path, size, mtime in self._files(suffixes):
            paths.append(path)
            sizes.append(size)
            mtimes.append(mtime)
            if len(paths) >= chunk:
                yield pa.table({"path": paths, "size": sizes, "mtime": mtimes}, schema=WALK_SCHEMA)
                paths, sizes, mtimes = [], [], []
        if paths:
            yield pa.table({"path": paths, "size": sizes, "mtime": mtimes}, schema=WALK_SCHEMA)

    def paths(self, extensions=None, chunk: int = 50_000):
        """The file paths `walk` would list, as Arrow string arrays of at most `chunk`. On S3
        pyarrow's C++ client parses the pages and lets go of the GIL, so this listing runs
        beside another one (the segment job lists the masks while it lists the images)."""
        for table in self.walk(extensions, chunk):
            yield table.column("path").combine_chunks()

    def _files(self, suffixes: tuple[str, ...]):
        """(path, size, mtime) of every file under this location, a directory at a time."""
        if self.scheme in ("s3", "s3a"):
            yield from self._s3_files(suffixes)
            return
        for _, _, files in self.fs.walk(self.path, detail=True):
            for info in files.values():
                if not suffixes or info["name"].lower().endswith(suffixes):
                    yield info["name"], int(info.get("size") or 0), _mtime(info)

    def _s3_files(self, suffixes: tuple[str, ...]):
        """`_files` through pyarrow's S3 filesystem. Its `mtime` is the same `LastModified`
        of the same listing s3fs reads, to the same float (tests/integration/
        test_storage_s3.py), so an image's version (`size:mtime`) is unchanged."""
        fs, _ = pyarrow_filesystem(self.uri)
        pending = [self.path]
        while pending:
            selector = pafs.FileSelector(pending.pop(), allow_not_found=True)
            for info in fs.get_file_info(selector):
                if info.type == pafs.FileType.Directory:
                    pending.append(info.path)
                elif info.type == pafs.FileType.File and (
                    not suffixes or info.path.lower().endswith(suffixes)
                ):
                    # int / int: rounded once, to the float s3fs's datetime gives
                    ns = info.mtime_ns
                    yield info.path, int(info.size or 0), None if ns is None else ns / 10**9


def locate(uri: str) -> Location:
    """Parse `uri` once into its filesystem and path (see `Location`)."""
    fs, path = filesystem(uri)
    return Location(fs, path.rstrip("/") or path, scheme(uri))


def list_files(uri: str, extensions: tuple[str, ...] | None = None) -> list[FileInfo]:
    """Every file under `uri` (recursive), sorted by URI; `extensions` match case-insensitively.

    A missing prefix lists as empty; an unreachable store raises.
    """
    where = locate(uri)
    suffixes = _suffixes(extensions)
    try:
        found = where.fs.find(where.path, detail=True)
    except FileNotFoundError:
        return []
    files = []
    for name, info in found.items():
        if info.get("type") == "directory":
            continue
        if suffixes and not name.lower().endswith(suffixes):
            continue
        files.append(FileInfo(where.uri_of(name), int(info.get("size") or 0), _mtime(info)))
    return sorted(files, key=lambda f: f.uri)


def exists(uri: str) -> bool:
    return locate(uri).exists()


def read_bytes(uri: str) -> bytes:
    return locate(uri).read_bytes()


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
    locate(uri).write_bytes(data)


def write_with(uri: str, write: Callable[[BinaryIO], object]) -> None:
    """`write_bytes` for content too big to hold twice in memory: `write(f)` streams it into a
    local file, which then replaces the target (local) or is uploaded (S3: a multipart upload
    appears only once complete). Either way readers see the whole object or nothing.
    """
    locate(uri).write_with(write)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete(uri: str, recursive: bool = False) -> None:
    locate(uri).delete(recursive)


def absolute(uri: str | None) -> str | None:
    """A local path made absolute (`~` expanded), once, in a job's driver: Ray tasks, actors
    and workers run in their own working directories. A URI with a scheme (`s3://`,
    `file://`, MLflow's `models:/`, `runs:/`) and None pass through unchanged."""
    # fcn.tracking.MLFLOW_SCHEMES, spelled out: storage sits below tracking.
    if uri is None or "://" in uri or uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        return uri
    return os.path.abspath(os.path.expanduser(uri))
