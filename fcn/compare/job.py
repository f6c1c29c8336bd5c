"""The whole comparison: rows, table, plots written to --output, optionally logged as a run
of its own, and --promote."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fcn import storage, tracking
from fcn.compare.plots import per_class_at_best, plot_classes, plot_curves, plot_per_class
from fcn.compare.promotion import Promotion, PromotionRefused, promote
from fcn.compare.rows import (
    COMPARISON_TAG,
    RunRow,
    best_score,
    fetch_runs,
    key_settings,
    order,
    sort_rows,
    to_row,
)
from fcn.compare.table import to_csv, to_markdown
from fcn.config import CompareConfig

CSV_FILE = "comparison.csv"
MARKDOWN_FILE = "comparison.md"
CURVES_FILE = "mean_iu_curves.png"
PER_CLASS_FILE = "per_class_iu.png"


@dataclass
class Comparison:
    rows: list[RunRow]
    settings: list[str]
    outputs: dict[str, str]  # file name -> URI written
    promotion: Promotion | None = None
    refusal: str | None = None  # why --promote left the champion where it was
    comparison_run_id: str | None = None


def compare(config: CompareConfig) -> Comparison:
    config.validate()
    uri = config.tracking_uri
    rows = sort_rows([to_row(run) for run in fetch_runs(config.experiment, uri)])
    settings = key_settings(rows)
    top = sorted((r for r in rows if best_score(r) is not None), key=order)[: config.top]
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
