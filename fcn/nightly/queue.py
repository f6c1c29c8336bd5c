"""Which images should a person label next: chosen by `--queue-strategy`
(fcn.nightly.selection: random, entropy, diverse), never one that an earlier night already
queued. The queue's `score` column is the image's mean pixel entropy whatever the strategy.

Score: the image's mean pixel entropy (nats, `fcn.engine.inference.confidence_statistics`), highest
first; ties by `uri` ascending, so the same night always gives the same queue. Entropy looks
at the whole class distribution of every pixel (a margin looks only at the top two), and a
mean over pixels does not favour large images.

`<output>/_queue/<run id>.parquet` holds each night's queued rows: small immutable files (K rows
a night) whose union is "already queued", like the state's parts (docs/nightly.md).
"""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fcn.nightly import schema, selection
from fcn.nightly.schema import Status
from fcn.storage import Location

QUEUE = "_queue"
SCORE = "mean_entropy"
COLUMNS = ["rank", "uri", "mask_uri", "score", "mean_margin", "low_confidence_fraction", "run_id"]


def queued(output: Location) -> pa.Array:
    """Every uri an earlier night queued."""
    uris = []
    for chunk in output.child(QUEUE).walk((".parquet",)):
        for path in chunk.column("path").to_pylist():
            night = pq.read_table(io.BytesIO(output.fs.cat_file(path)), columns=["uri"])
            uris += night.column("uri").to_pylist()
    return pa.array(uris, pa.string())


def select(
    table: pa.Table, already: pa.Array, size: int, run_id: str, strategy: str = "entropy",
    seed: int = 0,
) -> pa.Table:  # fmt: skip
    """`size` of the manifest's `ok` rows with a score, not in `already`, chosen by
    `strategy` (fcn.nightly.selection), ranked 1.. in the order chosen."""
    ok = pc.and_(schema.where(table, Status.OK), pc.is_valid(table.column(SCORE)))
    fresh = pc.invert(pc.is_in(table.column("uri"), value_set=already))
    rows = table.filter(pc.and_(ok, fresh))
    rows = rows.take(pa.array(selection.choose(rows, size, strategy, seed), pa.int64()))
    rows = rows.rename_columns([("score" if n == SCORE else n) for n in rows.column_names])
    rows = rows.select(COLUMNS[1:-1])
    rows = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    ranks = pa.array(range(1, rows.num_rows + 1), pa.int32())
    return rows.add_column(0, "rank", ranks)


def record(output: Location, run_id: str, queue: pa.Table) -> None:
    """Remember tonight's queue (written whole, like every state file)."""
    buffer = io.BytesIO()
    pq.write_table(queue, buffer)
    output.child(f"{QUEUE}/{run_id}.parquet").write_bytes(buffer.getvalue())


def files(queue: pa.Table) -> dict[str, bytes]:
    """`queue.parquet` and `queue.csv` of the queue, for the report folder."""
    parquet = io.BytesIO()
    pq.write_table(queue, parquet)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(queue.column_names)
    writer.writerows(zip(*(queue.column(n).to_pylist() for n in queue.column_names), strict=True))
    return {"queue.parquet": parquet.getvalue(), "queue.csv": text.getvalue().encode()}
