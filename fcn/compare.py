"""Compare an experiment's training runs from MLflow: a table, plots, and the champion alias.

Reads runs through `fcn.tracking`, so it works the same against the embedded local store and
a tracking server (`MLFLOW_TRACKING_URI`). The table is sorted by `best_mean_iu` (the
metric contract in ARCHITECTURE.md) within groups of runs validated on the same data (the
run's `val_digest` tag): mean IUs on different validation sets are not ranked against each
other. Runs that never evaluated sort last rather than vanish, so a crashed run still shows up
with its status.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field

from fcn import storage, tracking
from fcn.config import CompareConfig
from fcn.engine.classes import VOC_CLASSES, ClassList, voc_colormap
from fcn.engine.metrics import CLASS_METRIC_PREFIX, SCORE_NAMES, class_metric

SORT_METRIC = "best_mean_iu"
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
    scores: dict  # SCORE_NAMES -> the last evaluation's value (None: never evaluated)
    duration_s: float | None
    val_digest: str | None = None  # content digest of the val split it was scored on
    params: dict = field(default_factory=dict)
    class_metrics: tuple[str, ...] = ()


class PromotionRefused(ValueError):
    """--promote found a best run whose version may not replace the champion."""


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
    refusal: str | None = None  # why --promote left the champion where it was
    comparison_run_id: str | None = None


# --- reading runs ---------------------------------------------------------------------------


def fetch_runs(experiment: str, uri: str | None = None) -> list:
    runs = [
        r
        for r in tracking.experiment_runs(experiment, uri)
        if r.data.tags.get(COMPARISON_TAG) != "true"
    ]
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
        scores={name: metrics.get(name) for name in SCORE_NAMES},
        duration_s=_duration(run.info),
        val_digest=run.data.tags.get(tracking.TAG_VAL_DIGEST),
        params=dict(params),
        class_metrics=tuple(k for k in metrics if k.startswith(CLASS_METRIC_PREFIX)),
    )


def _best(row: RunRow) -> float | None:
    """best_mean_iu, None when missing or NaN."""
    best = row.best_mean_iu
    return None if best is None or math.isnan(best) else best


def _order(row: RunRow):
    best = _best(row)
    return (best is None, 0.0 if best is None else -best, row.name)


def sort_rows(rows: list[RunRow]) -> list[RunRow]:
    """Runs validated on the same data together (the group holding the best run first), best
    first within each; runs without an evaluation last in their group."""
    groups: dict[str | None, list[RunRow]] = {}
    for row in sorted(rows, key=_order):
        groups.setdefault(row.val_digest, []).append(row)
    return [row for group in groups.values() for row in group]


def ranks(rows: list[RunRow]) -> list[int]:
    """1, 2, ... within each val-data group of sorted `rows`: runs scored on different data
    are not ranked against each other."""
    out, seen = [], {}
    for row in rows:
        seen[row.val_digest] = seen.get(row.val_digest, 0) + 1
        out.append(seen[row.val_digest])
    return out


def key_settings(rows: list[RunRow]) -> list[str]:
    """The params whose values differ between the runs: what the comparison is about."""
    names = sorted({k for r in rows for k in r.params} - NOT_SETTINGS)
    varying = [n for n in names if len({r.params.get(n) for r in rows}) > 1]
    return varying[:MAX_SETTINGS]


# --- the table ------------------------------------------------------------------------------

COLUMNS = ("rank", "run", "model", "val_digest")
SCORE_COLUMNS = ("best_mean_iu", *SCORE_NAMES, "duration_s", "status", "run_id")
HEADERS = {
    "val_digest": "val data",
    "best_mean_iu": "best mean IU",
    "pixel_acc": "pixel acc",
    "mean_acc": "mean acc",
    "mean_iu": "final mean IU",
    "fw_iu": "f.w. IU",
    "duration_s": "duration",
}
NUMERIC = frozenset(HEADERS) - {"val_digest"}
SHORT = {"run_id": 8, "val_digest": 8}  # Markdown shows ids shortened; the CSV whole


def _record(rank: int, row: RunRow, settings: list[str]) -> dict:
    record = {"rank": rank, "run": row.name, "model": row.model, "val_digest": row.val_digest}
    record.update({s: row.params.get(s, "") for s in settings})
    record["best_mean_iu"] = row.best_mean_iu
    record.update({name: row.scores.get(name) for name in SCORE_NAMES})
    record.update(duration_s=row.duration_s, status=row.status, run_id=row.run_id)
    return record


def to_csv(rows: list[RunRow], settings: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *settings, *SCORE_COLUMNS])
    writer.writeheader()
    for rank, row in zip(ranks(rows), rows, strict=True):
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
    if column in SHORT:
        return value[: SHORT[column]]
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def to_markdown(rows: list[RunRow], settings: list[str]) -> str:
    columns = [*COLUMNS, *settings, *SCORE_COLUMNS]
    lines = [
        "| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
        "|" + "|".join("---:" if c in NUMERIC or c == "rank" else "---" for c in columns) + "|",
    ]
    for rank, row in zip(ranks(rows), rows, strict=True):
        record = _record(rank, row, settings)
        lines.append("| " + " | ".join(_fmt(c, record[c]) for c in columns) + " |")
    datasets = len({r.val_digest for r in rows})
    if datasets > 1:
        lines.append(
            f"\nThese runs were validated on {datasets} different val datasets (column "
            "'val data'): each is ranked within its own, as mean IUs on different data are "
            "not comparable."
        )
    return "\n".join(lines) + "\n"


# --- curves and per-class IU ----------------------------------------------------------------


def class_order(keys) -> list[str]:
    """Class names of `iu_<name>` metric keys: VOC order where the names are VOC classes (the
    paper's tables), then the rest A-Z."""
    index = {name: i for i, name in enumerate(VOC_CLASSES)}
    names = {k[len(CLASS_METRIC_PREFIX) :] for k in keys}
    # Unnamed class sets log iu_0, iu_1, ...: numeric order, not 0, 1, 10, 2.
    return sorted(names, key=lambda n: (index.get(n, len(index)), not n.isdigit(), _num(n), n))


def _num(name: str) -> int:
    return int(name) if name.isdigit() else 0


def plot_classes(recorded: list[dict | None], keys) -> ClassList:
    """Names and colours for the per-class plot.

    `recorded`: the class lists the runs logged (`classes.json`; None for a run that logged
    none), best run first; the first one found gives names, order and colours. Classes that
    only other runs measured (`keys`: their `iu_<name>` metrics) follow; a class without a
    recorded colour gets the VOC colour of its VOC index (or its number, for classes named
    "0", "1", ...), as the masks of a model without a class list are painted.
    """
    base = next((ClassList.from_dict(c) for c in recorded if c), None)
    names = list(base.names) if base else []
    colors = list(base.colors) if base else []
    known = {class_metric(n) for n in names}
    voc = {name: i for i, name in enumerate(VOC_CLASSES)}
    cmap = voc_colormap()
    for name in class_order(k for k in keys if k not in known):
        names.append(name)
        index = voc.get(name, _num(name) if name.isdigit() else len(names) - 1)
        colors.append(tuple(int(v) for v in cmap[min(index, len(cmap) - 1)]))
    return ClassList(tuple(names), tuple(colors))


def per_class_at_best(row: RunRow, curve: list[tuple[int, float]], uri=None) -> dict[str, float]:
    """Metric key -> per-class IU at the evaluation with the highest mean IU (the checkpoint
    kept as best); the latest values where the histories do not line up."""
    best_step = max(curve, key=lambda sv: sv[1])[0] if curve else None
    values = {}
    for key in row.class_metrics:
        history = dict(tracking.metric_history(row.run_id, key, uri))
        values[key] = history.get(best_step, history[max(history)])
    return values


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_curves(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    figure = _figure((8, 5))
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


# Runs side by side are told apart by hatching: the bar colours are the classes' own.
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++", "oo")


def plot_per_class(per_class: dict[str, dict[str, float]], classes: ClassList) -> bytes:
    """Bars of each class in its colour, one hatching per run (`per_class`: run label ->
    metric key -> IU)."""
    from matplotlib.patches import Patch

    count = classes.num_classes
    figure = _figure((max(8, 0.6 * count + 2), 5))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(per_class))
    keys = [class_metric(name) for name in classes.names]
    colors = [tuple(v / 255 for v in rgb) for rgb in classes.colors]
    legend = []
    for i, (label, values) in enumerate(per_class.items()):
        hatch = HATCHES[i % len(HATCHES)]
        xs = [c + i * width for c in range(count)]
        heights = [values.get(key, 0.0) for key in keys]
        axes.bar(xs, heights, width=width, color=colors, edgecolor="0.5", hatch=hatch)
        legend.append(Patch(facecolor="white", edgecolor="0.3", hatch=hatch, label=label))
    axes.set_xticks([c + 0.4 - width / 2 for c in range(count)])
    axes.set_xticklabels(classes.names, rotation=60, ha="right", fontsize="small")
    axes.set_ylabel("IU (val, best evaluation)")
    top = max((v for values in per_class.values() for v in values.values() if v == v), default=1)
    axes.set_ylim(0, max(1.0, top * 1.05))  # fractions as the contract logs them; % also fit
    axes.set_title("Per-class IU, best runs side by side")
    if legend:
        axes.legend(handles=legend, fontsize="small")
    figure.tight_layout()
    return _png(figure)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- the champion alias ---------------------------------------------------------------------


def promote(rows: list[RunRow], registered_model: str | None = None, uri=None) -> Promotion:
    """Point `champion` at the best FINISHED run's registered model version, when that
    version was validated on the champion's validation data (`tracking.incomparable`).

    A running or failed run may show a higher best so far, but its model is not final.
    """
    finished = [r for r in rows if r.status == "FINISHED" and _best(r) is not None]
    if not finished:
        raise LookupError("no finished run with a best_mean_iu to promote")
    best = min(finished, key=_order)
    versions = tracking.run_versions(best.run_id, uri)
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
    candidate = max(versions, key=lambda v: int(v.version))
    champion = tracking.champion_version(names[0], uri)
    refusal = tracking.incomparable(candidate, champion)
    if refusal:
        raise PromotionRefused(f"not promoting best run {best.name}: {refusal}")
    tracking.set_champion(names[0], candidate.version, uri)
    previous = None if champion is None else str(champion.version)
    return Promotion(names[0], str(candidate.version), best.run_id, previous)


# --- the whole comparison -------------------------------------------------------------------


def compare(config: CompareConfig) -> Comparison:
    if config.top < 1:
        raise ValueError(f"--top must be at least 1, got {config.top}")
    uri = config.tracking_uri
    rows = sort_rows([to_row(run) for run in fetch_runs(config.experiment, uri)])
    settings = key_settings(rows)
    top = sorted((r for r in rows if _best(r) is not None), key=_order)[: config.top]
    labels = {r.run_id: f"{r.name} ({r.model})" for r in top}

    curves = {r.run_id: tracking.metric_history(r.run_id, "mean_iu", uri) for r in top}
    per_class = {labels[r.run_id]: per_class_at_best(r, curves[r.run_id], uri) for r in top}
    recorded = [tracking.run_classes(r.run_id, uri) for r in top]
    classes = plot_classes(recorded, {k for r in top for k in r.class_metrics})
    files = {
        CSV_FILE: to_csv(rows, settings).encode(),
        MARKDOWN_FILE: to_markdown(rows, settings).encode(),
        CURVES_FILE: plot_curves({labels[k]: v for k, v in curves.items()}),
        PER_CLASS_FILE: plot_per_class(per_class, classes),
    }
    outputs = {}
    for name, data in files.items():
        target = storage.join(config.output, name)
        storage.write_bytes(target, data)
        outputs[name] = target

    result = Comparison(rows, settings, outputs)
    if config.log_artifacts:
        result.comparison_run_id = tracking.log_run(
            config.experiment,
            f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
            params={"top": config.top, "runs_compared": len(rows)},
            tags={COMPARISON_TAG: "true"},
            metrics={},
            artifacts={f"comparison/{name}": data for name, data in files.items()},
            uri=uri,
        )
    if config.promote:
        try:
            result.promotion = promote(rows, config.registered_model, uri)
        except PromotionRefused as refused:  # the table and plots still stand
            result.refusal = str(refused)
    return result
