"""The comparison table: CSV (ids whole) and Markdown (ids shortened, durations readable)."""

from __future__ import annotations

import csv
import io
import math

from fcn.compare.rows import RunRow, ranks
from fcn.engine.metrics import SCORE_NAMES

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
