"""The segment job's per-run manifest: one row per image the run segmented or failed.

Columns (`schema.MANIFEST`; ARCHITECTURE.md's contract first): `uri`, `mask_uri`, `status`
(`ok` | `error`), `error`, `model` (the exact version: `models:/name/7`, never an alias),
`seconds`; then the image version (`etag`: `size:mtime` for objects, `sha256:...` for Parquet
rows), the image size, per-stage timings, the model's confidence on the image
(`fcn.engine.inference.confidence_statistics`: mean pixel entropy in nats, mean top-1 margin,
share of pixels whose top-1 probability is under `LOW_CONFIDENCE`; and the classes present),
optional per-class pixel counts, and the run id. Images left unchanged are counted in the
run's summary, not listed. What is done across runs lives in `fcn.nightly.state`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from fcn.nightly import schema
from fcn.storage import Location


def to_table(rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts; missing columns are null) -> a table with the manifest's schema."""
    names = schema.MANIFEST.names
    return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema.MANIFEST)


def write(where: Location, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    where.write_bytes(buffer.getvalue())  # whole file or nothing


def read(where: Location) -> pa.Table:
    return pq.read_table(io.BytesIO(where.read_bytes()))
