"""What a night did, as the segment job reports it: the printed summary, the exit status and
the MLflow run (its counts as metrics, the drift report's numbers and files beside them)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from fcn import tracking
from fcn.config import SegmentConfig, to_dict
from fcn.nightly import insight, schema
from fcn.nightly.overlays import Written
from fcn.nightly.plan import Plan
from fcn.nightly.schema import Status

EXIT_ERRORS, EXIT_SETTINGS, EXIT_DRIFT = 1, 2, 3  # 2: jobs/segment.py, before any work
METRICS = ("done", "skipped", "failed", "error_fraction", "images_per_s", "seconds")


@dataclass(frozen=True)
class Counts:
    """Images by what became of them tonight."""

    done: int
    failed: int
    skipped: int  # unchanged since their mask (or their error) was made
    deferred: int  # over --max-images: the next night's
    resegmented: int  # of `done` and `failed`: unchanged images an older model had segmented

    @property
    def total(self) -> int:
        return self.done + self.failed + self.skipped + self.deferred

    @property
    def error_fraction(self) -> float:
        tried = self.done + self.failed
        return self.failed / tried if tried else 0.0


def count(table: pa.Table, results: pa.Table, work) -> Counts:
    """Counts of the run's manifest `table`; `results`: every row the pipeline gave (an
    ingested split's unchanged rows are `skipped` there), `work`: the plan."""
    done = pc.sum(schema.where(table, Status.OK)).as_py() or 0
    failed = pc.sum(schema.where(table, Status.ERROR)).as_py() or 0
    if not isinstance(work, Plan):  # an ingested split: the stage decided what was unchanged
        skipped = pc.sum(schema.where(results, Status.SKIPPED)).as_py() or 0
        return Counts(done, failed, skipped + work.unchanged_rasters, deferred=0, resegmented=0)
    return Counts(done, failed, work.unchanged, work.deferred, work.resegment)


@dataclass(frozen=True)
class Summary:
    run_id: str
    model: str  # the exact version that segmented (models:/name/7, or a checkpoint URI)
    input: str
    masks: str  # --output
    manifest: str  # the run's manifest URI
    report: str  # the night's report folder
    counts: Counts
    max_error_fraction: float
    seconds: float  # the whole run
    images_per_s: float  # done images over the pipeline's time
    drift: bool
    drift_distance: float | None
    overlays: Written | None = None  # with --save-overlays

    @property
    def ok(self) -> bool:
        """False when too many images failed (exit status 1)."""
        return self.counts.error_fraction <= self.max_error_fraction

    @property
    def error_fraction(self) -> float:
        """Failed over tried, as printed and logged (4 decimals)."""
        return round(self.counts.error_fraction, 4)

    def metrics(self) -> dict[str, float]:
        values = {**vars(self.counts), "error_fraction": self.error_fraction}
        values.update(images_per_s=self.images_per_s, seconds=self.seconds)
        return {name: float(values[name]) for name in METRICS}


def exit_status(summary: Summary) -> int:
    """0, or EXIT_ERRORS (too many failed images: the night itself is broken, so its drift
    means little and errors win), or EXIT_DRIFT (the night drifted past --drift-threshold)."""
    if not summary.ok:
        return EXIT_ERRORS
    return EXIT_DRIFT if summary.drift else 0


def print_summary(summary: Summary, file=sys.stdout) -> None:
    n = summary.counts
    print(
        f"segment: {n.done} done, {n.skipped} skipped, {n.failed} failed of {n.total} images; "
        f"{n.deferred} left for the next night; {summary.images_per_s} images/s; "
        f"{summary.seconds} s in all",
        file=file,
    )
    print(f"masks:    {summary.masks}", file=file)
    print(f"manifest: {summary.manifest}", file=file)
    print(f"model:    {summary.model}", file=file)
    print(f"report:   {summary.report} (drift distance {summary.drift_distance})", file=file)
    if summary.overlays:
        shown = summary.overlays
        print(f"overlays: {shown.dir} ({shown.written} written, {shown.failed} failed)", file=file)
    if summary.drift:
        print("drift: the distance exceeds --drift-threshold (exit status 3)", file=file)
    if not summary.ok:
        print(
            f"error fraction {summary.error_fraction} exceeds --max-error-fraction "
            f"{summary.max_error_fraction}: see the manifest's error column",
            file=file,
        )


def log_to_mlflow(
    config: SegmentConfig, summary: Summary, report: insight.DriftReport, files: dict
) -> None:
    """One MLflow run per night, when a tracking server is configured (a nightly job with no
    server configured should not grow a local mlruns/ beside the code). The drift report's
    numbers are metrics, its files artifacts under `insight/`, `drift` a tag to alert on."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    # The same model tags as evaluation runs: model_uri, and for a registry version its name
    # and number apart (one meaning for each tag name across jobs).
    tags = {"manifest": summary.manifest, **tracking.model_tags(summary.model)}
    tags.update(report=summary.report, drift=str(report.drift).lower())
    tracking.log_run(
        config.experiment,
        f"segment-{summary.run_id}",
        to_dict(config),
        tags,
        {**summary.metrics(), **insight.metrics(report)},
        {f"insight/{name}": data for name, data in files.items()},
    )
