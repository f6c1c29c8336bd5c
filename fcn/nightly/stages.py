"""The segment job's CPU stages around the model actor (fcn.predictor), as in Ray's batch
inference examples: read + decode -> model -> encode + write, each a Ray Data `map_batches`
over Arrow batches. Decoded pixels travel as raw `uint8` bytes (`pixels`, `height`, `width`),
class maps as raw bytes (`mask`), so no stage pickles arrays.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fcn import images, manifest, masks
from fcn.config import SegmentConfig
from fcn.storage import Location

READ_THREADS = 8  # object-store reads are latency-bound: overlap them within a batch


def _decode(row: dict, data: bytes | None, config: SegmentConfig) -> dict:
    if row.get("status"):
        return row
    t = time.perf_counter()
    try:
        image = images.decode_image(data, config.max_pixels)
    except images.BadImage as err:
        return {**row, "status": "error", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - a Pillow bug on odd bytes is still one row
        return {**row, "status": "error", "error": f"decode failed: {err!r}"}
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
            row.update(status="error", error=error, etag=None)
        return row, data

    with ThreadPoolExecutor(READ_THREADS) as pool:
        rows = [_decode(row, data, config) for row, data in pool.map(read, batch.to_pylist())]
    return pa.Table.from_pylist(rows, DECODED)


def decide_parquet(
    batch: pa.Table, output: Location, state: list, older: list[str], config: SegmentConfig
) -> pa.Table:
    """Rows of an ingested split (`uri`, `image`) -> decoded rows, done ones `skipped`.

    The image version (`sha256` of the bytes) is only known here, so the done-check is here:
    `state` ([ObjectRef of the state table: uri, etag, status, error, model]) sits once in the
    object store (read zero-copy) and each batch probes it with a hash of its own few uris,
    never a copy of the whole history per task.
    """
    import ray

    state = ray.get(state[0])
    uris = batch.column("uri")
    known = state.filter(pc.is_in(state.column("uri"), value_set=uris.combine_chunks()))
    previous = {(r["uri"], r["etag"]): r for r in known.to_pylist()}  # a batch's worth
    rows = []
    for uri, data in zip(uris.to_pylist(), batch.column("image").to_pylist(), strict=True):
        data = data or b""
        row = {"uri": uri, "size": len(data), "read_seconds": 0.0}
        row["etag"] = "sha256:" + hashlib.sha256(data).hexdigest()
        try:  # key the mask by the uri without its scheme: `bucket/dir/x.jpg`
            mask = output.child(masks.mask_key(uri.split("://", 1)[-1].lstrip("/")))
        except ValueError as err:
            rows.append({**row, "status": "error", "error": f"bad uri: {err}"})
            continue
        row.update(mask_uri=mask.uri, mask_path=mask.path)
        prev = previous.get((uri, row["etag"]))
        if prev and not (prev["status"] == "ok" and prev["model"] in older):
            rows.append({**row, "status": "skipped", "error": prev["error"]})
            continue
        rows.append(_decode(row, data, config))
    return pa.Table.from_pylist(rows, DECODED)


DECODED = pa.schema(
    [
        ("uri", pa.string()),
        ("mask_uri", pa.string()),
        ("mask_path", pa.string()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("status", pa.string()),  # null: still to segment
        ("error", pa.string()),
        ("pixels", pa.binary()),  # H x W x 3 uint8, C order
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("read_seconds", pa.float64()),
        ("decode_seconds", pa.float64()),
    ]
)


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
    for i, row in enumerate(rows):
        if row["status"]:
            continue
        t = time.perf_counter()
        shape = (row["height"], row["width"])
        classes = np.frombuffer(mask_column[i].as_buffer(), np.uint8).reshape(shape)
        try:
            data = images.encode_mask(classes, palette)
            row["encode_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            # retried with backoff by the filesystem (fcn.storage.S3_MAX_ATTEMPTS)
            Location(output.fs, row["mask_path"], output.scheme).write_bytes(data)
            row["write_seconds"] = time.perf_counter() - t
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - a failed write is one error row
            # No etag: unlike a bad image, an outage passes; the next night tries again.
            row.update(status="error", error=f"mask write failed: {err!r}", etag=None)
    now = time.time()  # one completion time per batch
    stages = ("read", "decode", "model", "encode", "write")
    for row in rows:
        row["seconds"] = sum(row.get(f"{s}_seconds") or 0.0 for s in stages)
        row.update(model=model, run_id=run_id, time=now)
    table = manifest.conform(pa.Table.from_pylist(rows))
    finished = table.filter(pc.not_equal(table.column("status"), "skipped"))
    if finished.num_rows:
        manifest.write(parts.child(f"{uuid.uuid4().hex}.parquet"), finished)
    return table
