"""The segment job's manifest: one Parquet file per run under `<output>/_manifest/`.

Columns (ARCHITECTURE.md contract first): `uri`, `mask_uri`, `status` (`ok` | `error` |
`skipped`), `error`, `model`, `seconds`; then what makes runs incremental (`etag`: the image
version, `size:mtime` for objects, `sha256:...` for Parquet rows), the image size, per-stage
timings, optional per-class pixel counts, and the run id.

Crash safety: actors append small part files (`_manifest/_parts/<run>/*.parquet`, each written
atomically) as batches finish; the driver folds them into `_manifest/<run>.parquet` at the end
and drops the parts. A killed run leaves its parts behind, and the next run reads them like any
manifest, so work finished before the kill is not redone.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from fcn import storage

DIR = "_manifest"
PARTS = "_parts"
STATUSES = ("ok", "error", "skipped")

SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("mask_uri", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("model", pa.string()),
        ("seconds", pa.float64()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("read_seconds", pa.float64()),
        ("decode_seconds", pa.float64()),
        ("forward_seconds", pa.float64()),
        ("encode_seconds", pa.float64()),
        ("write_seconds", pa.float64()),
        ("class_counts", pa.list_(pa.int64())),
        ("run_id", pa.string()),
        ("time", pa.float64()),
    ]
)


def to_table(rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts; missing columns are null) -> a table with SCHEMA."""
    rows = list(rows)
    return pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in rows], SCHEMA)


def write(uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())  # whole file or nothing


def run_uri(output: str, run_id: str) -> str:
    return storage.join(output, f"{DIR}/{run_id}.parquet")


def parts_uri(output: str, run_id: str) -> str:
    return storage.join(output, f"{DIR}/{PARTS}/{run_id}")


def remove_empty_parts_dir(output: str) -> None:
    """Local outputs keep directories: drop `_manifest/_parts/` once no killed run left parts."""
    if storage.is_remote(output):
        return
    # OSError: not empty (a killed run's parts, kept on purpose) or already gone.
    with contextlib.suppress(OSError):
        os.rmdir(storage.strip_scheme(storage.join(output, f"{DIR}/{PARTS}")))


def read_all(output: str) -> pa.Table:
    """Every manifest row under `<output>/_manifest/` (parts of killed runs included).

    An unreadable file is reported and left out: one bad file must not stop the night, and the
    worst it costs is segmenting its images again.
    """
    tables = []
    for info in storage.list_files(storage.join(output, DIR), extensions=(".parquet",)):
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(info.uri)))
            tables.append(table.select([n for n in SCHEMA.names if n in table.column_names]))
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, loudly
            print(f"warning: ignoring unreadable manifest {info.uri}: {err}", file=sys.stderr)
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def finished(manifest: pa.Table, retry_errors: bool) -> dict[tuple[str, str], dict]:
    """(uri, etag) -> its latest `ok` (or, unless retrying, `error`) row: work not to redo."""
    final = {"ok"} if retry_errors else {"ok", "error"}
    done: dict[tuple[str, str], dict] = {}
    columns = ["uri", "etag", "status", "mask_uri", "error", "time"]
    present = [c for c in columns if c in manifest.column_names]
    for row in sorted(manifest.select(present).to_pylist(), key=lambda r: r.get("time") or 0):
        if row.get("status") in final and row.get("etag"):
            done[(row["uri"], row["etag"])] = row
    return done
