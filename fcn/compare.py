"""Compare an experiment's training runs from MLflow: a table, plots, and the champion alias.

Reads runs through `MlflowClient`, so it works the same against the embedded local store and
a tracking server (`MLFLOW_TRACKING_URI`). The table is sorted by `best_mean_iu` (the
metric contract in ARCHITECTURE.md); runs that never evaluated sort last rather than vanish,
so a crashed run still shows up with its status.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

from fcn import storage
from fcn.config import CompareConfig

SORT_METRIC = "best_mean_iu"
CLASS_PREFIX = "iu_"
CHAMPION = "champion"  # the alias fcn.tracking moves (not imported: that pulls in torch)
# Marks the runs compare itself logs, so a later comparison never ranks them.
COMPARISON_TAG = "fcn.comparison"
# Params that name or place a run rather than change what it learns: never "key settings".
NOT_SETTINGS = frozenset(
    {"name", "storage", "experiment", "model", "tracking_uri", "registered_model"}
)
MAX_SETTINGS = 8  # beyond this the Markdown table stops being readable

CSV_FILE = "comparison.csv"
MARKDOWN_FILE = "comparison.md"
CURVES_FILE = "mean_iu_curves.png"
PER_CLASS_FILE = "per_class_iu.png"


@dataclass
class RunRow:
    run_id: str
    name: str
    model: str
    status: str
    best_mean_iu: float | None
    mean_iu: float | None  # the last evaluation's value
    pixel_acc: float | None
    fw_iu: float | None
    duration_s: float | None
    params: dict = field(default_factory=dict)
    class_metrics: tuple[str, ...] = ()


@dataclass
class Promotion:
    registered_model: str
    version: str
    run_id: str
    previous_version: str | None


@dataclass
class Comparison:
    rows: list[RunRow]
    settings: list[str]
    outputs: dict[str, str]  # file name -> URI written
    promotion: Promotion | None = None
    comparison_run_id: str | None = None


# --- reading runs ---------------------------------------------------------------------------


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def fetch_runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LookupError(
            f"no MLflow experiment named {experiment!r} at {client.tracking_uri}; "
            f"experiments there: {', '.join(names) or 'none'}"
        )
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id], max_results=1000, page_token=token, order_by=["start_time ASC"]
        )
        runs += [r for r in page if r.data.tags.get(COMPARISON_TAG) != "true"]
        token = page.token
        if not token:
            break
    if not runs:
        raise LookupError(f"experiment {experiment!r} holds no training runs yet")
    return runs


def _duration(info) -> float | None:
    if info.start_time is None:
        return None
    end = info.end_time if info.end_time is not None else time.time() * 1000
    return max(0.0, (end - info.start_time) / 1000)


def to_row(run) -> RunRow:
    metrics, params = run.data.metrics, run.data.params
    return RunRow(
        run_id=run.info.run_id,
        name=run.info.run_name or run.data.tags.get("mlflow.runName", run.info.run_id[:8]),
        model=params.get("model", "?"),
        status=run.info.status,
        best_mean_iu=metrics.get(SORT_METRIC),
        mean_iu=metrics.get("mean_iu"),
        pixel_acc=metrics.get("pixel_acc"),
        fw_iu=metrics.get("fw_iu"),
        duration_s=_duration(run.info),
        params=dict(params),
        class_metrics=tuple(k for k in metrics if k.startswith(CLASS_PREFIX)),
    )


def sort_rows(rows: list[RunRow]) -> list[RunRow]:
    """Best first; runs without an evaluation last (NaN counts as missing)."""

    def key(row: RunRow):
        best = row.best_mean_iu
        missing = best is None or math.isnan(best)
        return (missing, 0.0 if missing else -best, row.name)

    return sorted(rows, key=key)


def key_settings(rows: list[RunRow]) -> list[str]:
    """The params whose values differ between the runs: what the comparison is about."""
    names = sorted({k for r in rows for k in r.params} - NOT_SETTINGS)
    varying = [n for n in names if len({r.params.get(n) for r in rows}) > 1]
    return varying[:MAX_SETTINGS]


# --- the table ------------------------------------------------------------------------------

COLUMNS = ("rank", "run", "model")
SCORE_COLUMNS = ("best_mean_iu", "mean_iu", "pixel_acc", "fw_iu", "duration_s", "status", "run_id")
HEADERS = {
    "best_mean_iu": "best mean IU",
    "mean_iu": "final mean IU",
    "pixel_acc": "pixel acc",
    "fw_iu": "f.w. IU",
    "duration_s": "duration",
}


def _record(rank: int, row: RunRow, settings: list[str]) -> dict:
    record = {"rank": rank, "run": row.name, "model": row.model}
    record.update({s: row.params.get(s, "") for s in settings})
    for column in SCORE_COLUMNS:
        record[column] = getattr(row, column)
    return record


def to_csv(rows: list[RunRow], settings: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *settings, *SCORE_COLUMNS])
    writer.writeheader()
    for rank, row in enumerate(rows, 1):
        record = _record(rank, row, settings)
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()


def _fmt(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "duration_s":
        minutes, seconds = divmod(int(round(value)), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
    if column == "run_id":
        return value[:8]
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def to_markdown(rows: list[RunRow], settings: list[str]) -> str:
    columns = [*COLUMNS, *settings, *SCORE_COLUMNS]
    lines = [
        "| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
        "|" + "|".join("---:" if c in HEADERS or c == "rank" else "---" for c in columns) + "|",
    ]
    for rank, row in enumerate(rows, 1):
        record = _record(rank, row, settings)
        lines.append("| " + " | ".join(_fmt(c, record[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


# --- curves and per-class IU ----------------------------------------------------------------


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def class_order(keys) -> list[str]:
    """VOC order where the names are VOC classes (the paper's tables), then the rest A-Z."""
    from fcn.data.classes import VOC_CLASSES

    index = {name: i for i, name in enumerate(VOC_CLASSES)}
    names = {k[len(CLASS_PREFIX) :] for k in keys}
    # Unnamed class sets log iu_0, iu_1, ...: numeric order, not 0, 1, 10, 2.
    return sorted(names, key=lambda n: (index.get(n, len(index)), not n.isdigit(), _num(n), n))


def _num(name: str) -> int:
    return int(name) if name.isdigit() else 0


def per_class_at_best(client, row: RunRow, curve: list[tuple[int, float]]) -> dict[str, float]:
    """Per-class IU at the evaluation with the highest mean IU (the checkpoint kept as best);
    the latest values where the histories do not line up."""
    best_step = max(curve, key=lambda sv: sv[1])[0] if curve else None
    values = {}
    for key in row.class_metrics:
        history = dict(_history(client, row.run_id, key))
        values[key[len(CLASS_PREFIX) :]] = history.get(best_step, history[max(history)])
    return values


def plot_curves(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        if curve:
            steps, values = zip(*curve, strict=True)
            axes.plot(steps, values, marker="o", markersize=3, label=label)
    axes.set_xlabel("iteration")
    axes.set_ylabel("mean IU (val)")
    axes.set_title("Mean IU during training, best runs")
    axes.grid(True, alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    return _png(figure)


def plot_per_class(per_class: dict[str, dict[str, float]], classes: list[str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(8, 0.6 * len(classes) + 2), 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(per_class))
    for i, (label, values) in enumerate(per_class.items()):
        xs = [c + i * width for c in range(len(classes))]
        axes.bar(xs, [values.get(name, 0.0) for name in classes], width=width, label=label)
    axes.set_xticks([c + 0.4 - width / 2 for c in range(len(classes))])
    axes.set_xticklabels(classes, rotation=60, ha="right", fontsize="small")
    axes.set_ylabel("IU (val, best evaluation)")
    top = max((v for values in per_class.values() for v in values.values() if v == v), default=1)
    axes.set_ylim(0, max(1.0, top * 1.05))  # fractions as the contract logs them; % also fit
    axes.set_title("Per-class IU, best runs side by side")
    if per_class:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return _png(figure)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- the champion alias ---------------------------------------------------------------------


def promote(client, rows: list[RunRow], registered_model: str | None = None) -> Promotion:
    """Point `champion` at the best FINISHED run's registered model version.

    A running or failed run may show a higher best so far, but its model is not final.
    """
    finished = [r for r in rows if r.status == "FINISHED" and r.best_mean_iu is not None]
    if not finished:
        raise LookupError("no finished run with a best_mean_iu to promote")
    best = finished[0]
    versions = client.search_model_versions(f"run_id = '{best.run_id}'")
    if registered_model:
        versions = [v for v in versions if v.name == registered_model]
    names = sorted({v.name for v in versions})
    if not names:
        raise LookupError(
            f"best run {best.name} ({best.run_id}) has no registered model version"
            + (f" in {registered_model!r}" if registered_model else "")
        )
    if len(names) > 1:
        raise ValueError(
            f"best run {best.name} registered versions in several models ({', '.join(names)}); "
            "say which with --registered-model"
        )
    name = names[0]
    version = max(versions, key=lambda v: int(v.version)).version
    from mlflow.exceptions import MlflowException

    try:
        previous = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        previous = None  # no champion yet
    client.set_registered_model_alias(name, CHAMPION, version)
    return Promotion(name, str(version), best.run_id, previous)


# --- the whole comparison -------------------------------------------------------------------


def compare(config: CompareConfig) -> Comparison:
    if config.top < 1:
        raise ValueError(f"--top must be at least 1, got {config.top}")
    client = _client(config.tracking_uri)
    rows = sort_rows([to_row(run) for run in fetch_runs(client, config.experiment)])
    settings = key_settings(rows)
    top = [r for r in rows if r.best_mean_iu is not None][: config.top]
    labels = {r.run_id: f"{r.name} ({r.model})" for r in top}

    curves = {r.run_id: _history(client, r.run_id, "mean_iu") for r in top}
    per_class = {labels[r.run_id]: per_class_at_best(client, r, curves[r.run_id]) for r in top}
    classes = class_order({k for r in top for k in r.class_metrics})
    files = {
        CSV_FILE: to_csv(rows, settings).encode(),
        MARKDOWN_FILE: to_markdown(rows, settings).encode(),
        CURVES_FILE: plot_curves({labels[k]: v for k, v in curves.items()}),
        PER_CLASS_FILE: plot_per_class(per_class, classes),
    }
    outputs = {}
    for name, data in files.items():
        uri = storage.join(config.output, name)
        storage.write_bytes(uri, data)
        outputs[name] = uri

    result = Comparison(rows, settings, outputs)
    if config.log_artifacts:
        result.comparison_run_id = _log_comparison(client, config, rows, files)
    if config.promote:
        result.promotion = promote(client, rows, config.registered_model)
    return result


def _log_comparison(client, config: CompareConfig, rows: list[RunRow], files: dict) -> str:
    experiment_id = client.get_experiment_by_name(config.experiment).experiment_id
    run = client.create_run(
        experiment_id,
        run_name=f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={COMPARISON_TAG: "true"},
    )
    run_id = run.info.run_id
    try:
        client.log_param(run_id, "top", config.top)
        client.log_param(run_id, "runs_compared", len(rows))
        with tempfile.TemporaryDirectory(prefix="fcn-compare-") as local:
            for name, data in files.items():
                with open(os.path.join(local, name), "wb") as out:
                    out.write(data)
            client.log_artifacts(run_id, local, "comparison")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
