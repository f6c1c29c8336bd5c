"""What a night's masks say about the data (docs/insight.md): the drift report under
`<output>/_reports/<run id>/` (report.json, report.md, drift.png) and the MLflow metrics, tags
and artifacts that carry the same numbers to the segment run.

References, each used when it exists (the report says which were missing):
  training  the checkpoint config.json's `class_distribution` (`pixel_counts`, `image_counts`,
            `images`: fcn.nightly.drift.Distribution.to_dict of the training split)
  trailing  the earlier runs' manifests (`_runs/`) of the last `drift_nights` nights that
            segmented something, summed
The alert distance is the largest overall distance over the references and both views.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow.parquet as pq

from fcn.engine.classes import ClassList
from fcn.engine.metrics import CLASS_METRIC_PREFIX, class_metric
from fcn.nightly import chart, cvat, drift, queue
from fcn.nightly.state import RUNS
from fcn.storage import Location, locate

REPORTS = "_reports"
HISTORY_NIGHTS = 30  # points on the chart's distance-over-nights line


def report_dir(output: Location, run_id: str) -> Location:
    return output.child(f"{REPORTS}/{run_id}")


def _earlier(output: Location, folder: str, suffix: str, run_id: str) -> list[str]:
    """Paths under `<output>/<folder>` ending in `suffix` of runs before `run_id`, newest first
    (run ids start with their UTC start time, so names sort by time)."""
    paths = []
    for chunk in output.child(folder).walk((suffix.rsplit(".", 1)[-1],)):
        paths += [p for p in chunk.column("path").to_pylist() if p.endswith(suffix)]
    mine = output.child(folder).path + "/"
    return sorted((p for p in paths if p[len(mine) :] < run_id), reverse=True)


def trailing(output: Location, run_id: str, num_classes: int, nights: int):
    """(summed distribution, run ids) of the last `nights` earlier runs that segmented images.
    Reads newest first and stops once it has them: the cost is a few manifests a night."""
    total, used = drift.empty(num_classes), []
    for path in _earlier(output, RUNS, ".parquet", run_id):
        if len(used) == nights:
            break
        data = output.fs.cat_file(path)
        night = drift.of_manifest(pq.read_table(io.BytesIO(data)), num_classes)
        if night.images:
            total, used = total + night, used + [path.rsplit("/", 1)[-1][: -len(".parquet")]]
    return total, used


def training(recorded: Mapping | None, num_classes: int) -> drift.Distribution | None:
    """The class distribution a checkpoint recorded of its training masks (None: not recorded)."""
    return drift.Distribution.from_dict(recorded, num_classes) if recorded else None


def _history(output: Location, run_id: str) -> list[dict]:
    """(run id, alert distance) of earlier reports, oldest first."""
    paths = _earlier(output, REPORTS, "/report.json", run_id)[:HISTORY_NIGHTS]
    out = []
    for path in reversed(paths):
        past = json.loads(output.fs.cat_file(path))
        out.append({"run_id": past["run_id"], "distance": past["distance"]})
    return out


@dataclass(frozen=True)
class Reference:
    """What tonight was compared with: `comparison` None when either side has no pixels."""

    comparison: drift.Comparison | None
    nights: tuple[str, ...] | None = None  # the trailing reference: the runs summed

    def distances(self) -> list[float]:
        """The overall distances (pixel view, image view) this reference has."""
        c = self.comparison
        return [d for d in (c.pixel, c.image) if d is not None] if c else []

    def to_dict(self) -> dict:
        out = self.comparison.to_dict() if self.comparison else {}
        return out if self.nights is None else {**out, "nights": list(self.nights)}


@dataclass(frozen=True)
class DriftReport:
    """A night's drift report; `to_dict` is report.json."""

    run_id: str
    classes: tuple[str, ...]
    tonight: drift.Distribution
    references: dict[str, Reference]  # "training", "trailing": those that exist
    distance: float | None  # the alert distance: the largest overall distance
    threshold: float | None
    drift: bool
    notes: tuple[str, ...]
    history: tuple[dict, ...]  # {"run_id", "distance"} of the nights shown, tonight last

    @property
    def images(self) -> int:
        return self.tonight.images

    def to_dict(self) -> dict:
        shares, frequencies = self.tonight.pixel_shares(), self.tonight.image_frequencies()
        return {
            "run_id": self.run_id,
            "images": self.images,
            "classes": list(self.classes),
            "tonight": {
                **self.tonight.to_dict(),
                "pixel_shares": None if shares is None else shares.tolist(),
                "image_frequencies": None if frequencies is None else frequencies.tolist(),
            },
            "references": {name: ref.to_dict() for name, ref in self.references.items()},
            "distance": self.distance,
            "threshold": self.threshold,
            "drift": self.drift,
            "notes": list(self.notes),
            "history": list(self.history),
        }


def drift_report(table, classes: ClassList, trained: Mapping | None, output, run_id, config):
    """The night's drift report; `table` is the run's manifest, `trained` the model's recorded
    training distribution (CheckpointConfig.class_distribution)."""
    tonight = drift.of_manifest(table, classes.num_classes)
    notes, references = [], {}
    reference = training(trained, classes.num_classes)
    if reference is None:
        notes.append("the model records no training class distribution: trailing nights only")
    else:
        references["training"] = Reference(drift.compare(tonight, reference))
    past, nights = trailing(output, run_id, classes.num_classes, config.drift_nights)
    if not nights:
        notes.append("no earlier night to compare with")
    else:
        references["trailing"] = Reference(drift.compare(tonight, past), tuple(nights))
    if not tonight.images:
        notes.append("no segmented image with class counts tonight: nothing to compare")
    overall = [d for ref in references.values() for d in ref.distances()]
    distance = max(overall) if overall else None
    threshold = config.drift_threshold
    history = _history(output, run_id) + [{"run_id": run_id, "distance": distance}]
    return DriftReport(
        run_id=run_id,
        classes=tuple(classes.names),
        tonight=tonight,
        references=references,
        distance=distance,
        threshold=threshold,
        drift=bool(threshold is not None and distance is not None and distance > threshold),
        notes=tuple(notes),
        history=tuple(history),
    )


def metrics(report: DriftReport) -> dict[str, float]:
    """MLflow metrics: `drift_distance`, `drift_<reference>_<view>` overall and
    `drift_<reference>_pixel_<class>` per class, and `share_<class>` tonight."""
    out = {} if report.distance is None else {"drift_distance": report.distance}
    names = [class_metric(n).removeprefix(CLASS_METRIC_PREFIX) for n in report.classes]
    for ref, values in report.references.items():
        c = values.comparison
        if c is None:
            continue
        out[f"drift_{ref}_pixel"] = c.pixel
        if c.image is not None:
            out[f"drift_{ref}_image"] = c.image
        for name, value in zip(names, c.pixel_per_class, strict=False):
            out[f"drift_{ref}_pixel_{name}"] = value
    shares = report.tonight.pixel_shares()
    for name, value in zip(names, [] if shares is None else shares.tolist(), strict=False):
        out[f"share_{name}"] = value
    return out


def markdown(report: DriftReport) -> str:
    """The report as a page a person reads next to the chart."""
    distance = report.distance
    verdict = "DRIFT" if report.drift else "no drift alert"
    lines = [
        f"# Night {report.run_id}: {verdict}",
        "",
        f"{report.images} images segmented; alert distance "
        f"{'n/a' if distance is None else f'{distance:.4f}'} (Jensen-Shannon, 0..1), "
        f"threshold {report.threshold}.",
        "",
        *[f"- {note}" for note in report.notes],
        "",
        "![drift](drift.png)",
        "",
    ]
    refs = {name: ref.comparison for name, ref in report.references.items()}
    header = ["class", "share tonight"] + [f"share {r}" for r in refs] + [f"dist {r}" for r in refs]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shares = report.tonight.pixel_shares()
    for c, name in enumerate(report.classes):
        cells = [name, _fmt(None if shares is None else shares[c])]
        cells += [_fmt(r.reference_pixel_shares[c] if r else None) for r in refs.values()]
        cells += [_fmt(r.pixel_per_class[c] if r else None) for r in refs.values()]
        lines.append("| " + " | ".join(cells) + " |")
    for name, ref in report.references.items():
        c = ref.comparison
        lines.append("")
        lines.append(
            f"{name}: pixel shares {_fmt(c.pixel if c else None)}, image frequencies "
            f"{_fmt(c.image if c else None)}"
            + (f" over {', '.join(ref.nights)}" if ref.nights is not None else "")
        )
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def write(output: Location, report: DriftReport) -> dict[str, bytes]:
    """Write the report's files under `_reports/<run id>/`; returns them (name -> bytes)."""
    files = {
        "report.json": json.dumps(report.to_dict(), indent=1).encode(),
        "report.md": markdown(report).encode(),
        "drift.png": chart.drift_chart(report),
    }
    folder = report_dir(output, report.run_id)
    for name, data in files.items():
        folder.child(name).write_bytes(data)
    return files


def labeling_queue(
    table, classes: ClassList, output: Location, run_id: str, size: int,
    read_images: Callable[[list[str]], dict[str, bytes]], strategy: str = "entropy",
    seed: int = 0,
) -> dict[str, bytes]:  # fmt: skip
    """Tonight's queue (fcn.nightly.queue) as queue.parquet, queue.csv and cvat.zip under the
    report folder; returns those files. `read_images(uris)` gives the images' bytes. The
    queue is recorded as queued last, so a failed export never hides images from the next
    night's queue."""
    chosen = queue.select(table, queue.queued(output), size, run_id, strategy, seed)
    files = queue.files(chosen)
    rows = chosen.to_pylist()
    masks = {r["mask_uri"]: locate(r["mask_uri"]).read_bytes() for r in rows}
    files["cvat.zip"] = cvat.export(rows, classes, read_images([r["uri"] for r in rows]), masks)
    folder = report_dir(output, run_id)
    for name, data in files.items():
        folder.child(name).write_bytes(data)
    if rows:
        queue.record(output, run_id, chosen)
    return files
