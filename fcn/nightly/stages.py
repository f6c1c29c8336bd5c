"""The segment job's CPU stages around the model actor (fcn.nightly.predictor), as in Ray's batch
inference examples: read + decode -> model -> encode + write, each a Ray Data `map_batches`
over Arrow batches (`fcn.nightly.schema.DECODED` rows). Decoded pixels travel as raw `uint8`
bytes (`pixels`, `height`, `width`), class maps as raw bytes (`mask`), so no stage pickles
arrays.
"""

from __future__ import annotations

import bisect
import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fcn.config import SegmentConfig
from fcn.engine import images
from fcn.nightly import manifest, masks, plan, schema
from fcn.nightly.schema import Status
from fcn.storage import Location

# Object-store reads and writes are latency-bound (~10-50 ms each on S3, one request at a time
# per thread): overlap them within a batch.
IO_THREADS = 8


def _decode(row: dict, data: bytes | None, config: SegmentConfig) -> dict:
    if row.get("status"):
        return row
    t = time.perf_counter()
    try:
        image = images.decode_image(data, config.max_pixels)
    except images.BadImage as err:
        return {**row, "status": Status.ERROR, "error": str(err)}
    except Exception as err:  # noqa: BLE001 - a Pillow bug on odd bytes is still one row
        return {**row, "status": Status.ERROR, "error": f"decode failed: {err!r}"}
    row.update(pixels=image.tobytes(), height=image.shape[0], width=image.shape[1])
    row["decode_seconds"] = time.perf_counter() - t
    return row


def read_decode(batch: pa.Table, input: Location, config: SegmentConfig) -> pa.Table:
    """Planned rows of an image prefix (fcn.nightly.plan.TODO_COLUMNS) -> decoded rows."""

    def read(row):
        t = time.perf_counter()
        try:  # retried with backoff by the filesystem (fcn.storage.S3_MAX_ATTEMPTS)
            data, error = input.fs.cat_file(row["path"]), None
        except Exception as err:  # noqa: BLE001 - one unreadable object is one error row
            data, error = None, f"read failed: {err!r}"
        row["read_seconds"] = time.perf_counter() - t
        if error:  # no etag: these bytes were never seen, so the next night tries again
            row.update(status=Status.ERROR, error=error, etag=None)
        return row, data

    with ThreadPoolExecutor(IO_THREADS) as pool:
        rows = [_decode(row, data, config) for row, data in pool.map(read, batch.to_pylist())]
    return pa.Table.from_pylist(rows, schema.DECODED)


def decide_parquet(batch: pa.Table, output: Location, known: list, config: SegmentConfig):
    """Rows of an ingested split (`uri`, `image`) -> decoded rows; done ones `skipped`, refused
    ones dropped (the driver reports those).

    The image version (`sha256` of the bytes) is only known here, so the last step of the plan
    is here: `known` ([ObjectRef of fcn.nightly.plan.SplitPlan.known], sorted by uri) sits once
    in the object store, read zero-copy, and each row finds its uri by binary search: a batch
    costs O(rows x log(images)), never a scan or a copy of the state.
    """
    import ray

    known = ray.get(known[0])
    known_uris, known_etags = (_array(known.column(name)) for name in ("uri", "etag"))
    rows = []
    for uri, data in zip(*(batch.column(c).to_pylist() for c in ("uri", "image")), strict=True):
        if data is None and images.is_raster(uri):
            continue  # a raster's reference: planned on the driver, run by the raster actors
        at = _find(known_uris, uri)
        if at is not None and not known_etags[at].is_valid:
            continue  # refused on the driver (e.g. its mask key is another image's)
        data = data or b""
        key = masks.mask_key(plan.split_key(uri))  # the driver checked the key
        row = {"uri": uri, "size": len(data), "read_seconds": 0.0}
        row.update(mask_uri=output.child(key).uri, mask_key=key)
        row["etag"] = "sha256:" + hashlib.sha256(data).hexdigest()
        if at is not None and known_etags[at].as_py() == row["etag"]:
            rows.append({**row, "status": Status.SKIPPED})
            continue
        rows.append(_decode(row, data, config))
    return pa.Table.from_pylist(rows, schema.DECODED)


def _array(column: pa.ChunkedArray) -> pa.Array:
    """One array without a copy where the column is one chunk (the driver combines them)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _find(sorted_uris: pa.Array, uri: str) -> int | None:
    """Index of `uri` in `sorted_uris` (UTF-8 byte order = Python's str order), or None."""
    at = bisect.bisect_left(sorted_uris, uri, key=lambda s: s.as_py())
    return at if at < len(sorted_uris) and sorted_uris[at].as_py() == uri else None


def encode_write(
    batch: pa.Table,
    output: Location,
    palette: np.ndarray,
    parts: Location,
    model: str,
    run_id: str,
) -> pa.Table:
    """Class maps -> palette PNGs written whole at their keys, then the batch's manifest part
    (after the masks: a part never names a mask that is not written). Returns the rows."""
    rows = batch.drop_columns(["mask"]).to_pylist()
    mask_column = batch.column("mask")

    def encode(i: int, row: dict) -> bytes | None:
        t = time.perf_counter()
        classes = np.frombuffer(mask_column[i].as_buffer(), np.uint8)
        try:
            data = images.encode_mask(classes.reshape(row["height"], row["width"]), palette)
        except Exception as err:  # noqa: BLE001 - one mask that cannot be encoded is one row
            row.update(status=Status.ERROR, error=f"mask encode failed: {err!r}", etag=None)
            return None
        row["encode_seconds"] = time.perf_counter() - t
        return data

    def write(row: dict, data: bytes) -> None:
        t = time.perf_counter()
        try:  # retried with backoff by the filesystem (fcn.storage.S3_MAX_ATTEMPTS)
            output.child(row["mask_key"]).write_bytes(data)
        except Exception as err:  # noqa: BLE001 - a failed write is one error row
            # No etag: unlike a bad image, an outage passes; the next night tries again.
            row.update(status=Status.ERROR, error=f"mask write failed: {err!r}", etag=None)
            return
        row["write_seconds"] = time.perf_counter() - t
        row["status"] = Status.OK

    encoded = [(row, encode(i, row)) for i, row in enumerate(rows) if not row["status"]]
    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(lambda pair: write(*pair), [p for p in encoded if p[1] is not None]))
    return record(rows, parts, model, run_id)


def record(rows: list[dict], parts: Location, model: str, run_id: str) -> pa.Table:
    """Finished rows -> manifest rows (`schema.MANIFEST`), and their state part written: call
    it after the masks are written, so a part never names a mask that is not there."""
    now = time.time()  # one completion time per batch
    stages = ("read", "decode", "model", "encode", "write")
    for row in rows:
        row["seconds"] = sum(row.get(f"{s}_seconds") or 0.0 for s in stages)
        row.update(model=model, run_id=run_id, time=now)
    table = schema.conform(pa.Table.from_pylist(rows), schema.MANIFEST)
    finished = table.filter(pc.invert(schema.where(table, Status.SKIPPED)))
    if finished.num_rows:
        manifest.write(parts.child(f"{uuid.uuid4().hex}.parquet"), finished)
    return table
