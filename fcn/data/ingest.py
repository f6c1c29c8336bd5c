"""Ingestion: VOC / SBD / unlabeled images -> validated Parquet shards, with Ray Data.

Output: the dataset contract (`fcn.data.contract`, ARCHITECTURE.md): `<output>/<split>/`
Parquet shards, rejected inputs under `<output>/_errors/`, the JSON summary `<output>/_SUCCESS`
written last (`IngestResult.summary`).

How it runs: `check_config` checks the settings and the sources in the driver, once, and
returns a `Checked` config, the only thing `run` takes. The driver lists the sources (URIs
only, never pixels) and cuts each split into shards (`fcn.data.plan`). Ray Data streams one
shard per task (`fcn.data.shards`: read, decode and check every image and mask with
`fcn.data.validate`, write one Parquet file). The driver only sees small count rows, so its
memory does not grow with the images.

Re-runs: shard names and contents depend only on the input, so a second run over the same
input rewrites the same files with the same bytes (overwrite, no duplicates). The split
directories it writes and `_errors/` are the run's alone: any other file in them (an earlier
run's extra shards, a foreign `old-export.parquet`, a leftover temp file) is deleted before
`_SUCCESS` is written (logged, counted as `stale_shards_removed`), so a split declared done
always reads; files elsewhere under the output are left alone. Each file is written whole or not
at all (`storage.write_bytes`), and `_SUCCESS` is removed first and written last, so a reader
never takes an interrupted run for a complete one.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace

from fcn import storage
from fcn.config import IngestConfig, to_dict
from fcn.data import plan, shards, voc
from fcn.data.contract import ERRORS, FORMAT, SCHEMA, SUCCESS
from fcn.data.plan import Shard
from fcn.engine import images
from fcn.engine.classes import ClassList, parse_class_list, voc_classes
from fcn.runtime import init_ray

log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^(?:[^/]+/part-\d{5}|_errors/[^/]+-part-\d{5})\.parquet$")


@dataclass(frozen=True)
class Checked:
    """An IngestConfig that `check_config` passed: local paths absolute, every source found,
    the class list read. `run` takes only this, so the checks run once, in the driver."""

    config: IngestConfig
    classes: ClassList


@dataclass(frozen=True)
class SplitCounts:
    """One output split of a run (the fields of `_SUCCESS`'s `splits.<name>`, in order)."""

    listed: int
    written: int
    rejected: int
    rejected_by_reason: dict[str, int]
    listed_by_source: dict[str, int]
    shards: int
    image_bytes: int


@dataclass(frozen=True)
class IngestResult:
    """What a run wrote. `summary()` is the JSON of `<output>/_SUCCESS`: no timestamps or
    timings, so the same input gives the same summary bytes too."""

    config: IngestConfig  # as run: local paths absolute
    classes: ClassList
    splits: dict[str, SplitCounts]
    notes: dict
    stale_shards_removed: int

    @property
    def output(self) -> str:
        return self.config.output.rstrip("/")

    @property
    def written(self) -> int:
        return sum(s.written for s in self.splits.values())

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.splits.values())

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        total = Counter()
        for counts in self.splits.values():
            total.update(counts.rejected_by_reason)
        return dict(sorted(total.items()))

    def summary_text(self) -> str:
        """The bytes of `_SUCCESS`."""
        config = self.config
        summary = {
            "format": FORMAT,
            "schema": {f.name: str(f.type) for f in SCHEMA},
            "written": self.written,
            "rejected": self.rejected,
            "rejected_by_reason": self.rejected_by_reason,
            "splits": {name: asdict(counts) for name, counts in self.splits.items()},
            "sources": {"voc": config.voc, "sbd": config.sbd, "unlabeled": config.unlabeled},
            "classes": self.classes.to_dict(),
            "num_classes": self.classes.num_classes,
            "notes": self.notes,
            "stale_shards_removed": self.stale_shards_removed,
            "settings": to_dict(config),
        }
        return json.dumps(summary, indent=2) + "\n"

    def summary(self) -> dict:
        """`_SUCCESS` as its readers get it (tuples as lists)."""
        return json.loads(self.summary_text())


def load_classes(config: IngestConfig) -> ClassList:
    if config.classes:
        return parse_class_list(storage.read_text(config.classes))
    return voc_classes()


def check_config(config: IngestConfig) -> Checked:
    """The config with local paths absolute (Ray tasks read them from their own working
    directories) and its class list, after checking the settings, the class file and that
    every source given exists (an unlabeled prefix must hold images): a mistyped path fails
    in the driver with one line (ValueError, FileNotFoundError) before Ray starts or
    `<output>` is touched, instead of a "successful" empty dataset."""
    config.validate()
    paths = ("output", "voc", "sbd", "unlabeled", "classes")
    config = replace(config, **{name: storage.absolute(getattr(config, name)) for name in paths})
    for flag in ("voc", "sbd", "unlabeled"):
        uri = getattr(config, flag)
        if uri is not None and not storage.exists(uri):
            raise ValueError(f"--{flag} {uri} does not exist")
    if config.unlabeled is not None:
        kinds = images.IMAGE_EXTENSIONS + images.RASTER_EXTENSIONS
        found = next(storage.locate(config.unlabeled).walk(kinds, chunk=1), None)
        if found is None:
            kinds = ", ".join(kinds)
            raise ValueError(f"--unlabeled {config.unlabeled} holds no images ({kinds})")
    return Checked(config, load_classes(config))


def run(checked: Checked) -> IngestResult:
    """Ingest per a `check_config` result; the summary is also written to `<output>/_SUCCESS`."""
    import ray

    if not isinstance(checked, Checked):  # a bare IngestConfig would skip every check
        raise TypeError(f"run takes check_config(config), got {type(checked).__name__}")
    config, classes = checked.config, checked.classes
    started = time.perf_counter()
    init_ray()
    records, notes = plan.plan_records(config)
    planned_shards = plan.plan_shards(records, config.rows_per_shard)
    output = config.output.rstrip("/")
    storage.delete(storage.join(output, SUCCESS))  # mark "in progress" before touching shards
    log.info(
        "ingest: %d records in %d shards -> %s",
        sum(map(len, records.values())),
        len(planned_shards),
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
        [_shard_item(s) for s in planned_shards],
        override_num_blocks=max(1, len(planned_shards)),
    )
    pool = ray.data.TaskPoolStrategy(size=config.concurrency)  # not `concurrency=` (deprecated)
    ds = ds.map_batches(_write_batch, fn_kwargs=kwargs, batch_size=1, compute=pool)
    planned = time.perf_counter()
    results = sorted(ds.iter_rows(), key=lambda r: (r["split"], r["index"]))
    executed = time.perf_counter()

    keep = {s.key for s in planned_shards} | {r["error_file"] for r in results if r["error_file"]}
    owned = {s.split for s in planned_shards} | set(records) | {ERRORS}
    removed = _remove_stale(output, keep, owned)
    result = IngestResult(
        config, classes, _split_counts(records, planned_shards, results), notes, len(removed)
    )
    storage.write_text(storage.join(output, SUCCESS), result.summary_text())
    # Timings go to the log, not the summary: the summary stays byte-identical across runs.
    log.info(
        "ingest: planned %.1fs, shards %.1fs, finish %.1fs; %d written, %d rejected",
        planned - started,
        executed - planned,
        time.perf_counter() - executed,
        result.written,
        result.rejected,
    )
    return result


def _shard_item(shard: Shard) -> dict:
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
        shards.write_shard(_item_to_shard(s, i, r), **kwargs)
        for s, i, r in zip(batch["split"], batch["index"], batch["records"], strict=True)
    ]
    return {key: [res[key] for res in results] for key in results[0]} if results else {}


def _split_counts(records, planned_shards, results) -> dict[str, SplitCounts]:
    per_split = {}
    for split in records:
        rows = [r for r in results if r["split"] == split]
        reasons = Counter()
        sources = Counter()
        for r in rows:
            reasons.update(json.loads(r["reasons"]))
            sources.update(json.loads(r["sources"]))
        per_split[split] = SplitCounts(
            listed=len(records[split]),
            written=sum(r["written"] for r in rows),
            rejected=sum(r["rejected"] for r in rows),
            rejected_by_reason=dict(sorted(reasons.items())),
            listed_by_source=dict(sorted(sources.items())),
            shards=sum(1 for s in planned_shards if s.split == split),
            image_bytes=sum(r["image_bytes"] for r in rows),
        )
    return per_split


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
