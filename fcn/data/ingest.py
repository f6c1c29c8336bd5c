"""Ingestion: VOC / SBD / unlabeled images -> validated Parquet shards, with Ray Data.

Output (the dataset contract in ARCHITECTURE.md):
    <output>/<split>/part-NNNNN.parquet       one row per image (schema: SCHEMA)
    <output>/_errors/<split>-part-NNNNN.parquet rejected inputs: uri, reason, detail, ...
    <output>/_SUCCESS                          JSON summary, written last

How it runs: the driver lists the sources (URIs only, never pixels), sorts each split by
image id and cuts it into shards of `rows_per_shard` records. Ray Data streams one shard per
task: read the objects (a few threads, batched; `read_binary_files` costs ~1.6 ms per file),
decode and check every image and mask, write one Parquet file. The driver only sees small
count rows, so its memory does not grow with the images.

Checks: images and masks go through `fcn.images`, the codec training, evaluation and
segmentation use, so what ingest accepts they can decode, and `height`/`width` are the size
as displayed (EXIF orientation applied): a mask must match the picture people drew it on.

Re-runs: shard names and contents depend only on the input, so a second run over the same
input rewrites the same files with the same bytes (overwrite, no duplicates). The split
directories it writes and `_errors/` are the run's alone: any other file in them (an earlier
run's extra shards, a foreign `old-export.parquet`, a leftover temp file) is deleted before
`_SUCCESS` is written (logged, counted as `stale_shards_removed`), so a split declared done
always reads; files elsewhere under the output are left alone. Each file is written whole or not
at all (`storage.write_bytes`), and `_SUCCESS` is removed first and written last, so a reader
never takes an interrupted run for a complete one.

Label precedence: when one output split lists the same id from VOC and SBD, the VOC mask wins.
VOC masks are the benchmark's own hand-checked ground truth with void (255) borders on
ambiguous pixels; SBD's crowd-sourced masks are coarser. The `reference` preset instead keeps
the reference recipe as published: train = SBD train with SBD masks.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fcn import storage
from fcn.config import IngestConfig, to_dict
from fcn.data import voc
from fcn.engine import images
from fcn.engine.classes import VOID, ClassList, parse_class_list, voc_classes
from fcn.runtime import init_ray

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
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
    "unsupported_image",  # animated, or a pixel mode with no RGB reading (fcn.images)
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
_SHARD_RE = re.compile(r"^(?:[^/]+/part-\d{5}|_errors/[^/]+-part-\d{5})\.parquet$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Rejected(Exception):
    """An input that cannot become a row: `reason` is one of REASONS."""

    def __init__(self, reason: str, uri: str, detail: str):
        super().__init__(f"{reason}: {detail} ({uri})")
        self.reason, self.uri, self.detail = reason, uri, detail


# --- validation (pure functions of bytes: unit-testable without Ray or storage) -------------

# Codec refusal (`fcn.images.BadImage.reason`) -> the error row's reason, per input kind.
_IMAGE_REASONS = {
    "empty": "empty_image",
    "corrupt": "corrupt_image",
    "truncated": "truncated_image",
    "too_large": "decompression_bomb",
    "unsupported": "unsupported_image",
}
# A mask is the label file: any defect in it makes it unusable, whatever the kind.
_MASK_REASONS = {"empty": "empty_mask", "too_large": "decompression_bomb"}


def check_image(data: bytes, uri: str, max_pixels: int) -> tuple[int, int]:
    """Decode the whole image as training will; return (height, width) as displayed (EXIF
    orientation applied) or raise Rejected."""
    try:
        return images.verify_image(data, max_pixels)
    except images.BadImage as err:
        raise Rejected(_IMAGE_REASONS[err.reason], uri, str(err)) from None


def decode_mask(data: bytes, uri: str, source: str, max_pixels: int) -> np.ndarray:
    """Mask bytes of `source` ("voc": palette/gray PNG, "sbd": .mat) -> H x W uint8."""
    try:
        if source == "sbd":
            return voc.decode_sbd_mask(data, max_pixels)
        return images.decode_mask(data, max_pixels)
    except images.BadImage as err:
        raise Rejected(_MASK_REASONS.get(err.reason, "corrupt_mask"), uri, str(err)) from None


def check_mask(mask: np.ndarray, uri: str, height: int, width: int, num_classes: int) -> None:
    if mask.shape != (height, width):
        raise Rejected(
            "mask_size_mismatch",
            uri,
            f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height} (WxH) as "
            "displayed (EXIF orientation applied)",
        )
    counts = np.bincount(mask.ravel(), minlength=256)  # ~20x faster than np.unique
    values = np.flatnonzero(counts)
    bad = values[(values >= num_classes) & (values != VOID)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8].tolist())
        raise Rejected(
            "bad_label_values",
            uri,
            f"values {shown} outside 0..{num_classes - 1} and {VOID} (void)",
        )


def validate(
    record: voc.Record,
    image: bytes | BaseException,
    mask: bytes | BaseException | None,
    num_classes: int,
    max_pixels: int,
) -> dict:
    """A dataset row for `record` (SCHEMA's fields), or raise Rejected.

    `image` / `mask` are the bytes read, or the exception the read raised.
    """
    if isinstance(image, BaseException):
        raise _read_failure(image, record.image_uri, "image")
    height, width = check_image(image, record.image_uri, max_pixels)
    mask_png = None
    if record.mask_uri is not None:
        if isinstance(mask, BaseException) or mask is None:
            raise _read_failure(mask, record.mask_uri, "mask")
        labels = decode_mask(mask, record.mask_uri, record.source, max_pixels)
        check_mask(labels, record.mask_uri, height, width, num_classes)
        mask_png = images.encode_mask(labels)
    return {
        "image_id": record.image_id,
        "split": record.split,
        "source": record.source,
        "image": image,  # the original bytes, never re-encoded
        "mask": mask_png,
        "height": height,
        "width": width,
        "uri": record.image_uri,
    }


def _read_failure(err: BaseException | None, uri: str, kind: str) -> Rejected:
    if err is None or isinstance(err, FileNotFoundError):
        return Rejected(f"missing_{kind}", uri, f"listed {kind} does not exist")
    return Rejected("read_error", uri, f"{type(err).__name__}: {err}")


# --- planning (driver side: URIs only) ------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    split: str
    index: int
    records: tuple[voc.Record, ...]

    @property
    def key(self) -> str:
        return f"{self.split}/part-{self.index:05d}.parquet"

    @property
    def error_key(self) -> str:
        return f"{ERRORS}/{self.split}-part-{self.index:05d}.parquet"


def _parse_named_splits(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    named = []
    for entry in entries:
        name, sep, uri = entry.partition("=")
        if not sep or not name or not uri:
            raise ValueError(f"--split wants NAME=IDS_FILE, got {entry!r}")
        named.append((name, uri))
    return named


def _check_split_name(name: str) -> None:
    if not _SPLIT_RE.match(name) or name == "unlabeled":
        raise ValueError(f"split name {name!r}: use letters, digits, '_', '.', '-'")


def _read_list(uri: str) -> list[str]:
    try:
        return voc.read_ids(uri)
    except FileNotFoundError:
        raise ValueError(f"id list {uri} does not exist") from None


def load_classes(config: IngestConfig) -> ClassList:
    if config.classes:
        return parse_class_list(storage.read_text(config.classes))
    return voc_classes()


# long: the three split policies (default, --split, --preset reference) side by side.
def plan_records(config: IngestConfig) -> tuple[dict[str, list[voc.Record]], dict]:
    """Records per output split, and notes for the summary (precedence, overlaps).

    Default: VOC lists (`voc_splits`) and SBD lists, merged by split name, VOC mask wins.
    `--split NAME=FILE`: exactly the named lists (ids from VOC where listed there, else SBD).
    `--preset reference`: train = SBD train; the other splits lose any id in SBD train.
    """
    if not (config.voc or config.sbd or config.unlabeled):
        raise ValueError("give at least one source: --voc, --sbd or --unlabeled")
    named = _parse_named_splits(config.split)
    if (named or config.preset) and not (config.voc or config.sbd):
        raise ValueError("--split and --preset need --voc or --sbd")
    voc_lists = (
        {s: _read_list(voc.voc_split_uri(config.voc, s)) for s in config.voc_splits}
        if config.voc
        else {}
    )
    sbd_lists = (
        {s: _read_list(voc.sbd_split_uri(config.sbd, s)) for s in voc.SBD_SPLITS}
        if config.sbd
        else {}
    )
    voc_ids = {i for ids in voc_lists.values() for i in ids}
    sbd_ids = {i for ids in sbd_lists.values() for i in ids}

    def lookup(image_id: str, split: str) -> voc.Record:
        # An id in neither list still gets a record from the first source given, so a bad
        # list entry surfaces as a missing_image error row instead of vanishing.
        if config.voc and (image_id in voc_ids or image_id not in sbd_ids):
            return voc.voc_record(config.voc, image_id, split)
        return voc.sbd_record(config.sbd, image_id, split)

    splits: dict[str, dict[str, voc.Record]] = defaultdict(dict)
    notes: dict = {"label_precedence": "voc"}
    if config.preset == "reference":
        if not (config.voc and config.sbd):
            raise ValueError("--preset reference needs both --voc and --sbd")
        notes["label_precedence"] = "reference: train from SBD, other splits from VOC"
        sbd_train = set(sbd_lists["train"])
        for image_id in sbd_lists["train"]:
            splits["train"][image_id] = voc.sbd_record(config.sbd, image_id, "train")
        others = named or [("val", voc.voc_split_uri(config.voc, "val"))]
        dropped = {}
        for name, uri in others:
            ids = _read_list(uri)
            dropped[name] = sum(i in sbd_train for i in ids)
            for image_id in ids:
                if image_id not in sbd_train:
                    splits[name].setdefault(image_id, lookup(image_id, name))
        notes["removed_because_in_sbd_train"] = dropped
    elif named:
        for name, uri in named:
            for image_id in _read_list(uri):
                splits[name].setdefault(image_id, lookup(image_id, name))
    else:
        for split, ids in voc_lists.items():
            for image_id in ids:
                splits[split].setdefault(image_id, voc.voc_record(config.voc, image_id, split))
        superseded = Counter()
        for split, ids in sbd_lists.items():
            for image_id in ids:
                if image_id in splits[split]:
                    superseded[split] += splits[split][image_id].source == "voc"
                    continue
                splits[split][image_id] = voc.sbd_record(config.sbd, image_id, split)
        notes["sbd_superseded_by_voc"] = dict(sorted(superseded.items()))
    for name in splits:
        _check_split_name(name)
    # The same picture in two labeled splits leaks evaluation data into training.
    seen = Counter(i for recs in splits.values() for i in recs)
    notes["ids_in_several_splits"] = sum(1 for n in seen.values() if n > 1)
    if notes["ids_in_several_splits"]:
        log.warning(
            "%d ids appear in more than one split (use --preset reference for a clean val)",
            notes["ids_in_several_splits"],
        )
    out = {name: [recs[i] for i in sorted(recs)] for name, recs in sorted(splits.items())}
    if config.unlabeled:
        out["unlabeled"] = sorted(voc.list_images(config.unlabeled), key=lambda r: r.image_id)
    return out, notes


def plan_shards(records: dict[str, list[voc.Record]], rows_per_shard: int) -> list[Shard]:
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be >= 1")
    shards = []
    for split, recs in records.items():
        # An empty split still gets one (empty) shard so its schema can be read.
        for index, start in enumerate(range(0, max(len(recs), 1), rows_per_shard)):
            shards.append(Shard(split, index, tuple(recs[start : start + rows_per_shard])))
    return shards


# --- one shard (runs inside a Ray Data task) ------------------------------------------------


def _read(uri: str | None) -> bytes | BaseException | None:
    if uri is None:
        return None
    try:
        # cat_file is one GET; opening a file object first costs an extra HEAD per object.
        fs, path = storage.filesystem(uri)
        return fs.cat_file(path)
    except Exception as err:  # reported per row as a missing file or a read error
        return err


def _read_pairs(records: list[voc.Record], threads: int) -> Iterator[tuple]:
    """(record, image bytes, mask bytes) in record order, fetched `threads` at a time.

    At most a window of 2 x threads records is in flight, so memory stays bounded while
    reads overlap with the decoding of earlier records.
    """
    window = 2 * max(1, threads)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        for record in records:
            pending.append(
                (record, pool.submit(_read, record.image_uri), pool.submit(_read, record.mask_uri))
            )
            if len(pending) >= window:
                r, image, mask = pending.popleft()
                yield r, image.result(), mask.result()
        while pending:
            r, image, mask = pending.popleft()
            yield r, image.result(), mask.result()


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _parquet_bytes(tables: list[pa.Table], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    # Binary cells are already compressed (JPEG/PNG): compressing again costs time for ~0%.
    with pq.ParquetWriter(buf, schema, compression="none", write_statistics=False) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=max(1, table.num_rows))
    return buf.getvalue()


def _row_or_error(record, image, mask, num_classes, max_pixels) -> tuple[dict | None, dict | None]:
    try:
        return validate(record, image, mask, num_classes, max_pixels), None
    except Rejected as rej:
        uri, reason, detail = rej.uri, rej.reason, rej.detail
    except Exception as err:  # an unforeseen decoder failure is one bad row, not a dead job
        uri, reason, detail = record.image_uri, "unexpected_error", f"{type(err).__name__}: {err}"
    error = {"uri": uri, "reason": reason, "detail": detail, "split": record.split}
    error.update(source=record.source, image_id=record.image_id, image_uri=record.image_uri)
    return None, error


def write_shard(
    shard: Shard,
    output: str,
    num_classes: int,
    max_pixels: int,
    rows_per_row_group: int,
    read_threads: int,
) -> dict:
    """Read, validate and write one shard; return its counts (a small dict)."""
    groups: list[pa.Table] = []
    errors: list[dict] = []
    written = 0
    image_bytes = 0
    rows: list[dict] = []
    for record, image, mask in _read_pairs(list(shard.records), read_threads):
        row, error = _row_or_error(record, image, mask, num_classes, max_pixels)
        if error is not None:
            errors.append(error)
        else:
            rows.append(row)
        if len(rows) == rows_per_row_group:
            groups.append(_table(rows, SCHEMA))
            written += len(rows)
            image_bytes += sum(len(r["image"]) for r in rows)
            rows = []
    if rows:
        groups.append(_table(rows, SCHEMA))
        written += len(rows)
        image_bytes += sum(len(r["image"]) for r in rows)
    storage.write_bytes(storage.join(output, shard.key), _parquet_bytes(groups, SCHEMA))
    if errors:
        error_table = _table(errors, ERROR_SCHEMA)
        storage.write_bytes(
            storage.join(output, shard.error_key), _parquet_bytes([error_table], ERROR_SCHEMA)
        )
    return {
        "split": shard.split,
        "index": shard.index,
        "written": written,
        "rejected": len(errors),
        "reasons": json.dumps(dict(Counter(e["reason"] for e in errors))),
        "sources": json.dumps(dict(Counter(r.source for r in shard.records))),
        "image_bytes": image_bytes,
        "error_file": shard.error_key if errors else "",
    }


def _shard_to_item(shard: Shard) -> dict:
    return {
        "split": shard.split,
        "index": shard.index,
        "records": json.dumps([asdict(r) for r in shard.records]),
    }


def _item_to_shard(split: str, index: int, records: str) -> Shard:
    return Shard(split, int(index), tuple(voc.Record(**r) for r in json.loads(records)))


def _write_batch(batch: dict, **kwargs) -> dict:
    """map_batches function: each input row is one shard; each output row its counts."""
    results = [
        write_shard(_item_to_shard(s, i, r), **kwargs)
        for s, i, r in zip(batch["split"], batch["index"], batch["records"], strict=True)
    ]
    return {key: [res[key] for res in results] for key in results[0]} if results else {}


# --- the job ------------------------------------------------------------------------------


def _remove_stale(output: str, keep: set[str], owned: set[str]) -> list[str]:
    """Delete what this run did not write: any file at all in the directories it owns (`owned`:
    its splits and `_errors/`; a foreign export or a leftover temp file there would break a
    reader of the split), and shards of earlier runs' splits. Other files are left alone."""
    removed = []
    for info in storage.list_files(output):
        key = storage.relative_key(output, info.uri)
        if key in keep:
            continue
        if _SHARD_RE.match(key) or ("/" in key and key.split("/", 1)[0] in owned):
            log.info("ingest: removing %s (not written by this run)", key)
            storage.delete(info.uri)
            removed.append(key)
    return removed


def check_config(config: IngestConfig) -> IngestConfig:
    """The config with local paths absolute (Ray tasks read them from their own working
    directories), after checking the settings and that every source given exists (an
    unlabeled prefix must hold images): a mistyped path fails in the driver with one line
    (ValueError) before Ray starts or `<output>` is touched, instead of a "successful"
    empty dataset."""
    for name in ("rows_per_shard", "rows_per_row_group", "max_pixels", "read_threads"):
        if getattr(config, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}"
            )

    paths = ("output", "voc", "sbd", "unlabeled", "classes")
    config = replace(config, **{name: storage.absolute(getattr(config, name)) for name in paths})
    for flag in ("voc", "sbd", "unlabeled"):
        uri = getattr(config, flag)
        if uri is not None and not storage.exists(uri):
            raise ValueError(f"--{flag} {uri} does not exist")
    if config.unlabeled is not None:
        found = next(storage.locate(config.unlabeled).walk(images.IMAGE_EXTENSIONS, chunk=1), None)
        if found is None:
            kinds = ", ".join(images.IMAGE_EXTENSIONS)
            raise ValueError(f"--unlabeled {config.unlabeled} holds no images ({kinds})")
    return config


def run(config: IngestConfig) -> dict:
    """Ingest per `config`; return the summary that is also written to `<output>/_SUCCESS`."""
    import ray

    config = check_config(config)
    started = time.perf_counter()
    init_ray()
    classes = load_classes(config)
    records, notes = plan_records(config)
    shards = plan_shards(records, config.rows_per_shard)
    output = config.output.rstrip("/")
    storage.delete(storage.join(output, SUCCESS))  # mark "in progress" before touching shards
    log.info(
        "ingest: %d records in %d shards -> %s",
        sum(map(len, records.values())),
        len(shards),
        output,
    )

    kwargs = dict(
        output=output,
        num_classes=classes.num_classes,
        max_pixels=config.max_pixels,
        rows_per_row_group=config.rows_per_row_group,
        read_threads=config.read_threads,
    )
    ds = ray.data.from_items(
        [_shard_to_item(s) for s in shards], override_num_blocks=max(1, len(shards))
    )
    pool = ray.data.TaskPoolStrategy(size=config.concurrency)  # not `concurrency=` (deprecated)
    ds = ds.map_batches(_write_batch, fn_kwargs=kwargs, batch_size=1, compute=pool)
    planned = time.perf_counter()
    results = sorted(ds.iter_rows(), key=lambda r: (r["split"], r["index"]))
    executed = time.perf_counter()

    keep = {s.key for s in shards} | {r["error_file"] for r in results if r["error_file"]}
    removed = _remove_stale(output, keep, {s.split for s in shards} | set(records) | {ERRORS})
    summary = _summary(config, classes, records, shards, results, notes, removed)
    text = json.dumps(summary, indent=2) + "\n"
    storage.write_text(storage.join(output, SUCCESS), text)
    # Timings go to the log, not the summary: the summary stays byte-identical across runs.
    log.info(
        "ingest: planned %.1fs, shards %.1fs, finish %.1fs; %d written, %d rejected",
        planned - started,
        executed - planned,
        time.perf_counter() - executed,
        summary["written"],
        summary["rejected"],
    )
    return json.loads(text)  # exactly what readers of _SUCCESS get (tuples as lists)


def _summary(config, classes, records, shards, results, notes, removed) -> dict:
    per_split = {}
    for split in records:
        rows = [r for r in results if r["split"] == split]
        reasons = Counter()
        sources = Counter()
        for r in rows:
            reasons.update(json.loads(r["reasons"]))
            sources.update(json.loads(r["sources"]))
        per_split[split] = {
            "listed": len(records[split]),
            "written": sum(r["written"] for r in rows),
            "rejected": sum(r["rejected"] for r in rows),
            "rejected_by_reason": dict(sorted(reasons.items())),
            "listed_by_source": dict(sorted(sources.items())),
            "shards": sum(1 for s in shards if s.split == split),
            "image_bytes": sum(r["image_bytes"] for r in rows),
        }
    total_reasons = Counter()
    for s in per_split.values():
        total_reasons.update(s["rejected_by_reason"])
    # No timestamps or timings: the same input gives the same summary bytes too.
    return {
        "format": FORMAT,
        "schema": {f.name: str(f.type) for f in SCHEMA},
        "written": sum(s["written"] for s in per_split.values()),
        "rejected": sum(s["rejected"] for s in per_split.values()),
        "rejected_by_reason": dict(sorted(total_reasons.items())),
        "splits": per_split,
        "sources": {"voc": config.voc, "sbd": config.sbd, "unlabeled": config.unlabeled},
        "classes": classes.to_dict(),
        "num_classes": classes.num_classes,
        "notes": notes,
        "stale_shards_removed": len(removed),
        "settings": to_dict(config),
    }


def read_summary(root: str) -> dict:
    """The `_SUCCESS` summary of an ingested dataset (raises if the run did not finish)."""
    uri = storage.join(root.rstrip("/"), SUCCESS)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} missing: the ingest into {root} did not complete")
    return json.loads(storage.read_text(uri))


def read_classes(root: str) -> ClassList:
    """The class list an ingested dataset was validated against (for train/eval/segment).

    Datasets ingested before class lists were recorded were checked against VOC's 21.
    Plain file reads: no Ray, so a training driver can call it before starting any.
    """
    recorded = read_summary(root).get("classes")
    return ClassList.from_dict(recorded) if recorded else voc_classes()
