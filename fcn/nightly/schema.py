"""The segment job's Arrow rows, declared once: the state (`STATE`), the run manifest
(`MANIFEST`), what the CPU stages hand the model actor (`DECODED`), what the actor adds
(`PREDICTED`) and what the plan refuses (`REFUSED`), with the row `Status` they all share.

Each column is one field used by every schema that holds it, so a column cannot mean one type
in the state and another in the manifest. Column order is part of the files' format (old
snapshots and manifests must read the same): each schema lists its columns in the order its
files have always had.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc


class Status(StrEnum):
    """A row's status; a StrEnum, so the files hold the same plain strings as ever."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # unchanged (an ingested split's row): counted, never in a file


FINISHED = pa.array([Status.OK, Status.ERROR], pa.string())  # what the state keeps

# --- columns ----------------------------------------------------------------------------------
URI = pa.field("uri", pa.string())
MASK_URI = pa.field("mask_uri", pa.string())
MASK_KEY = pa.field("mask_key", pa.string())  # the mask's key under --output
ETAG = pa.field("etag", pa.string())  # `size:mtime` of an object, `sha256:...` of a split row
SIZE = pa.field("size", pa.int64())
STATUS = pa.field("status", pa.string())  # a Status; null: still to segment
ERROR = pa.field("error", pa.string())
MODEL = pa.field("model", pa.string())  # the exact version (`models:/name/7`), never an alias
RUN_ID = pa.field("run_id", pa.string())
TIME = pa.field("time", pa.float64())  # when the row's batch finished: the latest row wins
SECONDS = pa.field("seconds", pa.float64())
HEIGHT = pa.field("height", pa.int32())
WIDTH = pa.field("width", pa.int32())
PIXELS = pa.field("pixels", pa.binary())  # H x W x 3 uint8, C order: no stage pickles arrays
MASK = pa.field("mask", pa.binary())  # H x W uint8 class map
READ_SECONDS = pa.field("read_seconds", pa.float64())
DECODE_SECONDS = pa.field("decode_seconds", pa.float64())
FORWARD_SECONDS = pa.field("forward_seconds", pa.float64())  # the model alone
MODEL_SECONDS = pa.field("model_seconds", pa.float64())  # the actor in all: normalize, stats
ENCODE_SECONDS = pa.field("encode_seconds", pa.float64())
WRITE_SECONDS = pa.field("write_seconds", pa.float64())
# The model's confidence on the image (fcn.engine.inference.STATISTICS).
MEAN_ENTROPY = pa.field("mean_entropy", pa.float32())
MEAN_MARGIN = pa.field("mean_margin", pa.float32())
LOW_CONFIDENCE = pa.field("low_confidence_fraction", pa.float32())
CLASSES_PRESENT = pa.field("classes_present", pa.int32())
CLASS_COUNTS = pa.field("class_counts", pa.list_(pa.int64()))
# A band of a raster shared by the actors (fcn.nightly.raster_actor).
BAND = pa.field("band", pa.int32())  # k of the raster's bands, from the top
PART = pa.field("part", pa.string())  # the URI of the band's mask rows
ROWS = pa.field("rows", pa.int64())  # mask rows the band wrote (0: a band with no tiles)
CLASS_PIXELS = pa.field("class_pixels", pa.list_(pa.int64()))  # the band's, per class

# --- rows -------------------------------------------------------------------------------------
STATE = pa.schema([URI, ETAG, MASK_URI, STATUS, ERROR, MODEL, RUN_ID, TIME])

CONFIDENCE = [MEAN_ENTROPY, MEAN_MARGIN, LOW_CONFIDENCE, CLASSES_PRESENT, CLASS_COUNTS]
MANIFEST = pa.schema(
    [URI, MASK_URI, STATUS, ERROR, MODEL, SECONDS, ETAG, SIZE, HEIGHT, WIDTH, READ_SECONDS,
     DECODE_SECONDS, FORWARD_SECONDS, MODEL_SECONDS, ENCODE_SECONDS, WRITE_SECONDS,
     *CONFIDENCE, RUN_ID, TIME]
)  # fmt: skip

DECODED = pa.schema(
    [URI, MASK_URI, MASK_KEY, ETAG, SIZE, STATUS, ERROR, PIXELS, HEIGHT, WIDTH, READ_SECONDS,
     DECODE_SECONDS]
)  # fmt: skip

PREDICTED = pa.schema([MASK, FORWARD_SECONDS, *CONFIDENCE])  # added by the model actor

# A raster band's outcome, on its way to the raster's merge; HEIGHT is the raster's.
BAND_DONE = pa.schema(
    [URI, MASK_URI, ETAG, SIZE, BAND, PART, STATUS, ERROR, ROWS, HEIGHT, WIDTH, MODEL_SECONDS,
     CLASS_PIXELS]
)  # fmt: skip

# Images the plan refuses (a key that cannot get a mask): error rows of the manifest.
REFUSED = pa.schema([URI, ETAG, SIZE, MASK_URI, ERROR])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s `schema` columns in `schema`'s order and types; absent ones are null."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def where(table: pa.Table, status: Status) -> pa.Array:
    """A mask of `table`'s rows whose status is `status` (null statuses: False)."""
    return pc.fill_null(pc.equal(table.column("status"), status), False)
