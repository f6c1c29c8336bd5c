"""The segment job's per-run manifest: one row per image the run segmented or failed.

Columns (ARCHITECTURE.md contract first): `uri`, `mask_uri`, `status` (`ok` | `error`), `error`,
`model` (the exact version: `models:/name/7`, never an alias), `seconds`; then the image version
(`etag`: `size:mtime` for objects, `sha256:...` for Parquet rows), the image size, per-stage
timings, the model's confidence on the image (`fcn.inference.confidence_statistics`: mean pixel
entropy in nats, mean top-1 margin, share of pixels whose top-1 probability is under
`LOW_CONFIDENCE`; and the classes present), optional per-class pixel counts, and the run id.
Images left unchanged are counted in the run's summary, not listed. What is done across runs
lives in `fcn.nightly.state`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from fcn.storage import Location

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
        ("forward_seconds", pa.float64()),  # the model alone
        ("model_seconds", pa.float64()),  # the model actor in all: normalize, forward, stats
        ("encode_seconds", pa.float64()),
        ("write_seconds", pa.float64()),
        ("mean_entropy", pa.float32()),
        ("mean_margin", pa.float32()),
        ("low_confidence_fraction", pa.float32()),
        ("classes_present", pa.int32()),
        ("class_counts", pa.list_(pa.int64())),
        ("run_id", pa.string()),
        ("time", pa.float64()),
    ]
)


def to_table(rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts; missing columns are null) -> a table with SCHEMA."""
    return pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in rows], SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """`table`'s SCHEMA columns in SCHEMA's order and types; absent ones are null."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write(where: Location, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    where.write_bytes(buffer.getvalue())  # whole file or nothing


def read(where: Location) -> pa.Table:
    return pq.read_table(io.BytesIO(where.read_bytes()))
