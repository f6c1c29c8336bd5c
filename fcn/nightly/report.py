"""The nightly drift and queue history of a segment experiment (jobs/report.py): one row per
segment run from MLflow (its drift metrics and tags, fcn.nightly.summary.log_to_mlflow), the
queue size read from the run's report folder, and the distance over the nights as a PNG."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import pyarrow.parquet as pq

from fcn import storage, tracking
from fcn.config import required, setting
from fcn.engine.visualize import figure_png

COLUMNS = ("night", "done", "drift_distance", "drift", "queued", "report")


@dataclass(frozen=True)
class ReportConfig:
    """Settings of jobs/report.py (kept here: only the segment job's owner edits fcn/config.py's
    SegmentConfig; the CLI is generated the same way, by fcn.config.parse)."""

    experiment: str = required("MLflow experiment of the segment runs (segment's --experiment)")
    output: str = setting("./results/report", "where history.md, history.csv, drift.png go")
    last: int = setting(60, "nights shown, the latest")
    tracking_uri: str | None = setting(None, "MLflow server (default: MLFLOW_TRACKING_URI)")

    def validate(self) -> None:
        """Refuse settings that cannot work before MLflow is asked anything."""
        if self.last < 1:
            raise ValueError(f"--last must be >= 1, got {self.last}")
        storage.scheme(self.output)  # refuses a URI with credentials in it


def write(config: ReportConfig) -> tuple[list[dict], dict[str, str]]:
    """(the table, file name -> URI written)."""
    config.validate()
    table = rows(config.experiment, config.last, config.tracking_uri)
    files = {
        "history.md": markdown(table).encode(),
        "history.csv": csv_text(table).encode(),
        "drift.png": distance_plot(table),
    }
    written = {}
    for name, data in files.items():
        written[name] = storage.join(config.output, name)
        storage.write_bytes(written[name], data)
    return table, written


def rows(experiment: str, last: int, uri: str | None = None) -> list[dict]:
    """The last `last` segment runs of `experiment`, oldest first."""
    runs = [r for r in tracking.experiment_runs(experiment, uri) if "report" in r.data.tags]
    out = []
    for run in runs[-last:]:
        report = run.data.tags["report"]
        out.append({
            "night": run.info.run_name.removeprefix("segment-"),
            "done": int(run.data.metrics.get("done", 0)),
            "drift_distance": run.data.metrics.get("drift_distance"),
            "drift": run.data.tags.get("drift") == "true",
            "queued": _queued(report),
            "report": report,
        })  # fmt: skip
    return out


def _queued(report: str) -> int | None:
    """Rows of the night's queue.parquet; None when it has none (--queue-size 0, or gone)."""
    where = storage.join(report, "queue.parquet")
    if not storage.exists(where):
        return None
    return pq.read_metadata(io.BytesIO(storage.read_bytes(where))).num_rows


def markdown(table: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table:
        cells = [_cell(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "DRIFT" if value else ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def csv_text(table: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    return text.getvalue()


def distance_plot(table: list[dict]) -> bytes:
    """PNG: the alert distance per night, drifted nights in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(table) + 3), 3.5))
    points = [(i, r) for i, r in enumerate(table) if r["drift_distance"] is not None]
    ax.plot([i for i, _ in points], [r["drift_distance"] for _, r in points], marker="o")
    flagged = [(i, r["drift_distance"]) for i, r in points if r["drift"]]
    if flagged:
        ax.scatter(*zip(*flagged, strict=True), color="red", zorder=3, label="drift alert")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(table)), [r["night"][:8] for r in table], rotation=60, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Jensen-Shannon distance")
    ax.set_title("nightly drift")
    fig.tight_layout()
    return figure_png(fig)
