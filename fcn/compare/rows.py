"""An experiment's training runs as rows: read, sorted within their validation data, ranked.

Sorted by `best_mean_iu` (the metric contract in ARCHITECTURE.md) within groups of runs
validated on the same data (the run's `val_digest` tag): mean IUs on different validation
sets are not ranked against each other. Runs that never evaluated sort last rather than
vanish, so a crashed run still shows up with its status.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from fcn import tracking
from fcn.engine.metrics import CLASS_METRIC_PREFIX, SCORE_NAMES

SORT_METRIC = "best_mean_iu"
# Marks the runs compare itself logs, so a later comparison never ranks them.
COMPARISON_TAG = "fcn.comparison"
# Params that name or place a run rather than change what it learns: never "key settings".
NOT_SETTINGS = frozenset(
    {"name", "storage", "experiment", "model", "tracking_uri", "registered_model"}
)
MAX_SETTINGS = 8  # beyond this the Markdown table stops being readable


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


def best_score(row: RunRow) -> float | None:
    """best_mean_iu, None when missing or NaN."""
    best = row.best_mean_iu
    return None if best is None or math.isnan(best) else best


def order(row: RunRow):
    best = best_score(row)
    return (best is None, 0.0 if best is None else -best, row.name)


def sort_rows(rows: list[RunRow]) -> list[RunRow]:
    """Runs validated on the same data together (the group holding the best run first), best
    first within each; runs without an evaluation last in their group."""
    groups: dict[str | None, list[RunRow]] = {}
    for row in sorted(rows, key=order):
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
