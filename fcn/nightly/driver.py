"""Nightly batch segmentation: new or changed images under a prefix -> palette mask PNGs.

The driver (`run`) checks the model, lists the input and plans tonight's work against the
state (`fcn.nightly`: Arrow tables, nothing per image in Python), then runs a Ray Data
pipeline shaped like Ray's batch-inference examples: read + decode as CPU tasks, the model in
an actor pool (`fcn.predictor`; CUDA when GPUs are asked for), PNG encode + object writes as
CPU tasks, each batch's manifest part written right after its masks. At the end it writes the
run's manifest (the images it segmented or failed), folds the parts into the state snapshot,
prints a summary and, with MLFLOW_TRACKING_URI set, logs an MLflow run.

Exactly once: a mask goes to a key fixed by the image key and is written whole, and finished
batches are in the state's parts before a kill can lose them, so a rerun redoes at most the
batches in flight and never leaves two masks or a truncated one. docs/nightly.md has the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from fcn import storage, tracking
from fcn.config import SegmentConfig, to_dict
from fcn.engine.checkpoint import CheckpointConfig
from fcn.nightly import insight, manifest, overlays, stages, state
from fcn.nightly import plan as planning
from fcn.nightly.predictor import Predictor
from fcn.runtime import ALLOCATOR_ENV, init_ray, placement_resources
from fcn.tracking.models import check_model

MAX_BLOCKS = 2000  # about one block per batch (a unit of scheduling), capped for huge nights
IO_CPUS = 0.5  # the CPU stages wait on the store half the time: two share a core


class NothingToSegment(ValueError):
    """The input lists no images: a mistyped prefix must not look like a quiet night."""


def input_format(config: SegmentConfig, input: storage.Location, output: storage.Location):
    """'parquet' or 'images'; files under the output (masks, state) never count."""
    if config.input_format != "auto":
        return config.input_format
    return "parquet" if _parquet_files(input, output) else "images"


def _parquet_files(input: storage.Location, output: storage.Location) -> list[str]:
    found = planning.collect(input.walk((".parquet",))).column("path")
    return pc.filter(found, pc.invert(pc.starts_with(found, output.path + "/"))).to_pylist()


def absolute_paths(config: SegmentConfig) -> SegmentConfig:
    """Local paths made absolute: actors run in their own working directories."""
    paths = ("input", "output", "model", "save_overlays")
    return dataclasses.replace(config, **{p: storage.absolute(getattr(config, p)) for p in paths})


# --- the pipeline ----------------------------------------------------------------------------


def _source(config, fmt, input, output, work, done):
    """The Ray Data dataset of decoded rows (read + decode as CPU tasks)."""
    import ray

    io = {"batch_format": "pyarrow", "batch_size": config.batch_size, "num_cpus": IO_CPUS}
    # A task pool of bounded size (Ray 2.51 deprecates `concurrency=` for tasks).
    io["compute"] = ray.data.TaskPoolStrategy(size=config.io_concurrency)
    if fmt == "parquet":
        files = _parquet_files(input, output)
        fs = planning.arrow_filesystem(input)
        ds = ray.data.read_parquet(files, filesystem=fs).select_columns(["uri", "image"])
        kwargs = {"output": output, "known": [ray.put(done.known)], "config": config}
        return ds.map_batches(stages.decide_parquet, fn_kwargs=kwargs, **io)
    todo = work.todo
    chunk = math.ceil(todo.num_rows / min(MAX_BLOCKS, math.ceil(todo.num_rows / config.batch_size)))
    ds = ray.data.from_arrow([todo.slice(i, chunk) for i in range(0, todo.num_rows, chunk)])
    return ds.map_batches(stages.read_decode, fn_kwargs={"input": input, "config": config}, **io)


def _segment(config, fmt, input, output, work, done, model, palette, run_id) -> pa.Table:
    """Every row the pipeline produced (manifest.SCHEMA), `skipped` ones included."""
    import ray

    remote_args = {"num_cpus": config.cpus_per_actor, "num_gpus": config.gpus_per_actor}
    remote_args["resources"] = placement_resources(config.placement_resource)
    if config.gpus_per_actor == 0:  # CPU actors: the allocator settings (fcn.runtime)
        remote_args["runtime_env"] = {"env_vars": ALLOCATOR_ENV}
    ds = _source(config, fmt, input, output, work, done).map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": model, "config": config},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        **remote_args,
    )
    parts = state.parts_dir(output, run_id)
    kwargs = {"output": output, "palette": palette, "parts": parts, "model": model}
    ds = ds.map_batches(
        stages.encode_write,
        fn_kwargs={**kwargs, "run_id": run_id},
        batch_format="pyarrow",
        batch_size=config.batch_size,
        num_cpus=IO_CPUS,
        compute=ray.data.TaskPoolStrategy(size=config.io_concurrency),
    )
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    return pa.concat_tables(tables) if tables else manifest.SCHEMA.empty_table()


# --- the job (driver) ------------------------------------------------------------------------


def _check_model(config: SegmentConfig) -> tuple[str, CheckpointConfig]:
    """(the pinned model URI, its config), checked before any Ray start."""
    model = tracking.pin_model_uri(config.model)
    return model, check_model(model)


def _plan(config, fmt, input, output, done, model):
    if fmt == "parquet":
        if config.max_images is not None:
            raise ValueError("--max-images needs an image prefix: a Parquet split has no age")
        if not _parquet_files(input, output) and not config.allow_empty:
            raise NothingToSegment(f"--input {config.input} holds no Parquet files")
        return None
    listing, existing = planning.list_both(input, output)
    if not listing.num_rows and not config.allow_empty:
        raise NothingToSegment(
            f"--input {config.input} lists no images (jpg/png/bmp/webp): a mistyped prefix? "
            "(--allow-empty accepts an empty night)"
        )
    return planning.plan(listing, done, existing, input, output, config, model)


def _done_for_actors(done, config, input, output, model) -> planning.SplitPlan:
    """An ingested split's plan (fcn.nightly.plan.plan_split), from its `uri` column alone:
    Parquet reads that column without the image bytes."""
    files = _parquet_files(input, output)
    uris = pa.chunked_array([], pa.string())
    if files:
        uris = planning.split_dataset(input, files).to_table(columns=["uri"]).column("uri")
    existing = planning.existing_masks(output)
    return planning.plan_split(uris, done, existing, output, config, model)


def run(config: SegmentConfig) -> dict:
    """Segment what is new under `config.input`; returns the summary (also printed by jobs/)."""
    config.validate()
    config = absolute_paths(config)
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    model, ckpt_config = _check_model(config)  # fail early, clearly
    classes = ckpt_config.classes
    palette = classes.palette()
    input, output = storage.locate(config.input), storage.locate(config.output)
    shown = storage.locate(config.save_overlays) if config.save_overlays else None
    if shown:
        overlays.check(shown, input, output)
    fmt = input_format(config, input, output)
    done, sources = state.read(output)
    work = _plan(config, fmt, input, output, done, model)
    if fmt == "parquet":
        done = _done_for_actors(done, config, input, output, model)
    pipeline_started = time.time()
    results = manifest.SCHEMA.empty_table()
    if fmt == "parquet" or work.todo.num_rows:
        init_ray()
        results = _segment(config, fmt, input, output, work, done, model, palette, run_id)
    pipeline_seconds = time.time() - pipeline_started
    refused = work.refused if work else done.refused
    table = _run_table(results, refused, model, run_id)
    manifest_at = state.run_manifest(output, run_id)
    manifest.write(manifest_at, table)
    if table.num_rows or sources != _single_snapshot(sources):
        state.merge(output, run_id)
    summary = summarize(table, results, work, config, model, run_id, manifest_at.uri)
    summary["seconds"] = round(time.time() - started, 3)
    summary["images_per_s"] = (
        round(summary["done"] / pipeline_seconds, 3) if summary["done"] else 0.0
    )
    report = insight.drift_report(
        table, classes, ckpt_config.class_distribution, output, run_id, config
    )
    files = insight.write(output, report)
    if config.queue_size:
        read = functools.partial(_image_bytes, fmt, input, output)
        queued = insight.labeling_queue(table, classes, output, run_id, config.queue_size, read)
        files = {**files, **queued}
    summary.update(drift=report["drift"], drift_distance=report["distance"])
    summary["report"] = insight.report_dir(output, run_id).uri
    if shown:  # reads back what the night wrote: CPU tasks, never the model actor
        read = functools.partial(_image_bytes, fmt, input, output)
        summary["overlays"] = overlays.write(table, shown, output, classes, read, config, IO_CPUS)
    log_to_mlflow(config, summary, report, files)
    return summary


def _image_bytes(fmt, input, output, uris: list[str]) -> dict[str, bytes]:
    """uri -> encoded bytes of a few images (the labeling queue's), from objects or the split."""
    if fmt != "parquet" or not uris:
        return {uri: storage.locate(uri).read_bytes() for uri in uris}
    import pyarrow.dataset as pads

    split = planning.split_dataset(input, _parquet_files(input, output))
    rows = split.to_table(
        columns=["uri", "image"], filter=pads.field("uri").isin(pa.array(uris, pa.string()))
    )
    return dict(zip(rows.column("uri").to_pylist(), rows.column("image").to_pylist(), strict=True))


EXIT_ERRORS, EXIT_SETTINGS, EXIT_DRIFT = 1, 2, 3  # 2: jobs/segment.py, before any work


def exit_status(summary: dict) -> int:
    """0, or EXIT_ERRORS (too many failed images: the night itself is broken, so its drift
    means little and errors win), or EXIT_DRIFT (the night drifted past --drift-threshold)."""
    if not summary["ok"]:
        return EXIT_ERRORS
    return EXIT_DRIFT if summary.get("drift") else 0


def _single_snapshot(sources: list[str]) -> list[str]:
    """`sources` when they are one snapshot alone (nothing to fold), else an empty list."""
    alone = len(sources) == 1 and f"/{state.STATE}/snapshot-" in sources[0]
    return sources if alone else []


def _run_table(results: pa.Table, refused, model: str, run_id: str) -> pa.Table:
    """The run's manifest: what it segmented or failed (unchanged images are counts)."""
    finished = results.filter(pc.not_equal(results.column("status"), "skipped"))
    if refused is None or not refused.num_rows:
        return finished
    refused = refused.append_column("status", pa.array(["error"] * refused.num_rows))
    now = time.time()
    for name, value in (("model", model), ("run_id", run_id), ("time", now), ("seconds", 0.0)):
        refused = refused.append_column(name, pa.array([value] * refused.num_rows))
    return pa.concat_tables([manifest.conform(refused), finished])


def summarize(table, results, work, config, model, run_id, manifest_uri) -> dict:
    statuses = table.column("status")
    done = pc.sum(pc.equal(statuses, "ok")).as_py() or 0
    failed = pc.sum(pc.equal(statuses, "error")).as_py() or 0
    if work is None:  # Parquet input: the actors decided what was unchanged
        skipped = pc.sum(pc.equal(results.column("status"), "skipped")).as_py() or 0
        deferred = resegmented = 0
    else:
        skipped, deferred, resegmented = work.unchanged, work.deferred, work.resegment
    fraction = failed / (done + failed) if done + failed else 0.0
    return {
        "run_id": run_id,
        "model": model,
        "input": config.input,
        "masks": config.output,
        "manifest": manifest_uri,
        "total": done + failed + skipped + deferred,
        "done": done,
        "skipped": skipped,
        "failed": failed,
        "deferred": deferred,
        "resegmented": resegmented,
        "error_fraction": round(fraction, 4),
        "max_error_fraction": config.max_error_fraction,
        "ok": fraction <= config.max_error_fraction,
    }


def log_to_mlflow(config: SegmentConfig, summary: dict, report: dict, files: dict) -> None:
    """One MLflow run per night, when a tracking server is configured (a nightly job with no
    server configured should not grow a local mlruns/ beside the code). The drift report's
    numbers are metrics, its files artifacts under `insight/`, `drift` a tag to alert on."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    keys = ("done", "skipped", "failed", "error_fraction", "images_per_s", "seconds")
    # The same model tags as evaluation runs: model_uri, and for a registry version its name
    # and number apart (one meaning for each tag name across jobs).
    tags = {"manifest": summary["manifest"], **tracking.model_tags(summary["model"])}
    tags.update(report=summary["report"], drift=str(report["drift"]).lower())
    tracking.log_run(
        config.experiment,
        f"segment-{summary['run_id']}",
        to_dict(config),
        tags,
        {**{k: float(summary[k]) for k in keys}, **insight.metrics(report)},
        {f"insight/{name}": data for name, data in files.items()},
    )


def print_summary(summary: dict, file=sys.stdout) -> None:
    print(
        f"segment: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} "
        f"failed of {summary['total']} images; {summary['deferred']} left for the next night; "
        f"{summary['images_per_s']} images/s; {summary['seconds']} s in all",
        file=file,
    )
    print(f"masks:    {summary['masks']}", file=file)
    print(f"manifest: {summary['manifest']}", file=file)
    print(f"model:    {summary['model']}", file=file)
    print(f"report:   {summary['report']} (drift distance {summary['drift_distance']})", file=file)
    if "overlays" in summary:
        shown = summary["overlays"]
        print(f"overlays: {shown['dir']} ({shown['written']} written, {shown['failed']} failed)",
              file=file)  # fmt: skip
    if summary["drift"]:
        print("drift: the distance exceeds --drift-threshold (exit status 3)", file=file)
    if not summary["ok"]:
        print(
            f"error fraction {summary['error_fraction']} exceeds --max-error-fraction "
            f"{summary['max_error_fraction']}: see the manifest's error column",
            file=file,
        )
