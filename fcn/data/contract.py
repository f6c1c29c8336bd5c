"""The dataset contract (ARCHITECTURE.md): what ingest writes and what every reader may rely on.

    <root>/<split>/part-NNNNN.parquet          one row per image (SCHEMA)
    <root>/_errors/<split>-part-NNNNN.parquet  rejected inputs (ERROR_SCHEMA)
    <root>/_SUCCESS                            JSON summary (FORMAT), written last

One module for both sides: ingest writes by these names and schemas, training, evaluation and
segmentation read by them. Plain file reads, no Ray: a driver checks a dataset before it starts
any (`check_split`, `read_classes`).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from fcn import storage
from fcn.engine.classes import ClassList, voc_classes

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        # null for a raster of an unlabeled split (`images.is_raster(uri)`): a reference,
        # read window by window from `uri` by the segment job, never bytes in Parquet
        pa.field("image", pa.binary(), nullable=True),
        pa.field("mask", pa.binary(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
    ]
)
ERROR_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string()),  # the offending file (the mask URI for mask problems)
        pa.field("reason", pa.string()),  # one of REASONS
        pa.field("detail", pa.string()),  # human-readable specifics
        pa.field("split", pa.string()),
        pa.field("source", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("image_uri", pa.string()),
    ]
)
REASONS = (
    "missing_image",
    "empty_image",
    "corrupt_image",
    "truncated_image",
    "decompression_bomb",
    "unsupported_image",  # animated, or a pixel mode with no RGB reading (fcn.engine.images)
    "missing_mask",
    "empty_mask",
    "corrupt_mask",
    "mask_size_mismatch",
    "bad_label_values",
    "read_error",
    "unexpected_error",  # a decoder raised something unforeseen: kept as a row, job goes on
)
SUCCESS = "_SUCCESS"
ERRORS = "_errors"
FORMAT = "fcn-parquet-1"
# What an evaluation reads of each row.
COLUMNS = ("image_id", "image", "mask")


def split_files(data: str, split: str) -> list[str]:
    """The Parquet files of `<data>/<split>/`, sorted; FileNotFoundError when there are none."""
    return [f.uri for f in split_file_infos(data, split)]


def split_file_infos(data: str, split: str) -> list[storage.FileInfo]:
    """`split_files` with each file's size."""
    uri = storage.join(data, split)
    files = storage.list_files(uri, extensions=(".parquet",))
    if not files:
        raise FileNotFoundError(
            f"no Parquet files under {uri!r}: is --data the root of an ingested dataset "
            f"and {split!r} one of its splits?"
        )
    return files


def check_split(data: str, split: str, columns=COLUMNS) -> list[str]:
    """The split's files, after checking that each one has `columns` (footers only, no rows):
    a wrong dataset fails here with one line, not as a KeyError in every worker."""
    files = split_files(data, split)
    for uri in files:
        fs, path = storage.pyarrow_filesystem(uri)
        names = pq.read_schema(fs.open_input_file(path)).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(
                f"{uri} lacks column(s) {', '.join(missing)} (has {', '.join(names)}): "
                f"--data must be a dataset written by jobs/ingest.py"
            )
    return files


def read_summary(root: str) -> dict:
    """The `_SUCCESS` summary of an ingested dataset (raises if the run did not finish)."""
    uri = storage.join(root.rstrip("/"), SUCCESS)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} missing: the ingest into {root} did not complete")
    return json.loads(storage.read_text(uri))


def read_classes(root: str) -> ClassList:
    """The class list an ingested dataset was validated against (for train/eval/segment).

    Datasets ingested before class lists were recorded were checked against VOC's 21.
    """
    recorded = read_summary(root).get("classes")
    return ClassList.from_dict(recorded) if recorded else voc_classes()
