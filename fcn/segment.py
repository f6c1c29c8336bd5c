"""Nightly batch segmentation: new or changed images under a prefix -> palette mask PNGs.

Pipeline (`run`): list the input (or read an ingested Parquet split), drop what the manifests
say is done, then Ray Data `map_batches` over an actor pool of `Predictor`s (the model loaded
once per actor; CUDA when GPUs are asked for; `fcn.predictor`), which read, decode, segment
and write masks, appending manifest parts as batches finish. The driver then writes the run's
manifest, prints a summary and, with MLFLOW_TRACKING_URI set, logs an MLflow run.

Incremental: an image is done when a manifest row has its uri and etag (`size:mtime` of the
object; `sha256` of the bytes for Parquet rows) with status `ok` (and its mask still exists),
or `error` unless `--retry-errors`. Exactly once: masks go to a key fixed by the image key and
are written whole, and finished batches are in the manifest parts before a kill can lose
them, so a rerun redoes at most the batches in flight and never leaves two masks or a
truncated one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import time
import uuid

import pyarrow as pa

from fcn import checkpoint, images, manifest, masks, storage, tracking
from fcn.config import SegmentConfig, to_dict
from fcn.predictor import Predictor
from fcn.runtime import ALLOCATOR_ENV, init_ray

MAX_BLOCKS = 2000


# --- planning (driver) -----------------------------------------------------------------------


def etag_of(info: storage.FileInfo) -> str:
    return f"{info.size}:{info.mtime}"


def input_format(config: SegmentConfig) -> str:
    if config.input_format != "auto":
        return config.input_format
    return "parquet" if storage.list_files(config.input, (".parquet",)) else "images"


def list_images(config: SegmentConfig) -> list[storage.FileInfo]:
    """Images under the input prefix, minus anything under the output prefix (masks written
    inside the input tree must not come back as images the next night)."""
    input_path = storage.strip_scheme(config.input).rstrip("/")
    output_path = storage.strip_scheme(config.output).rstrip("/")
    if storage.scheme(config.input) == storage.scheme(config.output) and input_path == output_path:
        raise ValueError("--output must differ from --input: masks would overwrite images")
    found = storage.list_files(config.input, images.IMAGE_EXTENSIONS)
    return [f for f in found if not storage.strip_scheme(f.uri).startswith(output_path + "/")]


def plan(config: SegmentConfig, images, done, model: str, run_id: str):
    """(todo rows for the actors, manifest rows decided here: skipped or refused keys)."""
    todo, decided, claimed = [], [], {}
    now = time.time()
    for info in images:
        base = {"uri": info.uri, "etag": etag_of(info), "size": info.size, "model": model}
        base.update(run_id=run_id, time=now, seconds=0.0)
        try:
            mask_uri = storage.join(
                config.output, masks.mask_key(storage.relative_key(config.input, info.uri))
            )
        except ValueError as err:
            decided.append({**base, "status": "error", "error": f"bad object key: {err}"})
            continue
        base["mask_uri"] = mask_uri
        if mask_uri in claimed:  # a/x.jpg and a/x.png both want a/x.png
            reason = f"mask key {mask_uri} is already taken by {claimed[mask_uri]}"
            decided.append({**base, "status": "error", "error": reason})
            continue
        claimed[mask_uri] = info.uri
        previous = done.get((info.uri, base["etag"]))
        if previous and not config.force:
            if previous["status"] == "error":
                note = f"unchanged since it failed: {previous.get('error')}"
                decided.append({**base, "status": "skipped", "error": note})
                continue
            if previous.get("mask_uri") == mask_uri:
                decided.append({**base, "status": "skipped"})
                continue
        todo.append({k: base[k] for k in ("uri", "mask_uri", "etag", "size")})
    return todo, decided


def pin_model_uri(uri: str) -> str:
    """`models:/name@alias` -> `models:/name/<version>`: every actor loads the same version
    even if the alias moves mid-run, and the manifest names the exact version."""
    match = re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri)
    if not match:
        return uri
    from mlflow import MlflowClient

    version = MlflowClient().get_model_version_by_alias(match[1], match[2]).version
    return f"models:/{match[1]}/{version}"


# --- the job (driver) ------------------------------------------------------------------------


def _segment(config: SegmentConfig, fmt: str, todo, done, model: str, run_id: str) -> pa.Table:
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    settings = {**to_dict(config), "parts_uri": manifest.parts_uri(config.output, run_id)}
    settings["scales"] = tuple(config.scales)
    kwargs = {"model_uri": model, "settings": settings, "run_id": run_id}
    if fmt == "parquet":
        fs, path = storage.pyarrow_filesystem(config.input)
        ds = ray.data.read_parquet(path, filesystem=fs).select_columns(["uri", "image"])
        kwargs["done_ref"] = [ray.put(done)]  # in a list: handed over as a reference
    else:
        if not todo:
            return manifest.SCHEMA.empty_table()
        # About one block per batch (a block is a unit of scheduling), capped for huge nights.
        blocks = min(MAX_BLOCKS, max(1, len(todo) // config.batch_size))
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
    remote_args = {"num_cpus": config.cpus_per_actor, "num_gpus": config.gpus_per_actor}
    if config.gpus_per_actor == 0:  # CPU actors: the allocator settings (fcn.runtime)
        remote_args["runtime_env"] = {"env_vars": ALLOCATOR_ENV}
    out = ds.map_batches(
        Predictor,
        fn_constructor_kwargs=kwargs,
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        **remote_args,
    )
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    return (
        pa.concat_tables(tables).cast(manifest.SCHEMA) if tables else manifest.SCHEMA.empty_table()
    )


def absolute_paths(config: SegmentConfig) -> SegmentConfig:
    """Local paths made absolute: actors run in their own working directories."""

    def fix(uri: str) -> str:
        if storage.is_remote(uri) or tracking.is_mlflow_uri(uri) or "://" in uri:
            return uri
        return storage.strip_scheme(uri)

    return dataclasses.replace(
        config, input=fix(config.input), output=fix(config.output), model=fix(config.model)
    )


def validate(config: SegmentConfig) -> None:
    """Refuse settings that cannot work before any listing or model download."""
    if config.batch_size < 1 or config.concurrency < 1:
        raise ValueError("--batch-size and --concurrency must be >= 1")
    if not config.scales or any(s <= 0 for s in config.scales):
        raise ValueError(f"--scales must be positive, got {config.scales}")
    if not 0 <= config.max_error_fraction <= 1:
        raise ValueError("--max-error-fraction must lie in [0, 1]")


def run(config: SegmentConfig) -> dict:
    """Segment what is new under `config.input`; returns the summary (also printed by jobs/)."""
    validate(config)
    config = absolute_paths(config)
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    model = pin_model_uri(config.model)
    with tempfile.TemporaryDirectory(prefix="fcn-segment-") as tmp:  # fail early, clearly
        checkpoint.check(tracking.resolve_checkpoint(model, tmp))
    fmt = input_format(config)
    previous = manifest.read_all(config.output)
    done = {} if config.force else manifest.finished(previous, config.retry_errors)
    # An `ok` row counts only while its mask is still there (someone may have deleted it).
    existing = {f.uri for f in storage.list_files(config.output, (images.MASK_EXTENSION,))}
    done = {k: v for k, v in done.items() if v["status"] == "error" or v["mask_uri"] in existing}
    todo, decided = [], []
    if fmt == "images":
        todo, decided = plan(config, list_images(config), done, model, run_id)
    if todo or fmt == "parquet":
        init_ray()
    pipeline_started = time.time()
    results = _segment(config, fmt, todo, done, model, run_id)
    pipeline_seconds = time.time() - pipeline_started
    table = pa.concat_tables([manifest.to_table(decided), results])
    manifest_uri = manifest.run_uri(config.output, run_id)
    manifest.write(manifest_uri, table)
    storage.delete(manifest.parts_uri(config.output, run_id), recursive=True)
    manifest.remove_empty_parts_dir(config.output)
    summary = summarize(table, config, model, run_id, manifest_uri)
    summary["seconds"] = round(time.time() - started, 3)
    summary["images_per_s"] = (
        round(summary["done"] / pipeline_seconds, 3) if summary["done"] else 0.0
    )
    log_to_mlflow(config, summary)
    return summary


def summarize(table: pa.Table, config: SegmentConfig, model: str, run_id: str, manifest_uri: str):
    statuses = table.column("status").to_pylist()
    done, failed, skipped = (statuses.count(s) for s in ("ok", "error", "skipped"))
    fraction = failed / (done + failed) if done + failed else 0.0
    return {
        "run_id": run_id,
        "model": model,
        "input": config.input,
        "masks": config.output,
        "manifest": manifest_uri,
        "total": len(statuses),
        "done": done,
        "skipped": skipped,
        "failed": failed,
        "error_fraction": round(fraction, 4),
        "max_error_fraction": config.max_error_fraction,
        "ok": fraction <= config.max_error_fraction,
    }


def log_to_mlflow(config: SegmentConfig, summary: dict) -> None:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    import mlflow

    mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name=f"segment-{summary['run_id']}"):
        mlflow.log_params({k: str(v) for k, v in to_dict(config).items()})
        mlflow.set_tags({"manifest": summary["manifest"], "model_version": summary["model"]})
        keys = ("done", "skipped", "failed", "error_fraction", "images_per_s", "seconds")
        mlflow.log_metrics({k: float(summary[k]) for k in keys})


def print_summary(summary: dict, file=sys.stdout) -> None:
    print(
        f"segment: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} "
        f"failed of {summary['total']} images; {summary['images_per_s']} images/s; "
        f"{summary['seconds']} s in all",
        file=file,
    )
    print(f"masks:    {summary['masks']}", file=file)
    print(f"manifest: {summary['manifest']}", file=file)
    print(f"model:    {summary['model']}", file=file)
    if not summary["ok"]:
        print(
            f"error fraction {summary['error_fraction']} exceeds --max-error-fraction "
            f"{summary['max_error_fraction']}: see the manifest's error column",
            file=file,
        )
