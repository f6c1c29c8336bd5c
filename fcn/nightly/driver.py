"""Nightly batch segmentation: new or changed images under a prefix -> palette mask PNGs.

`run` reads like Ray's batch-inference examples: check (settings, model, input, all before
Ray starts) -> plan tonight's work against the state (`fcn.nightly.plan`: Arrow tables,
nothing per image in Python) -> the source (an image prefix or an ingested split,
`fcn.nightly.source`) -> map_batches(read + decode, CPU tasks) -> map_batches(`Predictor`, an
actor pool; CUDA when GPUs are asked for) -> map_batches(PNG encode + write, CPU tasks, each
batch's state part written right after its masks) -> the run's manifest -> merge the parts
into the state snapshot -> the night's insight (drift report, labeling queue) -> the summary
(`fcn.nightly.summary`: printed by jobs/segment.py, logged to MLflow when
MLFLOW_TRACKING_URI is set).

Exactly once: a mask goes to a key fixed by the image key and is written whole, and finished
batches are in the state's parts before a kill can lose them, so a rerun redoes at most the
batches in flight and never leaves two masks or a truncated one. docs/nightly.md has the rest.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from fcn import storage, tracking
from fcn.config import SegmentConfig
from fcn.engine.checkpoint import CheckpointConfig
from fcn.engine.classes import ClassList
from fcn.nightly import insight, manifest, masks, overlays, raster_actor, schema, stages, state
from fcn.nightly import plan as planning
from fcn.nightly.plan import Plan, SplitPlan
from fcn.nightly.predictor import Predictor
from fcn.nightly.raster_actor import RasterSegmenter
from fcn.nightly.schema import Status
from fcn.nightly.source import Source, resolve
from fcn.nightly.summary import Summary, count, log_to_mlflow
from fcn.runtime import ALLOCATOR_ENV, init_ray, placement_resources
from fcn.storage import Location

MAX_BLOCKS = 2000  # about one block per batch (a unit of scheduling), capped for huge nights
IO_CPUS = 0.5  # the CPU stages wait on the store half the time: two share a core


class NothingToSegment(ValueError):
    """The input lists no images: a mistyped prefix must not look like a quiet night."""


@dataclasses.dataclass(frozen=True)
class Night:
    """Tonight's job, resolved once on the driver before any Ray start."""

    config: SegmentConfig  # local paths made absolute
    run_id: str
    model: str  # pinned: a registry alias resolved to its version
    checkpoint_config: CheckpointConfig  # the model's (classes, training distribution)
    source: Source
    output: Location
    shown: Location | None  # --save-overlays
    # Versions the champion was rolled back from: --resegment-older-models redoes their masks
    retired: frozenset[str] = frozenset()

    @property
    def classes(self) -> ClassList:
        return self.checkpoint_config.classes


def run(config: SegmentConfig) -> Summary:
    """Segment what is new under `config.input`; returns the summary (printed by jobs/)."""
    started = time.time()
    night = check(config)
    done, sources = state.read(night.output)
    work = plan(night, done)
    pipeline_started = time.time()
    results = segment(night, work)
    pipeline_seconds = time.time() - pipeline_started
    table = _run_table(results, work.refused, night)
    manifest_at = state.run_manifest(night.output, night.run_id)
    manifest.write(manifest_at, table)
    if table.num_rows or sources != _single_snapshot(sources):
        state.merge(night.output, night.run_id)
    counts = count(table, results, work)
    seconds = round(time.time() - started, 3)
    report, files = _insight(night, table)
    summary = Summary(
        run_id=night.run_id,
        model=night.model,
        input=night.config.input,
        masks=night.config.output,
        manifest=manifest_at.uri,
        report=insight.report_dir(night.output, night.run_id).uri,
        counts=counts,
        max_error_fraction=night.config.max_error_fraction,
        seconds=seconds,
        images_per_s=round(counts.done / pipeline_seconds, 3) if counts.done else 0.0,
        drift=report.drift,
        drift_distance=report.distance,
        overlays=_overlays(night, table),
    )
    log_to_mlflow(night.config, summary, report, files)
    return summary


# --- check -----------------------------------------------------------------------------------


def check(config: SegmentConfig) -> Night:
    """Settings, model and locations checked (a ValueError or FileNotFoundError with one
    line), before any Ray start or MLflow run."""
    config.validate()
    config = absolute_paths(config)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    # Fail early, clearly; pinned: every actor loads the same version if the alias moves.
    model, checkpoint_config = tracking.checked_model(config.model)
    input, output = storage.locate(config.input), storage.locate(config.output)
    shown = storage.locate(config.save_overlays) if config.save_overlays else None
    if shown:
        overlays.check(shown, input, output)
    source = resolve(config.input_format, input, output)
    retired = _retired(model) if config.resegment_older_models else frozenset()
    return Night(config, run_id, model, checkpoint_config, source, output, shown, retired)


def _retired(model: str) -> frozenset[str]:
    """The registry versions of `model`'s registered model that a rollback moved the champion
    away from (the champion history), as model URIs."""
    match = tracking.REGISTRY_VERSION.fullmatch(model)
    if not match:
        return frozenset()
    name = match[1]
    return frozenset(f"models:/{name}/{v}" for v in tracking.retired_versions(name))


def absolute_paths(config: SegmentConfig) -> SegmentConfig:
    """Local paths made absolute: actors run in their own working directories."""
    paths = ("input", "output", "model", "save_overlays")
    return dataclasses.replace(config, **{p: storage.absolute(getattr(config, p)) for p in paths})


# --- plan ------------------------------------------------------------------------------------


def plan(night: Night, done: pa.Table) -> Plan | SplitPlan:
    """Tonight's work against the state `done` (fcn.nightly.plan)."""
    config, source, output = night.config, night.source, night.output
    if source.is_split:
        if config.max_images is not None:
            raise ValueError("--max-images needs an image prefix: a Parquet split has no age")
        if not source.files and not config.allow_empty:
            raise NothingToSegment(f"--input {config.input} holds no Parquet files")
        existing = planning.existing_masks(output)
        return planning.plan_split(
            source.split_uris(), done, existing, output, config, night.model, night.retired
        )
    listing, existing = planning.list_both(source.location, output)
    if not listing.num_rows and not config.allow_empty:
        raise NothingToSegment(
            f"--input {config.input} lists no images (jpg/png/bmp/webp) or rasters (tif): "
            "a mistyped prefix? (--allow-empty accepts an empty night)"
        )
    return planning.plan(
        listing, done, existing, source.location, output, config, night.model, night.retired
    )


# --- the pipeline ----------------------------------------------------------------------------


def segment(night: Night, work: Plan | SplitPlan) -> pa.Table:
    """Every row the pipeline produced (schema.MANIFEST), `skipped` ones included: photos
    through read + decode -> `Predictor` -> encode + write, rasters through `RasterSegmenter`."""
    if not (night.source.files if night.source.is_split else work.todo.num_rows):
        return schema.MANIFEST.empty_table()
    init_ray()
    config = night.config
    actors = {"num_cpus": config.cpus_per_actor, "num_gpus": config.gpus_per_actor}
    actors["resources"] = placement_resources(config.placement_resource)
    if config.gpus_per_actor == 0:  # CPU actors: the allocator settings (fcn.runtime)
        actors["runtime_env"] = {"env_vars": ALLOCATOR_ENV}
    written = {
        "parts": state.parts_dir(night.output, night.run_id),
        "model": night.model,
        "run_id": night.run_id,
    }
    work, raster_rows = _rasters_apart(work)
    pipelines = []
    if night.source.is_split or work.todo.num_rows:
        pipelines.append(_photos(night, work, actors, written))
    if raster_rows.num_rows:
        pipelines.append(_rasters(night, raster_rows, actors, written))
    tables = [
        t
        for ds in pipelines
        for t in ds.iter_batches(batch_format="pyarrow", batch_size=None)
        if t.num_rows
    ]
    if raster_rows.num_rows:
        raster_actor.remove_parts(night.output, night.run_id)
    return pa.concat_tables(tables) if tables else schema.MANIFEST.empty_table()


def _photos(night: Night, work: Plan | SplitPlan, actors: dict, written: dict):
    """read + decode (CPU tasks) -> the model actor pool -> PNG encode + write (CPU tasks)."""
    import ray

    config = night.config
    ds = _read(night, work).map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": night.model, "config": config},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        **actors,
    )
    encode = {**written, "output": night.output, "palette": night.classes.palette()}
    return ds.map_batches(stages.encode_write, fn_kwargs=encode, **_io(config))


def _rasters(night: Night, rows: pa.Table, actors: dict, written: dict):
    """One raster (or one band of a raster) per call on an actor pool of its own: each reads,
    predicts and writes it tile by tile (fcn.nightly.raster_actor). With fewer rasters than
    actors, rasters are cut into bands of tile rows, and each raster's bands are merged into
    its mask once all are done."""
    import ray

    config = night.config
    bands = raster_actor.bands_per_raster(rows.num_rows, config.concurrency)
    if bands > 1:
        rows = raster_actor.band_rows(rows, night.output, night.run_id, bands)
    constructor = {"model_uri": night.model, "config": config, "classes": night.classes}
    ds = ray.data.from_arrow(_blocks(rows, 1)).map_batches(
        RasterSegmenter,
        fn_constructor_kwargs={**constructor, **written},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(config.concurrency, rows.num_rows)),
        **actors,
    )
    if bands == 1:
        return ds
    merge = {"classes": night.classes, **written}
    # A few rows per raster: a handful of shuffle partitions, not Ray Data's default of 200.
    partitions = min(rows.num_rows, config.concurrency)
    return ds.groupby("uri", num_partitions=partitions).map_groups(
        raster_actor.merge, fn_kwargs=merge, batch_format="pyarrow", num_cpus=IO_CPUS
    )


def _rasters_apart(work: Plan | SplitPlan) -> tuple[Plan | SplitPlan, pa.Table]:
    """(the plan without its rasters, the rasters' rows); a split's rasters are references
    the stage that reads the split drops."""
    if isinstance(work, SplitPlan):
        return work, work.rasters
    raster = pc.match_substring_regex(work.todo.column("path"), masks.RASTER_KEY)
    apart = dataclasses.replace(work, todo=work.todo.filter(pc.invert(raster)))
    return apart, work.todo.filter(raster)


def _blocks(table: pa.Table, rows_per_batch: int) -> list[pa.Table]:
    """`table` in about one block per batch (a unit of scheduling), at most MAX_BLOCKS."""
    batches = math.ceil(table.num_rows / rows_per_batch)
    chunk = math.ceil(table.num_rows / min(MAX_BLOCKS, batches))
    return [table.slice(i, chunk) for i in range(0, table.num_rows, chunk)]


def _io(config: SegmentConfig) -> dict:
    """map_batches arguments of a CPU stage: a task pool of bounded size (Ray 2.51 deprecates
    `concurrency=` for tasks)."""
    import ray

    return {
        "batch_format": "pyarrow",
        "batch_size": config.batch_size,
        "num_cpus": IO_CPUS,
        "compute": ray.data.TaskPoolStrategy(size=config.io_concurrency),
    }


def _read(night: Night, work: Plan | SplitPlan):
    """The source as a Ray Data dataset of decoded rows (schema.DECODED)."""
    import ray

    config, io = night.config, _io(night.config)
    if night.source.is_split:
        kwargs = {"output": night.output, "known": [ray.put(work.known)], "config": config}
        return night.source.read_split().map_batches(stages.decide_parquet, fn_kwargs=kwargs, **io)
    ds = ray.data.from_arrow(_blocks(work.todo, config.batch_size))
    read = {"input": night.source.location, "config": config}
    return ds.map_batches(stages.read_decode, fn_kwargs=read, **io)


# --- after the pipeline: manifest, merge, insight --------------------------------------------


def _run_table(results: pa.Table, refused: pa.Table, night: Night) -> pa.Table:
    """The run's manifest: what it segmented or failed (unchanged images are counts)."""
    finished = results.filter(pc.invert(schema.where(results, Status.SKIPPED)))
    if not refused.num_rows:
        return finished
    now = time.time()
    columns = {"status": Status.ERROR, "model": night.model, "run_id": night.run_id}
    for name, value in {**columns, "time": now, "seconds": 0.0}.items():
        refused = refused.append_column(name, pa.array([value] * refused.num_rows))
    return pa.concat_tables([schema.conform(refused, schema.MANIFEST), finished])


def _single_snapshot(sources: list[str]) -> list[str]:
    """`sources` when they are one snapshot alone (nothing to fold), else an empty list."""
    alone = len(sources) == 1 and f"/{state.STATE}/snapshot-" in sources[0]
    return sources if alone else []


def _insight(night: Night, table: pa.Table) -> tuple[insight.DriftReport, dict[str, bytes]]:
    """The night's drift report and labeling queue, written; (the report, its files)."""
    config, output = night.config, night.output
    report = insight.drift_report(
        table,
        night.classes,
        night.checkpoint_config.class_distribution,
        output,
        night.run_id,
        config,
    )
    files = insight.write(output, report)
    if config.queue_size:
        queued = insight.labeling_queue(
            table, night.classes, output, night.run_id, config.queue_size,
            night.source.image_bytes, config.queue_strategy, config.queue_seed,
        )  # fmt: skip
        files = {**files, **queued}
    return report, files


def _overlays(night: Night, table: pa.Table) -> overlays.Written | None:
    """--save-overlays: reads back what the night wrote, as CPU tasks (never the model actor)."""
    if not night.shown:
        return None
    return overlays.write(
        table, night.shown, night.output, night.classes, night.source.image_bytes, night.config,
        IO_CPUS,
    )  # fmt: skip
